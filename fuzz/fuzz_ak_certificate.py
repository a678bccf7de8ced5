"""Fuzz target: the GCE instance identity extension (``parse_gce_instance``) and AK
certificates as read from a cloud vTPM's NV (``validate_ak_certificate``).

    pip install atheris
    python fuzz/fuzz_ak_certificate.py [libFuzzer options] [corpus directory]

The bytes are parsed as the extension's DER, then as an AK certificate validated against a
fixed root for a fixed AK, then put into a certificate (as the extension's value) that the
fixed CA signs, which is validated too: each may only raise ``EvidenceError``. Seed the corpus
with ``seed_inputs()`` (the extension and a valid AK certificate). Importable without atheris:
tests/evidence/test_fuzz_targets.py drives ``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import sys
import warnings
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from stockade.evidence.ak_certificate import (
        GCE_INSTANCE_OID,
        GceInstance,
        encode_gce_instance,
        parse_gce_instance,
        validate_ak_certificate,
    )
    from stockade.evidence.errors import EvidenceError
    from stockade.evidence.templates import KeyKind, ak_template

NOW = datetime(2030, 6, 1, tzinfo=UTC)
INSTANCE = GceInstance("us-central1-a", "fuzz-project", 42, 4242, "fuzz-vm", 1, True)


def _name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


_ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
_AK_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = (
    x509.CertificateBuilder()
    .subject_name(_name("Fuzz AK Root"))
    .issuer_name(_name("Fuzz AK Root"))
    .public_key(_ROOT_KEY.public_key())
    .serial_number(1)
    .not_valid_before(NOW - timedelta(days=1))
    .not_valid_after(NOW + timedelta(days=1))
    .add_extension(x509.BasicConstraints(ca=True, path_length=0), True)
    .sign(_ROOT_KEY, hashes.SHA256())
)
AK_PUBLIC = ak_template(KeyKind.ECC).with_public_key(_AK_KEY.public_key())


def ak_certificate(extension: bytes) -> x509.Certificate:
    """An AK certificate the root signs, carrying ``extension`` as the instance identity."""
    return (
        x509.CertificateBuilder()
        .subject_name(_name("fuzz-vm"))
        .issuer_name(ROOT.subject)
        .public_key(_AK_KEY.public_key())
        .serial_number(2)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(
            x509.KeyUsage(True, False, False, False, False, False, False, False, False), True
        )
        .add_extension(x509.UnrecognizedExtension(GCE_INSTANCE_OID, extension), False)
        .sign(_ROOT_KEY, hashes.SHA256())
    )


def seed_inputs() -> list[bytes]:
    extension = encode_gce_instance(INSTANCE)
    return [extension, ak_certificate(extension).public_bytes(serialization.Encoding.DER)]


def _validate(certificate: bytes | x509.Certificate) -> None:
    with contextlib.suppress(EvidenceError):
        validate_ak_certificate(certificate, AK_PUBLIC, trusted_roots=[ROOT], now=NOW)


def test_one_input(data: bytes) -> None:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # cryptography's deprecation warnings are not crashes
        try:
            parsed = parse_gce_instance(data)
        except EvidenceError:
            parsed = None
        if parsed is not None:
            # DER has one encoding: what parses encodes back to exactly the same bytes.
            assert encode_gce_instance(parsed) == data, "does not marshal back"
        _validate(data)
        if len(data) < 2048:
            _validate(ak_certificate(data))


if __name__ == "__main__":
    fuzz(test_one_input)
