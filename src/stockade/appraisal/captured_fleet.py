"""One captured policy for a fleet, from the captured (or already merged) policies of its
machines: ``merge_captured``.

Every input is first read as machines (``CapturedPolicy.machines``), each with its event
sequences per PCR: one per variant it is in, a per_node event as one of that machine's
digests (with several, each choice whose value is one the machine lists: the sequences it
was captured with); a PCR the input does not hold is an empty sequence: that machine
measures nothing there. A machine that comes again with the same sequence (a policy
merged with itself) collapses into one; with a different one (captured again after a
firmware update, a capture merged with the fleet's policy) both are kept. Then, PCR by PCR:

- sequences that are identical (types and digests, excluded events where they are) share
  a variant, listing their machines;
- in the configuration PCRs 1, 3, 5 and 6 (platform and boot configuration, not code),
  variants with the same event types in the same order become one: the events that differ
  become ``per_node`` (each machine's digests: several for a machine whose captures
  differ there, and a value per capture in ``values``), or ``excluded`` with the reason
  under ``PerMachine.EXCLUDE``; the reason names what such an event carries per machine
  (``PER_MACHINE_REASONS``: SMBIOS tables, boot options naming a NIC or disk, disk GUIDs...);
- anything else that differs (the code PCRs 0, 2, 4, 7, 8, 9 and 11-14, or other event
  types) stays separate variants, never per machine; a machine captured twice is in each
  of its variants.

Policies of different banks are ``CapturedPolicyInvalid``, and so is a machine whose
captures differ in so many per_node events of one variant that its digests allow more
than ``captured.SEQUENCES_LIMIT`` sequences. ``MergeResult.summary`` says, for an
operator, which PCRs got variants, which events became per machine and why, and which
machines have several captures, in which PCRs ("machine rack7-a has 2 captures differing
in PCR 0, 1: both accepted"): an old capture is dropped by merging the new captures only,
not the old policy. A machine's captures are accepted PCR by PCR: its old PCR 0 with its
new PCR 1 passes too, as two machines' variants already do.

Pure: no I/O.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence
from dataclasses import dataclass
from enum import StrEnum

from stockade.appraisal.captured import (
    CapturedEvent,
    CapturedPcr,
    CapturedPolicy,
    CapturedPolicyInvalid,
    CapturedVariant,
    check_sequences,
    events_value,
    extend_pcr,
    initial_values,
    sequence_count,
)
from stockade.evidence.algorithms import HASHES

CONFIGURATION_PCRS = frozenset({1, 3, 5, 6})
SHOWN_DIFFERENCES = 3  # events named per variant in the summary
PER_MACHINE_REASONS = {
    "EV_EFI_HANDOFF_TABLES": "handoff tables (SMBIOS: serial numbers, asset tags)",
    "EV_EFI_HANDOFF_TABLES2": "handoff tables (SMBIOS: serial numbers, asset tags)",
    "EV_EFI_VARIABLE_BOOT": "a boot option (names this machine's NIC or disk)",
    "EV_EFI_VARIABLE_BOOT2": "a boot option (names this machine's NIC or disk)",
    "EV_EFI_GPT_EVENT": "the GPT (this machine's disk and partition GUIDs)",
    "EV_EFI_GPT_EVENT2": "the GPT (this machine's disk and partition GUIDs)",
    "EV_PLATFORM_CONFIG_FLAGS": "platform configuration flags (set per machine)",
    "EV_TABLE_OF_DEVICES": "the table of devices (this machine's hardware)",
}


class PerMachine(StrEnum):
    """What becomes of an event that legitimately differs between machines."""

    PER_NODE = "per-node"  # a digest per machine, checked against the node named
    EXCLUDE = "exclude"  # its digest not compared (its type and position still are)


def per_machine_reason(pcr: int, event_type: str) -> str:
    """Why an event of ``event_type`` in configuration PCR ``pcr`` may differ per machine."""
    what = PER_MACHINE_REASONS.get(event_type)
    if what is not None:
        return f"{what}, in configuration PCR {pcr}"
    return f"{event_type} in configuration PCR {pcr} (platform configuration, not code)"


@dataclass(frozen=True)
class MergeResult:
    policy: CapturedPolicy
    summary: tuple[str, ...]  # one line per PCR with variants or per-machine events


@dataclass(frozen=True)
class _Run:
    """One machine's events in one PCR: each exact (its digest) or excluded."""

    machine: str
    events: tuple[CapturedEvent, ...]
    value: bytes | None  # None: unknown (an excluded event)

    def key(self) -> tuple[tuple[str, bytes, bool], ...]:
        return tuple((e.type, e.digest, e.excluded is not None) for e in self.events)

    def types(self) -> tuple[str, ...]:
        return tuple(e.type for e in self.events)


