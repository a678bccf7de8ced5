"""A node's boot beside the reference it was appraised against, PCR by PCR and event by
event: what the dashboard's boot view shows (``GET /v1/nodes/{id}/boot``).

``compare_boot`` takes the event log a result stored, the references of the policy version
the result names (``appraise.build_references``) and, when the result stored them, the
quoted PCR values. It aligns the node's events of each quoted PCR with the events of the
closest reference, chosen as appraisal explains a mismatch (``appraise._closest_reference``:
the most PCRs equal; the matched entry itself when the PCRs equal one). A policy that accepts
releases by signer compares with the release the node's stored envelope names
(``appraise._signed_release_references``: verified under the policy's signers, at or above
its minimum, and the release measured into PCR 12). Under a captured platform the closest
candidate is chosen as appraisal chooses it (``appraise._closest_candidate``) and its
findings mark the node's events; every event it accepts is ``same``.

Row statuses: ``same`` (the reference has this event), ``differs`` (both have an event here,
the digests differ), ``missing`` (a reference event the node's log lacks), ``extra`` (a node
event the reference does not have). Every PCR the policy quotes is included, matching or
not, so the whole log can be read beside the reference.

Descriptions are what a log *says* was measured (``captured.describe_event``), never a
proof, and are printable ASCII only (anything else escaped) and at most
``DESCRIPTION_LIMIT`` characters: a log is attacker-supplied bytes. Pure: no I/O, never
raises for a bad log (the comparison then says why it cannot be made).
"""

from __future__ import annotations

import difflib
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from typing import Any

from stockade.appraisal.appraise import (
    CapturedReferences,
    ReferenceEntry,
    ReferenceSet,
    _closest_candidate,
    _closest_reference,
    _events_by_pcr,
    _signed_release_references,
)
from stockade.appraisal.captured import (
    FINDINGS_PER_PCR,
    CapturedPcr,
    CapturedPolicyInvalid,
    Finding,
    describe_event,
    self_replayed,
)
from stockade.appraisal.policy import Policy
from stockade.evidence.algorithms import Alg
from stockade.evidence.errors import EventLogMismatch, EvidenceError
from stockade.evidence.eventlog import Event, EventLog, parse_event_log
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.replay import VerifiedEventLog, replay, verify_log

DESCRIPTION_LIMIT = 160  # characters of an event's description, after escaping
NOTE_LIMIT = 400  # characters of a note
ROWS_PER_PCR = 512  # rows shown per PCR; the rest are counted in ``omitted``
NOTES_PER_PCR = 8
# The middle of a PCR's events (after the common prefix and suffix) is aligned by longest
# matching blocks (difflib) when it is at most this many pairs; beyond, position by position.
ALIGNED_PAIRS = 250_000


class RowStatus(StrEnum):
    SAME = "same"
    DIFFERS = "differs"
    MISSING = "missing"
    EXTRA = "extra"


def printable(text: str, limit: int = DESCRIPTION_LIMIT) -> str:
    """``text`` as printable ASCII: other characters escaped (``\\xNN``, ``\\uNNNN``),
    whitespace runs as one space, at most ``limit`` characters (``...`` when cut)."""
    out: list[str] = []
    size = 0
    for character in " ".join(text.split()):
        code = ord(character)
        if 0x20 <= code < 0x7F and character != "\\":
            piece = character
        elif character == "\\":
            piece = "\\\\"
        elif code < 0x100:
            piece = f"\\x{code:02x}"
        elif code < 0x10000:
            piece = f"\\u{code:04x}"
        else:
            piece = f"\\U{code:08x}"
        if size + len(piece) > limit:
            return ("".join(out)[: max(0, limit - 3)] + "...")[:limit]
        out.append(piece)
        size += len(piece)
    return "".join(out)


@dataclass(frozen=True)
class EventSide:
    """One event as a row shows it: its number in its own log, type, digest (in the
    comparison's bank; b"" when the event carries none) and a printable description."""

    number: int
    type: str
    digest: bytes
    description: str

    def to_json(self) -> dict[str, Any]:
        return {
            "number": self.number,
            "type": self.type,
            "digest": self.digest.hex(),
            "description": self.description,
        }


