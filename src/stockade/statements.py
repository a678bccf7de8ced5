"""The verifier's signed statements, checked as a relying party does: against keys the
relying party was given (pinned), never against keys fetched on the call being checked.

Four kinds, each a JWT (ES256, ``kid`` = sha256 of the key's SubjectPublicKeyInfo) told apart
by its claims and ``typ`` so that one kind never verifies as another:

- an **EAR** (draft-fv-rats-ear; ``eat_profile``): one attestation result of one node;
- a **node status** (``typ: stockade-node-status+jwt``): a node's current standing
  (:mod:`stockade.cluster.status`);
- a **fleet trust** statement (``typ: stockade-fleet-trust+jwt``): every node's standing at
  one moment, for the Kubernetes components;
- a **secret release** (``typ: stockade-secret-release+jwt``): this sealed blob is secret
  NAME version N for node ID, sealed to these PCRs.

A relying party acts only on what a statement says *about the subject it asked about*:
each verifier below takes the node id (and result id) expected and refuses any other.

Pure apart from :meth:`VerifierKeys.load` (reads one file): no network, ``now`` is given.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import jwt
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.errors import InputError, VerificationFailed
from stockade.strict_json import loads_strict

# The EAR profile (draft-fv-rats-ear) every Stockade EAR declares.
EAR_PROFILE = "tag:github.com,2023:veraison/ear"
ISSUER = "stockade-verifier"
FLEET_TRUST_TYPE = "stockade-fleet-trust+jwt"
SECRET_RELEASE_TYPE = "stockade-secret-release+jwt"
MAX_KEYS_FILE = 256 * 1024
# A statement issued up to this far in the future of the relying party's clock is accepted.
CLOCK_SKEW_SECONDS = 60

_PEM_BLOCK = re.compile(rb"-----BEGIN PUBLIC KEY-----.+?-----END PUBLIC KEY-----", re.DOTALL)


class KeysUnusable(InputError):
    """The pinned verifier key file cannot be read as keys."""


class StatementInvalid(VerificationFailed):
    """A statement does not verify, or does not say what was asked about."""


def spki_kid(public_key: ec.EllipticCurvePublicKey) -> str:
    """A key's ``kid``: sha256 of its DER SubjectPublicKeyInfo, hex."""
    spki = public_key.public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return hashlib.sha256(spki).hexdigest()


def _p256(key: object, what: str) -> ec.EllipticCurvePublicKey:
    if not isinstance(key, ec.EllipticCurvePublicKey) or not isinstance(key.curve, ec.SECP256R1):
        raise KeysUnusable(f"{what} is not an ECDSA P-256 public key")
    return key


