"""Appraisal: evidence from one node, under one policy, to an Attestation Result.

The verifier's hot path. ``build_references`` predicts, once per policy version,
the sha256 PCR values and event log of every (platform, accepted release) pair;
``appraise`` then verifies the quote with the node's AK (nonce, PCR selection,
signature), checks the TPM clock against the node's last accepted quote, replays
the event log against the quoted PCRs and looks the quoted PCRs up among the
references. A good node costs one signature verification, one log parse and
replay and one dictionary lookup; only a node that matches no reference pays for
explaining why (diffing its log against the closest reference, decoding its
Secure Boot state).

The result is an AR4SI trust vector (draft-ietf-rats-ar4si, section 2.3): per
claim 0 no claim, 2 affirming, 32 warning, 96 contraindicated, the most severe
finding winning; the status is the most severe claim. Which claim a PCR speaks
for, and which ``enforce`` setting governs it:

=========  ===========================================  ===========
PCR        claim                                        enforce
=========  ===========================================  ===========
0, 2       hardware (firmware code)                     firmware
1, 3, 5, 6 configuration (firmware settings, GPT)       firmware
7          configuration (Secure Boot)                  secure_boot
14         configuration (shim's MOK lists)             secure_boot
4, 8, 9    executables (boot applications, GRUB)        release
11         executables (a Unified Kernel Image)         release
12         executables (release), file-system (/usr)    release
=========  ===========================================  ===========

Under a policy with a captured platform (``Policy.captured``) the boot is appraised event
by event (``appraisal.captured.appraise_captured``) against the capture, or against the
capture combined with each accepted release (``appraisal.captured_release``); each finding
fails the claim of its PCR, and the result carries the findings (``Appraisal.findings``:
PCR, event, expected and found) as well as their reasons.

A failed quote is instance-identity 96 (the evidence is not from this node's TPM
now); a clock that went back is instance-identity 96 or 32 (``enforce.clock``).
``appraise`` never raises for bad evidence: every failure is a contraindicated
result with reasons (fail closed).
"""

from __future__ import annotations

import hashlib
import hmac
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from enum import StrEnum
from typing import Any

from stockade.appraisal.captured import (
    CapturedAppraisal,
    CapturedPolicy,
    CapturedStatus,
    Finding,
    appraise_captured,
    replay_failure,
)
from stockade.appraisal.captured_release import (
    ReleaseNotCombinable,
    captured_with_release,
    captured_with_uki,
    release_label,
)
from stockade.appraisal.measured_boot import (
    RELEASE_EVENT_PREFIX,
    RELEASE_PCR,
    USR_VERITY_EVENT_PREFIX,
    MeasurementInputError,
    PlatformReference,
    ReleaseReference,
)
from stockade.appraisal.policy import Enforcement, Policy, PolicyInvalid, SecureBootPolicy
from stockade.appraisal.reference import predict
from stockade.appraisal.release_reference import (
    kernel_authority_from_manifest,
    release_reference_from_manifest,
)
from stockade.appraisal.uki import PCR_KERNEL_IMAGE, RUNNING_PHASE
from stockade.errors import StockadeError
from stockade.evidence.algorithms import Alg
from stockade.evidence.attest import ClockInfo
from stockade.evidence.clock import check_clock_progression, is_new_boot
from stockade.evidence.errors import ClockRollback, EventLogMismatch, EvidenceError, QuoteInvalid
from stockade.evidence.event_data import TextData, UefiVariableData, decode
from stockade.evidence.event_digests import data_is_measured
from stockade.evidence.eventlog import Event, EventLog, EventType, parse_event_log
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic
from stockade.evidence.quote import verify_quote
from stockade.evidence.replay import VerifiedEventLog, verify_log
from stockade.evidence.secureboot import secure_boot_state
from stockade.evidence.signature import Signature
from stockade.lru import LruCache
from stockade.release.dsse import Envelope
from stockade.release.errors import SignatureInvalid
from stockade.release.manifest import Manifest, manifest_digest, open_signed_manifest

# AR4SI trustworthiness claim values (draft-ietf-rats-ar4si, 2.3.3 - 2.3.4).
NO_CLAIM = 0
AFFIRMING = 2
WARNING = 32
CONTRAINDICATED = 96

INSTANCE_IDENTITY = "instance-identity"
CONFIGURATION = "configuration"
EXECUTABLES = "executables"
HARDWARE = "hardware"
FILE_SYSTEM = "file-system"
CLAIMS = (INSTANCE_IDENTITY, CONFIGURATION, EXECUTABLES, HARDWARE, FILE_SYSTEM)

