"""Policy digests computed in software, as a TPM policy session with SHA-256 computes them.

A TPM object whose ``authPolicy`` is one of these digests can only be used in a policy
session that ran the same assertions, in the same order, while they held: the verifier
computes the digest here, the node's TPM enforces it.
"""

from __future__ import annotations

from stockade.evidence.algorithms import Alg, hash_algorithm
from stockade.evidence.errors import EvidenceError
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues

# TPM_CC values (TPM 2.0 Part 2, 6.5.2).
TPM_CC_DUPLICATE = 0x14B
TPM_CC_IMPORT = 0x156
TPM_CC_UNSEAL = 0x15E
TPM_CC_POLICY_COMMAND_CODE = 0x16C
TPM_CC_POLICY_PCR = 0x17F

# Every policy here is for a SHA-256 policy session (an object with nameAlg SHA-256).
POLICY_HASH = hash_algorithm(Alg.SHA256)
EMPTY_POLICY = bytes(POLICY_HASH.digest_size)


def _check_previous(previous: bytes) -> None:
    if len(previous) != POLICY_HASH.digest_size:
        raise EvidenceError(
            f"a SHA-256 policyDigest is {POLICY_HASH.digest_size} bytes, got {len(previous)}"
        )


def policy_pcr(selection: PcrSelection, pcrs: PcrValues, previous: bytes = EMPTY_POLICY) -> bytes:
    """The policyDigest after TPM2_PolicyPCR(``selection``) while the PCRs hold ``pcrs``.

    TPM 2.0 Part 3, 23.7 (TPM2_PolicyPCR):
    policyDigest_new = H(policyDigest_old || TPM_CC_PolicyPCR || pcrs || digestTPM),
    where ``pcrs`` is the TPML_PCR_SELECTION as marshalled and digestTPM is the session
    hash over the selected PCR values concatenated in selection order (banks in list
    order, then ascending PCR index in each bank), whatever bank they come from.
    """
    _check_previous(previous)
    pcr_digest = pcrs.composite_digest(selection, POLICY_HASH)
    return POLICY_HASH.digest(
        previous + TPM_CC_POLICY_PCR.to_bytes(4, "big") + selection.marshal() + pcr_digest
    )


def policy_command_code(command_code: int, previous: bytes) -> bytes:
    """The policyDigest after TPM2_PolicyCommandCode(``command_code``).

    TPM 2.0 Part 3, 23.11 (TPM2_PolicyCommandCode):
    policyDigest_new = H(policyDigest_old || TPM_CC_PolicyCommandCode || code).
    """
    _check_previous(previous)
    if not 0 <= command_code <= 0xFFFFFFFF:
        raise EvidenceError(f"command code {command_code} is not a 32-bit TPM_CC")
    return POLICY_HASH.digest(
        previous + TPM_CC_POLICY_COMMAND_CODE.to_bytes(4, "big") + command_code.to_bytes(4, "big")
    )


def unseal_policy(selection: PcrSelection, pcrs: PcrValues) -> bytes:
    """PolicyPCR(``selection`` = ``pcrs``) then PolicyCommandCode(TPM_CC_Unseal).

    The command-code assertion limits the object to TPM2_Unseal: TPM2_Duplicate (the DUP
    role) would need a session that asserted PolicyCommandCode(TPM_CC_Duplicate), which
    cannot produce this digest, so once imported the object never leaves that TPM again.
    """
    return policy_command_code(TPM_CC_UNSEAL, policy_pcr(selection, pcrs))
