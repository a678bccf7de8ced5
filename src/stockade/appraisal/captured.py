"""Golden-machine policies: the boot of one known-good machine, captured from its event log,
and the offline appraisal of another log against it.

``capture_policy`` keeps, for every PCR the log measures among ``CAPTURED_PCRS`` (0-9 and
11-14: firmware, boot chain, Secure Boot, shim's MOK state in 14; never 10, IMA's), the
ordered *trusted* events of that PCR (``VerifiedEventLog.trusted_events``: extended into a
replayed PCR, carrying a digest for every verified bank, as go-attestation's rule) with the
digest in one bank (sha256 when it was verified, else the first verified bank: sha1 for a
SHA-1 log), a short description of what the event says it measured (for an operator
reviewing the document; the comparison never trusts it) and the PCR's final value. The
machine it was captured on is named (``machines``, the policy id unless told). PCR 7's dbx
and shim's SbatLevel also record what they revoke (``captured_revocations``).

A PCR holds one or more accepted *variants* (``CapturedVariant``: an event sequence, the
machines it was seen on; ``captured_fleet.merge_captured`` makes several, one per firmware
version for example; a machine captured before and after a firmware update is in both).
An event is exact (its digest), ``per_node`` (one or more digests per machine, several when
the machine's captures differ there; with the reason) or ``excluded`` (its digest not
compared, with the reason; its type and position still are).

``appraise_captured`` compares, PCR by PCR, the trusted events of a verified log with each
variant's, by (type, digest): the common prefix and suffix match, and what lies between is
paired in order: a pair is a changed event, an unpaired captured event is missing, an
unpaired logged one is extra. A per_node event matches any of the digests of the ``node``
named, never another machine's (no node, or one not listed, is a finding naming the event
and the machines listed); an excluded one matches any event of its type; a dbx or SbatLevel
event with another digest matches when its data is what its digest measures and it is at
least as strict as the captured one (every revocation kept; every SBAT generation and the
date at least as new), else the finding says what is missing or older; such an event's data
must be what its digest measures even when the digest is the captured one. The PCR passes
when any variant matches; otherwise its findings are those against the closest variant
(fewest differing events), each saying how many variants were accepted. Each finding names
the PCR and the event (its index in the log, type, description, expected and found digest:
a per_node event's first for the node). A PCR whose events all match but whose replayed
value differs is named without an event: PCR 0's StartupLocality, or a node with several
values in the variant (its captures differ in per_node events) whose log mixes them (each
digest one of its own, the sequence none it was captured with). A PCR the policy holds that
the log's verification did not cover, a PCR the log measures that the policy does not hold,
and a policy bank the log was not verified in are findings too. Any finding is
``contraindicated``. Everything is O(events x variants); descriptions are decoded only for
findings, dbx and SbatLevel only when their digest differs.

When a document is read, each variant's value must follow from its events: a fully exact
variant's ``value`` (PCR 0 from any StartupLocality, 0-4); a variant with per_node events
has ``values`` per machine instead (one per capture of the machine); a variant with an
excluded event has no value at all (nothing to check it against: the check is skipped,
and PCR 0's StartupLocality is then not compared at appraisal). In ``per_node`` and
``values`` a machine's entry is a hex string, or a list of them when it has several (at
least one, none twice; a document with one per machine is written with strings only).
The rule for ``values``: each value listed for a machine must be what some sequence its
digests allow extends the PCR to, a sequence taking one of the machine's digests for each
per_node event (``machine_sequences``); at most ``SEQUENCES_LIMIT`` sequences per machine
and variant are tried, more is ``CapturedPolicyInvalid``. A machine may be in several
variants of a PCR, never twice with the same events.

Pure: no I/O.
"""

from __future__ import annotations

import functools
import itertools
import re
from collections.abc import Iterable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from enum import StrEnum
from functools import partial
from typing import Any

from stockade.appraisal.captured_revocations import (
    DBX,
    EFI_IMAGE_SECURITY_DATABASE_GUID,
    SBAT_LEVEL,
    SHIM_LOCK_GUID,
    Revocations,
    SbatLevel,
    dbx_revocations,
    measured_variable,
    parse_sbat_level,
    shown_missing,
)
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
from stockade.strict_json import Fields, read_array, read_hex, read_integer, read_string