_PCR_CLAIMS: Mapping[int, tuple[str, ...]] = {
    0: (HARDWARE,), 1: (CONFIGURATION,), 2: (HARDWARE,), 3: (CONFIGURATION,),
    4: (EXECUTABLES,), 5: (CONFIGURATION,), 6: (CONFIGURATION,), 7: (CONFIGURATION,),
    8: (EXECUTABLES,), 9: (EXECUTABLES,), 11: (EXECUTABLES,),
    RELEASE_PCR: (EXECUTABLES, FILE_SYSTEM), 14: (CONFIGURATION,),
}  # fmt: skip
_PCR_CHECK: Mapping[int, str] = {
    0: "firmware", 1: "firmware", 2: "firmware", 3: "firmware", 4: "release", 5: "firmware",
    6: "firmware", 7: "secure_boot", 8: "release", 9: "release", 11: "release",
    RELEASE_PCR: "release", 14: "secure_boot",
}  # fmt: skip
_DIGEST_SHOWN = 16  # hex characters of a digest in a reason
# The largest release envelope a node may send with its evidence (a manifest of a few KiB
# and its signatures); the verifier refuses a larger field before appraisal.
MAX_RELEASE_ENVELOPE = 64 * 1024
# Predictions kept per policy version for releases accepted by signer (a node's envelope):
# a fleet boots a few releases at a time.
SIGNED_PREDICTIONS_KEPT = 16
_MEASURED_DIGEST = re.compile(r" sha256:([0-9a-f]{64})$")


class Status(StrEnum):
    """``ear.status`` (draft-fv-rats-ear, 3.1)."""

    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"


@dataclass(frozen=True)
class ReferenceEntry:
    """One (platform, accepted release) pair: its predicted sha256 PCRs and event log."""

    platform_index: int
    platform_description: str
    release_name: str
    release_version: str
    security_version: int
    manifest_digest: bytes
    values: PcrValues  # sha256 bank, the policy's PCRs
    log: EventLog  # predicted, sha256 bank only
    labels: tuple[str, ...]  # what each predicted event is, by event number
    # The policy's Secure Boot requirements checked against this boot. A node whose
    # PCRs equal this entry's measured the same PCR 7 events (the extend chain binds the
    # digests, and each PCR 7 variable's digest binds its data), so this holds for it.
    secure_boot_failures: tuple[str, ...]

    @property
    def release(self) -> str:
        return f"{self.release_name} {self.release_version}"

    def describe(self) -> str:
        return f"{self.release} on {self.platform_description}"


class SignedPredictions(LruCache[tuple[str, bytes], "ReferenceSet"]):
    """Reference entries predicted for releases accepted by signer (the envelope a node sends
    with its evidence), by (policy version, manifest digest); the least recently used is
    dropped past ``SIGNED_PREDICTIONS_KEPT``. Shared by the verifier's worker threads."""

    def __init__(self, kept: int = SIGNED_PREDICTIONS_KEPT) -> None:
        super().__init__(kept)


@dataclass(frozen=True)
class ReferenceSet:
    """Every reference of one policy version, indexed by the PCR values it predicts."""

    policy_ref: str
    pcrs: tuple[int, ...]  # sha256 PCR indices, in policy order
    entries: tuple[ReferenceEntry, ...]
    skipped: tuple[str, ...] = ()  # pairs without references (a release a platform refuses)
    _index: Mapping[tuple[bytes, ...], int] = field(
        init=False, repr=False, compare=False, default_factory=dict
    )
    # Releases a node's signed envelope named (``appraise``), predicted once per release.
    signed: SignedPredictions = field(repr=False, compare=False, default_factory=SignedPredictions)

    def __post_init__(self) -> None:
        index: dict[tuple[bytes, ...], int] = {}
        for number, entry in enumerate(self.entries):
            index.setdefault(self.key(entry.values), number)
        object.__setattr__(self, "_index", index)

    def key(self, values: PcrValues) -> tuple[bytes, ...]:
        bank = values.banks.get(Alg.SHA256, {})
        return tuple(bank.get(index, b"") for index in self.pcrs)

    def lookup(self, values: PcrValues) -> ReferenceEntry | None:
        number = self._index.get(self.key(values))
        return None if number is None else self.entries[number]


@dataclass(frozen=True)
class NodeView:
    """What the verifier knows about the node: its enrolled AK and its last accepted clock."""

    node_id: str
    name: str
    ak_public: TpmPublic
    last_clock: ClockInfo | None


@dataclass(frozen=True)
class Evidence:
    nonce: bytes
    quote: bytes  # TPMS_ATTEST as signed
    signature: bytes  # TPMT_SIGNATURE
    pcrs: PcrValues
    event_log: bytes  # binary_bios_measurements
    # The booted release's DSSE envelope (``stockade agent run --release-envelope``): a
    # release the policy does not list is accepted when it verifies under the policy's
    # signers, is at or above its minimum and is the release measured into PCR 12.
    release_envelope: bytes | None = None


@dataclass(frozen=True)
class Appraisal:
    status: Status
    trust_vector: Mapping[str, int]
    reasons: tuple[str, ...]
    clock: ClockInfo | None  # from the verified quote; None when the quote failed
    new_boot: bool
    policy_ref: str
    matched_release: str | None  # "name version" of the reference the PCRs equal
    matched_reference: ReferenceEntry | None = None
    # Event-level findings of a captured-platform appraisal, as
    # ``appraisal.captured.Finding.to_json`` gives them (PCR, reason, event).
    findings: tuple[Mapping[str, Any], ...] = ()


