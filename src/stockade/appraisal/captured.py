"""Golden-machine policies: the boot of one known-good machine, captured from its event log,
and the offline appraisal of another log against it.

``capture_policy`` keeps, for every PCR the log measures among ``CAPTURED_PCRS`` (0-9 and
11-14: firmware, boot chain, Secure Boot, shim's MOK state in 14; never 10, IMA's), the
ordered *trusted* events of that PCR (``VerifiedEventLog.trusted_events``: extended into a
replayed PCR, carrying a digest for every verified bank, as go-attestation's rule) with the
digest in one bank (sha256 when it was verified, else the first verified bank: sha1 for a
SHA-1 log), a short description of what the event says it measured (for an operator
reviewing the document; the comparison never trusts it) and the PCR's final value.

``appraise_captured`` compares, PCR by PCR, the trusted events of a verified log with the
captured ones, by (type, digest): the common prefix and suffix match, and what lies between
is paired in order: a pair is a changed event, an unpaired captured event is missing, an
unpaired logged one is extra. Each finding names the PCR and the event (its index in the log,
type, description, expected and found digest). A PCR whose events all match but whose
replayed value differs (PCR 0's StartupLocality) is named without an event; every other
PCR's value is checked against its events when the document is read. A PCR the policy
holds that the log's verification did not cover, a PCR the log measures that the policy does
not hold, and a policy bank the log was not verified in are findings too. Any finding is
``contraindicated``. Everything is O(events); descriptions are decoded only for findings.

Pure: no I/O.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from enum import StrEnum
from functools import partial
from typing import Any

from stockade.errors import InputError
from stockade.evidence.algorithms import HASHES, HASHES_BY_NAME, Alg
from stockade.evidence.device_path import format_device_path
from stockade.evidence.errors import EventLogMismatch
from stockade.evidence.event_data import (
    FirmwareBlobData,
    GptData,
    HandoffTablesData,
    ImageLoadData,
    SeparatorData,
    TaggedEventData,
    TextData,
    UefiVariableData,
    decode,
    decode_load_option,
)
from stockade.evidence.eventlog import Event, EventLog, EventType, event_type_name
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.replay import VerifiedEventLog, replay, startup_locality
from stockade.strict_json import Fields, read_integer, read_string

KIND = "captured"
CAPTURED_PCRS = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14})
BANK_PREFERENCE = (Alg.SHA256, Alg.SHA384, Alg.SHA512, Alg.SHA1)
MEASURED_LIMIT = 200  # characters of an event's description
FINDINGS_PER_PCR = 8  # differing events named per PCR; the rest are counted in one finding
_DIGEST_SHOWN = 16  # hex characters of a digest in a reason
_EVENT_TYPE_NAME = re.compile(r"EV_[A-Z0-9_]+|0x[0-9a-f]{8}")


_type_name = functools.cache(event_type_name)


class CapturedPolicyInvalid(InputError):
    """A captured policy document that cannot be read; the message names the field path."""


_integer = partial(read_integer, error=CapturedPolicyInvalid)
_string = partial(read_string, error=CapturedPolicyInvalid)


class CapturedStatus(StrEnum):
    AFFIRMING = "affirming"
    CONTRAINDICATED = "contraindicated"


@dataclass(frozen=True)
class CapturedEvent:
    index: int  # the event's number in the captured log
    type: str  # its type name (event_type_name)
    measured: str  # what the log says was measured, for a reader
    digest: bytes  # in the policy's bank


@dataclass(frozen=True)
class CapturedPcr:
    value: bytes  # the PCR's replayed value in the policy's bank
    events: tuple[CapturedEvent, ...]


@dataclass(frozen=True)
class CapturedPolicy:
    policy_id: str
    bank: int  # the TPM_ALG_ID the digests and values are in
    pcrs: Mapping[int, CapturedPcr]

    def to_document(self) -> dict[str, Any]:
        """The document an operator reviews (YAML) and ``parse_captured_policy`` reads."""
        name = HASHES[self.bank].name
        return {
            "kind": KIND,
            "id": self.policy_id,
            "banks": [name],
            "pcrs": {
                index: {
                    "value": pcr.value.hex(),
                    "events": [
                        {
                            "index": event.index,
                            "type": event.type,
                            "measured": event.measured,
                            name: event.digest.hex(),
                        }
                        for event in pcr.events
                    ],
                }
                for index, pcr in sorted(self.pcrs.items())
            },
        }


@dataclass(frozen=True)
class FindingEvent:
    index: int
    type: str
    measured: str
    expected: bytes | None
    found: bytes | None

    def to_json(self) -> dict[str, Any]:
        return {
            "index": self.index,
            "type": self.type,
            "measured": self.measured,
            "expected": None if self.expected is None else self.expected.hex(),
            "found": None if self.found is None else self.found.hex(),
        }


@dataclass(frozen=True)
class Finding:
    pcr: int | None  # None: no single PCR (the policy's bank was not verified)
    reason: str
    event: FindingEvent | None = None  # None when no single event is responsible

    def to_json(self) -> dict[str, Any]:
        return {
            "pcr": self.pcr,
            "reason": self.reason,
            "event": None if self.event is None else self.event.to_json(),
        }


@dataclass(frozen=True)
class CapturedAppraisal:
    policy_id: str
    status: CapturedStatus
    findings: tuple[Finding, ...]

    def to_json(self) -> dict[str, Any]:
        return {
            "status": str(self.status),
            "policy": self.policy_id,
            "reasons": [finding.to_json() for finding in self.findings],
        }


# -- what an event measured, in a few words ------------------------------------------------


def _short(text: str) -> str:
    text = " ".join(text.split())
    return text if len(text) <= MEASURED_LIMIT else text[: MEASURED_LIMIT - 3] + "..."


def _printable(data: bytes) -> str | None:
    text = data.rstrip(b"\x00")
    if text and all(32 <= byte < 127 for byte in text):
        return text.decode("ascii")
    return None


def describe_event(event: Event) -> str:
    """A short human description of what ``event`` says it measured (from its data: a
    description, not a proof)."""
    decoded = decode(event)
    if isinstance(decoded, UefiVariableData):
        text = f"{decoded.unicode_name} ({decoded.variable_name})"
        name = decoded.unicode_name
        if len(name) == 8 and name.startswith("Boot") and name[4:] != "Order":
            option = decode_load_option(decoded.variable_data)
            if option is not None:
                text += f": {option.description} {format_device_path(option.file_path_list)}"
        return _short(text)
    if isinstance(decoded, ImageLoadData):
        path = format_device_path(decoded.device_path)
        return _short(path or f"image of {decoded.length} bytes (no device path)")
    if isinstance(decoded, TextData):
        return _short(decoded.text)
    if isinstance(decoded, SeparatorData):
        return "separator" if decoded.value == 0 else f"separator (error 0x{decoded.value:x})"
    if isinstance(decoded, TaggedEventData):
        tagged = _printable(decoded.data)
        shown = tagged if tagged is not None else f"{len(decoded.data)} bytes"
        return _short(f"tag 0x{decoded.tag_id:08x}: {shown}")
    if isinstance(decoded, FirmwareBlobData):
        label = f"{decoded.description.decode(errors='replace')} " if decoded.description else ""
        return _short(f"firmware blob {label}at 0x{decoded.base:x}, 0x{decoded.length:x} bytes")
    if isinstance(decoded, HandoffTablesData):
        tables = ", ".join(str(guid) for guid, _ in decoded.tables)
        return _short(f"handoff tables {tables}")
    if isinstance(decoded, GptData):
        document = decoded.to_json()
        disk = document["Header"]["DiskGUID"]
        return f"GPT of disk {disk}, {len(decoded.partitions)} partitions"
    printable = _printable(event.data)
    if printable is not None:
        return _short(printable)
    return f"{len(event.data)} bytes"


# -- capture ---------------------------------------------------------------------------------


def policy_bank(banks: Sequence[int]) -> int:
    """The bank a policy is captured in: sha256 when verified, else the first verified one."""
    for alg in BANK_PREFERENCE:
        if alg in banks:
            return int(alg)
    return banks[0]


def self_replayed(log: EventLog) -> PcrValues:
    """The log's own replay, in the banks every measured event carries a digest for (a log
    may declare banks its events never fill): what ``verify_log`` is given when there is no
    quote, so the appraisal says "this log against the policy", nothing about a TPM."""
    no_action = EventType.EV_NO_ACTION
    complete = [
        alg
        for alg in log.banks
        if alg in HASHES
        and all(e.digest(alg) is not None for e in log.events if e.type != no_action)
    ]
    if not complete:
        raise CapturedPolicyInvalid(
            "the event log has no bank that every measured event carries a digest for"
        )
    return replay(log, complete).values


def _trusted_by_pcr(verified: VerifiedEventLog) -> dict[int, list[Event]]:
    by_pcr: dict[int, list[Event]] = {}
    for event in verified.trusted_events():
        if event.pcr in CAPTURED_PCRS:
            by_pcr.setdefault(event.pcr, []).append(event)
    return by_pcr


def capture_policy(log: VerifiedEventLog, policy_id: str) -> CapturedPolicy:
    """The golden-machine policy of a verified log (see the module docstring)."""
    if not policy_id:
        raise CapturedPolicyInvalid("a captured policy needs a non-empty id")
    bank = policy_bank(log.banks)
    values = replay(log.log, [bank]).values
    zero = bytes(HASHES[bank].digest_size)
    pcrs = {}
    for index, events in sorted(_trusted_by_pcr(log).items()):
        pcrs[index] = CapturedPcr(
            values.get(bank, index) or zero,
            tuple(
                CapturedEvent(e.number, e.type_name, describe_event(e), e.digest(bank) or b"")
                for e in events
            ),
        )
    return CapturedPolicy(policy_id, bank, pcrs)


# -- reading the document --------------------------------------------------------------------


def _pcr_index(key: Any, where: str) -> int:
    if isinstance(key, str) and key.isdigit() and key == str(int(key)):
        key = int(key)
    index = _integer(key, f"{where} key {key!r}", maximum=23)
    if index not in CAPTURED_PCRS:
        raise CapturedPolicyInvalid(
            f"{where}.{index}: PCR {index} is not one a captured policy holds "
            f"({', '.join(map(str, sorted(CAPTURED_PCRS)))})"
        )
    return index


def _event(value: Any, where: str, bank_name: str, size: int) -> CapturedEvent:
    fields = Fields(
        value,
        where,
        error=CapturedPolicyInvalid,
        required={"index", "type", "measured", bank_name},
    )
    kind = fields.string("type")
    if not _EVENT_TYPE_NAME.fullmatch(kind):
        raise CapturedPolicyInvalid(f"{fields.path('type')} {kind!r} is not an event type name")
    return CapturedEvent(
        fields.integer("index"),
        kind,
        fields.optional_string("measured") or "",
        fields.hex(bank_name, length=size),
    )


def parse_captured_policy(document: Any) -> CapturedPolicy:
    """A captured policy from its document (as ``to_document`` writes it, loaded from YAML
    or JSON), or ``CapturedPolicyInvalid`` naming the field path."""
    top = Fields(
        document,
        "policy",
        error=CapturedPolicyInvalid,
        required={"kind", "id", "banks", "pcrs"},
    )
    kind = top.string("kind")
    if kind != KIND:
        raise CapturedPolicyInvalid(f"policy.kind is {kind!r}, expected {KIND!r}")
    policy_id = top.string("id")
    banks = top.array("banks")
    if len(banks) != 1:
        raise CapturedPolicyInvalid(f"policy.banks names {len(banks)} banks, expected one")
    bank_name = _string(banks[0], "policy.banks[0]")
    algorithm = HASHES_BY_NAME.get(bank_name)
    if algorithm is None:
        raise CapturedPolicyInvalid(f"policy.banks[0] {bank_name!r} is not a known bank")
    size = algorithm.digest_size
    pcr_map = top.object("pcrs").value
    pcrs: dict[int, CapturedPcr] = {}
    for key, body in pcr_map.items():
        index = _pcr_index(key, "policy.pcrs")
        if index in pcrs:
            raise CapturedPolicyInvalid(f"policy.pcrs names PCR {index} twice")
        where = f"policy.pcrs.{index}"
        fields = Fields(body, where, error=CapturedPolicyInvalid, required={"value", "events"})
        events = tuple(
            _event(item, f"{where}.events[{position}]", bank_name, size)
            for position, item in enumerate(fields.array("events"))
        )
        value = fields.hex("value", length=size)
        starts = range(5) if index == 0 else range(1)  # PCR 0 starts at its locality, 0-4
        zero = bytes(size - 1)
        if all(
            _extend(zero + bytes([start]), (e.digest for e in events), algorithm.alg) != value
            for start in starts
        ):
            raise CapturedPolicyInvalid(
                f"{where}.value is not what the events listed extend PCR {index} to"
            )
        pcrs[index] = CapturedPcr(value, events)
    return CapturedPolicy(policy_id, int(algorithm.alg), pcrs)


# -- appraisal -------------------------------------------------------------------------------


def _found_event(event: Event, bank: int, expected: bytes | None) -> FindingEvent:
    return FindingEvent(
        event.number, event.type_name, describe_event(event), expected, event.digest(bank)
    )


def _expected_event(event: CapturedEvent) -> FindingEvent:
    return FindingEvent(event.index, event.type, event.measured, event.digest, None)


def _compare_pcr(
    index: int, captured: Sequence[CapturedEvent], found: Sequence[Event], bank: int
) -> list[Finding]:
    """Findings for one PCR's events: matching prefix and suffix, the middle paired."""

    def same(wanted: CapturedEvent, actual: Event) -> bool:
        return wanted.digest == actual.digest(bank) and wanted.type == _type_name(actual.type)

    limit = min(len(captured), len(found))
    start = 0
    while start < limit and same(captured[start], found[start]):
        start += 1
    end = 0
    while end < limit - start and same(captured[-1 - end], found[-1 - end]):
        end += 1
    wanted_middle = captured[start : len(captured) - end]
    found_middle = found[start : len(found) - end]
    findings: list[Finding] = []
    name = HASHES[bank].name
    differing = max(len(wanted_middle), len(found_middle))
    for position in range(min(differing, FINDINGS_PER_PCR)):
        wanted = wanted_middle[position] if position < len(wanted_middle) else None
        actual = found_middle[position] if position < len(found_middle) else None
        if wanted is not None and actual is not None:
            described = _found_event(actual, bank, wanted.digest)
            reason = (
                f"PCR {index}: event {actual.number} {actual.type_name} "
                f"({described.measured}) has {name} {_shown(actual.digest(bank))}, the policy "
                f"captured {_shown(wanted.digest)}"
            )
            if (wanted.index, wanted.type, wanted.measured) != (
                actual.number,
                described.type,
                described.measured,
            ):
                reason += f" for event {wanted.index} {wanted.type} ({wanted.measured})"
            findings.append(Finding(index, reason, described))
        elif wanted is not None:
            reason = (
                f"PCR {index}: the log lacks the captured event {wanted.index} {wanted.type} "
                f"({wanted.measured}), {name} {_shown(wanted.digest)}"
            )
            findings.append(Finding(index, reason, _expected_event(wanted)))
        elif actual is not None:
            described = _found_event(actual, bank, None)
            reason = (
                f"PCR {index}: event {actual.number} {actual.type_name} ({described.measured}), "
                f"{name} {_shown(actual.digest(bank))}, is not in the policy"
            )
            findings.append(Finding(index, reason, described))
    if differing > FINDINGS_PER_PCR:
        findings.append(
            Finding(
                index,
                f"PCR {index}: {differing - FINDINGS_PER_PCR} more events differ from the "
                f"policy ({len(found)} logged, {len(captured)} captured)",
            )
        )
    return findings