@dataclass(frozen=True)
class VerifierKeys:
    """The verifier keys a relying party trusts, by ``kid``."""

    keys: Mapping[str, ec.EllipticCurvePublicKey]

    @classmethod
    def of(cls, *public_keys: ec.EllipticCurvePublicKey) -> VerifierKeys:
        return cls({spki_kid(key): key for key in public_keys})

    @classmethod
    def parse(cls, data: bytes, what: str) -> VerifierKeys:
        """PEM public keys (one or more blocks) or a JWK set (``GET /v1/keys`` saved by the
        operator from a channel they trust)."""
        keys: list[ec.EllipticCurvePublicKey] = []
        if data.lstrip().startswith(b"{"):
            document = loads_strict(data, what, max_size=MAX_KEYS_FILE, error=KeysUnusable)
            entries = document.get("keys") if isinstance(document, dict) else None
            if not isinstance(entries, list):
                raise KeysUnusable(f"{what} is JSON but not a JWK set ('keys': [...])")
            for index, entry in enumerate(entries):
                try:
                    key = jwt.PyJWK.from_dict(entry).key
                except (jwt.PyJWTError, TypeError, ValueError) as error:
                    raise KeysUnusable(f"{what} keys[{index}] is not a JWK: {error}") from None
                keys.append(_p256(key, f"{what} keys[{index}]"))
        else:
            for index, block in enumerate(_PEM_BLOCK.findall(data)):
                try:
                    key = serialization.load_pem_public_key(block)
                except (ValueError, UnsupportedAlgorithm) as error:
                    raise KeysUnusable(f"{what} PEM block {index} is unusable: {error}") from None
                keys.append(_p256(key, f"{what} PEM block {index}"))
        if not keys:
            raise KeysUnusable(f"{what} holds no public key (PEM 'PUBLIC KEY' or a JWK set)")
        return cls.of(*keys)

    @classmethod
    def load(cls, path: Path) -> VerifierKeys:
        try:
            with path.open("rb") as handle:
                data = handle.read(MAX_KEYS_FILE + 1)
        except OSError as error:
            raise KeysUnusable(f"cannot read the verifier key file {path}: {error}") from None
        return cls.parse(data, f"verifier key file {path}")

    def pem(self) -> bytes:
        return b"".join(
            key.public_bytes(
                serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
            )
            for key in self.keys.values()
        )

    def verify(
        self,
        token: str,
        what: str,
        *,
        typ: str | None,
        now: datetime | None,
        required: tuple[str, ...] = ("iat", "exp"),
    ) -> dict[str, Any]:
        """The claims of ``token`` once its signature verifies under a pinned key, its ``typ``
        header is ``typ`` (None: no ``typ`` other than plain ``JWT``), and, unless ``now`` is
        None (history: expiry not checked), ``iat - skew <= now < exp``."""
        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as error:
            raise StatementInvalid(f"{what} is not a JWT: {error}") from None
        if header.get("alg") != "ES256":
            raise StatementInvalid(f"{what} is signed with {header.get('alg')!r}, not ES256")
        found = header.get("typ")
        if (typ is None and found not in (None, "JWT")) or (typ is not None and found != typ):
            raise StatementInvalid(f"{what} has type {found!r}, expected {typ or 'JWT'!r}")
        kid = header.get("kid")
        key = self.keys.get(kid) if isinstance(kid, str) else None
        if key is None:
            raise StatementInvalid(
                f"{what} is signed by key {kid!r}, which is not a pinned verifier key "
                f"(pinned: {', '.join(k[:16] for k in self.keys) or 'none'})"
            )
        try:
            claims: dict[str, Any] = jwt.decode(
                token,
                key,
                algorithms=["ES256"],
                options={
                    "verify_exp": False,
                    "verify_iat": False,
                    "verify_nbf": False,
                    "require": list(required),
                },
            )
        except jwt.PyJWTError as error:
            raise StatementInvalid(f"{what} does not verify: {error}") from None
        for name in required:
            if name in ("iat", "exp") and (
                not isinstance(claims[name], int) or isinstance(claims[name], bool)
            ):
                raise StatementInvalid(f"{what}: {name} is not an integer")
        if now is not None:
            moment = now.timestamp()
            if not claims["iat"] - CLOCK_SKEW_SECONDS <= moment < claims["exp"]:
                raise StatementInvalid(
                    f"{what} is valid {_time(claims['iat'])} to {_time(claims['exp'])}, "
                    f"not at {now.astimezone(UTC).isoformat()}"
                )
        return claims


def _time(seconds: int) -> str:
    return datetime.fromtimestamp(seconds, UTC).isoformat()


def _claim(claims: Mapping[str, Any], name: str, kind: type | tuple[type, ...], what: str) -> Any:
    value = claims.get(name)
    if not isinstance(value, kind) or (kind is int and isinstance(value, bool)):
        raise StatementInvalid(f"{what}: claim {name!r} is missing or malformed")
    return value


# -- EARs ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class VerifiedEar:
    """What a pinned-key EAR says about one node's one result."""

    node_id: str
    node_name: str
    result_id: str
    status: str
    trust_vector: Mapping[str, int]
    reasons: tuple[str, ...]
    policy: str
    issued_at: datetime
    expires_at: datetime
    reset_count: int | None
    restart_count: int | None
    ak_sha256: str | None  # the AK that signed the result's quote (absent: quote unverified)
    quote_sha256: str | None  # the TPMS_ATTEST appraised
    claims: Mapping[str, Any]
    # The release the boot matched (``stockade.release``: name, version, security_version,
    # digest), None when it matched none or the EAR predates the claim.
    release: Mapping[str, Any] | None = None