@dataclass(frozen=True)
class EventRow:
    position: int  # the row's place in its PCR, from 0
    status: RowStatus
    found: EventSide | None
    expected: EventSide | None

    def to_json(self) -> dict[str, Any]:
        return {
            "position": self.position,
            "status": str(self.status),
            "found": None if self.found is None else self.found.to_json(),
            "expected": None if self.expected is None else self.expected.to_json(),
        }


@dataclass(frozen=True)
class PcrComparison:
    pcr: int
    quoted: bytes | None  # the quoted value the result stored (None: not stored)
    expected: bytes | None  # the reference's value (None: no single value)
    matches: bool  # the quoted value (or, not stored, what the log replays to) is expected
    events: tuple[EventRow, ...]
    omitted: int = 0  # rows past ``ROWS_PER_PCR``
    notes: tuple[str, ...] = ()  # what concerns the PCR but no single event

    def to_json(self) -> dict[str, Any]:
        return {
            "pcr": self.pcr,
            "quoted": None if self.quoted is None else self.quoted.hex(),
            "expected": None if self.expected is None else self.expected.hex(),
            "matches": self.matches,
            "events": [row.to_json() for row in self.events],
            "omitted": self.omitted,
            "notes": list(self.notes),
        }

    @property
    def statuses(self) -> tuple[RowStatus, ...]:
        return tuple(row.status for row in self.events)


@dataclass(frozen=True)
class BootComparison:
    """``problem`` set: the log cannot be compared at all (then ``pcrs`` is empty)."""

    reference: str | None  # what the closest reference is
    pcrs: tuple[PcrComparison, ...]
    notes: tuple[str, ...] = ()
    problem: str | None = None

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "pcrs": [pcr.to_json() for pcr in self.pcrs],
            "notes": list(self.notes),
        }

    def pcr(self, index: int) -> PcrComparison | None:
        return next((pcr for pcr in self.pcrs if pcr.pcr == index), None)


def compare_boot(
    log: bytes,
    references: ReferenceSet | CapturedReferences,
    quoted: PcrValues | None,
    *,
    policy: Policy | None = None,
    release_envelope: bytes | None = None,
    node: str | None = None,
) -> BootComparison:
    """The node's ``log`` beside the closest reference of ``references``, per PCR.

    ``quoted``: the PCR values the result stored (a trusted result's), else None: the
    closest reference is then chosen by what the log replays to. ``policy`` and
    ``release_envelope``: for a policy accepting releases by signer, the envelope the node
    sent. ``node``: the node's enrolled name (a captured platform's per-machine events)."""
    try:
        parsed = parse_event_log(log)
    except EvidenceError as error:
        return _unreadable(f"the event log cannot be read: {error}")
    if isinstance(references, CapturedReferences):
        return _compare_captured(parsed, references, quoted, node)
    return _compare_references(parsed, references, quoted, policy, release_envelope)


def _unreadable(problem: str) -> BootComparison:
    return BootComparison(None, (), problem=printable(problem, NOTE_LIMIT))


# -- a reference set (predicted releases) ----------------------------------------------------


def _sha256_values(log: EventLog) -> PcrValues | None:
    try:
        values = replay(log, (Alg.SHA256,)).values
    except EvidenceError:
        return None
    return values if Alg.SHA256 in values.banks else None


def _verified(
    log: EventLog, quoted: PcrValues | None, pcrs: Iterable[int] | None, notes: list[str]
) -> VerifiedEventLog | None:
    """The log verified against the stored quoted values, else (none stored, or it does
    not replay to them) against its own replay: what it says, for display."""
    if quoted is not None:
        try:
            return verify_log(log, quoted, pcrs)
        except EventLogMismatch as mismatch:
            notes.append(f"the event log does not replay to the quoted PCRs: {mismatch}")
        except EvidenceError as error:
            notes.append(f"the event log cannot be verified against the quoted PCRs: {error}")
    try:
        return verify_log(log, self_replayed(log))
    except (EvidenceError, CapturedPolicyInvalid) as error:
        notes.append(f"the event log does not replay: {error}")
        return None


