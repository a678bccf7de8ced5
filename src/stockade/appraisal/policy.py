"""Appraisal policies: which signed releases, platforms and Secure Boot state a node must
show, which PCRs it quotes, and whether each check enforces or only warns.

``parse_policy`` reads the policy document of docs/verifier-protocol.md (already
decoded from YAML or JSON) and checks everything that can be checked without
evidence: every listed release manifest verifies against the listed signers and is
at or above ``min_security_version`` (a policy that lists a rollback release is
rejected, not trimmed), platforms follow the platform reference schema, and the
PCR selection is sha256 only. Pure: no I/O, no clock.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from stockade.appraisal.captured import (
    KIND as CAPTURED_KIND,
)
from stockade.appraisal.captured import (
    CapturedPolicy,
    parse_captured_policy,
)
from stockade.appraisal.executions import Forbidden, TrustPolicyRequirement
from stockade.appraisal.measured_boot import RELEASE_PCR, PlatformReference
from stockade.appraisal.reference import platform_from_json
from stockade.appraisal.uki import PCR_KERNEL_IMAGE, UkiReference
from stockade.errors import InputError, StockadeError
from stockade.evidence.algorithms import HASHES, Alg
from stockade.evidence.errors import EvidenceError
from stockade.evidence.execution import EXECUTION_PCR
from stockade.evidence.pcr_selection import BankSelection, PcrSelection
from stockade.images.errors import ImageError
from stockade.images.reference import parse_reference
from stockade.release.dsse import Envelope
from stockade.release.keys import VerifyingKey, load_verifying_key
from stockade.release.manifest import Manifest, manifest_digest, open_signed_manifest

# The PCRs a (platform, release) prediction covers (stockade.appraisal.reference.predict).
PREDICTED_PCRS = frozenset((*range(10), RELEASE_PCR))
ENFORCE_CHECKS = ("release", "secure_boot", "firmware", "clock")
_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,127}")
_SHA256_HEX = re.compile(r"[0-9a-f]{64}")
_IMAGE_DIGEST = re.compile(r"sha256:[0-9a-f]{64}")
_FIELDS = {
    "id", "pcrs", "result_validity_seconds", "releases", "platforms", "secure_boot", "enforce",
    "executions", "captured", "ukis",
}  # fmt: skip
# What a release predicts on a captured platform (``appraisal.captured_release``).
RELEASE_PCRS_ON_CAPTURED = frozenset((8, 9, RELEASE_PCR))
# The validity of a result under a bare captured document (``kind: captured``), which has no
# ``result_validity_seconds`` of its own: the agents' default attestation interval is 60 s.
CAPTURED_RESULT_VALIDITY_SECONDS = 300


# A signer rule alone (``releases: {signer, min_security_version}``, no manifests) accepts
# any release the signers signed at or above the minimum: the node sends its booted release's
# DSSE envelope with the evidence (``stockade agent run --release-envelope``), and appraisal
# verifies it, binds it to the manifest digest PCR 12 measured and predicts PCRs 4, 8, 9 and
# 12 from it (``appraisal.appraise``). On a captured platform releases are combined with the
# capture when the policy is applied, so there every accepted release is listed.
MANIFESTS_REQUIRED = (
    "is required with a captured platform: list the accepted releases' DSSE envelopes "
    "(`stockade policy add-release` adds one); a policy with platforms may leave manifests "
    "out and accept releases by signer from the envelope each node sends"
)


class PolicyInvalid(InputError):
    """A policy document that cannot be applied; ``field`` names where (e.g.
    ``releases.manifests[1]``)."""

    def __init__(self, field: str, detail: str) -> None:
        super().__init__(f"policy {field}: {detail}")
        self.field = field
        self.detail = detail


class Enforcement(StrEnum):
    ENFORCE = "enforce"  # a failed check is contraindicated (AR4SI 96)
    WARN = "warn"  # a failed check is a warning (AR4SI 32)


@dataclass(frozen=True)
class SecureBootPolicy:
    required: bool = False
    db_must_contain: tuple[str, ...] = ()  # lowercase hex SHA-256 of DER certificates
    dbx_must_contain: tuple[str, ...] = ()  # lowercase hex SHA-256 entries

    @property
    def has_requirements(self) -> bool:
        return self.required or bool(self.db_must_contain) or bool(self.dbx_must_contain)


@dataclass(frozen=True)
class Policy:
    id: str
    version: int
    pcrs: PcrSelection
    result_validity_seconds: int
    signers: tuple[VerifyingKey, ...]
    min_security_version: int
    # Listed releases, verified against signers, each >= min_security_version; empty for a
    # signer rule (any release the signers signed, from the envelope a node sends).
    releases: tuple[Manifest, ...]
    platforms: tuple[PlatformReference, ...]
    secure_boot: SecureBootPolicy
    enforce: Mapping[str, Enforcement]
    # Images a node must never have run, and the image trust policy its hook must enforce
    # (a node that ran one, or started a container under another policy, is contraindicated).
    forbidden: Forbidden = field(default_factory=Forbidden)
    # A golden machine's boot (``policy capture``/``merge``) instead of ``platforms``: the
    # boot is appraised event by event against it, with ``releases`` (optional then)
    # predicting PCRs 8, 9 and 12 and the kernel in PCR 4.
    captured: CapturedPolicy | None = None
    # UKI releases on the captured platform (``stockade release predict-uki --policy-entry``):
    # the UKI is PCR 4's last boot application and PCR 11 is appraised by value.
    ukis: tuple[UkiReference, ...] = ()

    @property
    def trust_policy(self) -> TrustPolicyRequirement:
        """The image trust policy a node's hook must enforce (``executions.trust_policy``)."""
        return self.forbidden.trust_policy

    @property
    def executions_quoted(self) -> bool:
        """Whether the execution PCR is quoted: then every attestation appraises the
        execution log against it."""
        return any(EXECUTION_PCR in bank.pcrs for bank in self.pcrs.banks)

    @property
    def ref(self) -> str:
        """What a result names as ``ear.appraisal-policy-id``."""
        return f"{self.id}@{self.version}"

    @property
    def pcr_indices(self) -> tuple[int, ...]:
        """The boot PCRs: every quoted PCR but the execution PCR, which the execution log
        (not the boot log or a reference value) accounts for."""
        return tuple(
            index for bank in self.pcrs.banks for index in bank.pcrs if index != EXECUTION_PCR
        )


