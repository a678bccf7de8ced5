"""Unseal a secret the verifier sealed to this TPM's EK and PCRs (a ``SealedSecret``).

TPM2_Import under the EK, TPM2_Load, then a policy session asserting PolicyPCR over the
sealed selection and PolicyCommandCode(Unseal), TPM2_Unseal, and the payload decrypted
with the unsealed key. The two refusals a node must expect, a blob made for another TPM
(or altered) and PCRs that no longer hold the attested values, raise ``SecretRefused``;
every object and session is flushed whatever happens. The unsealed key and payload
never appear in a log or an exception.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

from tpm2_pytss import TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CC, TPM2_SE
from tpm2_pytss.types import (
    TPM2B_ENCRYPTED_SECRET,
    TPM2B_PRIVATE,
    TPM2B_PUBLIC,
    TPML_PCR_SELECTION,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
)

from stockade.errors import StockadeError
from stockade.evidence.duplication import SealedSecret, open_payload
from stockade.evidence.policy_digest import TPM_CC_UNSEAL
from stockade.evidence.templates import KeyKind
from stockade.tpm.device import Tpm, tpm_command
from stockade.tpm.ek import loaded_ek


class SecretRefused(StockadeError):
    """The TPM would not release a sealed secret: ``step`` is ``import`` (the blob was
    made for another TPM's EK, or altered), ``load`` or ``unseal`` (the PCRs do not hold
    the values the secret was sealed to); ``response_code`` is the TPM's."""

    exit_code = 1

    def __init__(self, step: str, response_code: int, reason: str) -> None:
        super().__init__(
            f"the TPM refused to {step} the sealed secret "
            f"(TPM response code 0x{response_code:03x}: {reason})"
        )
        self.step = step
        self.response_code = response_code


@contextlib.contextmanager
def _refused_as(step: str, explanation: str) -> Iterator[None]:
    try:
        yield
    except TSS2_Exception as error:
        raise SecretRefused(step, int(error.rc), f"{error}; {explanation}") from None


@contextlib.contextmanager
def _unseal_policy_session(tpm: Tpm, sealed: SealedSecret) -> Iterator[ESYS_TR]:
    """A SHA-256 policy session that asserted PolicyPCR(selection) with the TPM's current
    PCR values, then PolicyCommandCode(Unseal): it satisfies the sealed object's
    authPolicy exactly when those PCRs hold the values it was sealed to."""
    with tpm_command("StartAuthSession"):
        session = tpm.esys.start_auth_session(
            tpm_key=ESYS_TR.NONE,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.POLICY,
            symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            auth_hash=TPM2_ALG.SHA256,
        )
    with tpm.transient(session):
        pcrs, _ = TPML_PCR_SELECTION.unmarshal(sealed.selection.marshal())
        with tpm_command("PolicyPCR"):
            tpm.esys.policy_pcr(session, b"", pcrs)
        with tpm_command("PolicyCommandCode"):
            tpm.esys.policy_command_code(session, TPM2_CC(TPM_CC_UNSEAL))
        yield session


def unseal_secret(tpm: Tpm, ek_kind: KeyKind, sealed: SealedSecret) -> bytes:
    """The payload sealed to this TPM's EK of ``ek_kind`` and its current PCRs.

    Raises ``SecretRefused`` when the TPM refuses to import or unseal, and
    ``SealingError`` when the payload does not decrypt under the unsealed key.
    """
    object_public, _ = TPM2B_PUBLIC.unmarshal(sealed.object_public)
    duplicate, _ = TPM2B_PRIVATE.unmarshal(sealed.duplicate)
    seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(sealed.encrypted_seed)
    with loaded_ek(tpm, ek_kind) as (ek_handle, _):
        with (
            tpm.endorsement_policy_session() as session,
            _refused_as("import", "was it sealed to this TPM's EK, and unaltered?"),
        ):
            private = tpm.esys.import_(
                ek_handle,
                b"",
                object_public,
                duplicate,
                seed,
                TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                session1=session,
            )
        with (
            tpm.endorsement_policy_session() as session,
            _refused_as("load", "the imported object does not load"),
        ):
            handle = tpm.esys.load(ek_handle, private, object_public, session1=session)
        with (
            tpm.transient(handle),
            _unseal_policy_session(tpm, sealed) as policy,
            _refused_as("unseal", "the PCRs do not satisfy the sealed policy"),
        ):
            unsealed = tpm.esys.unseal(handle, session1=policy)
    return open_payload(sealed, bytes(unsealed))
