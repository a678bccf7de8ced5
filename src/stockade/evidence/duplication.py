"""Secrets sealed to one TPM and its PCRs: a software duplication blob for TPM2_Import.

The verifier (no TPM, no libtss2) builds what TPM2_Duplicate would have produced for an
object whose new parent is the node's Endorsement Key. The node's TPM imports it under
its EK (TPM2_Import, Part 3, 13.3), loads it, and releases the sealed data with
TPM2_Unseal only in a policy session that the node's channel key authorized
(TPM2_PolicySigned, Part 3, 23.3) and whose PCRs match the ones the verifier attested.
The channel key is a signing key in the same TPM that only the agent can load (its 0600
key file): another process with full access to the TPM, holding the blob, gets nothing.

Envelope: a TPM sealed data object holds at most 128 bytes, so the sealed data is a
fresh AES-256 key and the payload travels beside it, AES-256-GCM encrypted under that
key with the sealed object's Name as associated data.

The sealed object (TPM 2.0 Part 2, 12.2.4 TPMT_PUBLIC; 12.3.2.4 TPMT_SENSITIVE):

- type KEYEDHASH with scheme NULL (a sealed data object), nameAlg SHA-256;
- attributes adminWithPolicy | noDA; userWithAuth CLEAR (the USER role needs the
  policy, never the empty authValue); fixedTPM and fixedParent CLEAR, as TPM2_Import
  requires;
- authPolicy = PolicySigned(channel key Name, policyRef "stockade-unseal"), then
  PolicyPCR(selection, attested values), then PolicyCommandCode(Unseal);
- unique = SHA-256(seedValue || data), the binding TPM2_Load checks.

The duplication blob has the outer wrapper only (no inner wrapper: symmetricAlg NULL at
import), TPM 2.0 Part 1 (rev. 1.59), 23.3.2.3 "Outer Duplication Wrapper" (21.3.2.3 in
rev. 1.83) with the protections of the "Protected Storage" clause: a seed shared with
the EK (Annex B.10.3 RSA-OAEP with label "DUPLICATE\\0"; Annex C.6.4 ECDH + KDFe with
label "DUPLICATE"), symKey = KDFa(nameAlg, seed, "STORAGE", Name, "", parent key bits),
dupSensitive = AES-CFB(symKey, IV 0) of TPM2B_SENSITIVE, and
outerHMAC = HMAC(KDFa(nameAlg, seed, "INTEGRITY", "", "", digest bits),
dupSensitive || Name). TPM2B_PRIVATE = TPM2B_DIGEST(outerHMAC) || dupSensitive.
"""

from __future__ import annotations

import base64
import binascii
import os
from collections.abc import Mapping
from dataclasses import dataclass
from functools import cached_property

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from stockade.evidence.algorithms import Alg, HashAlgorithm, hash_algorithm
from stockade.evidence.credential import encrypt_seed, outer_wrap, symmetric_key_bits
from stockade.evidence.errors import CredentialError, EvidenceError
from stockade.evidence.execution import EXECUTION_PCR
from stockade.evidence.marshal import Reader, Writer, tpm2b
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.policy_digest import UNSEAL_POLICY_REF, unseal_policy
from stockade.evidence.public import (
    KeyedHashParameters,
    ObjectAttributes,
    Scheme,
    TpmPublic,
)

DUPLICATE = b"DUPLICATE"
MAGIC = b"STKSEAL"
VERSION = 2  # 2: the unseal policy starts with PolicySigned by the node's channel key
UNBOUND_VERSION = 1  # sealed to EK and PCRs only: any process using the TPM could unseal it

SEALED_KEY_BYTES = 32  # the AES-256 key the TPM seals
NONCE_BYTES = 12
TAG_BYTES = 16
MAX_PAYLOAD_BYTES = 64 * 1024