def parse_policy(document: Mapping[str, Any], version: int) -> Policy:
    """A policy from its document; ``PolicyInvalid`` names the first field that is wrong."""
    if not isinstance(document, Mapping):
        raise PolicyInvalid("document", "is not a mapping (YAML or JSON object)")
    if document.get("kind") == CAPTURED_KIND:
        # A captured document applied as it is: its id, its PCRs, nothing else required.
        document = {
            "id": document.get("id"),
            "result_validity_seconds": CAPTURED_RESULT_VALIDITY_SECONDS,
            "captured": document,
        }
    unknown = sorted(set(document) - _FIELDS)
    if unknown:
        raise PolicyInvalid(unknown[0], f"unknown field (known: {', '.join(sorted(_FIELDS))})")
    if isinstance(version, bool) or not isinstance(version, int) or version < 1:
        raise PolicyInvalid("version", f"{version!r} is not a positive integer")
    policy_id = _required(document, "id")
    if not isinstance(policy_id, str) or not _ID.fullmatch(policy_id):
        raise PolicyInvalid("id", f"{policy_id!r} is not a name of letters, digits, '.', '_', '-'")
    validity = _positive_int(
        _required(document, "result_validity_seconds"), "result_validity_seconds"
    )
    captured = _captured(document["captured"]) if "captured" in document else None
    if captured is not None and "platforms" in document:
        raise PolicyInvalid(
            "platforms", "a policy holds either platform references or a captured platform"
        )
    if captured is not None and "releases" not in document:
        signers: tuple[VerifyingKey, ...] = ()
        min_security_version = 0
        manifests: tuple[Manifest, ...] = ()
    else:
        releases = _mapping(_required(document, "releases"), "releases")
        _no_unknown(
            releases, "releases", {"signer", "signers", "min_security_version", "manifests"}
        )
        signers = _release_signers(releases)
        min_security_version = _non_negative_int(
            _required(releases, "min_security_version", "releases"),
            "releases.min_security_version",
        )
        if "manifests" in releases:
            manifests = _manifests(releases["manifests"], signers, min_security_version)
        elif captured is not None:
            raise PolicyInvalid("releases.manifests", MANIFESTS_REQUIRED)
        else:
            manifests = ()  # a signer rule: each node's envelope names its release
    ukis = _ukis(document["ukis"]) if "ukis" in document else ()
    if captured is None:
        if ukis:
            raise PolicyInvalid("ukis", "UKI releases are appraised on a captured platform only")
        pcrs = _pcrs(_required(document, "pcrs"))
        platforms = _platforms(_required(document, "platforms"))
    else:
        pcrs = _captured_pcrs(
            document.get("pcrs"), captured, with_releases=bool(manifests), with_ukis=bool(ukis)
        )
        platforms = ()
    return Policy(
        id=policy_id,
        version=version,
        pcrs=pcrs,
        result_validity_seconds=validity,
        signers=signers,
        min_security_version=min_security_version,
        releases=manifests,
        platforms=platforms,
        secure_boot=_secure_boot(document.get("secure_boot", {})),
        enforce=_enforce(document.get("enforce", {})),
        forbidden=parse_executions(document.get("executions", {})),
        captured=captured,
        ukis=ukis,
    )


