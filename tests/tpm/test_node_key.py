"""The node's TPM-resident TLS key: created and certified over tpm2-pytss, used by openssl
and curl through tpm2-openssl, and useless next to any other TPM.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import threading
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.x509.oid import NameOID

from stockade.cluster.ca import ClusterCa, node_identity, verify_node_certificate
from stockade.errors import InputError, TpmUnavailable
from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.certify import check_node_key, verify_certify
from stockade.evidence.public import EccParameters
from stockade.evidence.templates import KeyKind
from stockade.tpm.ak import create_ak
from stockade.tpm.device import Tpm, TpmCommandFailed
from stockade.tpm.node_key import (
    OPENSSL_TPM2_CONF,
    OPENSSL_TPM2_FLAGS,
    NodeKey,
    certify_node_key,
    create_node_key,
    load_node_key,
    openssl_tpm_env,
    save_node_key,
    tpm2_provider_module,
)

pytestmark = pytest.mark.swtpm

NONCE = b"n" * 32
NODE_ID = "node-0123456789abcdef"
RESULT_ID = "result-42"
REQUEST = b"GET / HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n"
S_CLIENT_PROVIDERS = list(OPENSSL_TPM2_FLAGS)
_tpm2_provider = tpm2_provider_module


needs_tpm2_openssl = pytest.mark.skipif(
    _tpm2_provider() is None,
    reason="the tpm2-openssl provider (Debian tpm2-openssl) or openssl is not installed",
)


# -- the key over tpm2-pytss -----------------------------------------------------------------


def test_node_key_is_a_p256_tls_key_and_nothing_stays_loaded(software_tpm):
    with Tpm(software_tpm.tcti) as tpm:
        key = create_node_key(tpm)
        assert tpm.transient_object_count() == 0
        ak = create_ak(tpm, KeyKind.ECC)
        info, signature = certify_node_key(tpm, key, ak, NONCE)
        assert tpm.transient_object_count() == 0
    check_node_key(key.public)
    assert isinstance(key.public.parameters, EccParameters)
    assert key.public.type == Alg.ECC and key.public.parameters.curve_id == EccCurve.NIST_P256
    assert key.pem.startswith(b"-----BEGIN TSS2 PRIVATE KEY-----\n")
    assert NodeKey.from_pem(key.pem) == key
    assert verify_certify(ak.public, key.public, info, signature, NONCE).name == key.public.name()


def test_save_and_load(software_tpm, tmp_path):
    with Tpm(software_tpm.tcti) as tpm:
        key = create_node_key(tpm)
    path = tmp_path / "keys" / "node.key"
    save_node_key(key, path)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    assert load_node_key(path) == key
    save_node_key(key, path)  # replacing is fine
    assert load_node_key(path) == key
    assert [p.name for p in path.parent.iterdir()] == ["node.key"]  # no temporary left


def test_unreadable_or_malformed_key_files_are_input_errors(tmp_path):
    software = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    cases = {
        "missing": None,
        "garbage": b"not a key at all",
        "software-key": software,
        "truncated": b"-----BEGIN TSS2 PRIVATE KEY-----\nMIIB\n-----END TSS2 PRIVATE KEY-----\n",
        "no-end": b"-----BEGIN TSS2 PRIVATE KEY-----\nMIIB\n",
    }
    for name, content in cases.items():
        path = tmp_path / name
        if content is not None:
            path.write_bytes(content)
        with pytest.raises(InputError, match=str(path)):
            load_node_key(path)


def test_openssl_environment_names_the_tcti(software_tpm):
    assert openssl_tpm_env(software_tpm.tcti) == {"TPM2OPENSSL_TCTI": software_tpm.tcti}
    assert openssl_tpm_env("device:/dev/tpmrm0") == {"TPM2OPENSSL_TCTI": "device:/dev/tpmrm0"}
    with pytest.raises(TpmUnavailable):
        openssl_tpm_env("not a tcti")


def test_key_cannot_be_loaded_by_another_tpm(software_tpm, make_software_tpm):
    """The PEM holds the private key wrapped by this TPM's owner-hierarchy primary."""
    with Tpm(software_tpm.tcti) as tpm:
        key = create_node_key(tpm)
    other = make_software_tpm()
    with Tpm(other.tcti) as tpm:
        ak = create_ak(tpm, KeyKind.ECC)
        with pytest.raises(TpmCommandFailed, match="TPM2_Load"):
            certify_node_key(tpm, key, ak, NONCE)
        assert tpm.transient_object_count() == 0


