"""The Endorsement Key: its certificate from NV and the key itself, recreated from
the TCG default template (TCG EK Credential Profile 2.0, 2.2.1.4 "Low Range").
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.utils import NoSuchIndex, create_ek_template

from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind
from stockade.tpm.device import Tpm, tpm_command

EK_TEMPLATE_NAMES = {KeyKind.RSA: "EK-RSA2048", KeyKind.ECC: "EK-ECC256"}
EK_CERT_NV_INDEX = {KeyKind.RSA: 0x01C00002, KeyKind.ECC: 0x01C0000A}


@dataclass(frozen=True)
class Endorsement:
    """What a TPM shows about its EK: the public area and the vendor's certificate (DER)."""

    kind: KeyKind
    public: TpmPublic
    certificate: bytes | None


def _nv_reader(tpm: Tpm) -> object:
    def read(index: int) -> bytes:
        try:
            return tpm.nv_read(int(index))
        except Exception as error:
            if isinstance(error.__cause__, TSS2_Exception) or isinstance(error, TSS2_Exception):
                raise NoSuchIndex(index) from None
            raise

    return read


@contextlib.contextmanager
def loaded_ek(tpm: Tpm, kind: KeyKind) -> Iterator[tuple[ESYS_TR, Endorsement]]:
    """Recreate the EK as a transient primary key; flushed when the block ends."""
    certificate, template = create_ek_template(EK_TEMPLATE_NAMES[kind], _nv_reader(tpm))
    with tpm_command("CreatePrimary"):
        handle, public, *_ = tpm.esys.create_primary(None, template, ESYS_TR.ENDORSEMENT)
    with tpm.transient(handle):
        parsed = TpmPublic.unmarshal_tpm2b(bytes(public.marshal()))
        yield handle, Endorsement(kind, parsed, bytes(certificate) if certificate else None)


def read_endorsement(tpm: Tpm, kind: KeyKind) -> Endorsement:
    """The EK public area and certificate, leaving nothing loaded."""
    with loaded_ek(tpm, kind) as (_, endorsement):
        return endorsement