def _extend(initial: bytes, digests: Iterable[bytes], bank: int) -> bytes:
    new = HASHES[bank].constructor
    value = initial
    for digest in digests:
        value = new(value + digest).digest()
    return value


def _startup_locality(log: EventLog) -> int:
    """The locality PCR 0 started at (its StartupLocality event, else 0)."""
    for event in log.events:
        locality = startup_locality(event)
        if locality is not None:
            return locality
    return 0


def _shown(digest: bytes | None) -> str:
    """A digest in a reason (the finding's event carries it whole)."""
    return f"{digest.hex()[:_DIGEST_SHOWN]}..." if digest else "(none)"


def appraise_captured(policy: CapturedPolicy, log: VerifiedEventLog) -> CapturedAppraisal:
    """Appraise a verified log against a golden-machine policy (see the module docstring)."""
    bank = policy.bank
    name = HASHES[bank].name
    if bank not in log.banks:
        verified = ", ".join(HASHES[alg].name for alg in log.banks) or "none"
        finding = Finding(
            None,
            f"the policy is in the {name} bank, but the log was verified only in {verified}",
        )
        return CapturedAppraisal(policy.policy_id, CapturedStatus.CONTRAINDICATED, (finding,))
    by_pcr = _trusted_by_pcr(log)
    no_action = EventType.EV_NO_ACTION
    logged = {e.pcr for e in log.log.events if e.type != no_action}
    findings: list[Finding] = []
    for index in sorted(set(policy.pcrs) | set(by_pcr)):
        captured = policy.pcrs.get(index)
        if index in logged and index not in log.trusted_pcrs:
            findings.append(
                Finding(
                    index,
                    f"PCR {index} was not verified against the quoted PCRs, so its events "
                    "prove nothing",
                )
            )
            continue
        events = by_pcr.get(index, [])
        if captured is None:
            findings.append(
                Finding(index, f"PCR {index} is measured by the log but not held by the policy")
            )
            findings.extend(_compare_pcr(index, (), events, bank))
            continue
        compared = _compare_pcr(index, captured.events, events, bank)
        findings.extend(compared)
        if not compared and index == 0:
            # The same digests in the same order extend to the same value from the same
            # start; only PCR 0 starts elsewhere (its StartupLocality). The other values
            # were checked against their events when the policy was read.
            # PCR 0 is verified: its value is what the log replayed to (from its
            # StartupLocality), which verify_log checked against the quote.
            value = log.replayed.get(bank, 0) or b""
            if value != captured.value:
                findings.append(
                    Finding(
                        index,
                        f"PCR {index}: {name} replays to {_shown(value)}, the policy captured "
                        f"{_shown(captured.value)} (the events match: the initial value, "
                        f"StartupLocality {_startup_locality(log.log)}, differs)",
                    )
                )
    status = CapturedStatus.CONTRAINDICATED if findings else CapturedStatus.AFFIRMING
    return CapturedAppraisal(policy.policy_id, status, tuple(findings))


def replay_failure(policy: CapturedPolicy, error: EventLogMismatch) -> CapturedAppraisal:
    """A contraindicated appraisal for a log that does not replay to the quoted PCRs: each
    PCR and bank that differs, with the last event measured there."""
    findings = []
    for mismatch in error.mismatches:
        event = None
        if mismatch.last_event is not None:
            event = FindingEvent(
                mismatch.last_event,
                mismatch.last_event_type or "unknown",
                "last event measured into this PCR",
                mismatch.quoted,
                mismatch.replayed,
            )
        if mismatch.quoted is None:
            reason = f"PCR {mismatch.pcr} {mismatch.bank} was not quoted"
        else:
            reason = (
                f"PCR {mismatch.pcr} {mismatch.bank}: the log replays to "
                f"{_shown(mismatch.replayed)}, the PCRs given are {mismatch.quoted.hex()}"
            )
        findings.append(Finding(mismatch.pcr, reason, event))
    if not findings:
        findings.append(Finding(None, str(error)))
    return CapturedAppraisal(policy.policy_id, CapturedStatus.CONTRAINDICATED, tuple(findings))