KIND = "captured"
CAPTURED_PCRS = frozenset({0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 11, 12, 13, 14})
BANK_PREFERENCE = (Alg.SHA256, Alg.SHA384, Alg.SHA512, Alg.SHA1)
MEASURED_LIMIT = 200  # characters of an event's description
FINDINGS_PER_PCR = 8  # differing events named per PCR; the rest are counted in one finding
_DIGEST_SHOWN = 16  # hex characters of a digest in a reason
MACHINE_NAME_LIMIT = 253
SEQUENCES_LIMIT = 4096  # digest sequences a variant's per_node events may allow one machine
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
    digest: bytes  # in the policy's bank; b"" when per_node or excluded
    # (machine, digest) sorted: one or more per machine (several: its captures differ here)
    per_node: tuple[tuple[str, bytes], ...] = ()
    reason: str = ""  # why the event is per machine
    excluded: str | None = None  # why its digest is not compared (None: it is)
    revocations: Revocations | None = None  # dbx: what any accepted dbx must revoke
    sbat_level: SbatLevel | None = None  # SbatLevel: the oldest accepted

    @property
    def exact(self) -> bool:
        return not self.per_node and self.excluded is None

    def digests_for(self, machine: str | None) -> tuple[bytes, ...]:
        """The digests a per_node event accepts on ``machine`` (none: not listed)."""
        return tuple(digest for listed, digest in self.per_node if listed == machine)

    @property
    def per_node_machines(self) -> tuple[str, ...]:
        """The machines a per_node event lists, each once."""
        return tuple(dict.fromkeys(machine for machine, _ in self.per_node))

    def to_document(self, bank_name: str) -> dict[str, Any]:
        document: dict[str, Any] = {
            "index": self.index,
            "type": self.type,
            "measured": self.measured,
        }
        if self.per_node:
            document["per_node"] = _per_machine_document(self.per_node)
            document["reason"] = self.reason
        elif self.excluded is not None:
            document["excluded"] = self.excluded
        else:
            document[bank_name] = self.digest.hex()
        if self.revocations is not None:
            document["revocations"] = self.revocations.to_document()
        if self.sbat_level is not None:
            document["sbat_level"] = self.sbat_level.to_document()
        return document


@dataclass(frozen=True)
class CapturedVariant:
    """One accepted event sequence of a PCR."""

    machines: tuple[str, ...]  # the machines it was captured on
    value: bytes | None  # the PCR's value when every event is exact, else None
    # (machine, value) sorted, when events are per_node: one per capture of the machine
    values: tuple[tuple[str, bytes], ...]
    events: tuple[CapturedEvent, ...]

    def values_for(self, machine: str | None) -> tuple[bytes, ...]:
        """The values this variant extends the PCR to on ``machine`` (none: unknown)."""
        if self.value is not None:
            return (self.value,)
        return tuple(value for listed, value in self.values if listed == machine)

    def to_document(self, bank_name: str, *, machines: bool) -> dict[str, Any]:
        document: dict[str, Any] = {"machines": list(self.machines)} if machines else {}
        if self.value is not None:
            document["value"] = self.value.hex()
        elif self.values:
            document["values"] = _per_machine_document(self.values)
        document["events"] = [event.to_document(bank_name) for event in self.events]
        return document


def _per_machine_document(pairs: Iterable[tuple[str, bytes]]) -> dict[str, str | list[str]]:
    """``per_node`` or ``values`` as written: a machine's hex string, or a list of them
    when it has several."""
    grouped: dict[str, list[str]] = {}
    for machine, digest in pairs:
        grouped.setdefault(machine, []).append(digest.hex())
    return {machine: hexes[0] if len(hexes) == 1 else hexes for machine, hexes in grouped.items()}


def sequence_count(events: Iterable[CapturedEvent], machine: str) -> int:
    """How many digest sequences ``events`` accept on ``machine``: the product, over its
    per_node events, of how many digests each lists for it."""
    count = 1
    for event in events:
        if event.per_node:
            count *= len(event.digests_for(machine))
    return count


def check_sequences(events: Sequence[CapturedEvent], machine: str, where: str) -> None:
    """``CapturedPolicyInvalid`` when ``events`` accept more than ``SEQUENCES_LIMIT``
    sequences on ``machine`` (each is replayed when the document is read)."""
    count = sequence_count(events, machine)
    if count > SEQUENCES_LIMIT:
        several = sum(1 for e in events if len(e.digests_for(machine)) > 1)
        raise CapturedPolicyInvalid(
            f"{where}: machine {machine}'s digests in {several} per_node events allow {count} "
            f"sequences, more than {SEQUENCES_LIMIT} (merge only its new captures)"
        )


