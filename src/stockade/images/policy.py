"""The image trust policy: which keys may sign which image repositories.

A policy is a JSON document, distributed to nodes signed by the organization as a DSSE
envelope (``stockade.release.dsse``) of payload type
``application/vnd.stockade.trust-policy+json``::

    {"version": 1,
     "keys": {"build": "-----BEGIN PUBLIC KEY-----\\n...", ...},
     "scopes": [{"prefix": "registry.example/org", "keys": ["build"]},
                {"prefix": "registry.example/org/legacy", "keys": []}]}

- ``keys`` names ECDSA P-256 public keys (PEM SubjectPublicKeyInfo), the keys cosign and
  ``skopeo --sign-by-sigstore-private-key`` sign with. Names are
  ``[a-z0-9][a-z0-9._-]{0,63}``.
- a scope's ``prefix`` is a registry domain (``registry.example``,
  ``127.0.0.1:5000``) optionally followed by path components, matched against the
  *normalised* repository (``stockade.images.reference``) on component boundaries:
  ``registry.example/org`` covers ``registry.example/org`` and
  ``registry.example/org/app``, not ``registry.example/organization``. Docker Hub's
  official images are under ``docker.io/library`` (``alpine`` is
  ``docker.io/library/alpine``). ``docker.io/NAME`` is refused as ambiguous: write
  ``docker.io/library/NAME`` for the official image ``NAME``, or ``docker.io/NAME/`` for
  the Docker Hub namespace ``NAME/...``. A prefix normalisation would change
  (``index.docker.io``) is refused too, so no scope silently covers nothing.
- the scope with the longest matching prefix decides, alone: its keys, and only they,
  may sign; a scope with no keys rejects its subtree. A repository no scope matches is
  rejected (there is no default).

The payload must be in canonical form (``stockade.strict_json``: sorted keys, no
whitespace, no duplicate keys; a valid policy is ASCII), so one policy has exactly one
digest; ``TrustPolicy.digest`` is that digest, which the node measures.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from types import MappingProxyType
from typing import Any, Final

from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.images.errors import ImageError, ImageRejected
from stockade.images.reference import check_scope, normalise_repository, scope_covers
from stockade.release import dsse
from stockade.release.errors import EnvelopeMalformed, SignatureInvalid
from stockade.release.keys import SigningKey, VerifyingKey
from stockade.strict_json import canonical_json, loads_canonical

PAYLOAD_TYPE: Final = "application/vnd.stockade.trust-policy+json"
POLICY_VERSION: Final = 1
KEY_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,63}")
MAX_POLICY: Final = 1024 * 1024
"""Policy payloads larger than this are refused before they are parsed."""


@dataclass(frozen=True)
class Scope:
    """Keys that may sign the repositories under ``prefix`` (none: reject them)."""

    prefix: str
    keys: tuple[str, ...]

    def covers(self, repository: str) -> bool:
        """Whether the normalised ``repository`` is under ``prefix``, component-wise."""
        return scope_covers(self.prefix, repository)


@dataclass(frozen=True, eq=False)
class TrustPolicy:
    keys: Mapping[str, ec.EllipticCurvePublicKey]
    """Key name -> P-256 public key."""
    scopes: tuple[Scope, ...]
    document: bytes
    """The canonical payload bytes the organization signed."""

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of ``document``: what the node measures."""
        return f"sha256:{hashlib.sha256(self.document).hexdigest()}"

    def scope_for(self, repository: str) -> Scope | None:
        """The scope with the longest prefix covering ``repository``, if any."""
        normal = normalise_repository(repository)
        matching = [scope for scope in self.scopes if scope.covers(normal)]
        return max(matching, key=lambda scope: len(scope.prefix)) if matching else None

    def keys_for(self, repository: str) -> tuple[str, ...]:
        """Names of the keys allowed to sign ``repository``; () means reject."""
        scope = self.scope_for(repository)
        return scope.keys if scope is not None else ()


def _check_prefix(prefix: object, where: str) -> str:
    if not isinstance(prefix, str):
        raise ImageError(f"trust policy {where}.prefix is not a string")
    try:
        return check_scope(prefix)
    except ImageError as error:
        raise ImageError(f"trust policy {where}.prefix: {error}") from None


