"""One request must not take admission down: the real HTTPS webhook server refuses bodies
over the API server's own limit (3 MiB) with 413 before buffering them (Content-Length
first; a chunked body at the first byte past the limit), times out slow bodies and
incomplete request heads, bounds the bodies in flight together, and, with ``--client-ca``,
refuses a client without a certificate that CA issued. The server process's memory is
measured (``/proc/PID/status``) while 300 MiB bodies are thrown at it."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path

import httpx
import pytest
from kube_support import PINNED, ThreadedServer, admission_review, pod, self_signed

from stockade.kube.server import MIB, RequestLimits, ServerTls, create_app, uvicorn_config
from support.cli import stockade_command

LIMIT = 3 * MIB
ATTACK = 300 * MIB


@contextmanager
def serving(
    policy, directory: Path, limits: RequestLimits | None = None, client_ca: Path | None = None
) -> Iterator[tuple[int, Path]]:
    cert, key = self_signed(directory)
    config = uvicorn_config(
        create_app(policy, limits), "127.0.0.1", 0, ServerTls(cert, key, client_ca), limits
    )
    server = ThreadedServer(config)
    try:
        yield server.port, cert
    finally:
        server.stop()


def _client(port: int, cert: Path, identity: tuple[Path, Path] | None = None) -> httpx.Client:
    context = ssl.create_default_context(cafile=str(cert))
    if identity is not None:
        context.load_cert_chain(*identity)
    return httpx.Client(base_url=f"https://127.0.0.1:{port}", verify=context, timeout=30)


class Counted:
    """An upload body of ``total`` bytes that counts what the client managed to hand over
    before the server refused it."""

    def __init__(self, total: int, chunk: int = MIB) -> None:
        self.total, self.chunk, self.sent = total, chunk, 0

    def __iter__(self) -> Iterator[bytes]:
        block = b"x" * self.chunk
        while self.sent < self.total:
            self.sent += self.chunk
            yield block


def _upload(client: httpx.Client, total: int, chunked: bool) -> tuple[httpx.Response, int]:
    body = Counted(total)
    headers = {"content-type": "application/json"}
    if not chunked:
        headers["content-length"] = str(total)
    reply = client.post("/validate", content=iter(body), headers=headers)
    return reply, body.sent


def _padded_review(size: int) -> bytes:
    """A valid AdmissionReview of exactly ``size`` bytes (an annotation pads it)."""
    document = admission_review(pod(images=("registry.example/org/app:v1",)))
    document["request"]["object"]["metadata"]["annotations"] = {"pad": ""}
    raw = json.dumps(document).encode()
    document["request"]["object"]["metadata"]["annotations"]["pad"] = "p" * (size - len(raw))
    raw = json.dumps(document).encode()
    assert len(raw) == size
    return raw


@pytest.mark.parametrize("chunked", [False, True], ids=["content-length", "chunked"])
def test_a_300_mib_body_is_refused_with_413_quickly(policy, tmp_path, chunked):
    with serving(policy, tmp_path) as (port, cert), _client(port, cert) as client:
        began = time.monotonic()
        reply, sent = _upload(client, ATTACK, chunked)
        elapsed = time.monotonic() - began
        assert reply.status_code == 413
        assert reply.headers["connection"] == "close"
        assert reply.json() == {"error": f"request body over {LIMIT} bytes refused"}
        assert elapsed < 5, elapsed
        # the server stopped reading at (chunked) or before (Content-Length) the limit:
        # the client handed over no more than the socket buffers took
        assert sent < 64 * MIB, sent
    with serving(policy, tmp_path) as (port, cert), _client(port, cert) as client:
        answer = client.post("/validate", json=admission_review(pod()))  # still serving
        assert answer.status_code == 200


def test_bodies_up_to_the_limit_are_judged_and_one_byte_more_is_not(policy, tmp_path):
    with serving(policy, tmp_path) as (port, cert), _client(port, cert) as client:
        headers = {"content-type": "application/json"}
        at_limit = _padded_review(LIMIT)
        reply = client.post("/validate", content=at_limit, headers=headers)
        assert reply.status_code == 200
        answer = reply.json()["response"]
        assert answer["allowed"] is False and "not pinned by digest" in answer["status"]["message"]
        # chunked, at the limit: judged too
        reply = client.post("/validate", content=iter([at_limit[:MIB], at_limit[MIB:]]))
        assert (
            reply.status_code == 200 and "pinned" in reply.json()["response"]["status"]["message"]
        )
    for content in (at_limit + b" ", iter([at_limit, b" "])):
        with serving(policy, tmp_path) as (port, cert), _client(port, cert) as client:
            reply = client.post("/validate", content=content, headers=headers)
            assert reply.status_code == 413


def test_the_extender_has_its_own_limit(policy, tmp_path):
    limits = RequestLimits(filter_bytes=MIB)
    with serving(policy, tmp_path, limits) as (port, cert), _client(port, cert) as client:
        reply = client.post("/filter", content=b" " * (MIB + 1))
        assert reply.status_code == 413
    with serving(policy, tmp_path, limits) as (port, cert), _client(port, cert) as client:
        args = {"Pod": pod(), "Nodes": None, "NodeNames": ["node-good"]}
        assert client.post("/filter", json=args).json()["NodeNames"] == ["node-good"]


def _tls_socket(port: int, cert: Path) -> ssl.SSLSocket:
    context = ssl.create_default_context(cafile=str(cert))
    raw = socket.create_connection(("127.0.0.1", port), timeout=10)
    return context.wrap_socket(raw, server_hostname="localhost")


def _read_until_closed(sock: ssl.SSLSocket, deadline: float) -> bytes:
    received = b""
    while time.monotonic() < deadline:
        try:
            data = sock.recv(65536)
        except (ConnectionError, ssl.SSLError):
            break
        if not data:
            break
        received += data
    return received


def _read_response(sock: ssl.SSLSocket) -> bytes:
    """One whole response (with a Content-Length) from ``sock``."""
    received = b""
    while b"\r\n\r\n" not in received:
        received += sock.recv(65536)
    head, _, body = received.partition(b"\r\n\r\n")
    (length,) = [
        int(line.split(b":")[1])
        for line in head.split(b"\r\n")
        if line.lower().startswith(b"content-length:")
    ]
    while len(body) < length:
        body += sock.recv(65536)
    return head + b"\r\n\r\n" + body


def test_a_slow_body_times_out_with_408(policy, tmp_path):
    limits = RequestLimits(timeout_seconds=1.0)
    with serving(policy, tmp_path, limits) as (port, cert), _tls_socket(port, cert) as sock:
        began = time.monotonic()
        sock.sendall(
            b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Type: application/json\r\n"
            b"Content-Length: 100000\r\n\r\n" + b'{"apiVersion":'
        )
        received = _read_until_closed(sock, began + 10)
        elapsed = time.monotonic() - began
        assert received.startswith(b"HTTP/1.1 408 "), received
        assert b"not complete in 1.0 s" in received
        assert 0.9 < elapsed < 5, elapsed  # answered, then the connection closed


def test_an_incomplete_request_head_is_cut_off(policy, tmp_path):
    """A client that sends its headers a byte at a time (slowloris) is disconnected
    ``head_seconds`` after connecting, though uvicorn's keep-alive timer restarts on every
    byte."""
    limits = RequestLimits(head_seconds=1.0)
    with serving(policy, tmp_path, limits) as (port, cert), _tls_socket(port, cert) as sock:
        began = time.monotonic()
        closed_after = None
        for byte in b"POST /validate HTTP/1.1\r\nHost: localhost\r\nX-Slow: " + b"a" * 100:
            try:
                sock.sendall(bytes([byte]))
                sock.settimeout(0.2)
                if sock.recv(1) == b"":
                    closed_after = time.monotonic() - began
                    break
            except TimeoutError:
                continue
            except (ConnectionError, ssl.SSLError):
                closed_after = time.monotonic() - began
                break
        assert closed_after is not None, "the server kept a slow head open"
        assert 0.9 < closed_after < 5, closed_after
        # and a keep-alive connection is given the same deadline for its next head
    with serving(policy, tmp_path, limits) as (port, cert), _tls_socket(port, cert) as sock:
        body = json.dumps(admission_review(pod())).encode()
        sock.sendall(
            b"POST /validate HTTP/1.1\r\nHost: localhost\r\nContent-Length: "
            + str(len(body)).encode()
            + b"\r\n\r\n"
            + body
        )
        sock.settimeout(5)
        assert _read_response(sock).startswith(b"HTTP/1.1 200 ")
        began = time.monotonic()
        sock.sendall(b"POST /validate HTTP/1.1\r\n")
        received = _read_until_closed(sock, began + 10)
        assert received == b""
        assert time.monotonic() - began < 5


def test_bodies_in_flight_share_one_budget(policy, tmp_path):
    limits = RequestLimits(budget_bytes=MIB)
    with serving(policy, tmp_path, limits) as (port, cert):
        with _client(port, cert) as client:
            reply = client.post("/validate", content=_padded_review(2 * MIB))
            assert reply.status_code == 503
            assert "in flight" in reply.json()["error"]
        with _client(port, cert) as client:  # what it held was given back
            for _ in range(3):
                reply = client.post("/validate", content=_padded_review(MIB - 1))
                assert reply.status_code == 200


# -- mutual TLS --------------------------------------------------------------------------


def _ca(directory: Path, name: str) -> tuple[Path, Path]:
    """A CA and one client certificate it issued (EKU clientAuth): (cert, key) paths of
    the client; the CA certificate is ``directory / f"{name}-ca.pem"``."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = datetime.now(UTC)

    def certificate(subject: str, issuer: str, public, signer, ca: bool) -> x509.Certificate:
        builder = (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
            .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
            .public_key(public)
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(minutes=5))
            .not_valid_after(now + timedelta(days=1))
            .add_extension(x509.BasicConstraints(ca=ca, path_length=None), critical=True)
        )
        if not ca:
            builder = builder.add_extension(
                x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]), critical=False
            )
        return builder.sign(signer, hashes.SHA256())

    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = f"{name} client CA"
    ca_cert = certificate(ca_name, ca_name, ca_key.public_key(), ca_key, ca=True)
    client_key = ec.generate_private_key(ec.SECP256R1())
    client = certificate("kube-apiserver", ca_name, client_key.public_key(), ca_key, ca=False)
    pem = serialization.Encoding.PEM
    (directory / f"{name}-ca.pem").write_bytes(ca_cert.public_bytes(pem))
    cert_path, key_path = directory / f"{name}-client.pem", directory / f"{name}-client-key.pem"
    cert_path.write_bytes(client.public_bytes(pem))
    key_path.write_bytes(
        client_key.private_bytes(
            pem, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return cert_path, key_path


def test_with_client_ca_a_client_without_its_certificate_is_refused(policy, tmp_path):
    apiserver = _ca(tmp_path, "apiserver")
    stranger = _ca(tmp_path, "stranger")
    document = admission_review(pod())
    with serving(policy, tmp_path, client_ca=tmp_path / "apiserver-ca.pem") as (port, cert):
        for identity in (None, stranger):
            with _client(port, cert, identity) as client, pytest.raises(httpx.TransportError):
                client.post("/validate", json=document)
        with _client(port, cert, apiserver) as client:
            assert client.post("/validate", json=document).status_code == 200
    # without --client-ca, any client that trusts the server's certificate is served
    with serving(policy, tmp_path) as (port, cert), _client(port, cert) as client:
        assert client.post("/validate", json=document).status_code == 200


# -- the server process's memory under attack ----------------------------------------------


def _memory(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak) of ``pid``, in bytes."""
    found = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0]) * 1024
    return found


@contextmanager
def kube_serve(
    directory: Path, images, *options: object, identity: tuple[Path, Path] | None = None
) -> Iterator[tuple[subprocess.Popen[bytes], httpx.Client, int, Path]]:
    """``stockade kube serve`` as a process, the image rule on, its verifier down (not
    needed here); yields it once it answers, with a client, its port and certificate."""
    cert, key = self_signed(directory)
    pinned = directory / "verifier-key.pem"
    pinned.write_bytes(PINNED.pem())
    ports = []
    for _ in range(2):
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            ports.append(sock.getsockname()[1])
    port, dead = ports  # nothing listens on `dead`
    command = stockade_command(
        "kube", "serve",
        "--verifier", f"https://127.0.0.1:{dead}", "--tls-cert", cert, "--tls-key", key,
        "--image-store", images.directory, "--trust-policy", images.policy_path,
        "--org-pub", images.org_pub, "--port", port, "--verifier-key", pinned, *options,
    )  # fmt: skip
    output = directory / "kube-serve.log"
    with output.open("wb") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT)
    try:
        with _client(port, cert, identity) as client:
            deadline = time.monotonic() + 30
            while True:
                assert process.poll() is None, output.read_text()
                try:
                    client.get("/healthz")
                    break
                except httpx.ConnectError:
                    assert time.monotonic() < deadline, output.read_text()
                    time.sleep(0.05)
            yield process, client, port, cert
    finally:
        process.terminate()
        process.wait(10)


@pytest.mark.tools
def test_kube_serve_with_client_ca_refuses_a_client_without_a_certificate(tmp_path, images):
    identity = _ca(tmp_path, "apiserver")
    document = admission_review(pod(images=(images.signed,)))
    with kube_serve(
        tmp_path, images, "--client-ca", tmp_path / "apiserver-ca.pem", identity=identity
    ) as (_, client, port, cert):
        assert client.post("/validate", json=document).status_code == 200
        with _client(port, cert) as anonymous, pytest.raises(httpx.TransportError):
            anonymous.post("/validate", json=document)


@pytest.mark.tools
def test_300_mib_bodies_leave_the_server_process_memory_bounded(tmp_path, images):
    signed = admission_review(pod(images=(images.signed,)))
    with kube_serve(tmp_path, images) as (process, client, port, cert):
        for _ in range(20):  # warm: the first requests allocate what later ones reuse
            client.post("/validate", json=signed)
        before = _memory(process.pid)
        results: list[tuple[int, int, float]] = []

        def attack(chunked: bool) -> None:
            with _client(port, cert) as attacker:
                began = time.monotonic()
                reply, sent = _upload(attacker, ATTACK, chunked)
                results.append((reply.status_code, sent, time.monotonic() - began))

        threads = [threading.Thread(target=attack, args=(i % 2 == 1,)) for i in range(8)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(60)
        after = _memory(process.pid)
        assert [status for status, _, _ in results] == [413] * 8, results
        assert max(seconds for _, _, seconds in results) < 10, results
        # 8 x 300 MiB thrown at it (content-length and chunked); it held a few MiB of each
        assert after["VmHWM"] - before["VmRSS"] < 48 * MIB, (before, after)
        assert after["VmRSS"] - before["VmRSS"] < 32 * MIB, (before, after)
        assert client.post("/validate", json=signed).status_code == 200  # still serving
        print(
            f"server RSS {before['VmRSS'] / MIB:.1f} MiB before, "
            f"{after['VmRSS'] / MIB:.1f} MiB after, peak {after['VmHWM'] / MIB:.1f} MiB; "
            f"client handed over at most {max(s for _, s, _ in results) / MIB:.0f} MiB "
            f"of 300; slowest refusal {max(t for _, _, t in results):.2f} s"
        )
