"""A cloud vTPM's attestation key: made from the AK template the cloud put in NV, with the
certificate the cloud's CA issued for it (GCE Shielded VMs).

GCE provisions, per key type, an AK template (a TPMT_PUBLIC) and a DER certificate for the
key that template gives as a primary key of the endorsement hierarchy (go-tpm-tools
``client/keys.go``: ``GceAKTemplateNVIndexRSA`` 0x01c10001, ``GceAKCertNVIndexRSA``
0x01c10000, ``GceAKTemplateNVIndexECC`` 0x01c10003, ``GceAKCertNVIndexECC`` 0x01c10002). The
agent sends that certificate instead of the EK's; the verifier checks it against its
``--ak-ca`` roots (``stockade.evidence.ak_certificate``). Nothing here validates anything.
"""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization

from stockade.errors import InputError, StockadeError
from stockade.evidence.ak_certificate import load_ak_certificate
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind
from stockade.tpm.ak import AttestationKey, loaded_primary_ak
from stockade.tpm.device import Tpm, TpmCommandFailed


@dataclass(frozen=True)
class CloudAkIndices:
    """Where one key type's AK certificate and template are in NV."""

    certificate: int
    template: int


GCE_AK_NV: dict[KeyKind, CloudAkIndices] = {
    KeyKind.RSA: CloudAkIndices(certificate=0x01C10000, template=0x01C10001),
    KeyKind.ECC: CloudAkIndices(certificate=0x01C10002, template=0x01C10003),
}


class CloudAkUnavailable(StockadeError):
    """The TPM holds no usable cloud AK template and certificate."""


@dataclass(frozen=True)
class CloudAk:
    """The AK a cloud template gives, and the cloud's certificate for it (DER)."""

    ak: AttestationKey
    certificate: bytes


def cloud_ak_kinds(tpm: Tpm) -> list[KeyKind]:
    """The key types whose AK template and certificate are both in NV (ECC first)."""
    defined = tpm.nv_indices()
    return [
        kind
        for kind in (KeyKind.ECC, KeyKind.RSA)
        if {GCE_AK_NV[kind].certificate, GCE_AK_NV[kind].template} <= defined
    ]


def _read(tpm: Tpm, index: int) -> bytes:
    """GCE's indices are read with the owner's (empty) auth; a development TPM's also allow
    the index's own."""
    try:
        return tpm.nv_read(index, owner_auth=True)
    except TpmCommandFailed:
        return tpm.nv_read(index)


def parse_template(data: bytes) -> TpmPublic:
    """The NV template: a TPMT_PUBLIC (as GCE writes it), or a TPM2B_PUBLIC."""
    try:
        if len(data) >= 2 and int.from_bytes(data[:2], "big") == len(data) - 2:
            return TpmPublic.unmarshal_tpm2b(data)
        return TpmPublic.unmarshal(data)
    except EvidenceError as error:
        raise CloudAkUnavailable(
            f"the AK template in NV is not a TPM public area: {error}"
        ) from None


def read_cloud_ak(tpm: Tpm, kind: KeyKind | None = None) -> CloudAk:
    """Make the AK from the NV template of ``kind`` (default: the first kind present) and
    read its certificate; nothing stays loaded."""
    present = cloud_ak_kinds(tpm)
    if not present or (kind is not None and kind not in present):
        wanted = f"{kind.value} " if kind is not None else ""
        where = ", ".join(f"0x{i.template:08x}/0x{i.certificate:08x}" for i in GCE_AK_NV.values())
        raise CloudAkUnavailable(
            f"the TPM holds no {wanted}cloud AK template and certificate in NV ({where})"
        )
    chosen = kind or present[0]
    indices = GCE_AK_NV[chosen]
    template = parse_template(_read(tpm, indices.template)).marshal()
    try:
        certificate = load_ak_certificate(_read(tpm, indices.certificate))
    except EvidenceError as error:
        raise CloudAkUnavailable(f"0x{indices.certificate:08x}: {error}") from None
    try:
        with loaded_primary_ak(tpm, template) as (_, public):
            pass
    except InputError as error:
        raise CloudAkUnavailable(str(error)) from None
    ak = AttestationKey(public, b"", chosen, primary_template=template)
    return CloudAk(ak, certificate.public_bytes(serialization.Encoding.DER))