# -- tpm2-openssl, end to end ----------------------------------------------------------------


@dataclass
class TlsServer:
    """A TLS server on 127.0.0.1 that requires a client certificate from the cluster CA and
    answers each request with the node id and result id it read from that certificate."""

    context: ssl.SSLContext
    listener: socket.socket = field(init=False)
    connections: int = 0
    peers: list[tuple[str, str]] = field(default_factory=list)
    errors: list[str] = field(default_factory=list)

    def __post_init__(self) -> None:
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._serve, daemon=True)
        self._thread.start()

    @property
    def port(self) -> int:
        return self.listener.getsockname()[1]

    def _serve(self) -> None:
        while not self._stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except TimeoutError:
                continue
            except OSError:
                return
            self.connections += 1
            conn.settimeout(10)
            try:
                with self.context.wrap_socket(conn, server_side=True) as tls:
                    peer = x509.load_der_x509_certificate(tls.getpeercert(binary_form=True))
                    node_id, result_id = node_identity(peer)
                    self.peers.append((node_id, result_id))
                    request = b""
                    while b"\r\n\r\n" not in request:
                        chunk = tls.recv(4096)
                        if not chunk:
                            break
                        request += chunk
                    body = f"node {node_id} result {result_id}\n".encode()
                    tls.sendall(
                        b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\n"
                        + f"Content-Length: {len(body)}\r\n\r\n".encode()
                        + body
                    )
                    tls.unwrap()
            except (OSError, ssl.SSLError, ValueError) as error:
                self.errors.append(f"{type(error).__name__}: {error}")
            finally:
                conn.close()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        self.listener.close()


def _write_pem(path: Path, *objects: object) -> Path:
    chunks = []
    for item in objects:
        if isinstance(item, x509.Certificate):
            chunks.append(item.public_bytes(serialization.Encoding.PEM))
        else:
            assert isinstance(item, ed25519.Ed25519PrivateKey)
            chunks.append(
                item.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                )
            )
    path.write_bytes(b"".join(chunks))
    return path