def _ukis(value: Any) -> tuple[UkiReference, ...]:
    """``ukis``: ``[{name, authenticode: <sha256 hex>, pcr11: <sha256 hex>}]``."""
    ukis = []
    for index, item in enumerate(_list(value, "ukis")):
        where = f"ukis[{index}]"
        entry = _mapping(item, where)
        _no_unknown(entry, where, {"name", "authenticode", "pcr11"})
        name = _required(entry, "name", where)
        if not isinstance(name, str) or not name:
            raise PolicyInvalid(f"{where}.name", "is not a non-empty string")
        digests = []
        for key in ("authenticode", "pcr11"):
            text = _required(entry, key, where)
            if not isinstance(text, str) or not _SHA256_HEX.fullmatch(text):
                raise PolicyInvalid(f"{where}.{key}", f"{text!r} is not a lowercase sha256 hex")
            digests.append(bytes.fromhex(text))
        ukis.append(UkiReference(name, digests[0], digests[1]))
    return tuple(ukis)


def _captured(value: Any) -> CapturedPolicy:
    if not isinstance(value, Mapping):
        raise PolicyInvalid("captured", "is not a captured policy document (a mapping)")
    try:
        captured = parse_captured_policy(dict(value))
    except StockadeError as error:
        raise PolicyInvalid("captured", str(error)) from None
    if EXECUTION_PCR in captured.pcrs:
        raise PolicyInvalid(
            f"captured.pcrs.{EXECUTION_PCR}",
            f"PCR {EXECUTION_PCR} is the execution PCR here (the container log accounts for "
            "it); remove it from the captured policy",
        )
    return captured


def _captured_pcrs(
    value: Any, captured: CapturedPolicy, *, with_releases: bool, with_ukis: bool
) -> PcrSelection:
    """The quoted PCRs of a captured policy: every PCR it holds (with releases, also 8, 9
    and 12, which they predict; with UKIs, 11), in its bank, plus the execution PCR if
    ``pcrs`` names it."""
    held = set(captured.pcrs)
    for given, field_name in ((with_releases, "releases"), (with_ukis, "ukis")):
        if given and captured.bank != Alg.SHA256:
            raise PolicyInvalid(
                field_name,
                f"{field_name} predict sha256 values; the captured policy is in "
                f"{HASHES[captured.bank].name}",
            )
    if with_releases:
        held |= RELEASE_PCRS_ON_CAPTURED
    if with_ukis:
        held.add(PCR_KERNEL_IMAGE)
    wanted = sorted(held)
    if value is not None:
        banks = _selected_banks(value)
        name = HASHES[captured.bank].name
        if len(banks) != 1 or banks[0].hash_alg != captured.bank:
            raise PolicyInvalid("pcrs", f"{value!r}: the captured policy is in the {name} bank")
        chosen = set(banks[0].pcrs)
        unheld = sorted(chosen - held - {EXECUTION_PCR})
        if unheld:
            raise PolicyInvalid(
                "pcrs", f"PCR {', '.join(map(str, unheld))} is not held by the captured policy"
            )
        unquoted = sorted(held - chosen)
        if unquoted:
            raise PolicyInvalid(
                "pcrs",
                f"PCR {', '.join(map(str, unquoted))} is held by the captured policy but not "
                "quoted (remove it from the captured policy to leave it unappraised)",
            )
        wanted = sorted(chosen)
    return PcrSelection((BankSelection(captured.bank, tuple(wanted)),))


