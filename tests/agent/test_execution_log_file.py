"""The node's execution log file (stockade.agent.execution_log): consecutive record
numbers from 0, O_APPEND + flock + fsync before ``append`` returns, incremental reads,
appends from several processes, and a corrupt file refused rather than appended to."""

from __future__ import annotations

import hashlib
import multiprocessing
import os
import stat
import time

import pytest

from stockade.agent.execution_log import (
    ExecutionLog,
    ExecutionLogCorrupt,
    ExecutionLogError,
    ExecutionLogTorn,
    RecordsNotInLog,
)
from stockade.appraisal.executions import Forbidden, appraise_executions
from stockade.evidence.cel import MalformedCel, marshal_record, parse_cel
from stockade.evidence.execution import (
    EXECUTION_PCR,
    ContainerStart,
    TrustPolicyLoaded,
    encode_record,
)

SHA1, SHA256 = 0x0004, 0x000B
HASHES = {SHA1: hashlib.sha1, SHA256: hashlib.sha256}


def content(number: int) -> bytes:
    return encode_record(
        ContainerStart(
            f"c{number}",
            "registry.example/app:1",
            "sha256:" + "ab" * 32,
            "sha256:" + "cd" * 32,
            ("/bin/app",),
            ("PATH",),
            (),
            "2025-01-02T03:04:05Z",
        )
    )


def digests(data: bytes) -> dict[int, bytes]:
    return {alg: h(data).digest() for alg, h in HASHES.items()}


def test_a_missing_or_empty_log_has_no_records(tmp_path):
    log = ExecutionLog(tmp_path / "execution.cel")
    assert log.next_recnum() == 0
    assert log.read_from(0) == b""
    with pytest.raises(RecordsNotInLog, match="is empty"):
        log.read_from(1)
    with pytest.raises(ExecutionLogError):
        log.read_from(-1)
    (tmp_path / "execution.cel").touch()
    assert log.next_recnum() == 0 and log.read_from(0) == b""


def test_appends_are_numbered_from_zero_and_read_back(tmp_path):
    path = tmp_path / "execution.cel"
    log = ExecutionLog(path)
    assert [log.append(content(n), digests(content(n))) for n in range(3)] == [0, 1, 2]
    assert log.next_recnum() == 3
    records = parse_cel(log.read_from(0))
    assert [(r.recnum, r.pcr) for r in records] == [(0, 13), (1, 13), (2, 13)]
    assert records[1].content == content(1)
    assert dict(records[1].digests) == digests(content(1))
    assert log.read_from(0) == path.read_bytes()
    assert parse_cel(log.read_from(2)) == records[2:]
    assert log.read_from(3) == b""
    with pytest.raises(RecordsNotInLog, match="records 0-2, not record 4"):
        log.read_from(4)
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_another_instance_sees_every_append(tmp_path):
    path = tmp_path / "execution.cel"
    first, second = ExecutionLog(path), ExecutionLog(path)
    first.append(content(0), digests(content(0)))
    assert second.next_recnum() == 1
    second.append(content(1), digests(content(1)))
    assert first.next_recnum() == 2
    assert first.read_from(1) == second.read_from(1)
    assert first.append(content(2), digests(content(2))) == 2