@dataclass(frozen=True)
class CapturedCandidate:
    """One boot a captured-platform policy accepts: the capture itself (``release`` None),
    or the capture booting one accepted release or UKI (then ``pcr11``: the UKI's PCR 11
    once the system runs, compared by value)."""

    release: str | None
    policy: CapturedPolicy
    pcr11: bytes | None = None


@dataclass(frozen=True)
class CapturedReferences:
    """What a policy with a captured platform is appraised against: the capture itself, or
    the capture combined with each accepted release and UKI."""

    policy_ref: str
    pcrs: tuple[int, ...]  # the quoted boot PCRs, in the captured policy's bank
    candidates: tuple[CapturedCandidate, ...]
    skipped: tuple[str, ...] = ()

    @property
    def replayed_pcrs(self) -> tuple[int, ...]:
        """The PCRs the log must replay to: all but a UKI's PCR 11 (systemd-pcrphase extends
        it without logging)."""
        if any(candidate.pcr11 is not None for candidate in self.candidates):
            return tuple(index for index in self.pcrs if index != PCR_KERNEL_IMAGE)
        return self.pcrs


# -- references ------------------------------------------------------------------------


def build_references(policy: Policy) -> ReferenceSet | CapturedReferences:
    """Predict every (platform, release) pair of ``policy``. A release a platform would
    refuse is skipped (noted in ``skipped``); ``PolicyInvalid`` when no pair remains. A
    policy that lists no release (a signer rule: releases come with the evidence) has none."""
    if policy.captured is not None:
        return _captured_references(policy, policy.captured)
    entries, skipped = _predict_entries(policy, policy.releases)
    if not entries and policy.releases:
        raise PolicyInvalid(
            "releases",
            "no (platform, release) pair has reference values: " + "; ".join(skipped),
        )
    return ReferenceSet(policy.ref, policy.pcr_indices, tuple(entries), tuple(skipped))


def _predict_entries(
    policy: Policy, manifests: Iterable[Manifest]
) -> tuple[list[ReferenceEntry], list[str]]:
    """The reference entries of each (platform, release) pair, and the pairs skipped."""
    pcrs = policy.pcr_indices
    entries: list[ReferenceEntry] = []
    skipped: list[str] = []
    manifests = tuple(manifests)
    for platform_index, platform in enumerate(policy.platforms):
        description = _describe_platform(platform_index, platform)
        for manifest in manifests:
            try:
                release = release_reference_from_manifest(manifest)
                authority = kernel_authority_from_manifest(platform, manifest)
                prediction = predict(platform, release, (Alg.SHA256,), authority)
            except MeasurementInputError as error:
                skipped.append(f"{manifest.name} {manifest.version} on {description}: {error}")
                continue
            values = prediction.values.restricted_to(policy.pcrs)
            verified = verify_log(prediction.log, values, pcrs)
            entries.append(
                ReferenceEntry(
                    platform_index=platform_index,
                    platform_description=description,
                    release_name=manifest.name,
                    release_version=manifest.version,
                    security_version=manifest.security_version,
                    manifest_digest=manifest_digest(manifest),
                    values=values,
                    log=prediction.log,
                    labels=_labels(platform, release, prediction.log),
                    secure_boot_failures=tuple(_secure_boot_failures(verified, policy.secure_boot)),
                )
            )
    return entries, skipped


def _captured_references(policy: Policy, captured: CapturedPolicy) -> CapturedReferences:
    pcrs = policy.pcr_indices
    if not policy.releases and not policy.ukis:
        return CapturedReferences(policy.ref, pcrs, (CapturedCandidate(None, captured),))
    candidates: list[CapturedCandidate] = []
    skipped: list[str] = []
    for manifest in policy.releases:
        label = release_label(manifest)
        try:
            candidates.append(CapturedCandidate(label, captured_with_release(captured, manifest)))
        except ReleaseNotCombinable as error:
            skipped.append(f"{label}: {error}")
    for uki in policy.ukis:
        try:
            candidates.append(
                CapturedCandidate(uki.name, captured_with_uki(captured, uki), uki.pcr11)
            )
        except ReleaseNotCombinable as error:
            skipped.append(f"{uki.name}: {error}")
    if not candidates:
        raise PolicyInvalid(
            "releases", "no release combines with the captured platform: " + "; ".join(skipped)
        )
    return CapturedReferences(policy.ref, pcrs, tuple(candidates), tuple(skipped))


def _describe_platform(index: int, platform: PlatformReference) -> str:
    secure_boot = "on" if platform.secure_boot else "off"
    return f"platform {index} ({platform.crtm_version}, Secure Boot {secure_boot})"


def _text(event: Event) -> str | None:
    decoded = decode(event)
    return decoded.text if isinstance(decoded, TextData) else None