def machine_sequences(events: Sequence[CapturedEvent], machine: str) -> Iterator[tuple[bytes, ...]]:
    """Each digest sequence ``events`` accept on ``machine``: an exact event's digest, each
    of a per_node event's digests for the machine (an excluded event's b"")."""
    return itertools.product(
        *(e.digests_for(machine) if e.per_node else (e.digest,) for e in events)
    )


@dataclass(frozen=True, init=False)
class CapturedPcr:
    """The accepted variants of one PCR (one for a single machine's capture).

    ``CapturedPcr(value, events)`` is one exact variant seen on every machine of the policy
    (its ``machines`` empty); ``CapturedPcr(variants=...)`` lists them."""

    variants: tuple[CapturedVariant, ...]

    def __init__(
        self,
        value: bytes | None = None,
        events: Sequence[CapturedEvent] = (),
        *,
        variants: Sequence[CapturedVariant] = (),
    ) -> None:
        if not variants:
            if value is None:
                raise ValueError("a captured PCR needs a value and events, or variants")
            variants = (CapturedVariant((), value, (), tuple(events)),)
        object.__setattr__(self, "variants", tuple(variants))


@dataclass(frozen=True)
class CapturedPolicy:
    policy_id: str
    bank: int  # the TPM_ALG_ID the digests and values are in
    pcrs: Mapping[int, CapturedPcr]
    machines: tuple[str, ...] = ()  # every machine the policy was captured on (() unnamed)

    @property
    def machine_names(self) -> tuple[str, ...]:
        """The machines, or the id for a policy that names none."""
        return self.machines or (self.policy_id,)

    def variant_machines(self, variant: CapturedVariant) -> tuple[str, ...]:
        """The machines ``variant`` was seen on (every machine when it names none)."""
        return variant.machines or self.machine_names

    def to_document(self) -> dict[str, Any]:
        """The document an operator reviews (YAML) and ``parse_captured_policy`` reads: a
        PCR with one variant seen on every machine is written as its ``value`` (or
        ``values``) and ``events``, otherwise as ``variants``, each naming its machines."""
        name = HASHES[self.bank].name
        document: dict[str, Any] = {"kind": KIND, "id": self.policy_id, "banks": [name]}
        named = (m for pcr in self.pcrs.values() for v in pcr.variants for m in v.machines)
        everyone = self.machines or tuple(dict.fromkeys(named))
        if everyone:
            document["machines"] = list(everyone)
        pcrs: dict[int, Any] = {}
        for index, pcr in sorted(self.pcrs.items()):
            first = pcr.variants[0]
            if len(pcr.variants) == 1 and first.machines in ((), everyone):
                pcrs[index] = first.to_document(name, machines=False)
            else:
                pcrs[index] = {
                    "variants": [
                        replace(v, machines=v.machines or everyone).to_document(name, machines=True)
                        for v in pcr.variants
                    ]
                }
        document["pcrs"] = pcrs
        return document


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


def _captured_event(event: Event, bank: int, banks: Sequence[int]) -> CapturedEvent:
    """One trusted event as the policy keeps it; PCR 7's dbx and SbatLevel with what they
    revoke, when their digests are of their data (see ``captured_revocations``)."""
    revocations = sbat = None
    if event.pcr == 7 and event.type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG:
        variable = measured_variable(event, banks, DBX, EFI_IMAGE_SECURITY_DATABASE_GUID)
        if isinstance(variable, UefiVariableData):
            revocations = dbx_revocations(variable.variable_data)
    elif event.pcr == 7 and event.type == EventType.EV_EFI_VARIABLE_AUTHORITY:
        variable = measured_variable(event, banks, SBAT_LEVEL, SHIM_LOCK_GUID)
        if isinstance(variable, UefiVariableData):
            sbat = parse_sbat_level(variable.variable_data)
    return CapturedEvent(
        event.number,
        event.type_name,
        describe_event(event),
        event.digest(bank) or b"",
        revocations=revocations,
        sbat_level=sbat,
    )


