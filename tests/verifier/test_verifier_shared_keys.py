"""Keys every replica shares (``stockade verifier keys``, ``verifier serve --keys-dir``), an
operator-issued TLS certificate (``--tls-cert``), and the schema migrated apart from serving
(``stockade verifier migrate``, ``serve --no-migrate``).

The keys directory is laid out as kubelet mounts a Secret (each file a symlink into
``..data/``) and is only read: two verifiers on it sign with the same keys and neither writes
a byte there. A missing, unsafe or foreign key is one line and exit code 2."""

from __future__ import annotations

import dataclasses
import os
import signal
import ssl
from pathlib import Path

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from fastapi.testclient import TestClient
from verifier_support import QuoteOnlyAppraiser, operator_headers, policy_document

from stockade.translog import NoteVerifier
from stockade.verifier import VerifierConfig, create_app
from stockade.verifier.db import SchemaNotAtHead, make_engine, require_head
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.shared_keys import create_keys
from support.cli import run_stockade
from support.operator_tls import operator_ca
from support.verifier_serve import ServedVerifier, free_port

ORIGIN = "stockade.local/verifier-log"  # VerifierConfig's default


def _secret_mount(tmp_path: Path, origin: str = ORIGIN) -> Path:
    """``create_keys`` output, moved behind ``..data`` as kubelet mounts a Secret."""
    made = tmp_path / "made"
    create_keys(made, origin)
    mount = tmp_path / "secret"
    timestamped = mount / "..2026_12_06_10_00_00.000000001"
    timestamped.mkdir(parents=True, mode=0o700)
    mount.chmod(0o700)
    for path in sorted(made.iterdir()):
        path.rename(timestamped / path.name)
        (mount / path.name).symlink_to(Path("..data") / path.name)
    (mount / "..data").symlink_to(timestamped.name)
    made.rmdir()
    return mount


def _snapshot(directory: Path) -> dict[str, tuple[int, int, bytes]]:
    return {
        str(path.relative_to(directory)): (
            path.lstat().st_mode,
            path.lstat().st_mtime_ns,
            path.read_bytes() if path.is_file() else b"",
        )
        for path in directory.rglob("*")
    }


def test_replicas_on_one_keys_dir_sign_with_its_keys_and_write_none(
    tmp_path: Path, verifier_config: VerifierConfig
) -> None:
    keys = _secret_mount(tmp_path)
    before = _snapshot(keys)
    answers = []
    for name in ("a", "b"):
        config = dataclasses.replace(
            verifier_config, data_dir=tmp_path / name, keys_dir=keys, operator_token=None
        )
        with TestClient(create_app(config, appraiser=QuoteOnlyAppraiser())) as client:
            # The shared operator token is the one accepted; a policy stored with it.
            document = policy_document(f"shared-{name}")
            stored = client.put(
                f"/v1/policies/{document['id']}", json=document, headers=operator_headers(keys)
            )
            assert stored.status_code == 200, stored.text
            answers.append((client.get("/v1/keys").json(), client.get("/v1/log/key").text.strip()))
            service = client.app.state.service
            assert (
                service.cluster_ca.certificate.public_bytes(serialization.Encoding.PEM)
                == (keys / "cluster-ca.pem").read_bytes()
            )
        # Nothing of the shared keys was made in the data directory.
        made_here = {path.name for path in (tmp_path / name).rglob("*") if path.is_file()}
        assert not made_here & {
            "ear-signing-key.pem", "log-signing-key", "session-key", "operator-token",
            "reader-token", "ca-key.pem",
        }, made_here  # fmt: skip
    assert answers[0] == answers[1]
    (jwks, log_key) = answers[0]
    assert log_key == (keys / "log-key.pub").read_text().strip()
    NoteVerifier.from_key_string(log_key)
    public = serialization.load_pem_public_key((keys / "verifier-key.pub.pem").read_bytes())
    assert isinstance(public, ec.EllipticCurvePublicKey)
    x = jwks["keys"][0]["x"]
    assert x.rstrip("=") == _b64url(public.public_numbers().x.to_bytes(32, "big"))
    assert _snapshot(keys) == before  # not a byte, mode or time changed


