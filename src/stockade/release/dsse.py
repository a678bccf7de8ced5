"""DSSE v1 envelopes (secure-systems-lab/dsse, "envelope.md" and "protocol.md").

Signatures cover PAE(payloadType, payload) =
``"DSSEv1" SP LEN(type) SP type SP LEN(body) SP body``, LEN being the ASCII decimal byte
length. Keys are ECDSA P-256 (SHA-256, DER signature) or Ed25519; a key id is the hex
SHA-256 of the public key's DER SubjectPublicKeyInfo (``stockade.release.keys.keyid``).
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stockade.release.errors import EnvelopeMalformed, SignatureInvalid
from stockade.release.keys import SigningKey, VerifyingKey, keyid
from stockade.strict_json import loads_strict

# The largest envelope read: a release manifest or a trust policy, and its signatures.
MAX_ENVELOPE = 4 * 1024 * 1024


def pae(payload_type: str, payload: bytes) -> bytes:
    """Pre-Authentication Encoding: what each signature signs."""
    type_bytes = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(type_bytes), type_bytes, len(payload), payload)


@dataclass(frozen=True)
class EnvelopeSignature:
    keyid: str
    sig: bytes


@dataclass(frozen=True)
class Envelope:
    payload: bytes
    payload_type: str
    signatures: tuple[EnvelopeSignature, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "payload": base64.b64encode(self.payload).decode("ascii"),
            "payloadType": self.payload_type,
            "signatures": [
                {"keyid": s.keyid, "sig": base64.b64encode(s.sig).decode("ascii")}
                for s in self.signatures
            ],
        }

    def to_bytes(self) -> bytes:
        return json.dumps(self.to_json(), indent=2).encode("utf-8") + b"\n"

    @classmethod
    def from_bytes(cls, raw: bytes) -> Envelope:
        """Parse an envelope; ``EnvelopeMalformed`` names what is wrong."""
        document = loads_strict(
            raw, "DSSE envelope", max_size=MAX_ENVELOPE, error=EnvelopeMalformed
        )
        if not isinstance(document, dict):
            raise EnvelopeMalformed("DSSE envelope is not a JSON object")
        payload = _b64(_field(document, "payload", str), "payload")
        payload_type = _field(document, "payloadType", str)
        entries = _field(document, "signatures", list)
        signatures = []
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise EnvelopeMalformed(f"signatures[{index}] is not a JSON object")
            key = entry.get("keyid", "")
            if not isinstance(key, str):
                raise EnvelopeMalformed(f"signatures[{index}].keyid is not a string")
            sig = _b64(
                _field(entry, "sig", str, f"signatures[{index}]."), f"signatures[{index}].sig"
            )
            signatures.append(EnvelopeSignature(key, sig))
        return cls(payload, payload_type, tuple(signatures))


def _field(document: dict[str, Any], name: str, kind: type, prefix: str = "") -> Any:
    if name not in document:
        raise EnvelopeMalformed(f"DSSE envelope has no '{prefix}{name}'")
    value = document[name]
    if not isinstance(value, kind):
        raise EnvelopeMalformed(f"DSSE envelope '{prefix}{name}' is not a {kind.__name__}")
    return value


def _b64(text: str, what: str) -> bytes:
    """Standard or URL-safe base64, padded or not, as the DSSE spec allows; nothing else."""
    normalized = text.replace("-", "+").replace("_", "/")
    normalized += "=" * (-len(normalized) % 4)
    try:
        return base64.b64decode(normalized, validate=True)
    except (binascii.Error, ValueError):
        raise EnvelopeMalformed(f"DSSE envelope '{what}' is not base64") from None


def _sign_one(key: SigningKey, message: bytes) -> bytes:
    if isinstance(key, ed25519.Ed25519PrivateKey):
        return key.sign(message)
    return key.sign(message, ec.ECDSA(hashes.SHA256()))


def _valid(key: VerifyingKey, signature: bytes, message: bytes) -> bool:
    try:
        if isinstance(key, ed25519.Ed25519PublicKey):
            key.verify(signature, message)
        else:
            key.verify(signature, message, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def sign(payload: bytes, payload_type: str, keys: Iterable[SigningKey]) -> Envelope:
    message = pae(payload_type, payload)
    signatures = tuple(
        EnvelopeSignature(keyid(key.public_key()), _sign_one(key, message)) for key in keys
    )
    if not signatures:
        raise EnvelopeMalformed("a DSSE envelope needs at least one signing key")
    return Envelope(payload, payload_type, signatures)


@dataclass(frozen=True)
class VerifiedPayload:
    payload: bytes
    payload_type: str
    keyids: tuple[str, ...]
    """The distinct trusted keys whose signatures verified, sorted."""


def verify(
    envelope: Envelope,
    payload_type: str,
    trusted: Iterable[VerifyingKey],
    threshold: int = 1,
) -> VerifiedPayload:
    """The payload, once at least ``threshold`` distinct trusted keys have validly signed it
    under ``payload_type``.

    A signature whose key id names no trusted key is ignored; one without a key id is tried
    against every trusted key. Several signatures by one key count once.
    """
    if threshold < 1:
        raise EnvelopeMalformed(f"signature threshold {threshold} is below 1")
    keys = {keyid(key): key for key in trusted}
    message = pae(envelope.payload_type, envelope.payload)
    verified: set[str] = set()
    failed: list[str] = []
    for signature in envelope.signatures:
        candidates = [signature.keyid] if signature.keyid else list(keys)
        for candidate in candidates:
            key = keys.get(candidate)
            if key is None or candidate in verified:
                continue
            if _valid(key, signature.sig, message):
                verified.add(candidate)
                break
            if signature.keyid:
                failed.append(candidate)
    if len(verified) < threshold:
        detail = f"; bad signature by trusted key {failed[0][:16]}" if failed else ""
        raise SignatureInvalid(
            f"DSSE envelope has {len(verified)} valid signature(s) from trusted keys, "
            f"{threshold} required{detail}"
        )
    if envelope.payload_type != payload_type:
        raise SignatureInvalid(
            f"DSSE payloadType is '{envelope.payload_type}', expected '{payload_type}'"
        )
    return VerifiedPayload(envelope.payload, envelope.payload_type, tuple(sorted(verified)))