def _server_identity(directory: Path) -> tuple[Path, Path, Path]:
    """An Ed25519 server CA and certificate for 127.0.0.1: (CA, certificate, key) files.

    Ed25519 because tpm2-openssl, preferred for every signature operation, would also
    verify the server's ECDSA/RSA signatures inside the TPM, and swtpm (no resource
    manager) runs out of object slots doing so; TPMs have no Ed25519, so those
    verifications stay in OpenSSL's default provider. The node's key is ECDSA P-256 in the
    TPM either way (docs/tpm-tls-client.md).
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ed25519.Ed25519PrivateKey.generate()
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "test server CA")])
    ca_cert = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .sign(ca_key, None)
    )
    key = ed25519.Ed25519PrivateKey.generate()
    cert = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "127.0.0.1")]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .sign(ca_key, None)
    )
    return (
        _write_pem(directory / "server-ca.pem", ca_cert),
        _write_pem(directory / "server.pem", cert),
        _write_pem(directory / "server-key.pem", key),
    )


@dataclass
class Setup:
    tcti: str
    directory: Path
    ca: ClusterCa
    key_path: Path
    cert_path: Path
    server_ca: Path
    server: TlsServer
    not_after: datetime.datetime


@pytest.fixture
def tls_setup(software_tpm, tmp_path):
    """A node key in the swtpm, certified by its AK, with a node certificate from the CA."""
    ca = ClusterCa.load_or_create(tmp_path / "cluster-ca")
    with Tpm(software_tpm.tcti) as tpm:
        key = create_node_key(tpm)
        ak = create_ak(tpm, KeyKind.ECC)
        info, signature = certify_node_key(tpm, key, ak, NONCE)
    proven = verify_certify(ak.public, key.public, info, signature, NONCE)
    now = datetime.datetime.now(datetime.UTC)
    not_after = now + datetime.timedelta(minutes=5)
    cert = ca.issue_node_certificate(
        proven.public,
        node_id=NODE_ID,
        node_name="worker-1",
        result_id=RESULT_ID,
        not_before=now - datetime.timedelta(minutes=1),
        not_after=not_after,
    )
    key_path = tmp_path / "node" / "node.key"
    save_node_key(key, key_path)
    cert_path = _write_pem(tmp_path / "node" / "node.pem", cert)
    server_ca, server_cert, server_key = _server_identity(tmp_path)

    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.load_cert_chain(server_cert, server_key)
    context.verify_mode = ssl.CERT_REQUIRED
    context.load_verify_locations(cadata=ca.bundle_pem().decode())
    server = TlsServer(context)
    yield Setup(software_tpm.tcti, tmp_path, ca, key_path, cert_path, server_ca, server, not_after)
    server.stop()


def s_client(setup: Setup, tcti: str, key_path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [
            "openssl",
            "s_client",
            *S_CLIENT_PROVIDERS,
            "-connect",
            f"127.0.0.1:{setup.server.port}",
            "-key",
            str(key_path),
            "-cert",
            str(setup.cert_path),
            "-CAfile",
            str(setup.server_ca),
            "-verify_return_error",
            "-ign_eof",
            "-quiet",
        ],
        input=REQUEST,
        env={**os.environ, **openssl_tpm_env(tcti)},
        capture_output=True,
        timeout=60,
        check=False,
    )


def curl(setup: Setup, tcti: str, key_path: Path) -> subprocess.CompletedProcess[bytes]:
    conf = setup.directory / "openssl-tpm2.cnf"
    conf.write_text(OPENSSL_TPM2_CONF)
    return subprocess.run(
        [
            "curl",
            "--silent",
            "--show-error",
            "--fail",
            "--max-time",
            "30",
            "--cacert",
            str(setup.server_ca),
            "--key",
            str(key_path),
            "--cert",
            str(setup.cert_path),
            f"https://127.0.0.1:{setup.server.port}/",
        ],
        env={**os.environ, **openssl_tpm_env(tcti), "OPENSSL_CONF": str(conf)},
        capture_output=True,
        timeout=60,
        check=False,
    )


CLIENTS = {"openssl-s_client": s_client, "curl": curl}


def _client(name: str):
    if name == "curl" and shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    return CLIENTS[name]


@needs_tpm2_openssl
def test_tpm2_openssl_reads_the_key_file(tls_setup):
    """tpm2-openssl loads our PEM into the TPM and reports the same public key."""
    out = subprocess.run(
        [
            *("openssl", "pkey", "-provider", "tpm2", "-provider", "base"),
            *("-in", str(tls_setup.key_path), "-pubout"),
        ],
        env={**os.environ, **openssl_tpm_env(tls_setup.tcti)},
        capture_output=True,
        check=True,
    ).stdout
    key = load_node_key(tls_setup.key_path)
    assert serialization.load_pem_public_key(out) == key.public.public_key()


@needs_tpm2_openssl
@pytest.mark.parametrize("client", list(CLIENTS))
def test_tls_client_authenticates_with_the_tpm_key(tls_setup, client):
    """The server sees the node id in the peer certificate; the handshake signature was made
    by the TPM (the key file holds no usable private key)."""
    result = _client(client)(tls_setup, tls_setup.tcti, tls_setup.key_path)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert tls_setup.server.peers == [(NODE_ID, RESULT_ID)], tls_setup.server.errors
    assert f"node {NODE_ID} result {RESULT_ID}".encode() in result.stdout
    cert = x509.load_pem_x509_certificate(tls_setup.cert_path.read_bytes())
    now = datetime.datetime.now(datetime.UTC)
    assert verify_node_certificate(cert, tls_setup.ca.certificate, now) == (NODE_ID, RESULT_ID)


@needs_tpm2_openssl
@pytest.mark.parametrize("client", list(CLIENTS))
def test_stolen_key_file_is_useless_next_to_another_tpm(tls_setup, make_software_tpm, client):
    """An attacker copies the node's key file and certificate to a machine with another TPM:
    the TPM cannot load the key, the client fails, and the server sees no handshake."""
    other = make_software_tpm()
    stolen = tls_setup.directory / "attacker" / "node.key"
    stolen.parent.mkdir()
    shutil.copy(tls_setup.key_path, stolen)
    result = _client(client)(tls_setup, other.tcti, stolen)
    assert result.returncode != 0
    assert b"private key" in result.stderr  # "Could not read" / "unable to set"
    assert NODE_ID.encode() not in result.stdout
    # openssl never connects; curl connects first, then gives up before its ClientHello.
    assert tls_setup.server.peers == []
    # The very same command against the node's own TPM works.
    result = _client(client)(tls_setup, tls_setup.tcti, stolen)
    assert result.returncode == 0, result.stderr.decode(errors="replace")[-2000:]
    assert tls_setup.server.peers == [(NODE_ID, RESULT_ID)]