def capture_policy(
    log: VerifiedEventLog, policy_id: str, *, machine: str | None = None
) -> CapturedPolicy:
    """The golden-machine policy of a verified log (see the module docstring), captured on
    ``machine`` (default: the policy id)."""
    if not policy_id:
        raise CapturedPolicyInvalid("a captured policy needs a non-empty id")
    machines = (machine or policy_id,)
    bank = policy_bank(log.banks)
    values = replay(log.log, [bank]).values
    zero = bytes(HASHES[bank].digest_size)
    pcrs = {}
    for index, events in sorted(_trusted_by_pcr(log).items()):
        variant = CapturedVariant(
            machines,
            values.get(bank, index) or zero,
            (),
            tuple(_captured_event(e, bank, log.banks) for e in events),
        )
        pcrs[index] = CapturedPcr(variants=(variant,))
    return CapturedPolicy(policy_id, bank, pcrs, machines)


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


def _machine(value: Any, where: str) -> str:
    name = _string(value, where)
    if len(name) > MACHINE_NAME_LIMIT or not name.isprintable():
        raise CapturedPolicyInvalid(f"{where} {name[:40]!r} is not a machine name")
    return name


def _machines(value: Any, where: str) -> tuple[str, ...]:
    items = read_array(value, where, error=CapturedPolicyInvalid)
    if not items:
        raise CapturedPolicyInvalid(f"{where} names no machine")
    names = tuple(_machine(item, f"{where}[{n}]") for n, item in enumerate(items))
    if len(set(names)) != len(names):
        raise CapturedPolicyInvalid(f"{where} names a machine twice")
    return names


def _per_machine_hex(
    value: Any, where: str, size: int, what: str = "digest"
) -> tuple[tuple[str, bytes], ...]:
    """``per_node`` or ``values``: each machine's hex string, or a list of them (at least
    one, none twice), as sorted (machine, bytes) pairs."""
    fields = Fields(value, where, error=CapturedPolicyInvalid)
    if not fields.value:
        raise CapturedPolicyInvalid(f"{where} names no machine")
    pairs: list[tuple[str, bytes]] = []
    for key, item in fields.value.items():
        machine = _machine(key, f"{where} key")
        path = fields.path(machine)
        if not isinstance(item, list):
            pairs.append((machine, fields.hex(key, length=size)))
            continue
        if not item:
            raise CapturedPolicyInvalid(f"{path} lists no {what}")
        listed = [
            read_hex(entry, f"{path}[{n}]", error=CapturedPolicyInvalid, length=size)
            for n, entry in enumerate(item)
        ]
        if len(set(listed)) != len(listed):
            raise CapturedPolicyInvalid(f"{path} lists a {what} twice")
        pairs.extend((machine, digest) for digest in listed)
    return tuple(sorted(pairs))


def _revocations(value: Any, where: str) -> Revocations:
    fields = Fields(value, where, error=CapturedPolicyInvalid, required={"sha256", "x509"})

    def digests(name: str) -> tuple[bytes, ...]:
        return tuple(
            read_hex(item, f"{fields.path(name)}[{n}]", error=CapturedPolicyInvalid, length=32)
            for n, item in enumerate(fields.array(name))
        )

    return Revocations(digests("sha256"), digests("x509"))


def _sbat_level(value: Any, where: str) -> SbatLevel:
    fields = Fields(value, where, error=CapturedPolicyInvalid, required={"date", "components"})
    date = fields.string("date")
    if not date.isdigit():
        raise CapturedPolicyInvalid(f"{fields.path('date')} {date!r} is not digits")
    components = fields.object("components")
    if not components.value:
        raise CapturedPolicyInvalid(f"{components.where} names no component")
    return SbatLevel(
        date,
        tuple(
            sorted(
                (_string(key, f"{components.where} key"), components.integer(key))
                for key in components.value
            )
        ),
    )


def _event(value: Any, where: str, bank_name: str, size: int) -> CapturedEvent:
    per_node = isinstance(value, dict) and "per_node" in value
    excluded = isinstance(value, dict) and "excluded" in value
    if per_node and excluded:
        raise CapturedPolicyInvalid(f"{where} is both per_node and excluded")
    required = {"index", "type", "measured"}
    optional: set[str] = set()
    if per_node:
        required |= {"per_node", "reason"}
    elif excluded:
        required.add("excluded")
    else:
        required.add(bank_name)
        optional = {"revocations", "sbat_level"}
    fields = Fields(value, where, error=CapturedPolicyInvalid, required=required, optional=optional)
    kind = fields.string("type")
    if not _EVENT_TYPE_NAME.fullmatch(kind):
        raise CapturedPolicyInvalid(f"{fields.path('type')} {kind!r} is not an event type name")
    return CapturedEvent(
        fields.integer("index"),
        kind,
        fields.optional_string("measured") or "",
        fields.hex(bank_name, length=size) if not (per_node or excluded) else b"",
        _per_machine_hex(fields.value["per_node"], fields.path("per_node"), size)
        if per_node
        else (),
        fields.string("reason") if per_node else "",
        fields.string("excluded") if excluded else None,
        _revocations(fields.value["revocations"], fields.path("revocations"))
        if fields.has("revocations")
        else None,
        _sbat_level(fields.value["sbat_level"], fields.path("sbat_level"))
        if fields.has("sbat_level")
        else None,
    )


