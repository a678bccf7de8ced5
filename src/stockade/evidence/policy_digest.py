"""Policy digests computed in software, as a TPM policy session with SHA-256 computes them.

A TPM object whose ``authPolicy`` is one of these digests can only be used in a policy
session that ran the same assertions, in the same order, while they held: the verifier
computes the digest here, the node's TPM enforces it (TPM 2.0 Part 1, 19.7 "Enhanced
Authorization": a policy session starts with an all-zero policyDigest and each assertion
extends it; the object's authPolicy is compared with the final value).

Pure: no TPM and no libtss2. tests/evidence/test_policy_digest.py checks every digest
against a transcription of the specification and against a real TPM's trial sessions.
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
TPM_CC_POLICY_SIGNED = 0x160
TPM_CC_POLICY_COMMAND_CODE = 0x16C
TPM_CC_POLICY_PCR = 0x17F

# The policyRef of the unseal authorization the node's channel key signs. Fixed, not per
# secret: it separates unseal authorizations from anything else the channel key signs (the
# policyRef is in both the signed aHash and the policyDigest, so a signature made for
# another policyRef satisfies no unseal policy), and the node signs for this value only, so
# whatever a blob says, the agent never signs an authorization for another purpose.
UNSEAL_POLICY_REF = b"stockade-unseal"

# TPM2B_NONCE and TPM2B_DIGEST hold at most sizeof(TPMU_HA) bytes (Part 2, 10.4.2, 10.4.4):
# 64, a SHA-512 digest.
MAX_NONCE_BYTES = 64
INT32_MIN, INT32_MAX = -(1 << 31), (1 << 31) - 1

# Every policy here is for a SHA-256 policy session (an object with nameAlg SHA-256).
POLICY_HASH = hash_algorithm(Alg.SHA256)
EMPTY_POLICY = bytes(POLICY_HASH.digest_size)


def _check_previous(previous: bytes) -> None:
    if len(previous) != POLICY_HASH.digest_size:
        raise EvidenceError(
            f"a SHA-256 policyDigest is {POLICY_HASH.digest_size} bytes, got {len(previous)}"
        )


def _check_buffer(value: bytes, what: str) -> None:
    if not isinstance(value, bytes):
        raise EvidenceError(f"{what} must be bytes")
    if len(value) > MAX_NONCE_BYTES:
        raise EvidenceError(f"{what} has {len(value)} bytes, a TPM takes at most {MAX_NONCE_BYTES}")


def check_key_name(name: bytes) -> None:
    """An object's Name: nameAlg (TPM_ALG_ID, big-endian) || H_nameAlg(TPMT_PUBLIC)
    (TPM 2.0 Part 1, 16 "Names"). A handle-only Name (4 bytes, for PCRs, sessions or
    hierarchies) cannot be an authObject for TPM2_PolicySigned: it is refused."""
    if not isinstance(name, bytes) or len(name) < 2:
        raise EvidenceError("a key's Name is nameAlg || digest, at least 2 bytes")
    name_alg = hash_algorithm(int.from_bytes(name[:2], "big"))
    if len(name) != 2 + name_alg.digest_size:
        raise EvidenceError(
            f"a key's Name with nameAlg {name_alg.name} is {2 + name_alg.digest_size} bytes, "
            f"got {len(name)}"
        )


def policy_signed(key_name: bytes, policy_ref: bytes, previous: bytes = EMPTY_POLICY) -> bytes:
    """The policyDigest after TPM2_PolicySigned by the key named ``key_name`` with
    ``policy_ref``.

    TPM 2.0 Part 3, 23.3 (TPM2_PolicySigned) updates the digest with
    PolicyUpdate(TPM_CC_PolicySigned, authObject->Name, policyRef) (23.2.3):
    policyDigest_new = H(H(policyDigest_old || TPM_CC_PolicySigned || authName) || policyRef),
    the second hash taken even when policyRef is empty. Neither nonceTPM nor expiration
    nor cpHashA enters the digest: they only scope the signature (``policy_signed_digest``).
    """
    _check_previous(previous)
    check_key_name(key_name)
    _check_buffer(policy_ref, "a policyRef")
    first = POLICY_HASH.digest(previous + TPM_CC_POLICY_SIGNED.to_bytes(4, "big") + key_name)
    return POLICY_HASH.digest(first + policy_ref)


def policy_signed_digest(
    nonce_tpm: bytes, expiration: int, cp_hash: bytes, policy_ref: bytes
) -> bytes:
    """aHash, the SHA-256 digest the authorizing key signs for TPM2_PolicySigned.

    TPM 2.0 Part 3, 23.3.1: aHash = H_authAlg(nonceTPM || expiration || cpHashA || policyRef),
    ``expiration`` an INT32 (big-endian, two's complement), the other three the buffers of
    their TPM2Bs without size (an empty one contributes nothing). authAlg is the hash of the
    signature scheme: SHA-256 for the channel key's ECDSA-SHA256 signatures. With
    ``nonce_tpm`` the session's nonceTPM the signature is good for that session only.
    """
    _check_buffer(nonce_tpm, "nonceTPM")
    _check_buffer(cp_hash, "cpHashA")
    _check_buffer(policy_ref, "a policyRef")
    if isinstance(expiration, bool) or not isinstance(expiration, int):
        raise EvidenceError("expiration must be an integer")
    if not INT32_MIN <= expiration <= INT32_MAX:
        raise EvidenceError(f"expiration {expiration} is not an INT32")
    return POLICY_HASH.digest(
        nonce_tpm + expiration.to_bytes(4, "big", signed=True) + cp_hash + policy_ref
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


def unseal_policy(selection: PcrSelection, pcrs: PcrValues, authorizer_name: bytes) -> bytes:
    """PolicySigned(the key named ``authorizer_name``, policyRef ``UNSEAL_POLICY_REF``), then
    PolicyPCR(``selection`` = ``pcrs``), then PolicyCommandCode(TPM_CC_Unseal).

    PolicySigned: only a process that can sign with the authorizing key (the node's channel
    key, a TPM-resident key loadable only from the agent's 0600 key file) can satisfy the
    policy; any other user of the same TPM, holding the blob and the same PCRs, cannot.
    PolicyPCR: only while the PCRs hold the attested values. The command-code assertion
    limits the object to TPM2_Unseal: TPM2_Duplicate (the DUP role) would need a session
    that asserted PolicyCommandCode(TPM_CC_Duplicate), which cannot produce this digest, so
    once imported the object never leaves that TPM again.
    """
    signed = policy_signed(authorizer_name, UNSEAL_POLICY_REF)
    return policy_command_code(TPM_CC_UNSEAL, policy_pcr(selection, pcrs, signed))