def _compare_references(
    log: EventLog,
    references: ReferenceSet,
    quoted: PcrValues | None,
    policy: Policy | None,
    envelope: bytes | None,
) -> BootComparison:
    notes: list[str] = []
    replayed = _sha256_values(log)
    values = quoted if quoted is not None else replayed
    if values is None:
        return _unreadable("the event log carries no sha256 digests to compare")
    matched = references.lookup(values)
    explained = references
    if matched is None and envelope is not None and policy is not None and policy.signers:
        verified = _verified(log, quoted, references.pcrs, notes)
        signed: ReferenceSet | str = (
            "the event log does not replay, so the release it measured is unknown"
            if verified is None
            else _signed_release_references(policy, references, verified, envelope)
        )
        if isinstance(signed, str):
            notes.append(signed)
        else:
            matched = signed.lookup(values)
            if matched is None and signed.entries:
                explained = signed
    elif matched is None and not references.entries:
        notes.append(
            "the policy lists no release and accepts one by signer only from the envelope a "
            "node sends; none is stored with this result"
            if policy is not None and policy.signers
            else "the policy has no reference values"
        )
    entry: ReferenceEntry | None = matched
    if entry is None and explained.entries:
        entry, _ = _closest_reference(explained, values)
    if quoted is not None and replayed is not None:
        for index in references.pcrs:
            if quoted.get(Alg.SHA256, index) not in (None, replayed.get(Alg.SHA256, index)):
                notes.append(f"PCR {index}: the event log does not replay to the quoted value")
    node_events = _events_by_pcr(log.events)
    reference_events = _events_by_pcr(entry.log.events) if entry is not None else {}
    pcrs = []
    for index in references.pcrs:
        ours, theirs = node_events.get(index, []), reference_events.get(index, [])
        found = [_side(event, Alg.SHA256) for event in ours]
        wanted = [_side(event, Alg.SHA256) for event in theirs]
        expected_value = entry.values.get(Alg.SHA256, index) if entry is not None else None
        shown = values.get(Alg.SHA256, index)
        rows, omitted = _bounded(_align(found, wanted))
        rows = _described(rows, ours, theirs, entry)
        pcrs.append(
            PcrComparison(
                index,
                quoted.get(Alg.SHA256, index) if quoted is not None else None,
                expected_value,
                expected_value is not None and shown == expected_value,
                rows,
                omitted,
            )
        )
    return BootComparison(
        entry.describe() if entry is not None else None,
        tuple(pcrs),
        tuple(printable(note, NOTE_LIMIT) for note in notes),
    )


def _side(event: Event, bank: int) -> EventSide:
    """An event as a row shows it, its description filled in once the row is kept."""
    return EventSide(event.number, event.type_name, event.digest(bank) or b"", "")


def _described(
    rows: tuple[EventRow, ...],
    found: Sequence[Event],
    wanted: Sequence[Event],
    entry: ReferenceEntry | None,
) -> tuple[EventRow, ...]:
    """The kept rows with descriptions: a node event's from what its data says, a reference
    event's its label (only rows shown are described: a long log costs no more)."""
    ours = {event.number: event for event in found}
    theirs = {event.number: event for event in wanted}

    def label(side: EventSide) -> str:
        if entry is not None and 0 <= side.number < len(entry.labels):
            return entry.labels[side.number]
        return describe_event(theirs[side.number])

    return tuple(
        replace(
            row,
            found=None
            if row.found is None
            else replace(row.found, description=printable(describe_event(ours[row.found.number]))),
            expected=None
            if row.expected is None
            else replace(row.expected, description=printable(label(row.expected))),
        )
        for row in rows
    )