def _labels(
    platform: PlatformReference, release: ReleaseReference, log: EventLog
) -> tuple[str, ...]:
    """A name for each predicted event, for reasons: "kernel of stockade-os 1.0.0"."""
    of_release = f"{release.name} {release.version}"
    applications = [stage.name for stage in platform.stages] + ["kernel"]
    loaded = 0
    labels = []
    for event in log.events:
        kind = event.type
        next_application = applications[min(loaded, len(applications) - 1)]
        if kind == EventType.EV_EFI_BOOT_SERVICES_APPLICATION:
            label = next_application
            loaded += 1
        elif kind == EventType.EV_EFI_VARIABLE_AUTHORITY:
            label = f"db entry authorising {next_application}"
        elif kind in (EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, EventType.EV_EFI_VARIABLE_BOOT):
            decoded = decode(event)
            name = decoded.unicode_name if isinstance(decoded, UefiVariableData) else "?"
            label = f"UEFI variable {name}"
        elif kind == EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2:
            label = "firmware volume"
        elif kind == EventType.EV_S_CRTM_VERSION:
            label = f"CRTM version {platform.crtm_version}"
        elif kind == EventType.EV_SEPARATOR:
            label = "separator"
        elif kind == EventType.EV_EFI_GPT_EVENT:
            label = "GPT"
        elif event.pcr == RELEASE_PCR:
            text = _text(event) or ""
            label = (
                "/usr dm-verity root hash"
                if text.startswith(USR_VERITY_EVENT_PREFIX)
                else ("release manifest")
            )
        else:
            label = _text(event) or event.type_name
        if event.pcr in (4, 8, 9, RELEASE_PCR) and kind != EventType.EV_EFI_ACTION:
            label = f"{label} of {of_release}"
        labels.append(label)
    return tuple(labels)


def _secure_boot_failures(verified: VerifiedEventLog, required: SecureBootPolicy) -> list[str]:
    if not required.has_requirements:
        return []
    try:
        state = secure_boot_state(verified)
    except EvidenceError as error:
        return [f"Secure Boot state unknown: {error}"]
    failures = []
    if required.required and not state.enabled:
        failures.append("Secure Boot is disabled (the SecureBoot variable in PCR 7 is 0)")
    if required.db_must_contain:
        db = state.keys.get("db")
        certificates = {
            hashlib.sha256(entry.data).hexdigest()
            for signature_list in (db.signature_lists if db else ())
            if signature_list.is_x509
            for entry in signature_list.entries
        }
        failures += [
            f"db lacks the required certificate sha256:{fingerprint}"
            for fingerprint in required.db_must_contain
            if fingerprint not in certificates
        ]
    if required.dbx_must_contain:
        dbx = state.keys.get("dbx")
        revoked = {digest.hex() for digest in (dbx.sha256_digests() if dbx else ())}
        failures += [
            f"dbx lacks the required revocation sha256:{digest}"
            for digest in required.dbx_must_contain
            if digest not in revoked
        ]
    return failures


# -- appraisal ---------------------------------------------------------------------------


class _Findings:
    def __init__(self, enforce: Mapping[str, Enforcement]) -> None:
        self.enforce = enforce
        self.vector = dict.fromkeys(CLAIMS, NO_CLAIM)
        self.reasons: list[str] = []

    def affirm(self, claim: str) -> None:
        self.vector[claim] = max(self.vector[claim], AFFIRMING)

    def fail(self, claim: str, check: str | None, reason: str) -> None:
        value = (
            WARNING
            if check is not None and self.enforce.get(check) is Enforcement.WARN
            else CONTRAINDICATED
        )
        self.vector[claim] = max(self.vector[claim], value)
        self.reasons.append(reason if value == CONTRAINDICATED else f"{reason} (warn)")

    def result(
        self,
        policy: Policy,
        clock: ClockInfo | None,
        new_boot: bool,
        matched: ReferenceEntry | None = None,
        *,
        release: str | None = None,
        findings: tuple[Mapping[str, Any], ...] = (),
    ) -> Appraisal:
        worst = max(self.vector.values())
        status = (
            Status.CONTRAINDICATED
            if worst >= CONTRAINDICATED
            else Status.WARNING
            if worst >= WARNING
            else Status.AFFIRMING
        )
        return Appraisal(
            status=status,
            trust_vector=self.vector,
            reasons=tuple(self.reasons),
            clock=clock,
            new_boot=new_boot,
            policy_ref=policy.ref,
            matched_release=matched.release if matched is not None else release,
            matched_reference=matched,
            findings=findings,
        )


