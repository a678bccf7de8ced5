"""Fuzz target: EK certificates as read from TPM NV or a file (``load_certificate``), and
the chain checks that read their extensions (``validate_ek_certificate``).

    pip install atheris
    python fuzz/fuzz_certificate.py [libFuzzer options] [corpus directory]

Loading must succeed or raise ``EvidenceError``; any other exception is a bug. A
certificate that loads is then validated as an EK certificate and as the intermediate CA
between a fixed EK certificate and a fixed root (cryptography decodes extensions only
when they are read): that too may only raise ``EvidenceError``. Seed the corpus with
``seed_inputs()`` (that intermediate and EK certificate, which a mutation of their
extensions keeps on the validation path) and real EK certificates
(``tpm2_getekcertificate``). Importable without atheris: tests/evidence/test_fuzz_targets.py
drives ``test_one_input`` directly.
"""

from __future__ import annotations

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
    from cryptography.x509.oid import NameOID, ObjectIdentifier

    from stockade.evidence.ek_certificate import load_certificate, validate_ek_certificate
    from stockade.evidence.errors import EvidenceError
    from stockade.evidence.templates import KeyKind, ak_template

NOW = datetime(2030, 6, 1, tzinfo=UTC)


def _certificate(
    subject: str,
    key: ec.EllipticCurvePrivateKey,
    issuer: str,
    issuer_key: ec.EllipticCurvePrivateKey,
    *,
    ca: bool,
    path_length: int | None = None,
) -> x509.Certificate:
    usage = x509.KeyUsage(False, False, False, False, not ca, ca, ca, False, False)
    builder = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, subject)]))
        .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, issuer)]))
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(NOW - timedelta(days=1))
        .not_valid_after(NOW + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=ca, path_length=path_length), True)
        .add_extension(usage, True)
        .add_extension(
            x509.CertificatePolicies([x509.PolicyInformation(ObjectIdentifier("1.2.3.4"), None)]),
            True,
        )
    )
    if not ca:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DirectoryName(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tpm")]))]
            ),
            True,
        ).add_extension(x509.ExtendedKeyUsage([ObjectIdentifier("2.23.133.8.1")]), False)
    return builder.sign(issuer_key, hashes.SHA256())


_ROOT_KEY = ec.generate_private_key(ec.SECP256R1())
_CA_KEY = ec.generate_private_key(ec.SECP256R1())
_EK_KEY = ec.generate_private_key(ec.SECP256R1())
ROOT = _certificate("Fuzz Root", _ROOT_KEY, "Fuzz Root", _ROOT_KEY, ca=True, path_length=1)
INTERMEDIATE = _certificate("Fuzz EK CA", _CA_KEY, "Fuzz Root", _ROOT_KEY, ca=True, path_length=0)
LEAF = _certificate("EK", _EK_KEY, "Fuzz EK CA", _CA_KEY, ca=False)
EK_PUBLIC = ak_template(KeyKind.ECC).with_public_key(_EK_KEY.public_key())  # only the key counts


def seed_inputs() -> list[bytes]:
    return [c.public_bytes(serialization.Encoding.DER) for c in (LEAF, INTERMEDIATE)]


def test_one_input(data: bytes) -> None:
    with warnings.catch_warnings():
        # e.g. "serial number which wasn't positive": cryptography's warning, not a crash
        warnings.simplefilter("ignore")
        try:
            certificate = load_certificate(data)
        except EvidenceError:
            return
        for leaf, intermediates in ((certificate, (INTERMEDIATE,)), (LEAF, (certificate,))):
            try:
                validate_ek_certificate(
                    leaf, EK_PUBLIC, trusted_roots=[ROOT], intermediates=intermediates, now=NOW
                )
            except EvidenceError:
                continue


if __name__ == "__main__":
    fuzz(test_one_input)
