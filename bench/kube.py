"""The Kubernetes doors: admission webhook decisions and scheduler extender filtering.

A verifier view of 5,000 nodes behind the same ``CachedTrustSource`` the server uses
(``GET /v1/trust``: a signed fleet statement answered from memory, verified and parsed
again once a second), a signed-image store with one signed image, and real documents:
an AdmissionReview v1 for a pod with ``spec.nodeName`` preset to a trusted node and a
digest-pinned signed image, and ExtenderArgs for 5,000 nodes (``NodeNames``, and full
``Nodes`` objects).

Timed:

- webhook decisions per second and p50/p99 latency, in process (``review``) and over
  HTTPS with one keep-alive connection (uvicorn in a thread of this process; the client's
  time included);
- the same over HTTPS as the API server sends it: 2,000 reviews from 8 threads, each with
  its own keep-alive connection (p50/p99 per request, the image rule on);
- the extender's filter for 5,000 nodes, both modes, in process and over HTTPS (JSON both
  ways included).
"""

from __future__ import annotations

import copy
import ipaddress
import json
import multiprocessing
import socket
import ssl
import tempfile
import time
import uuid
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from bench.timing import Row, median_seconds

NODES = 5000
REPOSITORY = "registry.example/bench/app"


def _certificate(directory: Path) -> tuple[Path, Path]:
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench")])
    now = datetime.now(UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=1))
        .not_valid_after(now + timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = directory / "cert.pem", directory / "key.pem"
    cert_path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    return cert_path, key_path


def _image_store(directory: Path) -> tuple[Any, str]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.images import ImageLayout, sign_image, sign_trust_policy
    from stockade.images.layout import OCI_CONFIG, OCI_MANIFEST
    from stockade.images.policy import load_trust_policy
    from stockade.kube.admission import SignedImageStore
    from stockade.release.keys import public_pem

    org, build = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    path = directory / "store" / "app"
    path.mkdir(parents=True)
    (path / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
    (path / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    layout = ImageLayout.open(path)
    layer = layout.add_blob(b"x" * 65536, "application/vnd.oci.image.layer.v1.tar")
    config = layout.add_blob(b'{"architecture":"amd64","os":"linux"}', OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }
    stored = layout.add_blob(json.dumps(manifest).encode(), OCI_MANIFEST)
    layout.tag(stored, "v1")
    sign_image(layout, "v1", REPOSITORY, build)
    document = {
        "version": 1,
        "keys": {"build": public_pem(build.public_key()).decode()},
        "scopes": [{"prefix": "registry.example/bench", "keys": ["build"]}],
    }
    policy = load_trust_policy(sign_trust_policy(document, org), [org.public_key()])
    return SignedImageStore(directory / "store", policy), f"{REPOSITORY}@{stored.digest}"


def _verifier_nodes() -> tuple[dict[str, Any], Any]:
    """``GET /v1/trust`` as the verifier answers it (a fleet statement signed by a fresh
    verifier key), and the pinned keys that verify it."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.statements import (
        FLEET_TRUST_TYPE,
        FleetEntry,
        VerifierKeys,
        fleet_trust_claims,
    )

    key = ec.generate_private_key(ec.SECP256R1())
    keys = VerifierKeys.of(key.public_key())
    now = datetime.now(UTC)
    until = now + timedelta(hours=1)
    entries = [
        FleetEntry(
            node_id=str(uuid.uuid4()),
            name=f"node-{index:05d}",
            state="trusted" if index % 10 else "failed",
            trusted_until=until if index % 10 else None,
            result_id=str(uuid.uuid4()),
        )
        for index in range(NODES)
    ]
    claims = fleet_trust_claims(entries, now, until)
    headers = {"kid": next(iter(keys.keys)), "typ": FLEET_TRUST_TYPE}
    statement = jwt.encode(claims, key, algorithm="ES256", headers=headers)
    return {"statement": statement, "nodes": NODES}, keys


def _review(image: str) -> dict[str, Any]:
    pod = {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": "web-0", "namespace": "default", "labels": {"app": "web"}},
        "spec": {
            "nodeName": "node-00001",
            "containers": [{"name": "web", "image": image, "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always",
            "schedulerName": "default-scheduler",
        },
        "status": {},
    }
    resource = {"group": "", "version": "v1", "resource": "pods"}
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": str(uuid.uuid4()),
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": resource,
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": resource,
            "name": "web-0",
            "namespace": "default",
            "operation": "CREATE",
            "userInfo": {"username": "kubernetes-admin", "groups": ["system:authenticated"]},
            "object": pod,
            "oldObject": None,
            "dryRun": False,
        },
    }


def _extender_args(mode: str) -> dict[str, Any]:
    names = [f"node-{index:05d}" for index in range(NODES)]
    pod = _review("nginx")["request"]["object"]
    if mode == "NodeNames":
        return {"Pod": pod, "Nodes": None, "NodeNames": names}
    items = [
        {
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "labels": {"kubernetes.io/hostname": name},
            },
            "spec": {"podCIDR": "10.244.0.0/24"},
            "status": {
                "allocatable": {"cpu": "8", "memory": "31Gi", "pods": "110"},
                "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady"}],
                "addresses": [{"type": "Hostname", "address": name}],
            },
        }
        for name in names
    ]
    return {
        "Pod": pod,
        "Nodes": {"kind": "NodeList", "apiVersion": "v1", "items": items},
        "NodeNames": None,
    }


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _latencies(action: Any, count: int) -> tuple[float, list[float]]:
    samples = []
    start = time.perf_counter()
    for _ in range(count):
        begin = time.perf_counter()
        action()
        samples.append(time.perf_counter() - begin)
    return time.perf_counter() - start, samples


def _wait_listening(port: int) -> None:
    deadline = time.monotonic() + 15
    while time.monotonic() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError("the kube server did not start")


CONCURRENT_REQUESTS = 2000
CONCURRENT_THREADS = 8


def _concurrent_rows(port: int, context: ssl.SSLContext, raw: bytes, headers: Any) -> list[Row]:
    """The API server's view: ``CONCURRENT_REQUESTS`` signed-image pod CREATE reviews (the
    image rule on) from ``CONCURRENT_THREADS`` threads, each its own keep-alive HTTPS
    connection; latency per request as the client sees it."""
    import threading

    import httpx

    per_thread = CONCURRENT_REQUESTS // CONCURRENT_THREADS
    samples: list[float] = []
    lock = threading.Lock()
    start = threading.Barrier(CONCURRENT_THREADS + 1)

    def client_thread() -> None:
        with httpx.Client(
            base_url=f"https://127.0.0.1:{port}", verify=context, timeout=30
        ) as client:
            for _ in range(10):  # connect and warm, untimed
                client.post("/validate", content=raw, headers=headers)
            start.wait()
            mine = []
            for _ in range(per_thread):
                begin = time.perf_counter()
                reply = client.post("/validate", content=raw, headers=headers)
                mine.append(time.perf_counter() - begin)
                assert reply.status_code == 200 and reply.json()["response"]["allowed"]
            with lock:
                samples.extend(mine)

    threads = [threading.Thread(target=client_thread) for _ in range(CONCURRENT_THREADS)]
    for thread in threads:
        thread.start()
    start.wait()
    began = time.perf_counter()
    for thread in threads:
        thread.join()
    total = time.perf_counter() - began
    where = f"(HTTPS, {CONCURRENT_THREADS} threads keep-alive, image rule on)"
    return [
        (f"kube webhook decisions/s {where}", len(samples) / total, "1/s"),
        (f"kube webhook p50 {where}", _percentile(samples, 0.5) * 1e3, "ms"),
        (f"kube webhook p99 {where}", _percentile(samples, 0.99) * 1e3, "ms"),
    ]


def run(rounds: int) -> list[Row]:
    import httpx
    import uvicorn

    from stockade.kube.admission import AdmissionPolicy, review
    from stockade.kube.extender import filter_nodes
    from stockade.kube.server import ServerTls, create_app, uvicorn_config
    from stockade.kube.trust import CachedTrustSource

    rows: list[Row] = []
    with tempfile.TemporaryDirectory(prefix="stockade-bench-kube-") as temporary:
        work = Path(temporary)
        store, image = _image_store(work)
        nodes_document, keys = _verifier_nodes()
        trust = CachedTrustSource(lambda: nodes_document, keys, ttl=1.0)
        policy = AdmissionPolicy(trust=trust, images=store)
        document = _review(image)
        first = review(copy.deepcopy(document), policy)["response"]
        assert first["allowed"], first
        count = max(1000, rounds * 100)

        total, samples = _latencies(lambda: review(document, policy), count)
        rows.append(("kube webhook decisions/s (in process)", count / total, "1/s"))
        rows.append(("kube webhook p50 (in process)", _percentile(samples, 0.5) * 1e6, "us"))
        rows.append(("kube webhook p99 (in process)", _percentile(samples, 0.99) * 1e6, "us"))

        args = {mode: _extender_args(mode) for mode in ("NodeNames", "Nodes")}
        for mode, body in args.items():
            result = filter_nodes(body, trust)
            assert not result["Error"] and len(result["FailedNodes"]) == NODES // 10
            seconds = median_seconds(lambda body=body: filter_nodes(body, trust), rounds)
            rows.append((f"kube extender filter {NODES} {mode} (in process)", seconds * 1e3, "ms"))

        cert, key = _certificate(work)
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            port = sock.getsockname()[1]
        server = uvicorn.Server(
            uvicorn_config(create_app(policy), "127.0.0.1", port, ServerTls(cert, key))
        )
        # a forked process, so the client below does not share the server's GIL
        process = multiprocessing.get_context("fork").Process(target=server.run, daemon=True)
        process.start()
        _wait_listening(port)
        try:
            context = ssl.create_default_context(cafile=str(cert))
            with httpx.Client(
                base_url=f"https://127.0.0.1:{port}", verify=context, timeout=30
            ) as client:
                raw = json.dumps(document).encode()
                headers = {"content-type": "application/json"}

                def post() -> None:
                    reply = client.post("/validate", content=raw, headers=headers)
                    assert reply.status_code == 200

                for _ in range(50):
                    post()
                total, samples = _latencies(post, count)
                rows.append(("kube webhook decisions/s (HTTPS keep-alive)", count / total, "1/s"))
                rows.append(
                    ("kube webhook p50 (HTTPS keep-alive)", _percentile(samples, 0.5) * 1e3, "ms")
                )
                rows.append(
                    ("kube webhook p99 (HTTPS keep-alive)", _percentile(samples, 0.99) * 1e3, "ms")
                )
                rows += _concurrent_rows(port, context, raw, headers)
                for mode, body in args.items():
                    encoded = json.dumps(body).encode()

                    def filter_once(encoded: bytes = encoded) -> None:
                        reply = client.post("/filter", content=encoded, headers=headers)
                        assert reply.status_code == 200 and not reply.json()["Error"]

                    seconds = median_seconds(filter_once, max(5, rounds // 2))
                    rows.append(
                        (f"kube extender filter {NODES} {mode} (HTTPS)", seconds * 1e3, "ms")
                    )
        finally:
            process.terminate()
            process.join(10)
    return rows
