"""Replaying an event log to the PCR values it claims (PFP 10.2, 3.3.2 "StartupLocality").

Every bank's PCRs start at zero, except PCR 0, which starts at the locality
the firmware's StartupLocality event names. Events of type EV_NO_ACTION are
informational and never extended.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from stockade.evidence.algorithms import HASHES
from stockade.evidence.errors import EventLogMismatch, MalformedStructure, PcrMismatch
from stockade.evidence.eventlog import Event, EventLog, EventType
from stockade.evidence.pcr_values import PcrValues, bank_name

STARTUP_LOCALITY_SIGNATURE = b"StartupLocality\x00"


def startup_locality(event: Event) -> int | None:
    """The locality a StartupLocality EV_NO_ACTION event names, else None."""
    if (
        event.type == EventType.EV_NO_ACTION
        and event.pcr == 0
        and len(event.data) == len(STARTUP_LOCALITY_SIGNATURE) + 1
        and event.data.startswith(STARTUP_LOCALITY_SIGNATURE)
    ):
        return event.data[-1]
    return None


@dataclass(frozen=True)
class Replay:
    """PCR values a log replays to, and the banks it could not compute (unknown hashes)."""

    values: PcrValues
    uncomputable_banks: tuple[int, ...]


def replay(log: EventLog, banks_wanted: Iterable[int] | None = None) -> Replay:
    """Extend every measured event into its PCR in every bank the log carries
    (or only in ``banks_wanted``: a verifier replays just the banks it was quoted)."""
    wanted = None if banks_wanted is None else set(banks_wanted)
    computable = [alg for alg in log.banks if alg in HASHES and (wanted is None or alg in wanted)]
    banks: dict[int, dict[int, bytes]] = {alg: {} for alg in computable}
    digesters = {alg: HASHES[alg] for alg in computable}
    zeros = {alg: bytes(digesters[alg].digest_size) for alg in computable}
    extenders = {alg: (digesters[alg].constructor, banks[alg], zeros[alg]) for alg in computable}
    no_action = EventType.EV_NO_ACTION
    pcr0_started = False
    for event in log.events:
        _, pcr, event_type, digests, _, _ = event
        if event_type == no_action:
            locality = startup_locality(event)
            if locality is not None:
                # PCR 0's initial value is set once, before its first measurement (PFP
                # 10.4.5.3); a later one would erase the measurements logged before it.
                if pcr0_started:
                    raise MalformedStructure(
                        "event log",
                        event.offset,
                        f"StartupLocality event {event.number} comes after PCR 0 was "
                        "initialised or measured",
                    )
                for alg in computable:
                    banks[alg][0] = zeros[alg][:-1] + bytes([locality])
                pcr0_started = True
            continue
        if pcr == 0:
            pcr0_started = True
        for alg, digest in digests:
            found = extenders.get(alg)
            if found is not None:
                new, bank, zero = found
                bank[pcr] = new(bank.get(pcr, zero) + digest).digest()
    uncomputable = tuple(alg for alg in log.banks if alg not in HASHES)
    # Every bank the log declares is reported, even one no event extends.
    return Replay(PcrValues(banks), uncomputable)


_VERIFIED = object()


def _banks_missing(event: Event, banks: Iterable[int]) -> list[int]:
    """The banks in ``banks`` that ``event`` carries no digest for (so were never extended)."""
    return [alg for alg in banks if event.digest(alg) is None]


@dataclass(frozen=True)
class VerifiedEventLog:
    """A log whose events in ``trusted_pcrs`` replay to PCR values a TPM quoted, in each
    of ``banks``.

    Only ``verify_log`` makes one; decoded boot state (Secure Boot, loaded
    images, command line) is read from ``trusted_events()``, never from ``log``
    or a bare ``EventLog``.
    """

    log: EventLog
    trusted_pcrs: frozenset[int]
    banks: tuple[int, ...]  # the banks the replay was checked in: quoted, logged and computable
    replayed: PcrValues  # what the log replays to in ``banks``: the quoted values there
    _issued_by: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._issued_by is not _VERIFIED:
            raise TypeError("a VerifiedEventLog comes only from verify_log()")

    def trusted_events(self) -> Iterable[Event]:
        """Events extended into a PCR that was checked against the quote, in log order.

        Each one carries a digest for every bank in ``banks``, and that digest is
        part of the replayed (and so quoted) PCR value. EV_NO_ACTION events are never
        extended and never yielded, whatever PCR they name.
        """
        no_action = EventType.EV_NO_ACTION
        return (
            e
            for e in self.log.events
            if e.pcr in self.trusted_pcrs
            and e.type != no_action
            and not _banks_missing(e, self.banks)
        )


def verify_log(
    log: EventLog, quoted: PcrValues, pcrs: Iterable[int] | None = None
) -> VerifiedEventLog:
    """Check that ``log`` replays to ``quoted`` for ``pcrs`` (default: every PCR the log
    measures that the quote covers), in every bank the quote and the log both carry
    and Stockade can compute.

    Every measured event in those PCRs must carry a digest for each of those banks
    (PFP 9.1 of rev 1.04, 10.2.2 of later revisions: a TCG_PCR_EVENT2 carries a
    digest for every bank the Spec ID event declares). An event without one was
    never extended into that bank, so the quote says nothing about it: the log is
    refused with ``MalformedStructure`` naming the event and its PCR.

    Raises ``EventLogMismatch`` naming each PCR and bank that differs and the
    last event measured into it. PCRs the quote does not cover stay untrusted.
    """
    # A bank without a hash implementation replays to nothing; checking it would accept
    # any events against a quoted PCR that happens to be all zeros.
    banks = tuple(alg for alg in quoted.banks if alg in log.banks and alg in HASHES)
    if not banks:
        raise EventLogMismatch(
            "banks", "the quote and the log share no PCR bank that Stockade can replay"
        )
    replayed = replay(log, banks).values
    no_action = EventType.EV_NO_ACTION
    measured = {e.pcr for e in log.events if e.type != no_action}
    quoted_pcrs = {index for values in quoted.banks.values() for index in values}
    wanted = set(pcrs) if pcrs is not None else measured & quoted_pcrs
    for event in log.events:
        if event.pcr not in wanted or event.type == no_action:
            continue
        missing = _banks_missing(event, banks)
        if missing:
            names = " or ".join(bank_name(alg) for alg in missing)
            raise MalformedStructure(
                "TCG_PCR_EVENT2",
                event.offset,
                f"event {event.number} ({event.type_name}, PCR {event.pcr}) carries no "
                f"{names} digest, so it was never extended into the quoted {names} bank "
                "(every event must carry a digest for every bank the log declares)",
            )
    problems = []
    mismatches: list[PcrMismatch] = []
    for index in sorted(wanted):
        for alg in banks:
            expected = quoted.get(alg, index)
            if expected is None:
                problems.append(f"PCR {index} {bank_name(alg)} was not quoted")
                mismatches.append(PcrMismatch(index, bank_name(alg), None, None))
                continue
            size = len(expected)
            actual = replayed.get(alg, index) or bytes(size)
            if actual != expected:
                last = next(
                    (e for e in reversed(log.events) if e.pcr == index and e.type != no_action),
                    None,
                )
                where = f"; last event #{last.number} {last.type_name}" if last else ""
                problems.append(
                    f"PCR {index} {bank_name(alg)}: log replays to {actual.hex()}, "
                    f"TPM quoted {expected.hex()}{where}"
                )
                mismatches.append(
                    PcrMismatch(
                        index,
                        bank_name(alg),
                        expected,
                        actual,
                        last.number if last else None,
                        last.type_name if last else None,
                    )
                )
    if problems:
        raise EventLogMismatch("replay", "; ".join(problems), tuple(mismatches))
    return VerifiedEventLog(log, frozenset(wanted), banks, replayed, _VERIFIED)