def _b64url(data: bytes) -> str:
    import base64

    return base64.urlsafe_b64encode(data).decode().rstrip("=")


def test_keys_from_the_keys_dir_are_checked_as_a_single_verifier_checks_its_own(
    tmp_path: Path, verifier_config: VerifierConfig
) -> None:
    keys = _secret_mount(tmp_path)
    config = dataclasses.replace(verifier_config, keys_dir=keys, operator_token=None)
    target = (keys / "ear-signing-key.pem").resolve()
    target.chmod(0o644)
    with pytest.raises(ConfigurationError, match="readable by group or others"):
        create_app(config, appraiser=QuoteOnlyAppraiser())
    target.chmod(0o600)
    other = dataclasses.replace(config, log_origin="other.example/log")
    with pytest.raises(ConfigurationError, match=r"other\.example/log"):
        create_app(other, appraiser=QuoteOnlyAppraiser())
    # A public key beside it that is not its own: relying parties would pin the wrong key.
    public = (keys / "verifier-key.pub.pem").resolve()
    stranger = ec.generate_private_key(ec.SECP256R1()).public_key()
    public.write_bytes(
        stranger.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with pytest.raises(ConfigurationError, match="not the public key"):
        create_app(config, appraiser=QuoteOnlyAppraiser())


@pytest.mark.tools
@pytest.mark.parametrize(
    ("damage", "expected"),
    [
        ("missing", "lacks (or cannot read) operator-token"),
        ("readable", "readable by group or others"),
        ("origin", "elsewhere.example/log"),
        ("no-dir", "is not a directory"),
    ],
)
def test_serve_refuses_a_bad_keys_dir_in_one_line(
    tmp_path: Path, damage: str, expected: str
) -> None:
    keys = _secret_mount(tmp_path)
    origin = ORIGIN
    if damage == "missing":
        (keys / "operator-token").unlink()
    elif damage == "readable":
        (keys / "session-key").resolve().chmod(0o640)
    elif damage == "origin":
        origin = "elsewhere.example/log"
    elif damage == "no-dir":
        keys = tmp_path / "absent"
    done = run_stockade(
        "verifier", "serve", "--data-dir", tmp_path / "data", "--keys-dir", keys,
        "--port", free_port(), "--log-origin", origin, "--enrollment-mode", "open",
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    assert "Traceback" not in done.stderr
    lines = done.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("stockade: "), done.stderr
    assert expected in lines[0], lines[0]


@pytest.mark.tools
def test_verifier_keys_never_replaces_a_key(tmp_path: Path) -> None:
    out = tmp_path / "keys"
    first = run_stockade("verifier", "keys", "--out", out, "--log-origin", "fleet.example/log")
    assert first.returncode == 0, first.stderr
    made = {path.name: path.read_bytes() for path in out.iterdir()}
    assert set(made) >= {
        "ear-signing-key.pem", "verifier-key.pub.pem", "log-signing-key", "log-key.pub",
        "session-key", "operator-token", "reader-token", "cluster-ca.pem",
        "cluster-ca-key.pem", "tls-ca.pem", "tls-ca-key.pem",
    }  # fmt: skip
    for name in made:
        mode = (out / name).stat().st_mode & 0o777
        assert mode == (0o644 if name.endswith((".pub", ".pub.pem", "ca.pem")) else 0o600), name
    assert made["log-key.pub"].startswith(b"fleet.example/log+")
    again = run_stockade("verifier", "keys", "--out", out)
    assert again.returncode == 2 and "refusing to replace" in again.stderr
    assert {path.name: path.read_bytes() for path in out.iterdir()} == made


@pytest.mark.tools
def test_no_migrate_refuses_until_verifier_migrate_ran(tmp_path: Path) -> None:
    data = tmp_path / "data"
    refused = run_stockade(
        "verifier", "serve", "--data-dir", data, "--no-migrate", "--port", free_port()
    )
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert "never migrated" in refused.stderr and "stockade verifier migrate" in refused.stderr
    assert "Traceback" not in refused.stderr
    migrated = run_stockade("verifier", "migrate", "--data-dir", data)
    assert migrated.returncode == 0, migrated.stderr
    assert "schema at head" in migrated.stdout
    engine = make_engine(f"sqlite:///{data / 'verifier.db'}")
    try:
        require_head(engine)  # what --no-migrate checks now passes
        with engine.begin() as connection:  # a database a newer version migrated
            connection.exec_driver_sql("UPDATE alembic_version SET version_num = '9999'")
        with pytest.raises(SchemaNotAtHead, match="9999"):
            require_head(engine)
    finally:
        engine.dispose()
    assert os.stat(data / "verifier.db").st_mode & 0o077 == 0


@dataclasses.dataclass
class OperatorTlsVerifier(ServedVerifier):
    operator_ca: Path | None = None

    @property
    def ca(self) -> Path:
        assert self.operator_ca is not None
        return self.operator_ca


@pytest.mark.tools
def test_serve_uses_an_operator_issued_tls_certificate(tmp_path: Path) -> None:
    keys = _secret_mount(tmp_path)
    ca, cert, key = operator_ca(tmp_path / "operator")
    verifier = OperatorTlsVerifier(
        tmp_path / "data",
        extra=("--keys-dir", str(keys), "--tls-cert", str(cert), "--tls-key", str(key)),
        operator_ca=ca,
    )
    with verifier:
        context = ssl.create_default_context(cafile=str(ca))
        with httpx.Client(base_url=verifier.url, verify=context, timeout=10) as client:
            assert client.get("/v1/health").status_code == 200
        served = ssl.get_server_certificate(("127.0.0.1", verifier.port))
        assert x509.load_pem_x509_certificate(served.encode()) == x509.load_pem_x509_certificate(
            cert.read_bytes()
        )
        assert "none (--tls-cert" in verifier.stdout()
        # The shared TLS CA is not what it serves with.
        shared = ssl.create_default_context(cafile=str(keys / "tls-ca.pem"))
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"{verifier.url}/v1/health", verify=shared)
    verifier.stop(sig=signal.SIGTERM)
    # A key that is not the certificate's is refused before anything is served.
    other = tmp_path / "other-key.pem"
    fd = os.open(other, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "wb") as handle:
        handle.write(
            ec.generate_private_key(ec.SECP256R1()).private_bytes(
                serialization.Encoding.PEM,
                serialization.PrivateFormat.PKCS8,
                serialization.NoEncryption(),
            )
        )
    wrong = OperatorTlsVerifier(
        tmp_path / "data",
        extra=("--keys-dir", str(keys), "--tls-cert", str(cert), "--tls-key", str(other)),
        operator_ca=ca,
    )
    done = wrong.run_to_exit()
    assert done.returncode == 2 and "is not the key of --tls-cert" in done.stderr, done.stderr


def test_tls_options_go_together_and_the_shared_ca_issues_each_replicas_certificate(
    tmp_path: Path,
) -> None:
    from stockade.verifier.shared_keys import serving_tls

    keys = _secret_mount(tmp_path)
    config = VerifierConfig(data_dir=tmp_path / "a", keys_dir=keys, tls_cert=keys / "tls-ca.pem")
    with pytest.raises(ConfigurationError, match="go together"):
        serving_tls(config, "127.0.0.1")
    served = []
    for name, host in (("a", "127.0.0.1"), ("b", "verifier-1.internal")):
        (tmp_path / name).mkdir(mode=0o700)
        tls = serving_tls(VerifierConfig(data_dir=tmp_path / name, keys_dir=keys), host)
        assert (
            tls.ca_cert is not None
            and tls.ca_cert.read_bytes() == (keys / "tls-ca.pem").read_bytes()
        )
        certificate = x509.load_pem_x509_certificate(tls.server_cert.read_bytes())
        ca = x509.load_pem_x509_certificate((keys / "tls-ca.pem").read_bytes())
        certificate.verify_directly_issued_by(ca)  # by the shared CA, not one of its own
        served.append(certificate)
        assert not (tmp_path / name / "tls" / "ca-key.pem").exists()
    names = served[1].extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert "verifier-1.internal" in names.get_values_for_type(x509.DNSName)