def _runs(policy: CapturedPolicy, index: int, source: str) -> list[_Run]:
    """Each machine of ``policy`` with its events in PCR ``index``: one run per sequence it
    was captured with (several when it is in several variants, or its per_node events list
    several digests)."""
    pcr = policy.pcrs.get(index)
    if pcr is None:
        empty = bytes(HASHES[policy.bank].digest_size)
        return [_Run(machine, (), empty) for machine in policy.machine_names]
    runs = []
    for machine in policy.machine_names:
        variants = [v for v in pcr.variants if machine in policy.variant_machines(v)]
        if not variants:
            raise CapturedPolicyInvalid(
                f"{source}: machine {machine} is in no variant of PCR {index}"
            )
        for variant in variants:
            runs.extend(_variant_runs(index, variant, machine, policy.bank, source))
    return runs


def _variant_runs(
    index: int, variant: CapturedVariant, machine: str, bank: int, source: str
) -> list[_Run]:
    """The sequences ``variant`` was captured with on ``machine``: each choice of its
    per_node digests (``machine_sequences``) that extends the PCR to one of the machine's
    values (every choice when the variant has none: an excluded event)."""
    values = variant.values_for(machine)
    check_sequences(variant.events, machine, f"{source}: PCR {index}")
    choices = [
        tuple(CapturedEvent(e.index, e.type, e.measured, d) for d in e.digests_for(machine))
        if e.per_node
        else (e,)
        for e in variant.events
    ]
    if sequence_count(variant.events, machine) == 1:
        return [_Run(machine, tuple(c[0] for c in choices), values[0] if values else None)]
    runs = []
    for events in itertools.product(*choices):
        if not values:
            runs.append(_Run(machine, events, None))
            continue
        for start in initial_values(index, bank):
            value = extend_pcr(start, (e.digest for e in events), bank)
            if value in values:
                runs.append(_Run(machine, events, value))
                break
    return runs


def _unite(index: int, runs: Sequence[_Run], mode: PerMachine, bank: int) -> CapturedVariant:
    """One variant of runs with the same event types (a machine may have several): where
    they differ, per machine."""
    machines = tuple(dict.fromkeys(run.machine for run in runs))
    events = []
    for position, first in enumerate(runs[0].events):
        column = [run.events[position] for run in runs]
        excluded = next((e.excluded for e in column if e.excluded is not None), None)
        if excluded is not None:
            events.append(
                CapturedEvent(first.index, first.type, first.measured, b"", excluded=excluded)
            )
        elif all(e.digest == first.digest for e in column):
            events.append(first)
        elif mode is PerMachine.EXCLUDE:
            reason = per_machine_reason(index, first.type)
            events.append(
                CapturedEvent(
                    first.index,
                    first.type,
                    first.measured,
                    b"",
                    excluded=f"{reason}: differs between machines, not compared",
                )
            )
        else:
            per_node = tuple(
                sorted({(run.machine, e.digest) for run, e in zip(runs, column, strict=True)})
            )
            events.append(
                CapturedEvent(
                    first.index,
                    first.type,
                    first.measured,
                    b"",
                    per_node=per_node,
                    reason=per_machine_reason(index, first.type),
                )
            )
    if any(e.excluded is not None for e in events):
        return CapturedVariant(machines, None, (), tuple(events))
    # Configuration PCRs start at zero.
    if all(e.exact for e in events):
        value = runs[0].value
        if value is None:
            value = events_value(events, bank)
        return CapturedVariant(machines, value, (), tuple(events))
    for machine in machines:
        check_sequences(events, machine, f"PCR {index}")
    values = tuple(sorted({(run.machine, events_value(run.events, bank)) for run in runs}))
    return CapturedVariant(machines, None, values, tuple(events))


