"""Unseal a secret the verifier sealed to this TPM's EK, its PCRs and this node's channel key.

TPM2_Import under the EK, TPM2_Load, then a policy session (TPM 2.0 Part 1, 19.7, Enhanced
Authorization) asserting, in the order the verifier computed the sealed object's authPolicy
(``stockade.evidence.policy_digest``):

1. TPM2_PolicySigned (TPM 2.0 Part 3, 23.3) by the node's channel key over the session's
   own nonceTPM, expiration 0, no cpHashA and policyRef ``UNSEAL_POLICY_REF``: the key signs
   aHash in the TPM, so only a process that can load the channel key (the agent, from its
   0600 key file) can authorize the session, and the signature is good for this session only;
2. TPM2_PolicyPCR over the sealed selection with the TPM's current values;
3. TPM2_PolicyCommandCode(TPM_CC_Unseal);

then TPM2_Unseal, and the payload decrypted with the unsealed key. The refusals a node must
expect raise ``SecretRefused``: a blob made for another TPM (or altered) at ``import``, a
channel key this TPM cannot load or whose signature the TPM rejects at ``authorize``, and a
session that does not satisfy the policy (another key signed, or the PCRs no longer hold the
attested values) at ``unseal``. Every object and session is flushed whatever happens. The
unsealed key and payload never appear in a log or an exception.
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
    TPMT_SIGNATURE,
    TPMT_SYM_DEF,
    TPMT_SYM_DEF_OBJECT,
)

from stockade.errors import StockadeError
from stockade.evidence.duplication import SealedSecret, open_payload
from stockade.evidence.policy_digest import TPM_CC_UNSEAL, policy_signed_digest
from stockade.evidence.templates import KeyKind
from stockade.tpm.device import Tpm, TpmCommandFailed, tpm_command
from stockade.tpm.ek import loaded_ek
from stockade.tpm.node_key import NodeKey, loaded_node_key, sign_digest_with

# The unseal authorization never expires on its own: it is bound to one session's nonceTPM
# (TPM 2.0 Part 3, 23.3.1: expiration 0 means no time limit, and no ticket is produced).
AUTHORIZATION_EXPIRATION = 0
P256_BYTES = 32


class SecretRefused(StockadeError):
    """The TPM would not release a sealed secret: ``step`` is ``import`` (the blob was
    made for another TPM's EK, or altered), ``load``, ``authorize`` (the channel key does
    not load in this TPM, or its PolicySigned signature is rejected) or ``unseal`` (the
    session does not satisfy the sealed policy: another key authorized it, or the PCRs do
    not hold the values the secret was sealed to); ``response_code`` is the TPM's."""

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
    except TpmCommandFailed as error:
        cause = error.__cause__
        code = int(cause.rc) if isinstance(cause, TSS2_Exception) else 0
        raise SecretRefused(step, code, f"{error}; {explanation}") from None


def _ecdsa_signature(raw: bytes) -> TPMT_SIGNATURE:
    """TPMT_SIGNATURE (Part 2, 11.3.4) for an ECDSA-SHA256 ``r || s`` (P1363) signature:
    sigAlg TPM_ALG_ECDSA, TPMS_SIGNATURE_ECDSA {hash SHA256, signatureR, signatureS}."""
    if len(raw) != 2 * P256_BYTES:
        raise ValueError(f"a P-256 signature is {2 * P256_BYTES} bytes r || s, got {len(raw)}")
    signature = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    signature.signature.ecdsa.hash = TPM2_ALG.SHA256
    signature.signature.ecdsa.signatureR = raw[:P256_BYTES]
    signature.signature.ecdsa.signatureS = raw[P256_BYTES:]
    return signature


def authorize_policy_signed(
    tpm: Tpm, session: ESYS_TR, channel_key: NodeKey, policy_ref: bytes
) -> None:
    """TPM2_PolicySigned on ``session``, authorized by ``channel_key`` signing in the TPM.

    aHash = SHA-256(nonceTPM || expiration 0 || empty cpHashA || ``policy_ref``) (Part 3,
    23.3.1) with the session's current nonceTPM, signed by the channel key loaded for the
    call; the loaded key is the authObject, so the TPM checks the signature with it and
    extends its Name into the policyDigest. Raises ``SecretRefused`` (step ``authorize``).
    """
    with _refused_as("authorize", "is the channel key this TPM's, and its file intact?"):
        nonce_tpm = bytes(tpm.esys.trsess_get_nonce_tpm(session))
        a_hash = policy_signed_digest(nonce_tpm, AUTHORIZATION_EXPIRATION, b"", policy_ref)
        with loaded_node_key(tpm, channel_key) as key:
            signature = _ecdsa_signature(sign_digest_with(tpm, key, a_hash))
            tpm.esys.policy_signed(
                key,
                session,
                signature,
                nonce_tpm=nonce_tpm,
                cp_hash_a=b"",
                policy_ref=policy_ref,
                expiration=AUTHORIZATION_EXPIRATION,
            )


@contextlib.contextmanager
def _unseal_policy_session(
    tpm: Tpm, sealed: SealedSecret, channel_key: NodeKey
) -> Iterator[ESYS_TR]:
    """A SHA-256 policy session that asserted PolicySigned(channel key, policyRef), then
    PolicyPCR(selection) with the TPM's current PCR values, then PolicyCommandCode(Unseal):
    it satisfies the sealed object's authPolicy exactly when the verifier sealed to this
    channel key and those PCRs hold the values it was sealed to."""
    with tpm_command("StartAuthSession"):
        session = tpm.esys.start_auth_session(
            tpm_key=ESYS_TR.NONE,
            bind=ESYS_TR.NONE,
            session_type=TPM2_SE.POLICY,
            symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
            auth_hash=TPM2_ALG.SHA256,
        )
    with tpm.transient(session):
        authorize_policy_signed(tpm, session, channel_key, sealed.policy_ref)
        pcrs, _ = TPML_PCR_SELECTION.unmarshal(sealed.selection.marshal())
        with tpm_command("PolicyPCR"):
            tpm.esys.policy_pcr(session, b"", pcrs)
        with tpm_command("PolicyCommandCode"):
            tpm.esys.policy_command_code(session, TPM2_CC(TPM_CC_UNSEAL))
        yield session


def unseal_secret(tpm: Tpm, ek_kind: KeyKind, sealed: SealedSecret, channel_key: NodeKey) -> bytes:
    """The payload sealed to this TPM's EK of ``ek_kind``, its current PCRs and
    ``channel_key`` (the node's channel key, which authorizes the unseal in the TPM).

    Raises ``SecretRefused`` when the TPM refuses to import, authorize or unseal, and
    ``SealingError`` when the payload does not decrypt under the unsealed key.
    """
    object_public, _ = TPM2B_PUBLIC.unmarshal(sealed.object_public)
    duplicate, _ = TPM2B_PRIVATE.unmarshal(sealed.duplicate)
    seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(sealed.encrypted_seed)
    # The policy session first (the channel key and its primary loaded only while it signs),
    # then the EK only while it imports and loads: at most two objects are loaded at a time,
    # within the three transient slots of a TPM without a resource manager (swtpm).
    with _unseal_policy_session(tpm, sealed, channel_key) as policy:
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
            _refused_as(
                "unseal",
                "the session does not satisfy the sealed policy: another channel key, "
                "or PCRs that no longer hold the attested values",
            ),
        ):
            unsealed = tpm.esys.unseal(handle, session1=policy)
    return open_payload(sealed, bytes(unsealed))
