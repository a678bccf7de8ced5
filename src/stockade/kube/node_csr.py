"""The node's side of kubelet certificates: a CertificateSigningRequest whose key is the
TPM-resident node key, signed inside the TPM (tpm2-openssl), carrying the node's current
Stockade node certificate so the approver (:mod:`stockade.kube.csr`) can tie the request to
the attested TPM. Submit it with ``kubectl create -f``; the kubelet then uses the issued
certificate with the same TPM key (``docs/kubernetes.md``)."""

from __future__ import annotations

import base64
import ipaddress
import os
import re
import shutil
import subprocess
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from stockade.cluster.names import validate_node_name
from stockade.errors import InputError, StockadeError
from stockade.kube.csr import CLIENT_SIGNER, NODE_CERTIFICATE_ANNOTATION, SERVING_SIGNER

SIGNERS = {"client": CLIENT_SIGNER, "serving": SERVING_SIGNER}
USAGES = {
    "client": ["digital signature", "client auth"],
    "serving": ["digital signature", "server auth"],
}


class CsrFailed(StockadeError):
    """openssl with the tpm2 provider could not make the request."""

    exit_code = 2


_HOST_LABEL = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?")


def _subject_alt_names(addresses: Sequence[str]) -> str:
    """openssl's ``subjectAltName=`` value. Each address is an IP address or an RFC 1123 host
    name, nothing else: a ',' or ':' would add names of the caller's choosing."""
    names = []
    for address in addresses:
        try:
            ipaddress.ip_address(address)
        except ValueError:
            labels = address.split(".")
            if len(address) > 253 or not all(_HOST_LABEL.fullmatch(x) for x in labels):
                raise InputError(
                    f"--address {address!r} is neither an IP address nor an RFC 1123 host name"
                ) from None
            names.append(f"DNS:{address}")
        else:
            names.append(f"IP:{address}")
    return ",".join(names)


def tpm_signed_request(
    key: Path, tcti: str, node_name: str, addresses: Sequence[str] = ()
) -> bytes:
    """A PEM PKCS#10 request for ``O=system:nodes, CN=system:node:<name>``, signed by the TPM
    key in ``key`` (a TSS2 PRIVATE KEY) through tpm2-openssl. ``InvalidNodeName`` for a name
    that is not a node name (which also keeps '/', '+' and '=' out of openssl's ``-subj``)."""
    from stockade.tpm.node_key import OPENSSL_TPM2_FLAGS, openssl_tpm_env

    validate_node_name(node_name)
    subject_alt_names = _subject_alt_names(addresses)

    openssl = shutil.which("openssl")
    if openssl is None:
        raise CsrFailed("openssl is not installed")
    command = [
        openssl, "req", "-new", *OPENSSL_TPM2_FLAGS, "-key", str(key),
        "-subj", f"/O=system:nodes/CN=system:node:{node_name}",
    ]  # fmt: skip
    if addresses:
        command += ["-addext", f"subjectAltName={subject_alt_names}"]
    done = subprocess.run(
        command,
        capture_output=True,
        check=False,
        timeout=60,
        env={**os.environ, **openssl_tpm_env(tcti)},
    )
    if done.returncode != 0 or b"BEGIN CERTIFICATE REQUEST" not in done.stdout:
        detail = done.stderr.decode(errors="replace").strip().splitlines()[-1:] or ["no output"]
        raise CsrFailed(f"openssl (tpm2 provider) could not sign the request: {detail[0]}")
    from cryptography.hazmat.primitives import serialization
    from cryptography.x509 import load_der_x509_csr

    body = b"".join(
        line for line in done.stdout.splitlines() if line and not line.startswith(b"-----")
    )
    try:
        request = load_der_x509_csr(without_ecdsa_null_parameters(base64.b64decode(body)))
    except ValueError as error:
        raise CsrFailed(f"openssl (tpm2 provider) made an unreadable request: {error}") from None
    if not request.is_signature_valid:
        raise CsrFailed("the TPM-signed request does not verify")
    return request.public_bytes(serialization.Encoding.PEM)


# ecdsa-with-SHA256/384/512 (RFC 5758 3.2): the parameters field MUST be absent.
_ECDSA_OIDS = tuple(bytes.fromhex(f"06082a8648ce3d0403{n:02x}") for n in (2, 3, 4))


def _der_length(data: bytes, offset: int) -> tuple[int, int]:
    """(length, offset of the contents) of the DER TLV whose length byte is at ``offset``."""
    first = data[offset]
    if first < 0x80:
        return first, offset + 1
    count = first & 0x7F
    return int.from_bytes(data[offset + 1 : offset + 1 + count], "big"), offset + 1 + count


def _der_tlv(tag: int, contents: bytes) -> bytes:
    size = len(contents)
    if size < 0x80:
        return bytes([tag, size]) + contents
    encoded = size.to_bytes((size.bit_length() + 7) // 8, "big")
    return bytes([tag, 0x80 | len(encoded)]) + encoded + contents


def without_ecdsa_null_parameters(request_der: bytes) -> bytes:
    """tpm2-openssl 1.1 writes ``ecdsa-with-SHA256`` with a NULL parameter, which RFC 5758
    forbids and strict parsers (cryptography, Go) refuse. The outer signatureAlgorithm of a
    PKCS#10 request is not covered by its signature (RFC 2986 4.2), so it is re-encoded
    without the NULL; the signed CertificationRequestInfo is untouched."""
    if request_der[:1] != b"\x30":
        return request_der
    length, start = _der_length(request_der, 1)
    contents = request_der[start : start + length]
    info_length, info_start = _der_length(contents, 1)
    info_end = info_start + info_length
    algorithm = contents[info_end:]
    for oid in _ECDSA_OIDS:
        if algorithm.startswith(b"\x30\x0c" + oid + b"\x05\x00"):
            fixed = b"\x30\x0a" + oid + algorithm[14:]
            return _der_tlv(0x30, contents[:info_end] + fixed)
    return request_der


def csr_manifest(
    request_pem: bytes, node_certificate_pem: bytes, node_name: str, kind: str
) -> dict[str, Any]:
    """The CertificateSigningRequest (certificates.k8s.io/v1) to ``kubectl create -f``."""
    validate_node_name(node_name)
    if kind not in SIGNERS:
        raise InputError(f"--signer is client or serving, not {kind!r}")
    return {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {
            "generateName": f"stockade-{node_name}-{kind}-",
            "annotations": {
                NODE_CERTIFICATE_ANNOTATION: base64.b64encode(node_certificate_pem).decode()
            },
        },
        "spec": {
            "request": base64.b64encode(request_pem).decode(),
            "signerName": SIGNERS[kind],
            "usages": list(USAGES[kind]),
        },
    }
