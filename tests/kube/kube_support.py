"""Builders for the Kubernetes wire documents (shapes from the Kubernetes API reference:
AdmissionReview admission.k8s.io/v1, Pod v1, Binding v1, kube-scheduler extender v1),
a static trust source, a fake clock and a signed-image store."""

from __future__ import annotations

import copy
import json
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.images.layout import OCI_CONFIG, OCI_MANIFEST, ImageLayout
from stockade.kube.trust import NodeTrust, TrustUnavailable
from stockade.statements import FLEET_TRUST_TYPE, FleetEntry, VerifierKeys, fleet_trust_claims

T0 = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)


class FakeClock:
    def __init__(self, start: datetime = T0) -> None:
        self.now = start

    def __call__(self) -> datetime:
        return self.now

    def advance(self, seconds: float) -> None:
        self.now += timedelta(seconds=seconds)


@dataclass
class StaticTrust:
    """The trust source boundary: a fixed node table, or a verifier that is down."""

    nodes: dict[str, NodeTrust] = field(default_factory=dict)
    down: str | None = None

    def snapshot(self) -> Mapping[str, NodeTrust]:
        if self.down is not None:
            raise TrustUnavailable(self.down)
        return self.nodes


VERIFIER_KEY = ec.generate_private_key(ec.SECP256R1())
PINNED = VerifierKeys.of(VERIFIER_KEY.public_key())


def fleet_answer(
    entries: list[FleetEntry],
    issued_at: datetime = T0,
    valid_for: float = 60.0,
    key: ec.EllipticCurvePrivateKey = VERIFIER_KEY,
) -> dict[str, Any]:
    """``GET /v1/trust`` as the verifier answers it, signed by ``key``."""
    claims = fleet_trust_claims(entries, issued_at, issued_at + timedelta(seconds=valid_for))
    kid = next(iter(VerifierKeys.of(key.public_key()).keys))
    statement = jwt.encode(
        claims, key, algorithm="ES256", headers={"kid": kid, "typ": FLEET_TRUST_TYPE}
    )
    return {"statement": statement, "nodes": len(entries)}


def node_trust(name: str, state: str = "trusted", valid_for: float = 60.0) -> NodeTrust:
    until = T0 + timedelta(seconds=valid_for) if state == "trusted" else None
    return NodeTrust(name, f"id-{name}", state, until, f"result-{name}")


def pod(
    name: str = "web-0",
    namespace: str = "default",
    images: tuple[str, ...] = (),
    node_name: str | None = None,
    init_images: tuple[str, ...] = (),
) -> dict[str, Any]:
    """A v1 Pod as the API server puts it in ``request.object`` (defaults applied)."""
    spec: dict[str, Any] = {
        "containers": [
            {
                "name": f"c{index}",
                "image": image,
                "imagePullPolicy": "IfNotPresent",
                "resources": {},
                "terminationMessagePath": "/dev/termination-log",
                "terminationMessagePolicy": "File",
            }
            for index, image in enumerate(images)
        ],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
    }
    if init_images:
        spec["initContainers"] = [
            {"name": f"init{index}", "image": image} for index, image in enumerate(init_images)
        ]
    if node_name is not None:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": None,
            "labels": {"app": "web"},
        },
        "spec": spec,
        "status": {},
    }


def binding(pod_name: str, node: str, namespace: str = "default") -> dict[str, Any]:
    """A v1 Binding (POST /api/v1/namespaces/NS/pods/NAME/binding)."""
    return {
        "apiVersion": "v1",
        "kind": "Binding",
        "metadata": {"name": pod_name, "namespace": namespace, "creationTimestamp": None},
        "target": {"apiVersion": "v1", "kind": "Node", "name": node},
    }