def initial_values(index: int, bank: int) -> tuple[bytes, ...]:
    """What PCR ``index`` may start at: zero, PCR 0 from its StartupLocality (0-4)."""
    zero = bytes(HASHES[bank].digest_size - 1)
    return tuple(zero + bytes([start]) for start in (range(5) if index == 0 else range(1)))


def _check_value(index: int, value: bytes, digests: Iterable[bytes], alg: Alg, where: str) -> None:
    """``value`` must be what ``digests`` extend PCR ``index`` to (PCR 0 from its
    StartupLocality, 0-4)."""
    listed = list(digests)
    if all(extend_pcr(start, listed, alg) != value for start in initial_values(index, alg)):
        raise CapturedPolicyInvalid(f"{where} is not what the events listed extend PCR {index} to")


def _check_values(
    index: int,
    values: Sequence[tuple[str, bytes]],
    events: Sequence[CapturedEvent],
    alg: Alg,
    where: str,
) -> None:
    """Each value listed for a machine must be what some sequence its digests allow
    (``machine_sequences``: one of its digests per per_node event) extends PCR ``index``
    to. ``where`` is the path of ``values``."""
    for machine in dict.fromkeys(m for m, _ in values):
        wanted = [value for listed, value in values if listed == machine]
        path = f"{where}.{machine}"
        check_sequences(events, machine, path)
        missing = set(wanted)
        for digests in machine_sequences(events, machine):
            for start in initial_values(index, alg):
                missing.discard(extend_pcr(start, digests, alg))
            if not missing:
                break
        if len(wanted) == 1 and missing:
            raise CapturedPolicyInvalid(
                f"{path} is not what the events listed extend PCR {index} to"
            )
        if missing:
            value = next(value for value in wanted if value in missing)
            raise CapturedPolicyInvalid(
                f"{path} lists {_shown(value)}, which is not what the events listed extend "
                f"PCR {index} to with any of the machine's digests"
            )


def _variant(
    body: Any,
    where: str,
    index: int,
    alg: Alg,
    machines: tuple[str, ...] | None,
    everyone: tuple[str, ...],
) -> CapturedVariant:
    """One variant; ``machines`` None: the variant names its own (``variants`` form); ()
    the document names none (the variant is every machine's, the policy id's)."""
    name = HASHES[alg].name
    size = HASHES[alg].digest_size
    keys = {"machines", "value", "values", "events"} if machines is None else {"value", "values"}
    fields = Fields(
        body,
        where,
        error=CapturedPolicyInvalid,
        required={"events"} | ({"machines"} if machines is None else set()),
        optional=keys,
    )
    if machines is None:
        machines = _machines(fields.value["machines"], fields.path("machines"))
    covers = machines or everyone  # the machines per_node events and values must name
    events = tuple(
        _event(item, f"{where}.events[{position}]", name, size)
        for position, item in enumerate(fields.array("events"))
    )
    excluded = any(e.excluded is not None for e in events)
    per_node = [e for e in events if e.per_node]
    for position, event in enumerate(events):
        if event.per_node and set(event.per_node_machines) != set(covers):
            raise CapturedPolicyInvalid(
                f"{where}.events[{position}].per_node names machines "
                f"{', '.join(event.per_node_machines)}, the variant's are "
                f"{', '.join(covers)}"
            )
    if excluded:
        for field in ("value", "values"):
            if field in fields.value:
                raise CapturedPolicyInvalid(
                    f"{fields.path(field)}: a variant with an excluded event has no value to check"
                )
        return CapturedVariant(machines, None, (), events)
    if per_node:
        if "value" in fields.value or "values" not in fields.value:
            raise CapturedPolicyInvalid(
                f"{where}: a variant with per_node events has values (per machine), not value"
            )
        values = _per_machine_hex(fields.value["values"], fields.path("values"), size, "value")
        named = tuple(dict.fromkeys(m for m, _ in values))
        if set(named) != set(covers):
            raise CapturedPolicyInvalid(
                f"{fields.path('values')} names machines {', '.join(named)}, "
                f"the variant's are {', '.join(covers)}"
            )
        _check_values(index, values, events, alg, fields.path("values"))
        return CapturedVariant(machines, None, values, events)
    if "values" in fields.value:
        raise CapturedPolicyInvalid(
            f"{fields.path('values')}: a variant of exact events has one value, not values"
        )
    if "value" not in fields.value:
        raise CapturedPolicyInvalid(f"{where} lacks value")
    value = fields.hex("value", length=size)
    _check_value(index, value, (e.digest for e in events), alg, fields.path("value"))
    return CapturedVariant(machines, value, (), events)


