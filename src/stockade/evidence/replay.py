"""Replaying an event log to the PCR values it claims (PFP 10.2, 3.3.2 "StartupLocality").

Every bank's PCRs start at zero, except PCR 0, which starts at the locality
the firmware's StartupLocality event names. Events of type EV_NO_ACTION are
informational and never extended.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.evidence.algorithms import HASHES
from stockade.evidence.eventlog import Event, EventLog, EventType
from stockade.evidence.pcr_values import PcrValues

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


def replay(log: EventLog) -> Replay:
    """Extend every measured event into its PCR in every bank the log carries."""
    computable = [alg for alg in log.banks if alg in HASHES]
    banks: dict[int, dict[int, bytes]] = {alg: {} for alg in computable}
    digesters = {alg: HASHES[alg] for alg in computable}
    for event in log.events:
        if event.type == EventType.EV_NO_ACTION:
            locality = startup_locality(event)
            if locality is not None:
                for alg in computable:
                    size = digesters[alg].digest_size
                    banks[alg][0] = bytes(size - 1) + bytes([locality])
            continue
        for alg, digest in event.digests:
            if alg not in digesters:
                continue
            hash_ = digesters[alg]
            bank = banks[alg]
            current = bank.get(event.pcr)
            if current is None:
                current = bytes(hash_.digest_size)
            bank[event.pcr] = hash_.digest(current + digest)
    uncomputable = tuple(alg for alg in log.banks if alg not in HASHES)
    return Replay(PcrValues({alg: values for alg, values in banks.items() if values}), uncomputable)