def _differences(index: int, variants: Sequence[CapturedVariant]) -> list[str]:
    """For each variant after the first, the first few of its events the first lacks."""
    first = {(e.type, e.digest) for e in variants[0].events}
    lines = []
    for number, variant in enumerate(variants[1:], start=2):
        differing = [e for e in variant.events if (e.type, e.digest) not in first]
        named = ", ".join(
            f"event {e.index} {e.type} ({e.measured})" for e in differing[:SHOWN_DIFFERENCES]
        )
        more = len(differing) - SHOWN_DIFFERENCES
        if more > 0:
            named += f" and {more} more"
        counted = f"{len(variant.events)} events against {len(variants[0].events)}"
        lines.append(
            f"PCR {index}: variant {number} ({', '.join(variant.machines)}) differs from "
            f"variant 1 in {named or counted}"
        )
    return lines


def _merge_pcr(
    index: int, runs: Sequence[_Run], mode: PerMachine, bank: int
) -> tuple[CapturedPcr, list[str]]:
    groups: dict[tuple[tuple[str, bytes, bool], ...], list[_Run]] = {}
    for run in runs:
        groups.setdefault(run.key(), []).append(run)
    summary: list[str] = []
    variants: list[CapturedVariant] = []
    if index in CONFIGURATION_PCRS:
        by_types: dict[tuple[str, ...], list[_Run]] = {}
        for group in groups.values():
            by_types.setdefault(group[0].types(), []).extend(group)
        for united in by_types.values():
            variant = _unite(index, united, mode, bank)
            variants.append(variant)
            for event in variant.events:
                if event.per_node or event.excluded is not None:
                    how = "per machine" if event.per_node else "excluded"
                    why = event.reason if event.per_node else event.excluded
                    summary.append(
                        f"PCR {index}: event {event.index} {event.type} ({event.measured}) "
                        f"{how} on {', '.join(variant.machines)}: {why}"
                    )
    else:
        for group in groups.values():
            variants.append(_unite(index, group, mode, bank))  # identical: nothing per machine
    if len(variants) > 1:
        accepted = "; ".join(", ".join(v.machines) for v in variants)
        why = (
            "different event types or counts"
            if index in CONFIGURATION_PCRS
            else "code PCR: differing events are never per machine"
        )
        summary.insert(0, f"PCR {index}: {len(variants)} variants ({why}): {accepted}")
        summary[1:1] = _differences(index, variants)
    return CapturedPcr(variants=variants), summary


def merge_captured(
    policies: Sequence[tuple[str, CapturedPolicy]],
    policy_id: str,
    *,
    per_machine: PerMachine = PerMachine.PER_NODE,
) -> MergeResult:
    """One policy accepting each machine of ``policies`` ((source name, policy) pairs, the
    source named in errors); see the module docstring."""
    if not policy_id:
        raise CapturedPolicyInvalid("a merged policy needs a non-empty id")
    if not policies:
        raise CapturedPolicyInvalid("nothing to merge: no policy given")
    bank = policies[0][1].bank
    for source, policy in policies:
        if policy.bank != bank:
            raise CapturedPolicyInvalid(
                f"{source} is in the {HASHES[policy.bank].name} bank, {policies[0][0]} in "
                f"{HASHES[bank].name}: policies of different banks cannot be merged"
            )
    machines: list[str] = []
    for _, policy in policies:
        machines.extend(m for m in policy.machine_names if m not in machines)
    indices = sorted({index for _, policy in policies for index in policy.pcrs})
    pcrs: dict[int, CapturedPcr] = {}
    summary: list[str] = []
    captures: dict[str, dict[int, int]] = {}  # machine: PCR: its different sequences there
    for index in indices:
        by_machine: dict[str, list[_Run]] = {}
        for source, policy in policies:
            for run in _runs(policy, index, source):
                kept = by_machine.setdefault(run.machine, [])
                if all(other.key() != run.key() for other in kept):
                    kept.append(run)  # an identical repeat collapses
        for machine, kept in by_machine.items():
            if len(kept) > 1:
                captures.setdefault(machine, {})[index] = len(kept)
        runs = [run for kept in by_machine.values() for run in kept]
        pcrs[index], lines = _merge_pcr(index, runs, per_machine, bank)
        summary.extend(lines)
    for machine, counts in captures.items():
        count = max(counts.values())
        summary.append(
            f"machine {machine} has {count} captures differing in PCR "
            f"{', '.join(map(str, sorted(counts)))}: "
            + (
                "both accepted (drop the old one by merging new captures only)"
                if count == 2
                else "all accepted (drop the old ones by merging new captures only)"
            )
        )
    if not summary:
        summary.append(f"every PCR is the same on {', '.join(machines)}")
    return MergeResult(CapturedPolicy(policy_id, bank, pcrs, tuple(machines)), tuple(summary))