def parse_captured_policy(document: Any) -> CapturedPolicy:
    """A captured policy from its document (as ``to_document`` writes it, loaded from YAML
    or JSON), or ``CapturedPolicyInvalid`` naming the field path. A document without
    ``machines`` was captured on the machine its id names."""
    top = Fields(
        document,
        "policy",
        error=CapturedPolicyInvalid,
        required={"kind", "id", "banks", "pcrs"},
        optional={"machines"},
    )
    kind = top.string("kind")
    if kind != KIND:
        raise CapturedPolicyInvalid(f"policy.kind is {kind!r}, expected {KIND!r}")
    policy_id = top.string("id")
    explicit = (
        _machines(top.value["machines"], "policy.machines") if "machines" in top.value else ()
    )
    machines = explicit or (policy_id,)
    banks = top.array("banks")
    if len(banks) != 1:
        raise CapturedPolicyInvalid(f"policy.banks names {len(banks)} banks, expected one")
    bank_name = _string(banks[0], "policy.banks[0]")
    algorithm = HASHES_BY_NAME.get(bank_name)
    if algorithm is None:
        raise CapturedPolicyInvalid(f"policy.banks[0] {bank_name!r} is not a known bank")
    pcr_map = top.object("pcrs").value
    pcrs: dict[int, CapturedPcr] = {}
    for key, body in pcr_map.items():
        index = _pcr_index(key, "policy.pcrs")
        if index in pcrs:
            raise CapturedPolicyInvalid(f"policy.pcrs names PCR {index} twice")
        where = f"policy.pcrs.{index}"
        if isinstance(body, dict) and "variants" in body:
            fields = Fields(body, where, error=CapturedPolicyInvalid, required={"variants"})
            items = fields.array("variants")
            if not items:
                raise CapturedPolicyInvalid(f"{where}.variants lists no variant")
            variants = tuple(
                _variant(item, f"{where}.variants[{n}]", index, algorithm.alg, None, machines)
                for n, item in enumerate(items)
            )
            seen: dict[tuple[str, tuple[CapturedEvent, ...]], int] = {}
            for n, variant in enumerate(variants):
                for machine in variant.machines:
                    earlier = seen.setdefault((machine, variant.events), n)
                    if earlier != n:
                        raise CapturedPolicyInvalid(
                            f"{where}.variants[{n}].machines: {machine} is also in "
                            f"variants[{earlier}], with the same events"
                        )
        else:
            variants = (_variant(body, where, index, algorithm.alg, explicit, machines),)
        unknown = sorted({m for v in variants for m in v.machines} - set(machines))
        if unknown:
            raise CapturedPolicyInvalid(
                f"{where} names machines not in policy.machines ({', '.join(machines)}): "
                f"{', '.join(unknown)}"
            )
        pcrs[index] = CapturedPcr(variants=variants)
    return CapturedPolicy(policy_id, int(algorithm.alg), pcrs, explicit)


# -- appraisal -------------------------------------------------------------------------------


def _found_event(event: Event, bank: int, expected: bytes | None) -> FindingEvent:
    return FindingEvent(
        event.number, event.type_name, describe_event(event), expected, event.digest(bank)
    )