SEALED_NAME_HASH: HashAlgorithm = hash_algorithm(Alg.SHA256)
SEALED_OBJECT_ATTRIBUTES = int(ObjectAttributes.ADMIN_WITH_POLICY | ObjectAttributes.NO_DA)
# TPM2B_SENSITIVE of the sealed object: size, sensitiveType, empty authValue,
# seedValue (one SHA-256 digest) and the sealed key.
_SENSITIVE_BYTES = 2 + 2 + 2 + (2 + SEALED_NAME_HASH.digest_size) + (2 + SEALED_KEY_BYTES)
_MAX_SEED_BYTES = 512  # RSA-4096 OAEP ciphertext; a P-521 point is 136 bytes
_PCR_SELECT_BYTES = 3  # the 24 PCRs of a PC Client TPM
# PCRs 16 and up are resettable by software (16 debug, 23 application: any locality-0
# process), or reset and extended by a DRTM launch (17-22) (TCG PC Client Platform TPM
# Profile, PCR attributes): a policy over them constrains nothing.
FIRST_RESETTABLE_PCR = 16
_JSON_FIELDS = (
    "object_public",
    "duplicate",
    "encrypted_seed",
    "selection",
    "policy_ref",
    "ciphertext",
)
_UNBOUND = (
    "it was sealed without the node's channel-key authorization (a verifier before "
    "PolicySigned binding) and is no longer accepted: ask the verifier for it again"
)


class SealingError(EvidenceError):
    """A secret cannot be sealed, or a sealed secret is malformed or does not open."""