def _public_key(pem: object, name: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(pem, str):
        raise ImageError(f"trust policy key '{name}' is not a PEM string")
    try:
        key = serialization.load_pem_public_key(pem.encode("ascii"))
    except (ValueError, TypeError, UnicodeEncodeError, UnsupportedAlgorithm) as error:
        raise ImageError(f"trust policy key '{name}' is not a PEM public key: {error}") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise ImageError(f"trust policy key '{name}' is not an ECDSA P-256 key")
    return key


def parse_trust_policy(raw: bytes) -> TrustPolicy:
    """Parse a policy document (the envelope's payload); ``ImageError`` names the field.

    It is not trusted by being parsed: ``load_trust_policy`` checks the signature first.
    """
    document = loads_canonical(raw, "trust policy", max_size=MAX_POLICY, error=ImageError)
    if not isinstance(document, dict):
        raise ImageError("trust policy is not a JSON object")
    if set(document) != {"version", "keys", "scopes"}:
        raise ImageError(
            f"trust policy has fields {sorted(document)}, expected version, keys, scopes"
        )
    if type(document["version"]) is not int or document["version"] != POLICY_VERSION:
        raise ImageError(f"trust policy version {document['version']!r} is not 1")
    entries = document["keys"]
    if not isinstance(entries, dict):
        raise ImageError("trust policy 'keys' is not an object")
    keys: dict[str, ec.EllipticCurvePublicKey] = {}
    for name, pem in entries.items():
        if not KEY_NAME.fullmatch(name):
            raise ImageError(f"trust policy key name '{name}' is not [a-z0-9][a-z0-9._-]*")
        keys[name] = _public_key(pem, name)
    scope_entries = document["scopes"]
    if not isinstance(scope_entries, list):
        raise ImageError("trust policy 'scopes' is not a list")
    scopes: list[Scope] = []
    for index, entry in enumerate(scope_entries):
        where = f"scopes[{index}]"
        if not isinstance(entry, dict) or set(entry) != {"prefix", "keys"}:
            raise ImageError(f"trust policy {where} is not an object of prefix and keys")
        prefix = _check_prefix(entry["prefix"], where)
        if any(scope.prefix == prefix for scope in scopes):
            raise ImageError(f"trust policy {where}.prefix '{prefix}' appears twice")
        names = entry["keys"]
        if not isinstance(names, list) or not all(isinstance(name, str) for name in names):
            raise ImageError(f"trust policy {where}.keys is not a list of key names")
        if len(set(names)) != len(names):
            raise ImageError(f"trust policy {where}.keys names a key twice")
        unknown = [name for name in names if name not in keys]
        if unknown:
            raise ImageError(f"trust policy {where} names undefined keys {unknown}")
        scopes.append(Scope(prefix, tuple(names)))
    return TrustPolicy(MappingProxyType(keys), tuple(scopes), raw)


def load_trust_policy(envelope: bytes, org_keys: Sequence[VerifyingKey]) -> TrustPolicy:
    """The policy in a DSSE envelope signed by one of ``org_keys``.

    An envelope with no valid signature by an org key (unsigned, tampered, signed by
    someone else, or of another payload type) is ``ImageRejected(check="policy")``;
    bytes that are not an envelope, or a signed document that is not a policy, are
    ``ImageError``.
    """
    try:
        parsed = dsse.Envelope.from_bytes(envelope)
    except EnvelopeMalformed as error:
        raise ImageError(f"trust policy envelope: {error}") from None
    if not org_keys:
        raise ImageRejected("policy", "no organization key to verify the trust policy with")
    try:
        verified = dsse.verify(parsed, PAYLOAD_TYPE, org_keys)
    except SignatureInvalid as error:
        raise ImageRejected("policy", f"trust policy not accepted: {error}") from None
    return parse_trust_policy(verified.payload)


def sign_trust_policy(document: Mapping[str, Any], org_key: SigningKey) -> bytes:
    """The DSSE envelope (bytes) of ``document`` in canonical form, signed by ``org_key``;
    ``ImageError`` if the document is not a valid policy."""
    try:
        payload = canonical_json(dict(document))
    except (TypeError, ValueError) as error:
        raise ImageError(f"trust policy cannot be written as canonical JSON: {error}") from None
    parse_trust_policy(payload)
    return dsse.sign(payload, PAYLOAD_TYPE, [org_key]).to_bytes()


def policy_summary(policy: TrustPolicy) -> dict[str, Any]:
    """A JSON description: digest, key names, scopes."""
    return {
        "digest": policy.digest,
        "keys": sorted(policy.keys),
        "scopes": [{"prefix": scope.prefix, "keys": list(scope.keys)} for scope in policy.scopes],
    }