def _at_least_as_strict(
    wanted: CapturedEvent, actual: Event, banks: Sequence[int], *, same_digest: bool
) -> str:
    """Why a dbx or SbatLevel event is not accepted for ``wanted`` ("" when it is: its data
    is what its digest measures, and the digest is the captured one or the data at least
    as strict). A log whose data is not what the digest measures is refused even with the
    captured digest: it says something else was measured than what was."""
    if wanted.revocations is not None:
        variable = measured_variable(actual, banks, DBX, EFI_IMAGE_SECURITY_DATABASE_GUID)
        if isinstance(variable, str):
            return variable
        if same_digest:
            return ""
        found = dbx_revocations(variable.variable_data)
        if found is None:
            return "its dbx is not signature lists of sha256 and X.509 entries"
        missing = wanted.revocations.missing_from(found)
        if missing:
            return f"its dbx lacks required revocations: {shown_missing(missing)}"
        return ""
    if wanted.sbat_level is not None:
        variable = measured_variable(actual, banks, SBAT_LEVEL, SHIM_LOCK_GUID)
        if isinstance(variable, str):
            return variable
        if same_digest:
            return ""
        level = parse_sbat_level(variable.variable_data)
        if level is None:
            return "its SbatLevel is not sbat CSV"
        older = level.older_than(wanted.sbat_level)
        return f"its SbatLevel is older: {'; '.join(older)}" if older else ""
    return "?"  # unreachable: callers ask only for such events


@dataclass(frozen=True)
class _Context:
    """What a comparison of events needs besides the events."""

    bank: int
    banks: tuple[int, ...]  # the banks the log was verified in
    node: str | None


def _mismatch(wanted: CapturedEvent, actual: Event, context: _Context) -> str | None:
    """None when ``actual`` is accepted for ``wanted``; else why not ("" when its digest
    simply differs)."""
    if wanted.type != _type_name(actual.type):
        return ""
    if wanted.excluded is not None:
        return None
    digest = actual.digest(context.bank)
    if wanted.per_node:
        expected = wanted.digests_for(context.node)
        if not expected:
            who = (
                "no machine was named"
                if context.node is None
                else f"machine {context.node!r} is not one of them"
            )
            listed = ", ".join(wanted.per_node_machines)
            return f"it is per machine ({wanted.reason}) for {listed}, and {who}"
        if digest not in expected:
            whose = (
                f"machine {context.node!r}'s differs"
                if len(expected) == 1
                else f"none of machine {context.node!r}'s {len(expected)} digests matches"
            )
            return f"it is per machine ({wanted.reason}): {whose}"
        return None
    if wanted.revocations is None and wanted.sbat_level is None:
        return None if wanted.digest == digest else ""
    same = wanted.digest == digest
    return _at_least_as_strict(wanted, actual, context.banks, same_digest=same) or None


def _expected_digest(wanted: CapturedEvent, node: str | None) -> bytes | None:
    """The digest a finding shows as expected (a per_node event's first for ``node``)."""
    if wanted.per_node:
        return next(iter(wanted.digests_for(node)), None)
    return None if wanted.excluded is not None else wanted.digest


def _compare_pcr(
    index: int, captured: Sequence[CapturedEvent], found: Sequence[Event], context: _Context
) -> tuple[list[Finding], int]:
    """Findings for one PCR's events (matching prefix and suffix, the middle paired) and
    how many events differ."""
    limit = min(len(captured), len(found))
    start = 0
    while start < limit and _mismatch(captured[start], found[start], context) is None:
        start += 1
    end = 0
    while end < limit - start and _mismatch(captured[-1 - end], found[-1 - end], context) is None:
        end += 1
    wanted_middle = captured[start : len(captured) - end]
    found_middle = found[start : len(found) - end]
    findings: list[Finding] = []
    bank = context.bank
    name = HASHES[bank].name
    differing = 0
    for position in range(max(len(wanted_middle), len(found_middle))):
        wanted = wanted_middle[position] if position < len(wanted_middle) else None
        actual = found_middle[position] if position < len(found_middle) else None
        why = None if wanted is None or actual is None else _mismatch(wanted, actual, context)
        if wanted is not None and actual is not None and why is None:
            continue  # paired in the middle, and accepted
        differing += 1
        if differing > FINDINGS_PER_PCR:
            continue
        if wanted is not None and actual is not None:
            expected = _expected_digest(wanted, context.node)
            described = _found_event(actual, bank, expected)
            reason = (
                f"PCR {index}: event {actual.number} {actual.type_name} "
                f"({described.measured}) has {name} {_shown(actual.digest(bank))}, the policy "
                f"captured {_shown(expected)}"
            )
            if (wanted.index, wanted.type, wanted.measured) != (
                actual.number,
                described.type,
                described.measured,
            ):
                reason += f" for event {wanted.index} {wanted.type} ({wanted.measured})"
            if why:
                reason += f": {why}"
            findings.append(Finding(index, reason, described))
        elif wanted is not None:
            expected = _expected_digest(wanted, context.node)
            reason = (
                f"PCR {index}: the log lacks the captured event {wanted.index} {wanted.type} "
                f"({wanted.measured}), {name} {_shown(expected)}"
            )
            findings.append(
                Finding(
                    index,
                    reason,
                    FindingEvent(wanted.index, wanted.type, wanted.measured, expected, None),
                )
            )
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
    return findings, differing