@dataclass(frozen=True)
class SealedSecret:
    """A secret sealed to one TPM's EK and a set of its PCR values.

    ``object_public`` is the TPM2B_PUBLIC of the sealed data object, ``duplicate`` its
    TPM2B_PRIVATE duplication blob, ``encrypted_seed`` the TPM2B_ENCRYPTED_SECRET for
    the EK (each with its size prefix, ready for TPM2_Import); ``selection`` the PCRs
    the unseal policy covers; ``policy_ref`` the policyRef the node's channel key signs
    for TPM2_PolicySigned (always ``UNSEAL_POLICY_REF``: the node signs for nothing else);
    ``ciphertext`` the payload as nonce || AES-GCM ct || tag. The authorizing key is
    implicit: the channel key of the node the secret was released to.

    Construction checks the shape of every field and raises ``SealingError``, so a
    ``SealedSecret`` in hand is always well formed (not necessarily authentic: the TPM
    checks that at TPM2_Import, the AES-GCM tag in ``open_payload``).

    Binary form (``marshal``), all integers big-endian::

        magic        7 bytes  b"STKSEAL"
        version      UINT8    2  (version 1, without PolicySigned, is refused)
        object_public         TPM2B_PUBLIC
        duplicate             TPM2B_PRIVATE
        encrypted_seed        TPM2B_ENCRYPTED_SECRET
        selection    UINT16 size, then a TPML_PCR_SELECTION of that size
        policy_ref            TPM2B_NONCE (UINT16 size, then the policyRef)
        ciphertext   UINT32 size, then nonce || ct || tag
    """

    object_public: bytes
    duplicate: bytes
    encrypted_seed: bytes
    selection: PcrSelection
    ciphertext: bytes
    policy_ref: bytes = UNSEAL_POLICY_REF

    def __post_init__(self) -> None:
        for field in ("object_public", "duplicate", "encrypted_seed", "ciphertext", "policy_ref"):
            if not isinstance(getattr(self, field), bytes):
                raise SealingError(f"sealed secret {field} must be bytes")
        if self.policy_ref != UNSEAL_POLICY_REF:
            raise SealingError(
                f"sealed secret policyRef {self.policy_ref!r} is not {UNSEAL_POLICY_REF!r}: "
                "the node's channel key signs unseal authorizations for nothing else"
            )
        _check_selection(self.selection)
        _check_sealed_public(self.public)
        _check_tpm2b(self.duplicate, "TPM2B_PRIVATE")
        inner = Reader(self.duplicate[2:], "TPM2B_PRIVATE")
        try:
            outer_hmac = inner.tpm2b("outerHMAC")
        except EvidenceError as error:
            raise SealingError(f"sealed secret duplicate: {error}") from None
        if not 20 <= len(outer_hmac) <= 64:
            raise SealingError(f"sealed secret outerHMAC has {len(outer_hmac)} bytes")
        if len(inner.remaining()) != _SENSITIVE_BYTES:
            raise SealingError(
                f"sealed secret duplicate does not hold a {_SENSITIVE_BYTES}-byte "
                "encrypted sensitive area of a sealed key"
            )
        _check_tpm2b(self.encrypted_seed, "TPM2B_ENCRYPTED_SECRET")
        if not 0 < len(self.encrypted_seed) - 2 <= _MAX_SEED_BYTES:
            raise SealingError(
                f"sealed secret encrypted seed has {len(self.encrypted_seed) - 2} bytes"
            )
        payload_bytes = len(self.ciphertext) - NONCE_BYTES - TAG_BYTES
        if not 0 < payload_bytes <= MAX_PAYLOAD_BYTES:
            raise SealingError(
                f"sealed secret ciphertext of {len(self.ciphertext)} bytes cannot hold "
                f"a nonce, 1..{MAX_PAYLOAD_BYTES} payload bytes and a tag"
            )

    @cached_property
    def public(self) -> TpmPublic:
        """The sealed object's public area."""
        try:
            return TpmPublic.unmarshal_tpm2b(self.object_public)
        except EvidenceError as error:
            raise SealingError(f"sealed secret object_public: {error}") from None

    def name(self) -> bytes:
        """The sealed object's Name (the AES-GCM associated data)."""
        return self.public.name()

    # -- binary form ---------------------------------------------------------

    def marshal(self) -> bytes:
        return (
            Writer()
            .raw(MAGIC)
            .u8(VERSION)
            .raw(self.object_public)
            .raw(self.duplicate)
            .raw(self.encrypted_seed)
            .tpm2b(self.selection.marshal())
            .tpm2b(self.policy_ref)
            .u32(len(self.ciphertext))
            .raw(self.ciphertext)
            .bytes()
        )

    @classmethod
    def unmarshal(cls, data: bytes) -> SealedSecret:
        """Parse ``marshal()``'s output; anything else raises ``SealingError``."""
        reader = Reader(data, "sealed secret")
        try:
            if reader.take(len(MAGIC), "magic") != MAGIC:
                raise SealingError("not a sealed secret (bad magic)")
            version = reader.u8("version")
            if version == UNBOUND_VERSION:
                raise SealingError(f"sealed secret version {version}: {_UNBOUND}")
            if version != VERSION:
                raise SealingError(f"sealed secret version {version} is not {VERSION}")
            object_public = tpm2b(reader.tpm2b("TPM2B_PUBLIC"))
            duplicate = tpm2b(reader.tpm2b("TPM2B_PRIVATE"))
            encrypted_seed = tpm2b(reader.tpm2b("TPM2B_ENCRYPTED_SECRET"))
            selection = PcrSelection.unmarshal(reader.tpm2b("TPML_PCR_SELECTION"))
            policy_ref = reader.tpm2b("policyRef")
            size = reader.u32("ciphertext size")
            if size > NONCE_BYTES + MAX_PAYLOAD_BYTES + TAG_BYTES:
                raise SealingError(f"sealed secret ciphertext of {size} bytes is too large")
            ciphertext = reader.take(size, "ciphertext")
            reader.expect_end()
        except SealingError:
            raise
        except EvidenceError as error:
            raise SealingError(str(error)) from None
        return cls(object_public, duplicate, encrypted_seed, selection, ciphertext, policy_ref)

    # -- JSON form (HTTP API) ----------------------------------------------------

    def to_json(self) -> dict[str, str]:
        """Binary fields as standard base64, the selection as ``sha256:0,1,2``."""
        return {
            "object_public": base64.b64encode(self.object_public).decode(),
            "duplicate": base64.b64encode(self.duplicate).decode(),
            "encrypted_seed": base64.b64encode(self.encrypted_seed).decode(),
            "selection": str(self.selection),
            "policy_ref": base64.b64encode(self.policy_ref).decode(),
            "ciphertext": base64.b64encode(self.ciphertext).decode(),
        }

    @classmethod
    def from_json(cls, document: Mapping[str, object]) -> SealedSecret:
        """Parse ``to_json()``'s output: exactly its keys, every value a string."""
        if not isinstance(document, Mapping):
            raise SealingError("sealed secret JSON must be an object")
        keys = set(document)
        if keys == set(_JSON_FIELDS) - {"policy_ref"}:
            raise SealingError(f"sealed secret JSON without policy_ref: {_UNBOUND}")
        if keys != set(_JSON_FIELDS):
            missing = sorted(set(_JSON_FIELDS) - keys)
            unknown = sorted(str(key) for key in keys - set(_JSON_FIELDS))
            raise SealingError(f"sealed secret JSON: missing {missing}, unknown {unknown}")
        values: dict[str, str] = {}
        for key in _JSON_FIELDS:
            value = document[key]
            if not isinstance(value, str):
                raise SealingError(f"sealed secret JSON field {key!r} must be a string")
            values[key] = value

        def decoded(key: str) -> bytes:
            try:
                return base64.b64decode(values[key].encode("ascii"), validate=True)
            except (binascii.Error, UnicodeEncodeError):
                raise SealingError(f"sealed secret JSON field {key!r} is not base64") from None

        try:
            selection = PcrSelection.parse(values["selection"])
        except EvidenceError as error:
            raise SealingError(f"sealed secret JSON selection: {error}") from None
        return cls(
            decoded("object_public"),
            decoded("duplicate"),
            decoded("encrypted_seed"),
            selection,
            decoded("ciphertext"),
            decoded("policy_ref"),
        )