def appraise(
    policy: Policy,
    references: ReferenceSet | CapturedReferences,
    node: NodeView,
    evidence: Evidence,
    expected_nonce: bytes,
) -> Appraisal:
    """Appraise ``evidence`` from ``node`` under ``policy``; never raises for bad evidence.

    ``new_boot`` is True when the quote's resetCount is above ``node.last_clock``'s, or
    when there is no last clock (a boot the verifier has not seen). ``ValueError`` only
    when ``references`` were built for another policy version (a programming error).
    """
    if references.policy_ref != policy.ref:
        raise ValueError(f"references of {references.policy_ref} used with {policy.ref}")
    findings = _Findings(policy.enforce)

    # Identity and freshness: the TPM holding this node's AK signed these PCRs just now.
    try:
        if not hmac.compare_digest(evidence.nonce, expected_nonce):
            raise QuoteInvalid(
                "nonce",
                f"evidence names nonce {evidence.nonce.hex()}, "
                f"the verifier issued {expected_nonce.hex()}",
            )
        quote = verify_quote(
            node.ak_public,
            evidence.quote,
            Signature.unmarshal(evidence.signature),
            nonce=expected_nonce,
            pcr_values=evidence.pcrs,
            expected_selection=policy.pcrs,
        )
    except EvidenceError as error:
        findings.fail(INSTANCE_IDENTITY, None, f"quote {error}")
        return findings.result(policy, None, False)
    findings.affirm(INSTANCE_IDENTITY)
    clock = quote.clock_info
    last = node.last_clock
    new_boot = last is None or is_new_boot(last, clock)
    if last is not None:
        try:
            check_clock_progression(last, clock)
        except ClockRollback as error:
            findings.fail(INSTANCE_IDENTITY, "clock", f"TPM clock {error}")

    # The log says what was measured, once it replays to the quoted PCRs.
    quoted = quote.pcr_values
    if isinstance(references, CapturedReferences):
        return _appraise_captured(
            findings, policy, references, node, quoted, evidence.event_log, clock, new_boot
        )
    try:
        log = parse_event_log(evidence.event_log)
        verified = verify_log(log, quoted, references.pcrs)
    except EvidenceError as error:
        findings.fail(CONFIGURATION, None, f"event log {error}")
        findings.fail(EXECUTABLES, None, "the boot cannot be appraised without a valid event log")
        return findings.result(policy, clock, new_boot)

    matched = references.lookup(quoted)
    explained = references
    if matched is None and evidence.release_envelope is not None and policy.signers:
        # Not a listed release: the one the node's signed envelope names, if it verifies
        # under the policy's signers, is at or above the minimum and is what PCR 12 measured.
        signed = _signed_release_references(policy, references, verified, evidence.release_envelope)
        if isinstance(signed, str):
            findings.fail(EXECUTABLES, "release", signed)
        else:
            matched = signed.lookup(quoted)
            if matched is None:
                findings.reasons.append(
                    "the signed release the node sent matches no prediction on the policy's "
                    "platforms" + (f" ({'; '.join(signed.skipped)})" if signed.skipped else "")
                )
                if signed.entries:
                    explained = signed
    elif matched is None and not references.entries and policy.signers:
        findings.reasons.append(
            "the evidence carries no release envelope: the policy lists no release, and "
            "accepts one by signer only from the signed envelope the node sends "
            "(`stockade agent run --release-envelope`)"
        )
    if matched is not None and matched.security_version < policy.min_security_version:
        # ``parse_policy`` refuses a listed release below the minimum; references built
        # any other way still never affirm a rollback.
        findings.fail(
            EXECUTABLES,
            "release",
            f"release {matched.release} has security version {matched.security_version}, "
            f"below the policy's minimum {policy.min_security_version}",
        )
        return findings.result(policy, clock, new_boot)
    if matched is not None:
        for index in references.pcrs:
            for claim in _PCR_CLAIMS[index]:
                findings.affirm(claim)
        for failure in matched.secure_boot_failures:
            findings.fail(CONFIGURATION, "secure_boot", failure)
        return findings.result(policy, clock, new_boot, matched)

    _explain_mismatch(findings, explained, quoted, log, _booted_release(verified.trusted_events()))
    for failure in _secure_boot_failures(verified, policy.secure_boot):
        findings.fail(CONFIGURATION, "secure_boot", failure)
    return findings.result(policy, clock, new_boot)