def parse_executions(value: Any) -> Forbidden:
    """The ``executions`` section: ``{forbid: {digests: [sha256:...], references: [repo or
    repo:tag]}, trust_policy: {min_serial: N, digest: sha256:...}}``; ``PolicyInvalid``
    names the field that is wrong."""
    section = _mapping(value, "executions")
    _no_unknown(section, "executions", {"forbid", "trust_policy"})
    forbid = _mapping(section.get("forbid", {}), "executions.forbid")
    _no_unknown(forbid, "executions.forbid", {"digests", "references"})
    lists: dict[str, frozenset[str]] = {}
    for key in ("digests", "references"):
        items = forbid.get(key, [])
        field = f"executions.forbid.{key}"
        if not isinstance(items, list) or not all(isinstance(i, str) and i for i in items):
            raise PolicyInvalid(field, "must be a list of non-empty strings")
        if key == "digests":
            bad = [i for i in items if not _IMAGE_DIGEST.fullmatch(i)]
            if bad:
                raise PolicyInvalid(field, f"{bad[0]!r} is not sha256:<64 hex>")
            lists[key] = frozenset(items)
        else:
            # In normal form, as records are compared: `xmrig` and `index.docker.io/xmrig`
            # both forbid docker.io/library/xmrig.
            normal = set()
            for item in items:
                try:
                    normal.add(str(parse_reference(item)))
                except ImageError as error:
                    raise PolicyInvalid(field, str(error)) from None
            lists[key] = frozenset(normal)
    return Forbidden(
        lists["digests"], lists["references"], _trust_policy(section.get("trust_policy", {}))
    )


_forbidden = parse_executions  # the name tests and older callers use


def _trust_policy(value: Any) -> TrustPolicyRequirement:
    """``executions.trust_policy``: ``min_serial`` (a positive integer: the oldest image
    trust policy serial a node may load) and/or ``digest`` (``sha256:<hex>``: the one policy
    it must load); at least one."""
    section = _mapping(value, "executions.trust_policy")
    _no_unknown(section, "executions.trust_policy", {"min_serial", "digest"})
    if not section:
        return TrustPolicyRequirement()
    min_serial = section.get("min_serial")
    if min_serial is not None:
        min_serial = _positive_int(min_serial, "executions.trust_policy.min_serial")
    digest = section.get("digest")
    if digest is not None and (not isinstance(digest, str) or not _IMAGE_DIGEST.fullmatch(digest)):
        raise PolicyInvalid("executions.trust_policy.digest", f"{digest!r} is not sha256:<64 hex>")
    if min_serial is None and digest is None:
        raise PolicyInvalid("executions.trust_policy", "needs min_serial or digest")
    return TrustPolicyRequirement(min_serial, digest)


def _required(document: Mapping[str, Any], key: str, parent: str = "") -> Any:
    if key not in document:
        raise PolicyInvalid(f"{parent}.{key}" if parent else key, "is required")
    return document[key]


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise PolicyInvalid(where, "is not a mapping")
    return value


def _list(value: Any, where: str, *, non_empty: bool = True) -> list[Any]:
    if not isinstance(value, list | tuple):
        raise PolicyInvalid(where, "is not a list")
    if non_empty and not value:
        raise PolicyInvalid(where, "is empty")
    return list(value)


def _no_unknown(value: Mapping[str, Any], where: str, known: set[str]) -> None:
    unknown = sorted(set(value) - known)
    if unknown:
        raise PolicyInvalid(
            f"{where}.{unknown[0]}", f"unknown field (known: {', '.join(sorted(known))})"
        )