def unsealable_pcr(index: int) -> str | None:
    """Why a secret must never be sealed to PCR ``index`` (None: it may be). The execution
    PCR moves at every container start; PCRs 16 and up can be reset after boot."""
    if index == EXECUTION_PCR:
        return f"PCR {index} is the execution PCR (extended at every container start)"
    if index >= FIRST_RESETTABLE_PCR:
        return (
            f"PCR {index} is resettable (PCRs {FIRST_RESETTABLE_PCR}-23: debug, DRTM, application)"
        )
    return None


def _check_tpm2b(data: bytes, what: str) -> None:
    if len(data) < 2 or int.from_bytes(data[:2], "big") != len(data) - 2:
        raise SealingError(f"sealed secret {what} is not one size-prefixed {what}")


def _check_selection(selection: PcrSelection) -> None:
    """One canonical form, so the binary and JSON forms give the same policy."""
    if not isinstance(selection, PcrSelection):
        raise SealingError("the PCR selection must be a PcrSelection")
    if not selection.banks or any(not bank.pcrs for bank in selection.banks):
        raise SealingError(
            f"PCR selection '{selection}' must name at least one PCR in every bank it lists"
        )
    if any(bank.size_of_select != _PCR_SELECT_BYTES for bank in selection.banks):
        raise SealingError(f"PCR selection '{selection}' must use {_PCR_SELECT_BYTES}-byte maps")
    try:
        canonical = PcrSelection.parse(str(selection))
    except EvidenceError as error:
        raise SealingError(f"PCR selection '{selection}': {error}") from None
    if canonical != selection:
        raise SealingError(f"PCR selection '{selection}' is not in canonical form")


def _check_sealed_public(public: TpmPublic) -> None:
    problems = []
    if public.type != Alg.KEYEDHASH:
        problems.append(f"type 0x{public.type:04x} is not KEYEDHASH")
    if public.name_alg != SEALED_NAME_HASH.alg:
        problems.append(f"nameAlg 0x{public.name_alg:04x} is not SHA-256")
    if public.attributes != SEALED_OBJECT_ATTRIBUTES:
        problems.append(
            f"attributes 0x{public.attributes:08x} are not 0x{SEALED_OBJECT_ATTRIBUTES:08x} "
            "(adminWithPolicy|noDA)"
        )
    if len(public.auth_policy) != SEALED_NAME_HASH.digest_size:
        problems.append(f"authPolicy has {len(public.auth_policy)} bytes")
    if public.parameters != KeyedHashParameters(Scheme(Alg.NULL)):
        problems.append("the keyed-hash scheme is not NULL")
    if not isinstance(public.unique, bytes) or len(public.unique) != SEALED_NAME_HASH.digest_size:
        problems.append("unique is not one SHA-256 digest")
    if problems:
        raise SealingError(f"not a sealed data object: {'; '.join(problems)}")