def _signed_release_references(
    policy: Policy, references: ReferenceSet, verified: VerifiedEventLog, raw: bytes
) -> ReferenceSet | str:
    """The references of the release a node's envelope names, or why it is refused: too
    large, malformed, not signed by the policy's signers, below ``min_security_version``, or
    not the release measured into PCR 12 of the quoted boot (an envelope proves what was
    signed, the log what was booted). Predicted as the policy's listed releases are, once
    per (policy version, manifest digest)."""
    if len(raw) > MAX_RELEASE_ENVELOPE:
        return (
            f"release envelope refused: {len(raw)} bytes, more than the "
            f"{MAX_RELEASE_ENVELOPE} accepted"
        )
    try:
        envelope = Envelope.from_bytes(raw)
    except StockadeError as error:
        return f"release envelope malformed: {error}"
    try:
        manifest, _ = open_signed_manifest(envelope, policy.signers)
    except SignatureInvalid as error:
        return f"release envelope does not verify under the policy's signers: {error}"
    except StockadeError as error:
        return f"release envelope refused: {error}"
    label = f"{manifest.name} {manifest.version}"
    if manifest.security_version < policy.min_security_version:
        return (
            f"signed release {label} has security version {manifest.security_version}, "
            f"below the policy's minimum {policy.min_security_version} (rollback refused)"
        )
    digest = manifest_digest(manifest)
    measured = _measured_release_digests(verified.trusted_events())
    if len(measured) != 1 or measured[0] != digest:
        booted = (
            ", ".join(f"sha256:{_shown(found)}" for found in measured)
            if measured
            else "no stockade-release event"
        )
        return (
            f"release envelope of {label} (manifest sha256:{_shown(digest)}) is not the "
            f"release the quoted boot measured into PCR {RELEASE_PCR} ({booted})"
        )

    def predict_release() -> ReferenceSet:
        entries, skipped = _predict_entries(policy, (manifest,))
        return ReferenceSet(policy.ref, references.pcrs, tuple(entries), tuple(skipped))

    return references.signed.get((policy.ref, digest), predict_release)


def _measured_release_digests(events: Iterable[Event]) -> list[bytes]:
    """The manifest digests of the release events extended into the quoted PCR 12 (events
    whose digest is of their text)."""
    found = []
    prefix = RELEASE_EVENT_PREFIX.encode()
    for event in events:
        if event.pcr == RELEASE_PCR and event.data.startswith(prefix):
            text = _measured_text(event)
            match = _MEASURED_DIGEST.search(text) if text is not None else None
            if match is not None:
                found.append(bytes.fromhex(match.group(1)))
    return found


def _appraise_captured(
    findings: _Findings,
    policy: Policy,
    references: CapturedReferences,
    node: NodeView,
    quoted: PcrValues,
    event_log: bytes,
    clock: ClockInfo,
    new_boot: bool,
) -> Appraisal:
    """The boot event by event against each accepted candidate (the capture, or it booting
    each release or UKI): the first without findings matches; otherwise the closest one's
    findings are the result."""
    verified: VerifiedEventLog | None = None
    try:
        log = parse_event_log(event_log)
        verified = verify_log(log, quoted, references.replayed_pcrs)
    except EventLogMismatch as mismatch:
        label, result = None, replay_failure(references.candidates[0].policy, mismatch)
    except EvidenceError as error:
        findings.fail(CONFIGURATION, None, f"event log {error}")
        findings.fail(EXECUTABLES, None, "the boot cannot be appraised without a valid event log")
        return findings.result(policy, clock, new_boot)
    else:
        label, result = _closest_candidate(references, verified, quoted, node.name)
    matched = result.status is CapturedStatus.AFFIRMING
    if not matched and len(references.candidates) > 1:
        findings.reasons.append(
            f"no accepted release matches on the captured platform; closest: {label} "
            f"({len(result.findings)} findings)"
        )
    failed: set[str] = set()
    for finding in result.findings:
        pcr = finding.pcr
        claim = _PCR_CLAIMS[pcr][0] if pcr is not None and pcr in _PCR_CLAIMS else CONFIGURATION
        findings.fail(claim, _PCR_CHECK.get(pcr) if pcr is not None else None, finding.reason)
        failed.add(claim)
    if verified is not None:
        for failure in _secure_boot_failures(verified, policy.secure_boot):
            findings.fail(CONFIGURATION, "secure_boot", failure)
    _affirm_pcrs(findings, references.pcrs, failed)
    return findings.result(
        policy,
        clock,
        new_boot,
        release=label if matched else None,
        findings=tuple(finding.to_json() for finding in result.findings),
    )


def _closest_candidate(
    references: CapturedReferences, verified: VerifiedEventLog, quoted: PcrValues, node: str
) -> tuple[str | None, CapturedAppraisal]:
    """The first candidate without findings (the match), else the one with the fewest (the
    first of equals): its label and its appraisal. Also the boot view's reference
    (``boot_comparison``)."""
    closest: tuple[str | None, CapturedAppraisal] | None = None
    for candidate in references.candidates:
        result = _appraise_candidate(candidate, verified, quoted, node)
        if closest is None or len(result.findings) < len(closest[1].findings):
            closest = (candidate.release, result)
        if result.status is CapturedStatus.AFFIRMING:  # no findings: the match
            break
    assert closest is not None  # a captured policy has at least one candidate
    return closest


def _appraise_candidate(
    candidate: CapturedCandidate, verified: VerifiedEventLog, quoted: PcrValues, node: str
) -> CapturedAppraisal:
    result = appraise_captured(candidate.policy, verified, node=node)
    if candidate.pcr11 is None:
        return result
    value = quoted.get(Alg.SHA256, PCR_KERNEL_IMAGE)
    if value == candidate.pcr11:
        return result
    finding = Finding(
        PCR_KERNEL_IMAGE,
        f"PCR {PCR_KERNEL_IMAGE} is {_shown(value)}, the UKI {candidate.release} gives "
        f"{_shown(candidate.pcr11)} once booted (phase {RUNNING_PHASE})",
    )
    return replace(
        result, status=CapturedStatus.CONTRAINDICATED, findings=(*result.findings, finding)
    )