def verify_ear(
    token: str,
    keys: VerifierKeys,
    *,
    node: str,
    result_id: str | None = None,
    now: datetime | None = None,
) -> VerifiedEar:
    """The EAR's content, once it verifies under a pinned key and is about ``node`` (its id,
    or its name: names are never UUIDs, so the two cannot be confused) and result
    ``result_id`` when given. ``now`` None: a historical result (expiry not checked); else
    it must be valid at ``now``."""
    what = f"EAR for node {node}"
    claims = keys.verify(token, what, typ=None, now=now)
    if claims.get("eat_profile") != EAR_PROFILE:
        raise StatementInvalid(f"{what} is not an EAR (eat_profile {claims.get('eat_profile')!r})")
    submods = _claim(claims, "submods", dict, what)
    if len(submods) != 1:
        raise StatementInvalid(f"{what} has {len(submods)} submodules, expected one node")
    ((name, submod),) = submods.items()
    if not isinstance(submod, dict):
        raise StatementInvalid(f"{what}: submodule {name!r} is not an object")
    said_node = _claim(submod, "stockade.node-id", str, what)
    if node not in (said_node, name):
        raise StatementInvalid(f"{what} is about node {name} ({said_node}), not {node}")
    said_result = _claim(submod, "stockade.result-id", str, what)
    if result_id is not None and said_result != result_id:
        raise StatementInvalid(f"{what} is result {said_result}, not {result_id}")
    boot = submod.get("stockade.boot") or {}
    evidence = submod.get("stockade.evidence") or {}
    vector = _claim(submod, "ear.trustworthiness-vector", dict, what)
    reasons = _claim(submod, "stockade.reasons", list, what)
    return VerifiedEar(
        node_id=said_node,
        node_name=str(name),
        result_id=said_result,
        status=_claim(submod, "ear.status", str, what),
        trust_vector={str(k): int(v) for k, v in vector.items() if isinstance(v, int)},
        reasons=tuple(str(reason) for reason in reasons),
        policy=str(submod.get("ear.appraisal-policy-id", "")),
        issued_at=datetime.fromtimestamp(claims["iat"], UTC),
        expires_at=datetime.fromtimestamp(claims["exp"], UTC),
        reset_count=_optional_int(boot, "reset_count"),
        restart_count=_optional_int(boot, "restart_count"),
        ak_sha256=_optional_str(evidence, "ak-sha256"),
        quote_sha256=_optional_str(evidence, "quote-sha256"),
        claims=claims,
        release=_release(submod.get("stockade.release"), what),
    )


def _release(document: object, what: str) -> Mapping[str, Any] | None:
    if document is None:
        return None
    if not isinstance(document, dict) or not isinstance(document.get("name"), str):
        raise StatementInvalid(f"{what}: stockade.release is not a release")
    return {
        "name": document["name"],
        "version": _optional_str(document, "version"),
        "security_version": _optional_int(document, "security_version"),
        "digest": _optional_str(document, "digest"),
    }


def _optional_int(document: object, name: str) -> int | None:
    value = document.get(name) if isinstance(document, dict) else None
    return value if isinstance(value, int) and not isinstance(value, bool) else None


def _optional_str(document: object, name: str) -> str | None:
    value = document.get(name) if isinstance(document, dict) else None
    return value if isinstance(value, str) else None


def evidence_claims(ak_public: bytes, quote: bytes) -> dict[str, str]:
    """The EAR's ``stockade.evidence``: which AK (its TPM2B_PUBLIC) signed which quote (its
    TPMS_ATTEST), so an auditor holding both can tie them to the node the EAR names."""
    return {
        "ak-sha256": hashlib.sha256(ak_public).hexdigest(),
        "quote-sha256": hashlib.sha256(quote).hexdigest(),
    }


# -- fleet trust ---------------------------------------------------------------------------


@dataclass(frozen=True)
class FleetEntry:
    node_id: str
    name: str
    state: str
    trusted_until: datetime | None
    result_id: str | None


@dataclass(frozen=True)
class FleetTrust:
    issued_at: datetime
    expires_at: datetime
    nodes: tuple[FleetEntry, ...]


def fleet_trust_claims(
    entries: list[FleetEntry], issued_at: datetime, expires_at: datetime
) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "stockade.nodes": [
            [
                entry.node_id,
                entry.name,
                entry.state,
                int(entry.trusted_until.timestamp()) if entry.trusted_until else None,
                entry.result_id,
            ]
            for entry in entries
        ],
    }


