"""Secure Boot image verification and signing, with sbsigntool (``sbverify``, ``sbsign``).

``authorize_image`` decides as UEFI's image verification does (UEFI 2.10, 32.5.3.3
"Authorization Process"; EDK2 DxeImageVerificationLib): an image whose
Authenticode SHA-256 is in dbx, or that is signed by a certificate in dbx, is
refused; otherwise it runs if its Authenticode SHA-256 is in db, or if its
signature verifies with a db certificate as trust anchor. The db entry that
allowed it is returned: that is what the firmware measures as
EV_EFI_VARIABLE_AUTHORITY. ``sbverify --cert`` does the PKCS#7 / Authenticode check
(the signed digest against the image, the signature against the certificate).
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
from collections.abc import Iterator, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stockade.boot.errors import BootHalted, BootInputError
from stockade.evidence.efi_signatures import SignatureEntry, SignatureList
from stockade.release.authenticode import authenticode_digest
from stockade.release.errors import NotPeImage

_TIMEOUT = 60.0


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise BootInputError(f"{name} not found; install the Debian package sbsigntool")
    return found


def _x509_entries(database: Sequence[SignatureList]) -> Iterator[SignatureEntry]:
    for signature_list in database:
        if signature_list.is_x509:
            yield from signature_list.entries


def _sha256_entries(database: Sequence[SignatureList]) -> Iterator[SignatureEntry]:
    for signature_list in database:
        if signature_list.is_sha256:
            yield from signature_list.entries


def _verifies(image: Path, certificate_der: bytes, workdir: Path) -> tuple[bool, str]:
    """Whether sbverify accepts ``image`` with ``certificate_der`` as trust anchor."""
    try:
        pem = x509.load_der_x509_certificate(certificate_der).public_bytes(
            serialization.Encoding.PEM
        )
    except ValueError:
        return False, "db certificate is not DER X.509"
    cert_path = workdir / "anchor.pem"
    cert_path.write_bytes(pem)
    result = subprocess.run(
        [_tool("sbverify"), "--cert", str(cert_path), str(image)],
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )
    return result.returncode == 0, result.stdout + result.stderr


def _refusal(output: str) -> str:
    if "No signature table present" in output:
        return "the image has no Authenticode signature"
    if "Image fails hash check" in output or "Hash doesn't match image" in output:
        return (
            "the image's Authenticode digest does not match its signature (modified after signing)"
        )
    return "its signature does not verify with any certificate in db"


def authorize_image(
    stage: str,
    esp_path: str,
    image: Path,
    db: Sequence[SignatureList],
    dbx: Sequence[SignatureList],
) -> SignatureEntry:
    """The db entry that lets ``image`` run, or ``BootHalted`` naming the stage and why."""
    try:
        digest = authenticode_digest(image.read_bytes(), "sha256")
    except OSError as error:
        raise BootInputError(f"cannot read the {stage} image '{image}': {error.strerror}") from None
    except NotPeImage as error:
        raise BootHalted(stage, esp_path, str(error)) from None
    for entry in _sha256_entries(dbx):
        if entry.data == digest:
            raise BootHalted(
                stage, esp_path, f"its Authenticode SHA-256 {digest.hex()} is revoked in dbx"
            )
    with tempfile.TemporaryDirectory(prefix="stockade-sbverify-") as work:
        for entry in _x509_entries(dbx):
            if _verifies(image, entry.data, Path(work))[0]:
                raise BootHalted(stage, esp_path, "it is signed by a certificate revoked in dbx")
        for entry in _sha256_entries(db):
            if entry.data == digest:
                return entry
        outputs = []
        for entry in _x509_entries(db):
            verified, output = _verifies(image, entry.data, Path(work))
            if verified:
                return entry
            outputs.append(output)
    if not outputs:
        raise BootHalted(stage, esp_path, "db holds no certificate or digest that allows it")
    raise BootHalted(stage, esp_path, _refusal("\n".join(outputs)))


def sign_image(image: Path, signed: Path, key: Path, certificate: Path) -> None:
    """``sbsign --key KEY --cert CERT --output SIGNED IMAGE``."""
    signed.parent.mkdir(parents=True, exist_ok=True)
    result = subprocess.run(
        [_tool("sbsign"), "--key", str(key), "--cert", str(certificate),
         "--output", str(signed), str(image)],
        capture_output=True,
        text=True,
        check=False,
        timeout=_TIMEOUT,
    )  # fmt: skip
    if result.returncode != 0:
        detail = (result.stderr or result.stdout).strip().splitlines()
        raise BootInputError(
            f"sbsign could not sign '{image}': {detail[-1] if detail else 'failed'}"
        )