def test_append_fsyncs_the_file_and_on_creation_its_directory(tmp_path, monkeypatch):
    synced: list[str] = []
    real_fsync = os.fsync

    def fsync(fd: int) -> None:
        synced.append("directory" if stat.S_ISDIR(os.fstat(fd).st_mode) else "file")
        real_fsync(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    log = ExecutionLog(tmp_path / "execution.cel")
    log.append(content(0), digests(content(0)))
    assert synced == ["directory", "file"]
    log.append(content(1), digests(content(1)))
    assert synced == ["directory", "file", "file"]


def test_the_file_is_opened_append_only_and_locked_while_writing(tmp_path, monkeypatch):
    import fcntl

    seen: list[tuple[int, int]] = []
    real_write = os.write

    def write(fd: int, data) -> int:
        flags = fcntl.fcntl(fd, fcntl.F_GETFL)
        seen.append((flags & os.O_APPEND, len(data)))
        return real_write(fd, data)

    monkeypatch.setattr(os, "write", write)
    log = ExecutionLog(tmp_path / "execution.cel")
    log.append(content(0), digests(content(0)))
    assert seen and all(append == os.O_APPEND for append, _ in seen)


def _append_many(path: str, count: int, tag: int) -> None:
    log = ExecutionLog(path)
    for number in range(count):
        data = content(tag * 1000 + number)
        log.append(data, digests(data))


def test_appends_from_several_processes_stay_consecutive(tmp_path):
    path = str(tmp_path / "execution.cel")
    context = multiprocessing.get_context("fork")
    workers = [context.Process(target=_append_many, args=(path, 25, tag)) for tag in range(4)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join(60)
        assert worker.exitcode == 0
    records = parse_cel(ExecutionLog(path).read_from(0))
    assert [r.recnum for r in records] == list(range(100))
    assert len({r.content for r in records}) == 100


def _append_one_when_told(path: str, go) -> None:
    go.wait(30)
    ExecutionLog(path).append(content(99), digests(content(99)))


def test_an_append_waits_for_the_lock(tmp_path):
    path = tmp_path / "execution.cel"
    log = ExecutionLog(path)
    log.append(content(0), digests(content(0)))
    context = multiprocessing.get_context("fork")
    go = context.Event()
    # Forked before the lock is taken: a child forked while it is held would share
    # (and keep holding) the locked open file description.
    worker = context.Process(target=_append_one_when_told, args=(str(path), go))
    worker.start()
    try:
        with log.locked():
            go.set()
            time.sleep(0.5)
            assert worker.is_alive()  # blocked on the flock
            assert log.next_recnum() == 1  # reads under the held lock
            assert log.append(content(1), digests(content(1))) == 1  # re-entrant
    finally:
        worker.join(30)
    assert worker.exitcode == 0
    assert log.next_recnum() == 3


def test_a_torn_tail_is_refused_not_appended_to(tmp_path):
    path = tmp_path / "execution.cel"
    log = ExecutionLog(path)
    log.append(content(0), digests(content(0)))
    whole = path.read_bytes()
    with path.open("ab") as file:
        file.write(marshal_record(1, 13, digests(content(1)), content(1))[:40])
    # the offset is in the file, though only the new part of it was read again
    offset = len(whole) + 19  # past record 1's recnum and pcr fields
    with pytest.raises(
        ExecutionLogTorn,
        match=f"torn tail: record 1 at byte offset {len(whole)} is incomplete"
        f" \\(40 bytes: .* at byte offset {offset}\\)",
    ) as raised:
        log.append(content(1), digests(content(1)))
    assert raised.value.tail.offset == len(whole) and raised.value.tail.truncated
    with pytest.raises(ExecutionLogCorrupt):
        ExecutionLog(path).next_recnum()
    assert path.read_bytes()[: len(whole)] == whole
    assert len(path.read_bytes()) == len(whole) + 40


def test_misnumbered_or_foreign_records_are_refused(tmp_path):
    path = tmp_path / "execution.cel"
    path.write_bytes(marshal_record(1, 13, digests(content(0)), content(0)))
    with pytest.raises(ExecutionLogCorrupt, match="record 1 at byte offset 0 where record 0"):
        ExecutionLog(path).next_recnum()
    path.write_bytes(marshal_record(0, 9, digests(content(0)), content(0)))
    with pytest.raises(ExecutionLogCorrupt, match="not for PCR 13"):
        ExecutionLog(path).append(content(1), digests(content(1)))


def test_bad_digests_write_nothing(tmp_path):
    path = tmp_path / "execution.cel"
    log = ExecutionLog(path)
    with pytest.raises(MalformedCel):
        log.append(content(0), {SHA256: b"short"})
    with pytest.raises(MalformedCel):
        log.append(b"\x01\x00\x00\x00\x00", digests(b""))  # not a content TLV
    assert path.read_bytes() == b""
    assert log.append(content(0), digests(content(0))) == 0


def test_truncate_starts_a_new_boot(tmp_path):
    log = ExecutionLog(tmp_path / "execution.cel")
    for number in range(3):
        log.append(content(number), digests(content(number)))
    log.truncate()
    assert log.next_recnum() == 0 and log.read_from(0) == b""
    assert log.append(content(7), digests(content(7))) == 0


def test_a_hundred_appends_replay_to_the_pcr_the_node_extended(tmp_path):
    """The file, as the hook writes it, read incrementally as the agent sends it."""
    log = ExecutionLog(tmp_path / "execution.cel")
    pcr = {alg: bytes(h().digest_size) for alg, h in HASHES.items()}
    state = None
    sent = 0
    for number in range(100):
        record = (
            TrustPolicyLoaded("sha256:" + "11" * 32, "2025-01-02T00:00:00Z")
            if number == 0
            else None
        )
        data = encode_record(record) if record else content(number)
        for alg, h in HASHES.items():
            pcr[alg] = h(pcr[alg] + h(data).digest()).digest()
        log.append(data, digests(data))
        if number % 30 == 29 or number == 99:
            result = appraise_executions(state, 1, 0, log.read_from(sent), pcr, Forbidden())
            assert result.ok, result.reasons
            state, sent = result.state, result.state.next_recnum
    assert state is not None and state.next_recnum == 100
    assert state.pcr == pcr and state.policy_digest == "sha256:" + "11" * 32
    assert EXECUTION_PCR == 13