def _align(
    found: Sequence[EventSide], wanted: Sequence[EventSide]
) -> list[tuple[RowStatus, EventSide | None, EventSide | None]]:
    """Pairs of (found, expected): the common prefix and suffix by digest, the middle by its
    longest matching blocks, what is left paired in order (``differs``) and the rest
    ``extra`` or ``missing``."""
    limit = min(len(found), len(wanted))
    start = 0
    while start < limit and found[start].digest == wanted[start].digest:
        start += 1
    end = 0
    while end < limit - start and found[-1 - end].digest == wanted[-1 - end].digest:
        end += 1
    rows: list[tuple[RowStatus, EventSide | None, EventSide | None]] = [
        (RowStatus.SAME, found[i], wanted[i]) for i in range(start)
    ]
    middle_found = found[start : len(found) - end]
    middle_wanted = wanted[start : len(wanted) - end]
    if len(middle_found) * len(middle_wanted) <= ALIGNED_PAIRS:
        matcher = difflib.SequenceMatcher(
            None,
            [side.digest for side in middle_found],
            [side.digest for side in middle_wanted],
            autojunk=False,
        )
        for tag, i1, i2, j1, j2 in matcher.get_opcodes():
            if tag == "equal":
                rows += [
                    (RowStatus.SAME, middle_found[i], middle_wanted[j])
                    for i, j in zip(range(i1, i2), range(j1, j2), strict=True)
                ]
            else:
                rows += _paired(middle_found[i1:i2], middle_wanted[j1:j2])
    else:
        rows += _paired(middle_found, middle_wanted)
    rows += [
        (RowStatus.SAME, found[len(found) - end + i], wanted[len(wanted) - end + i])
        for i in range(end)
    ]
    return rows


def _paired(
    found: Sequence[EventSide], wanted: Sequence[EventSide]
) -> list[tuple[RowStatus, EventSide | None, EventSide | None]]:
    rows: list[tuple[RowStatus, EventSide | None, EventSide | None]] = []
    for position in range(max(len(found), len(wanted))):
        actual = found[position] if position < len(found) else None
        expected = wanted[position] if position < len(wanted) else None
        if actual is None:
            rows.append((RowStatus.MISSING, None, expected))
        elif expected is None:
            rows.append((RowStatus.EXTRA, actual, None))
        else:
            status = RowStatus.SAME if actual.digest == expected.digest else RowStatus.DIFFERS
            rows.append((status, actual, expected))
    return rows


def _bounded(
    rows: Sequence[tuple[RowStatus, EventSide | None, EventSide | None]],
) -> tuple[tuple[EventRow, ...], int]:
    shown = tuple(
        EventRow(position, status, found, expected)
        for position, (status, found, expected) in enumerate(rows[:ROWS_PER_PCR])
    )
    return shown, max(0, len(rows) - ROWS_PER_PCR)


# -- a captured platform ---------------------------------------------------------------------


def _compare_captured(
    log: EventLog, references: CapturedReferences, quoted: PcrValues | None, node: str | None
) -> BootComparison:
    notes: list[str] = []
    verified = _verified(log, quoted, references.replayed_pcrs, notes)
    if verified is None:
        return _unreadable("; ".join(notes) or "the event log cannot be verified")
    values = quoted if quoted is not None else verified.replayed
    label, result = _closest_candidate(references, verified, values, node or "")
    candidate = next(c for c in references.candidates if c.release == label)
    bank = candidate.policy.bank
    by_pcr: dict[int, list[Finding]] = {}
    general: list[str] = []
    for finding in result.findings:
        if finding.pcr is None:
            general.append(finding.reason)
        else:
            by_pcr.setdefault(finding.pcr, []).append(finding)
    trusted: dict[int, list[Event]] = {}
    for event in verified.trusted_events():
        trusted.setdefault(event.pcr, []).append(event)
    pcrs = []
    for index in sorted(set(references.pcrs) | set(by_pcr)):
        events = trusted.get(index, [])
        captured = candidate.policy.pcrs.get(index)
        rows, pcr_notes = _captured_rows(
            events, by_pcr.get(index, []), bank, _captured_digests(captured, node)
        )
        shown, omitted = _bounded(rows)
        shown = _described_found(shown, events)
        accepted = index not in by_pcr
        expected_value = (
            values.get(bank, index)
            if accepted
            else captured.variants[0].value
            if captured is not None and len(captured.variants) == 1
            else None
        )
        pcrs.append(
            PcrComparison(
                index,
                quoted.get(bank, index) if quoted is not None else None,
                expected_value,
                accepted,
                shown,
                omitted,
                tuple(printable(note, NOTE_LIMIT) for note in pcr_notes[:NOTES_PER_PCR]),
            )
        )
    described = f"captured platform {candidate.policy.policy_id}" + (
        f" booting {label}" if label is not None else ""
    )
    return BootComparison(
        printable(described),
        tuple(pcrs),
        tuple(printable(note, NOTE_LIMIT) for note in [*notes, *general]),
    )


