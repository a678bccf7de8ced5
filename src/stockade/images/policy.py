"""The image trust policy: which keys may sign which image repositories.

A policy is a JSON document, distributed to nodes signed by the organization as a DSSE
envelope (``stockade.release.dsse``) of payload type
``application/vnd.stockade.trust-policy+json``::

    {"version": 2, "serial": 7, "expires": "2027-01-01T00:00:00Z",
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
- ``serial`` (format version 2) is the policy's own release number, an integer from 1 to
  ``MAX_SERIAL``: each policy the organization publishes has a higher serial than the one
  it replaces. A node refuses a policy older than the newest its boot has loaded, and the
  verifier can require a minimum (docs/images.md, "Rollback"). ``expires`` is when the
  policy stops being valid, RFC 3339 UTC to the second (``YYYY-MM-DDTHH:MM:SSZ``): a node
  refuses an expired policy. Both are in the signed payload.
- format version 1 (no ``serial``, no ``expires``) is still read, as serial 0 that never
  expires: never newer than any version 2 policy, so a node that has loaded one refuses it,
  and a verifier requiring any minimum serial refuses a node running under it.

The payload must be in canonical form (``stockade.strict_json``: sorted keys, no
whitespace, no duplicate keys; a valid policy is ASCII), so one policy has exactly one
digest; ``TrustPolicy.digest`` is that digest, which the node measures.
"""

from __future__ import annotations

import datetime
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
POLICY_VERSION: Final = 2
"""The format version ``sign_trust_policy`` is meant for: serial and expiry."""
LEGACY_VERSION: Final = 1
"""Still read, as serial 0 that never expires."""
MAX_SERIAL: Final = 2**53 - 1
"""The largest serial: an integer every JSON reader holds exactly."""
_EXPIRES = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}Z")
_FIELDS_BY_VERSION: Final = {
    LEGACY_VERSION: frozenset(("version", "keys", "scopes")),
    POLICY_VERSION: frozenset(("version", "serial", "expires", "keys", "scopes")),
}
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
    version: int = LEGACY_VERSION
    serial: int = 0
    """The policy's release number (0: a version 1 policy, older than every other)."""
    expires: datetime.datetime | None = None
    """When it stops being valid (UTC); ``None`` for a version 1 policy."""

    @property
    def digest(self) -> str:
        """``sha256:<hex>`` of ``document``: what the node measures."""
        return f"sha256:{hashlib.sha256(self.document).hexdigest()}"

    def expired(self, now: datetime.datetime) -> bool:
        """Whether the policy is no longer valid at ``now`` (aware): at or after ``expires``."""
        return self.expires is not None and now >= self.expires

    def check_current(self, now: datetime.datetime) -> None:
        """``ImageRejected(check="policy")`` if the policy has expired at ``now``."""
        if self.expired(now):
            assert self.expires is not None
            raise ImageRejected(
                "policy",
                f"trust policy {self.digest} (serial {self.serial}) expired at "
                f"{format_expires(self.expires)} (now {format_expires(now)})",
            )

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


def format_expires(moment: datetime.datetime) -> str:
    """``moment`` as a policy writes ``expires``: UTC, to the second, ``Z``."""
    return moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def parse_expires(value: object) -> datetime.datetime:
    """The instant an ``expires`` string names; ``ImageError`` unless it is exactly
    ``YYYY-MM-DDTHH:MM:SSZ`` and a real UTC time."""
    if not isinstance(value, str) or not _EXPIRES.fullmatch(value):
        raise ImageError(
            f"trust policy expires {value!r} is not an RFC 3339 UTC time YYYY-MM-DDTHH:MM:SSZ"
        )
    try:
        moment = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError as error:
        raise ImageError(f"trust policy expires {value!r}: {error}") from None
    return moment.replace(tzinfo=datetime.UTC)


def _serial(value: object) -> int:
    if type(value) is not int or not 1 <= value <= MAX_SERIAL:
        raise ImageError(f"trust policy serial {value!r} is not an integer from 1 to {MAX_SERIAL}")
    return value


def parse_trust_policy(raw: bytes) -> TrustPolicy:
    """Parse a policy document (the envelope's payload); ``ImageError`` names the field.

    It is not trusted by being parsed: ``load_trust_policy`` checks the signature first.
    """
    document = loads_canonical(raw, "trust policy", max_size=MAX_POLICY, error=ImageError)
    if not isinstance(document, dict):
        raise ImageError("trust policy is not a JSON object")
    version = document.get("version")
    if type(version) is not int or version not in _FIELDS_BY_VERSION:
        raise ImageError(f"trust policy version {version!r} is not 1 or 2")
    expected = _FIELDS_BY_VERSION[version]
    if set(document) != expected:
        raise ImageError(
            f"trust policy version {version} has fields {sorted(document)}, expected "
            f"{', '.join(sorted(expected))}"
        )
    serial = 0
    expires = None
    if version == POLICY_VERSION:
        serial = _serial(document["serial"])
        expires = parse_expires(document["expires"])
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
    return TrustPolicy(MappingProxyType(keys), tuple(scopes), raw, version, serial, expires)


def load_trust_policy(
    envelope: bytes,
    org_keys: Sequence[VerifyingKey],
    *,
    now: datetime.datetime | None = None,
) -> TrustPolicy:
    """The policy in a DSSE envelope signed by one of ``org_keys``.

    An envelope with no valid signature by an org key (unsigned, tampered, signed by
    someone else, or of another payload type) is ``ImageRejected(check="policy")``, and so
    is a policy that has expired at ``now`` when ``now`` is given (a node and
    ``stockade image verify`` give it; without it the caller checks
    ``TrustPolicy.check_current`` itself); bytes that are not an envelope, or a signed
    document that is not a policy, are ``ImageError``.
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
    policy = parse_trust_policy(verified.payload)
    if now is not None:
        policy.check_current(now)
    return policy


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
    """A JSON description: digest, version, serial, expiry, key names, scopes."""
    return {
        "digest": policy.digest,
        "version": policy.version,
        "serial": policy.serial,
        "expires": None if policy.expires is None else format_expires(policy.expires),
        "keys": sorted(policy.keys),
        "scopes": [{"prefix": scope.prefix, "keys": list(scope.keys)} for scope in policy.scopes],
    }
