"""Replaying an event log to the PCR values it claims (PFP 10.2, 3.3.2 "StartupLocality").

Every bank's PCRs start at zero, except PCR 0, which starts at the locality
the firmware's StartupLocality event names. Events of type EV_NO_ACTION are
informational and never extended.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from stockade.evidence.algorithms import HASHES
from stockade.evidence.errors import EventLogMismatch, MalformedStructure
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


@dataclass(frozen=True)
class VerifiedEventLog:
    """A log whose events in ``trusted_pcrs`` replay to PCR values a TPM quoted.

    Only ``verify_log`` makes one; decoded boot state (Secure Boot, loaded
    images, command line) is read from this, never from a bare ``EventLog``.
    """

    log: EventLog
    trusted_pcrs: frozenset[int]
    _issued_by: object = field(default=None, repr=False, compare=False)

    def __post_init__(self) -> None:
        if self._issued_by is not _VERIFIED:
            raise TypeError("a VerifiedEventLog comes only from verify_log()")

    def trusted_events(self) -> Iterable[Event]:
        """Events whose PCR was checked against the quote, in log order."""
        return (e for e in self.log.events if e.pcr in self.trusted_pcrs)


def verify_log(
    log: EventLog, quoted: PcrValues, pcrs: Iterable[int] | None = None
) -> VerifiedEventLog:
    """Check that ``log`` replays to ``quoted`` for ``pcrs`` (default: every PCR the log
    measures that the quote covers), in every bank both carry.

    Raises ``EventLogMismatch`` naming each PCR and bank that differs and the
    last event measured into it. PCRs the quote does not cover stay untrusted.
    """
    replayed = replay(log, quoted.banks).values
    measured = {e.pcr for e in log.events if e.type != EventType.EV_NO_ACTION}
    quoted_pcrs = {index for values in quoted.banks.values() for index in values}
    wanted = set(pcrs) if pcrs is not None else measured & quoted_pcrs
    common_banks = [alg for alg in quoted.banks if alg in replayed.banks or alg in log.banks]
    if not common_banks:
        raise EventLogMismatch("banks", "the quote and the log share no PCR bank")
    problems = []
    for index in sorted(wanted):
        for alg in common_banks:
            expected = quoted.get(alg, index)
            if expected is None:
                problems.append(f"PCR {index} {bank_name(alg)} was not quoted")
                continue
            size = len(expected)
            actual = replayed.get(alg, index) or bytes(size)
            if actual != expected:
                last = next(
                    (e for e in reversed(log.events) if e.pcr == index),
                    None,
                )
                where = f"; last event #{last.number} {last.type_name}" if last else ""
                problems.append(
                    f"PCR {index} {bank_name(alg)}: log replays to {actual.hex()}, "
                    f"TPM quoted {expected.hex()}{where}"
                )
    if problems:
        raise EventLogMismatch("replay", "; ".join(problems))
    return VerifiedEventLog(log, frozenset(wanted), _VERIFIED)