def _captured_digests(captured: CapturedPcr | None, node: str | None) -> frozenset[bytes]:
    """Every digest the capture holds for a PCR (any variant; a per-machine event's for
    ``node``)."""
    if captured is None:
        return frozenset()
    digests: set[bytes] = set()
    for variant in captured.variants:
        for event in variant.events:
            digests.update(event.digests_for(node) if event.per_node else (event.digest,))
    return frozenset(digest for digest in digests if digest)


def _captured_rows(
    events: Sequence[Event],
    findings: Sequence[Finding],
    bank: int,
    captured_digests: frozenset[bytes],
) -> tuple[list[tuple[RowStatus, EventSide | None, EventSide | None]], list[str]]:
    """The node's events of one PCR marked by the closest candidate's findings: one naming
    an event the node logged (``differs``, or ``extra`` when nothing was expected), one
    naming a captured event the log lacks (``missing``, placed after the event named
    before it); every other event was accepted (``same``). When the findings stop short
    (appraisal names at most ``FINDINGS_PER_PCR`` events a PCR and counts the rest), an
    event not named is ``same`` only if the capture holds its digest, else ``extra``."""
    by_number: dict[int, Finding] = {}
    missing_after: dict[int | None, list[EventSide]] = {}
    notes: list[str] = []
    numbers = {event.number for event in events}
    previous: int | None = None
    for finding in findings:
        named = finding.event
        if named is None:
            notes.append(finding.reason)
        elif named.found is not None and named.index in numbers:
            by_number.setdefault(named.index, finding)
            previous = named.index
        elif named.found is None:
            side = EventSide(
                named.index, printable(named.type, 64), named.expected or b"",
                printable(f"captured: {named.measured}"),
            )  # fmt: skip
            missing_after.setdefault(previous, []).append(side)
        else:
            notes.append(finding.reason)
    with_event = sum(1 for finding in findings if finding.event is not None)
    cut_short = with_event >= FINDINGS_PER_PCR and any(f.event is None for f in findings)
    rows: list[tuple[RowStatus, EventSide | None, EventSide | None]] = [
        (RowStatus.MISSING, None, side) for side in missing_after.get(None, [])
    ]
    for event in events:
        found = _side(event, bank)
        marked = by_number.get(event.number)
        if marked is None and cut_short and found.digest not in captured_digests:
            rows.append((RowStatus.EXTRA, found, None))
        elif marked is None:
            rows.append((RowStatus.SAME, found, found))
        elif marked.event is not None and marked.event.expected is not None:
            expected = EventSide(
                event.number, event.type_name, marked.event.expected,
                printable(f"captured: {_reason_tail(marked.reason)}"),
            )  # fmt: skip
            rows.append((RowStatus.DIFFERS, found, expected))
        else:
            rows.append((RowStatus.EXTRA, found, None))
        rows += [(RowStatus.MISSING, None, side) for side in missing_after.get(event.number, [])]
    return rows, notes


def _described_found(rows: tuple[EventRow, ...], events: Sequence[Event]) -> tuple[EventRow, ...]:
    """The kept rows with the node's events described; an accepted event's expected side is
    the found one."""
    by_number = {event.number: event for event in events}
    described = []
    for row in rows:
        if row.found is None:
            described.append(row)
            continue
        text = printable(describe_event(by_number[row.found.number]))
        found = replace(row.found, description=text)
        expected = found if row.expected is row.found else row.expected
        described.append(replace(row, found=found, expected=expected))
    return tuple(described)


def _reason_tail(reason: str) -> str:
    """What a finding says the capture expected: the text after "the policy captured"."""
    marker = "the policy captured "
    at = reason.find(marker)
    return reason[at + len(marker) :] if at >= 0 else reason


def summary(comparison: BootComparison) -> Mapping[str, int]:
    """How many rows have each status (for tests and logs)."""
    counts = dict.fromkeys((str(status) for status in RowStatus), 0)
    for pcr in comparison.pcrs:
        for row in pcr.events:
            counts[str(row.status)] += 1
    return counts


__all__ = [
    "DESCRIPTION_LIMIT",
    "ROWS_PER_PCR",
    "BootComparison",
    "EventRow",
    "EventSide",
    "PcrComparison",
    "RowStatus",
    "compare_boot",
    "printable",
    "summary",
]