def _non_negative_int(value: Any, where: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise PolicyInvalid(where, f"{value!r} is not a non-negative integer")
    return value


def _positive_int(value: Any, where: str) -> int:
    if _non_negative_int(value, where) == 0:
        raise PolicyInvalid(where, "must be at least 1")
    return int(value)


def _selected_banks(value: Any) -> list[BankSelection]:
    """The banks ``pcrs`` (e.g. ``sha256:0,1,2,7``) selects PCRs in."""
    if not isinstance(value, str):
        raise PolicyInvalid("pcrs", f"{value!r} is not a selection like sha256:0,1,2,7")
    try:
        selection = PcrSelection.parse(value)
    except EvidenceError as error:
        raise PolicyInvalid("pcrs", str(error)) from None
    return [bank for bank in selection.banks if bank.pcrs]


def _pcrs(value: Any) -> PcrSelection:
    banks = _selected_banks(value)
    if len(banks) != 1 or banks[0].hash_alg != Alg.SHA256:
        raise PolicyInvalid(
            "pcrs",
            f"{value!r}: only the sha256 bank can be appraised (release manifests carry "
            "sha256 digests, so reference values exist for sha256 only)",
        )
    unpredicted = sorted(set(banks[0].pcrs) - PREDICTED_PCRS - {EXECUTION_PCR})
    if unpredicted:
        raise PolicyInvalid(
            "pcrs",
            f"PCR {', '.join(map(str, unpredicted))} has no reference value "
            f"(predicted: {', '.join(map(str, sorted(PREDICTED_PCRS)))})",
        )
    return PcrSelection(tuple(banks))


def _release_signers(releases: Mapping[str, Any]) -> tuple[VerifyingKey, ...]:
    """``releases.signers`` (a list of PEM public keys) or ``releases.signer`` (one)."""
    if "signer" in releases and "signers" in releases:
        raise PolicyInvalid(
            "releases.signer", "give signer (one key) or signers (a list), not both"
        )
    if "signer" in releases:
        pem = releases["signer"]
        if not isinstance(pem, str):
            raise PolicyInvalid("releases.signer", "is not a PEM string")
        try:
            return (load_verifying_key(pem.encode(), "releases.signer"),)
        except StockadeError as error:
            raise PolicyInvalid("releases.signer", str(error)) from None
    if "signers" not in releases:
        raise PolicyInvalid("releases.signers", "is required (or releases.signer: one key)")
    return _signers(releases["signers"])


def _signers(value: Any) -> tuple[VerifyingKey, ...]:
    signers = []
    for index, pem in enumerate(_list(value, "releases.signers")):
        where = f"releases.signers[{index}]"
        if not isinstance(pem, str):
            raise PolicyInvalid(where, "is not a PEM string")
        try:
            signers.append(load_verifying_key(pem.encode(), where))
        except StockadeError as error:
            raise PolicyInvalid(where, str(error)) from None
    return tuple(signers)


def _manifests(
    value: Any, signers: tuple[VerifyingKey, ...], min_security_version: int
) -> tuple[Manifest, ...]:
    manifests: list[Manifest] = []
    digests: set[bytes] = set()
    for index, item in enumerate(_list(value, "releases.manifests")):
        where = f"releases.manifests[{index}]"
        raw = json.dumps(dict(item)) if isinstance(item, Mapping) else item
        if not isinstance(raw, str):
            raise PolicyInvalid(where, "is neither a DSSE envelope object nor its JSON text")
        try:
            envelope = Envelope.from_bytes(raw.encode())
            manifest, _ = open_signed_manifest(
                envelope, signers, min_security_version=min_security_version
            )
        except StockadeError as error:
            raise PolicyInvalid(where, str(error)) from None
        digest = manifest_digest(manifest)
        if digest not in digests:  # the same release listed twice adds nothing
            digests.add(digest)
            manifests.append(manifest)
    return tuple(manifests)


def _platforms(value: Any) -> tuple[PlatformReference, ...]:
    platforms = []
    for index, raw in enumerate(_list(value, "platforms")):
        try:
            platforms.append(platform_from_json(raw))
        except StockadeError as error:
            raise PolicyInvalid(f"platforms[{index}]", str(error)) from None
    return tuple(platforms)


def _fingerprints(value: Any, where: str) -> tuple[str, ...]:
    found = []
    for index, text in enumerate(_list(value, where, non_empty=False)):
        if not isinstance(text, str) or not _SHA256_HEX.fullmatch(text.lower()):
            raise PolicyInvalid(f"{where}[{index}]", f"{text!r} is not a hex SHA-256 digest")
        found.append(text.lower())
    return tuple(found)


def _secure_boot(value: Any) -> SecureBootPolicy:
    fields = _mapping(value, "secure_boot")
    _no_unknown(fields, "secure_boot", {"required", "db_must_contain", "dbx_must_contain"})
    required = fields.get("required", False)
    if not isinstance(required, bool):
        raise PolicyInvalid("secure_boot.required", f"{required!r} is not true or false")
    return SecureBootPolicy(
        required=required,
        db_must_contain=_fingerprints(
            fields.get("db_must_contain", []), "secure_boot.db_must_contain"
        ),
        dbx_must_contain=_fingerprints(
            fields.get("dbx_must_contain", []), "secure_boot.dbx_must_contain"
        ),
    )


def _enforce(value: Any) -> Mapping[str, Enforcement]:
    fields = _mapping(value, "enforce")
    enforce = dict.fromkeys(ENFORCE_CHECKS, Enforcement.ENFORCE)
    for key, setting in fields.items():
        if key not in enforce:
            raise PolicyInvalid(
                f"enforce.{key}", f"unknown check (known: {', '.join(ENFORCE_CHECKS)})"
            )
        try:
            enforce[key] = Enforcement(setting)
        except ValueError:
            raise PolicyInvalid(f"enforce.{key}", f"{setting!r} is not enforce or warn") from None
    return enforce
