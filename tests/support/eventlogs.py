"""Event logs edited for tests: one event changed and the log written back with its own
writer, so the edit replays consistently (only a quote or a policy can tell)."""

from __future__ import annotations

from stockade.evidence.algorithms import HASHES
from stockade.evidence.eventlog import EventLog


def rewritten(
    log: EventLog, number: int, data: bytes | None = None, *, digests: bool = True
) -> EventLog:
    """``log`` with event ``number`` changed: new ``data`` with every digest it carries
    recomputed over it (``digests=False``: kept, so the data is not what was measured), or,
    without data, every digest replaced (something else was measured)."""
    event = log.events[number]
    if data is None:
        changed = event._replace(
            digests=tuple((a, HASHES[a].digest(b"tampered" + d)) for a, d in event.digests)
        )
    elif digests:
        changed = event._replace(
            data=data, digests=tuple((a, HASHES[a].digest(data)) for a, _ in event.digests)
        )
    else:
        changed = event._replace(data=data)
    events = (*log.events[:number], changed, *log.events[number + 1 :])
    return EventLog(log.crypto_agile, log.spec_id, events)