def admission_review(
    obj: dict[str, Any] | None,
    operation: str = "CREATE",
    sub_resource: str | None = None,
    username: str = "kubernetes-admin",
    old: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """An AdmissionReview admission.k8s.io/v1 request, as the API server POSTs it."""
    metadata = (obj or old or {}).get("metadata", {})
    kind = {"group": "", "version": "v1", "kind": "Binding" if sub_resource == "binding" else "Pod"}
    resource = {"group": "", "version": "v1", "resource": "pods"}
    request: dict[str, Any] = {
        "uid": str(uuid.uuid4()),
        "kind": kind,
        "resource": resource,
        "requestKind": kind,
        "requestResource": resource,
        "name": metadata.get("name", ""),
        "namespace": metadata.get("namespace", "default"),
        "operation": operation,
        "userInfo": {
            "username": username,
            "uid": "aa3d8e5c-0000-4000-8000-000000000001",
            "groups": ["system:authenticated"],
        },
        "object": obj,
        "oldObject": old,
        "dryRun": False,
        "options": {"apiVersion": "meta.k8s.io/v1", "kind": f"{operation.title()}Options"},
    }
    if sub_resource:
        request["subResource"] = sub_resource
        request["requestSubResource"] = sub_resource
    return {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": request}


def node_object(name: str) -> dict[str, Any]:
    """A v1 Node as the scheduler sends it in ``ExtenderArgs.Nodes.items``."""
    return {
        "metadata": {
            "name": name,
            "uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, name)),
            "resourceVersion": "1234",
            "creationTimestamp": "2030-01-01T11:00:00Z",
            "labels": {
                "kubernetes.io/hostname": name,
                "kubernetes.io/os": "linux",
                "kubernetes.io/arch": "amd64",
            },
        },
        "spec": {"podCIDR": "10.244.1.0/24", "providerID": f"stockade://{name}"},
        "status": {
            "capacity": {"cpu": "8", "memory": "32Gi", "pods": "110"},
            "allocatable": {"cpu": "8", "memory": "31Gi", "pods": "110"},
            "conditions": [
                {
                    "type": "Ready",
                    "status": "True",
                    "lastHeartbeatTime": "2030-01-01T11:59:50Z",
                    "lastTransitionTime": "2030-01-01T11:00:00Z",
                    "reason": "KubeletReady",
                    "message": "kubelet is posting ready status",
                }
            ],
            "addresses": [{"type": "Hostname", "address": name}],
            "nodeInfo": {
                "kubeletVersion": "v1.31.0",
                "containerRuntimeVersion": "containerd://1.7",
            },
        },
    }


def extender_args(
    nodes: list[str], mode: str = "names", pod_object: dict[str, Any] | None = None
) -> dict[str, Any]:
    """ExtenderArgs (k8s.io/kube-scheduler/extender/v1): Pod + NodeNames or Nodes."""
    args: dict[str, Any] = {"Pod": pod_object or pod(images=("nginx",))}
    if mode == "names":
        args["Nodes"] = None
        args["NodeNames"] = list(nodes)
    else:
        args["Nodes"] = {
            "kind": "NodeList",
            "apiVersion": "v1",
            "metadata": {"resourceVersion": "1234"},
            "items": [node_object(name) for name in nodes],
        }
        args["NodeNames"] = None
    return args


def make_layout(path: Path, content: bytes, tag: str = "v1") -> tuple[ImageLayout, str]:
    """A one-layer OCI layout tagged ``tag``; returns it and its manifest digest."""
    path.mkdir(parents=True)
    (path / "oci-layout").write_text(json.dumps({"imageLayoutVersion": "1.0.0"}))
    (path / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": []}))
    layout = ImageLayout.open(path)
    layer = layout.add_blob(content, "application/vnd.oci.image.layer.v1.tar")
    config = layout.add_blob(
        json.dumps(
            {
                "architecture": "amd64",
                "os": "linux",
                "rootfs": {"type": "layers", "diff_ids": [layer.digest]},
            }
        ).encode(),
        OCI_CONFIG,
    )
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json()],
    }
    stored = layout.add_blob(json.dumps(manifest).encode(), OCI_MANIFEST)
    layout.tag(stored, tag)
    return layout, stored.digest


def deep(document: dict[str, Any]) -> dict[str, Any]:
    return copy.deepcopy(document)


def self_signed(directory: Path) -> tuple[Path, Path]:
    """A self-signed P-256 server certificate for 127.0.0.1 and localhost."""
    import ipaddress

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "stockade-kube.test")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - timedelta(minutes=5))
        .not_valid_after(now + timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    cert_path = directory / "server.pem"
    key_path = directory / "server-key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    key_path.chmod(0o600)
    return cert_path, key_path


class ThreadedServer:
    """A uvicorn server in a daemon thread on a free port; ``stop()`` ends it."""

    def __init__(self, config: Any) -> None:
        import socket
        import threading
        import time

        import uvicorn

        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        config.port = self.port
        self.server = uvicorn.Server(config)
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("uvicorn did not start")
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


def webhook_over_https(policy: Any, directory: Path) -> Iterator[Any]:
    """The webhook for ``policy`` served over HTTPS (a self-signed certificate in
    ``directory``) and an ``httpx.Client`` that trusts it; the server stops after."""
    import ssl

    import httpx

    from stockade.kube.server import ServerTls, create_app, uvicorn_config

    cert, key = self_signed(directory)
    server = ThreadedServer(
        uvicorn_config(create_app(policy), "127.0.0.1", 0, ServerTls(cert, key))
    )
    context = ssl.create_default_context(cafile=str(cert))
    try:
        with httpx.Client(
            base_url=f"https://127.0.0.1:{server.port}", verify=context, timeout=10
        ) as client:
            yield client
    finally:
        server.stop()