def _affirm_pcrs(findings: _Findings, pcrs: Iterable[int], failed: set[str]) -> None:
    for index in pcrs:
        for claim in _PCR_CLAIMS.get(index, ()):
            if claim not in failed:
                findings.affirm(claim)


# -- explaining a mismatch (the slow path) -------------------------------------------------


def _explain_mismatch(
    findings: _Findings,
    references: ReferenceSet,
    quoted: PcrValues,
    log: EventLog,
    booted: str | None,
) -> None:
    if not references.entries:
        for claim in (HARDWARE, CONFIGURATION, EXECUTABLES, FILE_SYSTEM):
            findings.fail(claim, None, "the policy has no reference values")
        return
    closest, differing = _closest_reference(references, quoted)
    equal = len(references.pcrs) - len(differing)
    findings.reasons.append(
        f"no accepted release matches; closest reference: {closest.describe()} "
        f"({equal} of {len(references.pcrs)} PCRs equal)"
        + (f"; the node booted {booted}" if booted else "")
    )
    node_events = _events_by_pcr(log.events)
    reference_events = _events_by_pcr(closest.log.events)
    failed: set[str] = set()
    for index in differing:
        for claim, reason in _diff_pcr(
            index, node_events.get(index, []), reference_events.get(index, []), closest.labels
        ):
            findings.fail(claim, _PCR_CHECK[index], reason)
            failed.add(claim)
        if not any(claim in failed for claim in _PCR_CLAIMS[index]):
            claim = _PCR_CLAIMS[index][0]
            findings.fail(claim, _PCR_CHECK[index], f"PCR {index} differs from the reference")
            failed.add(claim)
    _affirm_pcrs(findings, references.pcrs, failed)


def _closest_reference(
    references: ReferenceSet, quoted: PcrValues
) -> tuple[ReferenceEntry, list[int]]:
    """The entry (of a non-empty ``references``) with the most PCRs equal to ``quoted``'s,
    the first of a tie, and the PCRs that differ from it, in policy order."""
    key = references.key(quoted)
    closest = max(
        references.entries,
        key=lambda entry: sum(
            a == b for a, b in zip(references.key(entry.values), key, strict=True)
        ),
    )
    expected = references.key(closest.values)
    differing = [
        index for index, a, b in zip(references.pcrs, key, expected, strict=True) if a != b
    ]
    return closest, differing


def _events_by_pcr(events: Sequence[Event]) -> dict[int, list[Event]]:
    by_pcr: dict[int, list[Event]] = {}
    for event in events:
        if event.type != EventType.EV_NO_ACTION:
            by_pcr.setdefault(event.pcr, []).append(event)
    return by_pcr


def _event_claim(pcr: int, event: Event) -> str:
    if pcr == RELEASE_PCR and event.data.startswith(USR_VERITY_EVENT_PREFIX.encode()):
        return FILE_SYSTEM
    return _PCR_CLAIMS[pcr][0]


def _digest(event: Event) -> bytes | None:
    return event.digest(Alg.SHA256)


def _shown(digest: bytes | None) -> str:
    return f"{digest.hex()[:_DIGEST_SHOWN]}..." if digest else "(none)"


def _measured_text(event: Event) -> str | None:
    """The event's text, when its digest is of that text (otherwise it proves nothing)."""
    if event.type not in (EventType.EV_IPL, EventType.EV_EFI_ACTION):
        return None
    digest = _digest(event)
    own = digest is not None and hashlib.sha256(event.data).digest() == digest
    if not own and data_is_measured(event) is not True:
        return None
    return _text(event)


def _diff_pcr(
    pcr: int, node: list[Event], reference: list[Event], labels: tuple[str, ...]
) -> list[tuple[str, str]]:
    """The first event that differs from the reference, per claim the PCR speaks for."""
    found: dict[str, str] = {}
    for position in range(max(len(node), len(reference))):
        actual = node[position] if position < len(node) else None
        wanted = reference[position] if position < len(reference) else None
        if actual is not None and wanted is not None and _digest(actual) == _digest(wanted):
            continue
        claim = _event_claim(pcr, wanted if wanted is not None else actual)  # type: ignore[arg-type]
        if claim in found:
            continue
        if actual is None:
            assert wanted is not None
            found[claim] = (
                f"PCR {pcr}: the node's log lacks the reference's "
                f"{wanted.type_name} ({labels[wanted.number]})"
            )
            continue
        described = (
            f"PCR {pcr}: event {actual.number} {actual.type_name} digest {_shown(_digest(actual))}"
        )
        if wanted is None:
            reason = f"{described} is not in the reference"
        else:
            reason = f"{described} differs from the reference ({labels[wanted.number]})"
        text = _measured_text(actual)
        if text is not None:
            reason += f"; the node measured {text[:160]!r}"
        found[claim] = reason
    return list(found.items())


