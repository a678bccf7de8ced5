"""Attestation keys: restricted signing keys created under the EK.

An AK is kept outside the TPM as its public and (TPM-wrapped) private areas;
only the TPM that holds the parent EK can load it again. A cloud vTPM's AK
(``stockade.tpm.cloud_ak``) is instead a primary key of the endorsement hierarchy, made
again from its template whenever it is used: only that TPM's endorsement seed gives it.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from tpm2_pytss.constants import ESYS_TR
from tpm2_pytss.types import TPM2B_PRIVATE, TPM2B_PUBLIC

from stockade.errors import InputError
from stockade.evidence.errors import EvidenceError
from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind, ak_template
from stockade.tpm.device import Tpm, TpmCommandFailed, tpm_command
from stockade.tpm.ek import loaded_ek

AK_PUBLIC_FILE = "ak.pub"
AK_PRIVATE_FILE = "ak.priv"
AK_NAME_FILE = "ak.name"
AK_EK_KIND_FILE = "ak.ek"
AK_TEMPLATE_FILE = "ak.template"


@dataclass(frozen=True)
class AttestationKey:
    """An AK: its public area, its TPM-wrapped private area, and which EK is its parent."""

    public: TpmPublic
    private: bytes  # TPM2B_PRIVATE as the TPM returned it (empty for a primary AK)
    ek_kind: KeyKind
    # A primary AK (a cloud vTPM's): the TPMT_PUBLIC template it is made from under the
    # endorsement hierarchy; None for an AK under the EK.
    primary_template: bytes | None = None

    @property
    def name(self) -> bytes:
        return self.public.name()

    def save(self, directory: Path) -> None:
        """Write tpm2-tools compatible ``ak.pub`` (TPM2B_PUBLIC), ``ak.priv`` and ``ak.name``."""
        directory.mkdir(parents=True, exist_ok=True)
        (directory / AK_PUBLIC_FILE).write_bytes(self.public.marshal_tpm2b())
        (directory / AK_PRIVATE_FILE).write_bytes(self.private)
        (directory / AK_NAME_FILE).write_bytes(self.name)
        (directory / AK_EK_KIND_FILE).write_text(self.ek_kind.value + "\n")
        template = directory / AK_TEMPLATE_FILE
        if self.primary_template is not None:
            template.write_bytes(self.primary_template)
        else:
            template.unlink(missing_ok=True)

    @classmethod
    def load(cls, directory: Path) -> AttestationKey:
        try:
            public = TpmPublic.unmarshal_tpm2b((directory / AK_PUBLIC_FILE).read_bytes())
            private = (directory / AK_PRIVATE_FILE).read_bytes()
            ek_kind = KeyKind((directory / AK_EK_KIND_FILE).read_text().strip())
            template_path = directory / AK_TEMPLATE_FILE
            template = template_path.read_bytes() if template_path.exists() else None
        except (OSError, ValueError) as error:
            raise InputError(f"cannot read the AK in {directory}: {error}") from None
        except EvidenceError as error:
            raise InputError(f"the AK in {directory} is malformed: {error}") from None
        return cls(public, private, ek_kind, template)


def create_ak(tpm: Tpm, kind: KeyKind, ek_kind: KeyKind | None = None) -> AttestationKey:
    """Create an AK of ``kind`` under the EK (by default an EK of the same kind)."""
    parent_kind = ek_kind or kind
    template, _ = TPM2B_PUBLIC.unmarshal(ak_template(kind).marshal_tpm2b())
    with (
        loaded_ek(tpm, parent_kind) as (ek_handle, _),
        tpm.endorsement_policy_session() as session,
        tpm_command("Create"),
    ):
        private, public, *_ = tpm.esys.create(ek_handle, None, template, session1=session)
    return AttestationKey(
        TpmPublic.unmarshal_tpm2b(bytes(public.marshal())),
        bytes(private.marshal()),
        parent_kind,
    )


@contextlib.contextmanager
def loaded_ak(tpm: Tpm, ak: AttestationKey) -> Iterator[ESYS_TR]:
    """Load ``ak`` under its EK; the EK is flushed at once, the AK when the block ends. A
    primary AK is made again from its template, and must be the key enrolled."""
    if ak.primary_template is not None:
        with loaded_primary_ak(tpm, ak.primary_template) as (handle, public):
            if public.marshal() != ak.public.marshal():
                raise TpmCommandFailed(
                    "CreatePrimary",
                    RuntimeError("the AK template no longer gives the enrolled AK"),
                )
            yield handle
        return
    private, _ = TPM2B_PRIVATE.unmarshal(ak.private)
    public, _ = TPM2B_PUBLIC.unmarshal(ak.public.marshal_tpm2b())
    with (
        loaded_ek(tpm, ak.ek_kind) as (ek_handle, _),
        tpm.endorsement_policy_session() as session,
        tpm_command("Load"),
    ):
        handle = tpm.esys.load(ek_handle, private, public, session1=session)
    with tpm.transient(handle):
        yield handle


@contextlib.contextmanager
def loaded_primary_ak(tpm: Tpm, template: bytes) -> Iterator[tuple[ESYS_TR, TpmPublic]]:
    """The primary key ``template`` (a TPMT_PUBLIC) gives under the endorsement hierarchy,
    with its public area; flushed when the block ends."""
    try:
        in_public, _ = TPM2B_PUBLIC.unmarshal(TpmPublic.unmarshal(template).marshal_tpm2b())
    except EvidenceError as error:
        raise InputError(f"the AK template is not a TPMT_PUBLIC: {error}") from None
    with tpm_command("CreatePrimary"):
        handle, public, *_ = tpm.esys.create_primary(None, in_public, ESYS_TR.ENDORSEMENT)
    with tpm.transient(handle):
        yield handle, TpmPublic.unmarshal_tpm2b(bytes(public.marshal()))