def _parent_key_bits(ek: TpmPublic) -> int:
    try:
        if not (ek.has(ObjectAttributes.RESTRICTED) and ek.has(ObjectAttributes.DECRYPT)):
            raise SealingError("the EK must be a restricted decryption (storage) key")
        return symmetric_key_bits(ek)
    except CredentialError as error:
        raise SealingError(f"cannot seal to this EK: {error.detail}") from None


def seal_secret(
    ek: TpmPublic,
    payload: bytes,
    selection: PcrSelection,
    pcrs: PcrValues,
    *,
    authorizer_name: bytes,
) -> SealedSecret:
    """Seal ``payload`` to the TPM holding ``ek``, released only to a policy session that
    the key named ``authorizer_name`` authorized (TPM2_PolicySigned over the session's
    nonceTPM; the node's channel key, ``TpmPublic.name()`` of its TPM2B_PUBLIC) and only
    while the PCRs in ``selection`` hold the values ``pcrs`` gives them."""
    if not isinstance(payload, bytes) or not 0 < len(payload) <= MAX_PAYLOAD_BYTES:
        size = len(payload) if isinstance(payload, bytes) else "non-bytes"
        raise SealingError(f"a sealed payload must be 1..{MAX_PAYLOAD_BYTES} bytes, got {size}")
    _check_selection(selection)
    name_hash = ek.name_hash
    key_bits = _parent_key_bits(ek)
    try:
        policy = unseal_policy(selection, pcrs, authorizer_name)
    except EvidenceError as error:
        raise SealingError(f"cannot compute the unseal policy: {error}") from None

    data_key = AESGCM.generate_key(bit_length=SEALED_KEY_BYTES * 8)
    obfuscation = os.urandom(SEALED_NAME_HASH.digest_size)
    public = TpmPublic(
        type=Alg.KEYEDHASH,
        name_alg=SEALED_NAME_HASH.alg,
        attributes=SEALED_OBJECT_ATTRIBUTES,
        auth_policy=policy,
        parameters=KeyedHashParameters(Scheme(Alg.NULL)),
        unique=SEALED_NAME_HASH.digest(obfuscation + data_key),
    )
    name = public.name()
    sensitive = (
        Writer()
        .u16(Alg.KEYEDHASH)  # sensitiveType
        .tpm2b(b"")  # authValue: unused, the USER role needs the policy
        .tpm2b(obfuscation)  # seedValue
        .tpm2b(data_key)  # sensitive.bits
        .bytes()
    )

    try:
        seed, encrypted_seed = encrypt_seed(ek, name_hash, DUPLICATE)
    except CredentialError as error:
        raise SealingError(f"cannot seal to this EK: {error.detail}") from None
    duplicate = tpm2b(outer_wrap(name_hash, seed, key_bits, name, sensitive))

    nonce = os.urandom(NONCE_BYTES)
    ciphertext = nonce + AESGCM(data_key).encrypt(nonce, payload, name)
    return SealedSecret(
        public.marshal_tpm2b(),
        duplicate,
        tpm2b(encrypted_seed),
        selection,
        ciphertext,
        UNSEAL_POLICY_REF,
    )


def open_payload(sealed: SealedSecret, unsealed_key: bytes) -> bytes:
    """Decrypt the payload with the key TPM2_Unseal released; ``SealingError`` if the key
    or the ciphertext is not the one sealed."""
    if not isinstance(unsealed_key, bytes) or len(unsealed_key) != SEALED_KEY_BYTES:
        raise SealingError(f"the unsealed key must be {SEALED_KEY_BYTES} bytes")
    nonce, body = sealed.ciphertext[:NONCE_BYTES], sealed.ciphertext[NONCE_BYTES:]
    try:
        return AESGCM(unsealed_key).decrypt(nonce, body, sealed.name())
    except InvalidTag:
        raise SealingError(
            "the sealed payload does not decrypt under the unsealed key "
            "(ciphertext or sealed object altered)"
        ) from None
