"""One attestation's execution log, appraised as the verifier sees it (docs/execution-log.md).

The node sends its execution log from the first record the verifier has not acknowledged
(``log_from``), possibly followed by a torn tail (bytes of a record a crash cut short).
``appraise_node_executions`` skips what the verifier already holds, names a gap or a torn
tail, and hands the new records to ``appraise_executions`` against the quoted PCR 13. Records
that never started come back in their abandoned form, pending records the quote proved in their
done form, so the stored log replays as the node's. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import dataclass

from stockade.appraisal.executions import ExecutionState, Forbidden, appraise_executions
from stockade.evidence.cel import CelRecord, MalformedCel, TruncatedCel, iter_cel
from stockade.evidence.execution import (
    ABANDONED_CONTENT_TYPE,
    CONTENT_TYPE,
    EXECUTION_PCR,
    STATUS_CONTENT_TYPES,
    ExecutionRecord,
    with_status,
)
from stockade.evidence.pcr_values import PcrValues


@dataclass(frozen=True)
class ExecutionOutcome:
    """What one attestation's execution log showed."""

    reasons: tuple[str, ...]  # empty when the log replays to the quote and nothing is forbidden
    state: ExecutionState | None  # the state to keep (None: keep the previous one)
    records: tuple[tuple[int, ExecutionRecord, bytes], ...]  # recnum, record, its CEL bytes
    next_recnum: int  # where the agent continues next time
    boot: tuple[int, int]  # (resetCount, restartCount) of the quote
    not_started: tuple[int, ...] = ()  # recnums that were never extended

    @property
    def ok(self) -> bool:
        return not self.reasons


def appraise_node_executions(
    previous: ExecutionState | None,
    reset_count: int,
    restart_count: int,
    quoted: PcrValues,
    log: bytes,
    log_from: int,
    forbidden: Forbidden,
) -> ExecutionOutcome:
    """Appraise ``log`` (records from ``log_from`` on) against the quoted PCR 13."""
    boot = (reset_count, restart_count)
    same_boot = previous is not None and (previous.reset_count, previous.restart_count) == boot
    expected = previous.next_recnum if same_boot and previous is not None else 0
    pcr13 = {alg: values[EXECUTION_PCR] for alg, values in quoted.banks.items()
             if EXECUTION_PCR in values}  # fmt: skip

    def refused(reason: str) -> ExecutionOutcome:
        return ExecutionOutcome((f"execution log: {reason}",), None, (), expected, boot)

    if log_from > expected:
        return refused(f"records {expected} to {log_from - 1} were not sent")
    complete: list[CelRecord] = []
    torn = None
    offset = 0
    try:
        for record in iter_cel(log):
            complete.append(record)
            offset += record.size
    except MalformedCel as error:
        kind = "torn tail" if isinstance(error, TruncatedCel) else "malformed tail"
        recnum = complete[-1].recnum + 1 if complete else log_from
        where = f"byte offset {offset}" + (
            "" if log_from == 0 else f" of the records sent from record {log_from}"
        )
        torn = (
            f"{kind}: record {recnum} at {where} is incomplete ({len(log) - offset} bytes:"
            f" {error.reason}): the node crashed or ran out of space mid-append"
        )
    records = [r for r in complete if r.recnum >= expected]
    new_log = b"".join(record.marshal() for record in records)
    appraisal = appraise_executions(
        previous if same_boot else None, reset_count, restart_count, new_log, pcr13, forbidden
    )
    if torn is not None or not appraisal.ok:
        reasons = ([torn] if torn else []) + list(appraisal.reasons)
        return ExecutionOutcome(
            tuple(f"execution log: {reason}" for reason in reasons), None, (), expected, boot
        )
    not_started = frozenset(appraisal.not_started)
    raw = {record.recnum: _final(record, record.recnum in not_started) for record in records}
    decoded = tuple((recnum, record, raw[recnum]) for recnum, record in appraisal.records)
    return ExecutionOutcome(
        (), appraisal.state, decoded, appraisal.state.next_recnum, boot, appraisal.not_started
    )


def _final(record: CelRecord, not_started: bool) -> bytes:
    """The record's CEL bytes with its final status: abandoned if it never started, else
    done (a pending record whose extend the quote proved)."""
    if record.content_type not in STATUS_CONTENT_TYPES:
        return record.marshal()
    status = ABANDONED_CONTENT_TYPE if not_started else CONTENT_TYPE
    return record._replace(content=with_status(record.content, status)).marshal()