def _booted_release(events: Iterable[Event]) -> str | None:
    """What the node's release event names, when it was extended into the quoted PCRs
    (``VerifiedEventLog.trusted_events``) and its digest is of its text."""
    prefix = RELEASE_EVENT_PREFIX.encode()
    for event in events:
        if event.pcr == RELEASE_PCR and event.data.startswith(prefix):
            text = _measured_text(event)
            if text is not None:
                return text.removeprefix(RELEASE_EVENT_PREFIX)
    return None


# -- re-appraisal of stored values (policy dry runs) -------------------------------------


@dataclass(frozen=True)
class QuotedReappraisal:
    """What a policy would make of a node's stored quoted PCR values: a status and its
    reasons, or ``status`` None when the stored values cannot tell (``reasons`` says why)."""

    status: Status | None
    reasons: tuple[str, ...]
    matched_release: str | None = None


def reappraise_quoted(
    policy: Policy, references: ReferenceSet | CapturedReferences, quoted: PcrValues
) -> QuotedReappraisal:
    """The boot part of ``appraise`` on PCR values a verified quote already carried (a
    stored result's), for a candidate policy: the reference lookup, the minimum security
    version and Secure Boot, under the policy's enforce settings. Not re-checked: the quote
    and clock (they were, when stored) and the execution log (not a boot reference). A
    captured platform is compared event by event, so it needs the event log: unknown."""
    if isinstance(references, CapturedReferences):
        return QuotedReappraisal(
            None,
            ("a captured platform is appraised event by event; only the quoted PCR values "
             "are stored, not the event log",),
        )  # fmt: skip
    bank = quoted.banks.get(Alg.SHA256, {})
    missing = [index for index in references.pcrs if index not in bank]
    if missing:
        return QuotedReappraisal(
            None,
            (f"PCR {', '.join(map(str, missing))} was not quoted in the stored result",),
        )
    findings = _Findings(policy.enforce)
    matched = references.lookup(quoted)
    if matched is None and not references.entries and policy.signers:
        return QuotedReappraisal(
            None,
            ("the policy lists no release: it accepts releases by signer from the envelope "
             "a node sends with its evidence, which results do not store",),
        )  # fmt: skip
    if matched is not None and matched.security_version < policy.min_security_version:
        findings.fail(
            EXECUTABLES,
            "release",
            f"release {matched.release} has security version {matched.security_version}, "
            f"below the policy's minimum {policy.min_security_version}",
        )
    elif matched is not None:
        for failure in matched.secure_boot_failures:
            findings.fail(CONFIGURATION, "secure_boot", failure)
    elif not references.entries:
        findings.fail(EXECUTABLES, None, "the policy has no reference values")
    else:
        closest, differing = _closest_reference(references, quoted)
        findings.reasons.append(
            f"no accepted release matches; closest reference: {closest.describe()} "
            f"(PCR {', '.join(map(str, differing))} differ)"
        )
        for index in differing:
            findings.fail(
                _PCR_CLAIMS[index][0], _PCR_CHECK[index], f"PCR {index} differs from the reference"
            )
    appraisal = findings.result(policy, None, False, matched)
    return QuotedReappraisal(appraisal.status, appraisal.reasons, appraisal.matched_release)


def reappraise_signed(
    policy: Policy,
    references: ReferenceSet | CapturedReferences,
    quoted: PcrValues,
    event_log: bytes,
    release_envelope: bytes,
) -> QuotedReappraisal:
    """``reappraise_quoted`` for a node whose stored evidence holds the release envelope it
    sent and its event log: a release the policy does not list is judged from the envelope
    as ``appraise`` judges it (``_signed_release_references``: the policy's signers, its
    minimum, and the release the log measured into PCR 12, the log verified against the
    stored quoted values)."""
    if (
        isinstance(references, CapturedReferences)
        or not policy.signers
        or references.lookup(quoted) is not None
        or any(index not in quoted.banks.get(Alg.SHA256, {}) for index in references.pcrs)
    ):
        return reappraise_quoted(policy, references, quoted)
    try:
        verified = verify_log(parse_event_log(event_log), quoted, references.pcrs)
    except EvidenceError as error:
        return QuotedReappraisal(
            None, (f"the stored event log does not verify against the stored PCRs: {error}",)
        )
    signed = _signed_release_references(policy, references, verified, release_envelope)
    if isinstance(signed, str) or not signed.entries:
        findings = _Findings(policy.enforce)
        findings.fail(
            EXECUTABLES,
            "release",
            signed
            if isinstance(signed, str)
            else "the signed release the node sent matches no prediction on the policy's "
            "platforms" + (f" ({'; '.join(signed.skipped)})" if signed.skipped else ""),
        )
        appraisal = findings.result(policy, None, False)
        return QuotedReappraisal(appraisal.status, appraisal.reasons)
    return reappraise_quoted(policy, signed, quoted)