def verify_fleet_trust(token: str, keys: VerifierKeys, now: datetime) -> FleetTrust:
    """Every node's standing as the verifier signed it, valid at ``now``."""
    what = "fleet trust statement"
    claims = keys.verify(token, what, typ=FLEET_TRUST_TYPE, now=now)
    if claims.get("iss") != ISSUER:
        raise StatementInvalid(f"{what} is not issued by a Stockade verifier")
    rows = _claim(claims, "stockade.nodes", list, what)
    nodes = []
    for index, row in enumerate(rows):
        if not (isinstance(row, list) and len(row) == 5):
            raise StatementInvalid(f"{what}: node {index} is malformed")
        node_id, name, state, until, result_id = row
        if not (
            isinstance(node_id, str)
            and isinstance(name, str)
            and isinstance(state, str)
            and (until is None or (isinstance(until, int) and not isinstance(until, bool)))
            and (result_id is None or isinstance(result_id, str))
        ):
            raise StatementInvalid(f"{what}: node {index} is malformed")
        nodes.append(
            FleetEntry(
                node_id,
                name,
                state,
                datetime.fromtimestamp(until, UTC) if until is not None else None,
                result_id,
            )
        )
    return FleetTrust(
        datetime.fromtimestamp(claims["iat"], UTC),
        datetime.fromtimestamp(claims["exp"], UTC),
        tuple(nodes),
    )


# -- secret releases -----------------------------------------------------------------------


@dataclass(frozen=True)
class SecretRelease:
    node_id: str
    name: str
    version: int
    sealed_sha256: str
    result_id: str
    pcr_selection: Mapping[str, tuple[int, ...]]


def secret_release_claims(
    release: SecretRelease, issued_at: datetime, expires_at: datetime
) -> dict[str, Any]:
    return {
        "iss": ISSUER,
        "sub": release.node_id,
        "iat": int(issued_at.timestamp()),
        "exp": int(expires_at.timestamp()),
        "stockade.secret-name": release.name,
        "stockade.secret-version": release.version,
        "stockade.sealed-sha256": release.sealed_sha256,
        "stockade.result-id": release.result_id,
        "stockade.pcr-selection": {
            bank: list(pcrs) for bank, pcrs in sorted(release.pcr_selection.items())
        },
    }


def verify_secret_release(
    token: str,
    keys: VerifierKeys,
    *,
    node_id: str,
    name: str,
    sealed: bytes,
    now: datetime,
) -> SecretRelease:
    """The release statement for secret ``name`` of node ``node_id``, bound to exactly the
    ``sealed`` bytes received (the marshalled blob)."""
    what = f"release of secret {name!r} to node {node_id}"
    claims = keys.verify(token, what, typ=SECRET_RELEASE_TYPE, now=now)
    if claims.get("iss") != ISSUER:
        raise StatementInvalid(f"{what} is not issued by a Stockade verifier")
    if claims.get("sub") != node_id:
        raise StatementInvalid(f"{what} is addressed to node {claims.get('sub')!r}")
    if claims.get("stockade.secret-name") != name:
        raise StatementInvalid(f"{what} is for secret {claims.get('stockade.secret-name')!r}")
    digest = hashlib.sha256(sealed).hexdigest()
    if claims.get("stockade.sealed-sha256") != digest:
        raise StatementInvalid(f"{what} does not name the sealed blob received")
    version = _claim(claims, "stockade.secret-version", int, what)
    selection_claim = _claim(claims, "stockade.pcr-selection", dict, what)
    selection: dict[str, tuple[int, ...]] = {}
    for bank, pcrs in selection_claim.items():
        if not isinstance(pcrs, list) or not all(
            isinstance(pcr, int) and not isinstance(pcr, bool) for pcr in pcrs
        ):
            raise StatementInvalid(f"{what}: PCR selection of {bank!r} is malformed")
        selection[str(bank)] = tuple(pcrs)
    return SecretRelease(
        node_id=node_id,
        name=name,
        version=version,
        sealed_sha256=digest,
        result_id=_claim(claims, "stockade.result-id", str, what),
        pcr_selection=selection,
    )