def _compare_variant(
    index: int,
    variant: CapturedVariant,
    events: Sequence[Event],
    log: VerifiedEventLog,
    context: _Context,
) -> tuple[list[Finding], int]:
    findings, differing = _compare_pcr(index, variant.events, events, context)
    expected = variant.values_for(context.node)
    if findings or not expected or (index != 0 and len(expected) == 1):
        return findings, differing
    # The same digests in the same order extend to the same value from the same start;
    # only PCR 0 starts elsewhere (its StartupLocality). A single value was checked
    # against its events when the policy was read. A machine with several values (its
    # captures differ in per_node events) accepts each of its digests per event, so the
    # value says the log is one of its captures, not a mix of them. The value is
    # verified: what the log replayed to, which verify_log checked against the quote.
    name = HASHES[context.bank].name
    value = log.replayed.get(context.bank, index) or b""
    if value in expected:
        return findings, differing
    captured = (
        _shown(expected[0])
        if len(expected) == 1
        else f"{len(expected)} values for machine {context.node!r} "
        f"({', '.join(map(_shown, expected))})"
    )
    locality = f"StartupLocality {_startup_locality(log.log)}" if index == 0 else ""
    if len(expected) == 1:
        why = f"the initial value, {locality}, differs"
    elif locality:
        why = f"the log mixes the machine's captures, or its {locality} differs"
    else:
        why = "the log mixes the machine's captures"
    findings.append(
        Finding(
            index,
            f"PCR {index}: {name} replays to {_shown(value)}, the policy captured {captured} "
            f"(the events match: {why})",
        )
    )
    return findings, differing + 1


def _closest(
    index: int, pcr: CapturedPcr, events: Sequence[Event], log: VerifiedEventLog, context: _Context
) -> list[Finding]:
    """No findings when a variant accepts the PCR's events; else those against the closest
    (fewest differing events, the first of equals), saying how many were accepted."""
    best: tuple[list[Finding], int] | None = None
    best_variant = pcr.variants[0]
    for variant in pcr.variants:
        findings, differing = _compare_variant(index, variant, events, log, context)
        if not findings:
            return []
        if best is None or differing < best[1]:
            best, best_variant = (findings, differing), variant
    assert best is not None  # a PCR has at least one variant
    if len(pcr.variants) == 1:
        return best[0]
    suffix = (
        f" (none of the {len(pcr.variants)} accepted variants matches; this is the closest, "
        f"captured on {', '.join(best_variant.machines or ('every machine',))})"
    )
    return [Finding(finding.pcr, finding.reason + suffix, finding.event) for finding in best[0]]


def events_value(events: Iterable[CapturedEvent], bank: int) -> bytes:
    """What ``events`` (their digests) extend a PCR starting at zero to, in ``bank``."""
    return extend_pcr(bytes(HASHES[bank].digest_size), (e.digest for e in events), bank)


def extend_pcr(initial: bytes, digests: Iterable[bytes], bank: int) -> bytes:
    """``initial`` extended with each of ``digests`` in turn, in ``bank``."""
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


def appraise_captured(
    policy: CapturedPolicy, log: VerifiedEventLog, *, node: str | None = None
) -> CapturedAppraisal:
    """Appraise a verified log against a golden-machine policy (see the module docstring);
    ``node`` names the machine the log is from, for the policy's per_node events."""
    bank = policy.bank
    name = HASHES[bank].name
    if bank not in log.banks:
        verified = ", ".join(HASHES[alg].name for alg in log.banks) or "none"
        finding = Finding(
            None,
            f"the policy is in the {name} bank, but the log was verified only in {verified}",
        )
        return CapturedAppraisal(policy.policy_id, CapturedStatus.CONTRAINDICATED, (finding,))
    context = _Context(bank, tuple(log.banks), node)
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
            findings.extend(_compare_pcr(index, (), events, context)[0])
            continue
        findings.extend(_closest(index, captured, events, log, context))
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
