"""Group commit (``stockade.verifier.committer``): many results, one transaction, one
checkpoint; an item that loses its race is dropped alone; a log that refuses stores nothing."""

from __future__ import annotations

import asyncio
import threading
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import Connection, Engine, text

from stockade.translog import leaf_hash, open_checkpoint, verify_inclusion
from stockade.translog.keys import load_or_create_signer
from stockade.translog.store import create_tables
from stockade.verifier.committer import Committed, GroupCommitter
from stockade.verifier.db import make_engine
from stockade.verifier.errors import Conflict
from stockade.verifier.transparency import LogUnavailable, TransparencyLog

ORIGIN = "committer.test/log"


@dataclass
class Row:
    """A batch item that writes one row and logs one entry; ``gate`` holds its claim."""

    name: str
    refuse: bool = False
    gate: threading.Event | None = None
    claimed: threading.Event = field(default_factory=threading.Event)

    @property
    def sort_key(self) -> str:
        return self.name

    def claim(self, connection: Connection) -> list[bytes]:
        self.claimed.set()
        if self.gate is not None:
            assert self.gate.wait(10)
        if self.refuse:
            raise Conflict(f"{self.name} lost its race", code="nonce")
        connection.execute(text("INSERT INTO rows (name) VALUES (:name)"), {"name": self.name})
        return [f"entry {self.name}".encode()]

    def logged(self, connection: Connection, index: int | None) -> int | None:
        connection.execute(
            text("UPDATE rows SET log_index = :index WHERE name = :name"),
            {"index": index, "name": self.name},
        )
        return index


@pytest.fixture
def engine(tmp_path: Path) -> Engine:
    engine = make_engine(f"sqlite:///{tmp_path / 'committer.db'}")
    create_tables(engine)
    with engine.begin() as connection:
        connection.execute(text("CREATE TABLE rows (name TEXT PRIMARY KEY, log_index INTEGER)"))
    yield engine
    engine.dispose()


@pytest.fixture
def translog(engine: Engine, tmp_path: Path) -> TransparencyLog:
    signer = load_or_create_signer(tmp_path / "log-key", tmp_path / "log-key.pub", ORIGIN)
    return TransparencyLog(engine, signer, lambda: datetime.now(UTC))


def _submit(committer: GroupCommitter, item: Row) -> Committed[int | None]:
    """What a request does, from a thread of its own: await the batch."""
    return asyncio.run(committer.submit_async(item))


def _stored(engine: Engine) -> dict[str, int | None]:
    with engine.connect() as connection:
        return dict(connection.execute(text("SELECT name, log_index FROM rows")).all())


def _submit_all(committer: GroupCommitter, items: list[Row]) -> dict[str, object]:
    outcomes: dict[str, object] = {}

    def run(item: Row) -> None:
        try:
            outcomes[item.name] = _submit(committer, item)
        except Exception as error:  # what the request thread would turn into a status
            outcomes[item.name] = error

    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for thread in threads:
        thread.start()
    return outcomes, threads  # type: ignore[return-value]


def test_waiting_results_share_one_transaction_and_one_checkpoint(engine, translog):
    committer = GroupCommitter(engine, translog)
    committer.start()
    try:
        gate = threading.Event()
        first = Row("a-first", gate=gate)
        outcomes, threads = _submit_all(committer, [first])
        assert first.claimed.wait(10)  # the committer is inside the first batch
        rest = [Row(f"b-{number:02d}") for number in range(20)]
        more, more_threads = _submit_all(committer, rest)
        while committer._jobs.qsize() < len(rest):  # all queued behind the first batch
            threading.Event().wait(0.01)
        gate.set()
        for thread in threads + more_threads:
            thread.join(10)
    finally:
        committer.stop()
    outcomes.update(more)
    assert committer.batches == 2 and committer.items == 21
    receipts = [outcomes[item.name].receipt for item in rest]  # type: ignore[attr-defined]
    # One checkpoint for the whole second batch, and every entry proven in it.
    assert {receipt.checkpoint for receipt in receipts} == {receipts[0].checkpoint}
    assert {receipt.tree_size for receipt in receipts} == {21}
    for item, receipt in zip(rest, receipts, strict=True):
        checkpoint, _ = open_checkpoint(
            receipt.checkpoint, [translog.signer.verifier], origin=ORIGIN
        )
        assert checkpoint.size == 21
        verify_inclusion(
            leaf_hash(receipt.entry), receipt.log_index, 21, receipt.proof, checkpoint.root
        )
        assert receipt.entry == f"entry {item.name}".encode()
    stored = _stored(engine)
    assert stored == {item.name: outcomes[item.name].value for item in [first, *rest]}  # type: ignore[attr-defined]
    assert sorted(stored.values()) == list(range(21))  # type: ignore[type-var]


def test_an_item_that_loses_its_race_is_dropped_alone(engine, translog):
    committer = GroupCommitter(engine, translog)
    items = [Row("a"), Row("b", refuse=True), Row("c")]
    # Not started (a tool, a test without the lifespan): each is committed alone, here.
    outcomes = {}
    for item in items:
        try:
            outcomes[item.name] = _submit(committer, item).value
        except Conflict as refused:
            outcomes[item.name] = refused.code
    assert outcomes == {"a": 0, "b": "nonce", "c": 1}
    assert _stored(engine) == {"a": 0, "c": 1}


def test_a_log_that_refuses_stores_nothing_of_the_batch(engine, translog, tmp_path):
    committer = GroupCommitter(engine, translog)
    _submit(committer, Row("before"))
    # The database lost the log's newest entry under the running verifier.
    with engine.begin() as connection:
        connection.execute(text("DELETE FROM translog_leaves"))
        connection.execute(text("DELETE FROM translog_subtrees"))
        connection.execute(text("UPDATE translog_state SET size = 0"))
    with pytest.raises(LogUnavailable, match="refuses to append"):
        _submit(committer, Row("after"))
    assert _stored(engine) == {"before": 0}


def test_stopping_commits_what_was_queued_first(engine, translog):
    committer = GroupCommitter(engine, translog)
    committer.start()
    gate = threading.Event()
    blocked = Row("blocked", gate=gate)
    outcomes, threads = _submit_all(committer, [blocked])
    assert blocked.claimed.wait(10)
    waiting, waiting_threads = _submit_all(committer, [Row("waiting")])
    while committer._jobs.qsize() < 1:
        threading.Event().wait(0.01)
    stopper = threading.Thread(target=committer.stop)
    stopper.start()
    gate.set()
    stopper.join(10)
    for thread in threads + waiting_threads:
        thread.join(10)
    assert outcomes["blocked"].value == 0  # type: ignore[attr-defined]
    assert waiting["waiting"].value == 1  # type: ignore[attr-defined]
    # Stopped: a late result is still stored, in its caller's thread.
    assert _submit(committer, Row("late")).value == 2
    assert _stored(engine) == {"blocked": 0, "waiting": 1, "late": 2}


def test_an_awaiting_caller_that_goes_away_before_its_batch_stores_nothing(engine, translog):
    """``submit_async``: no thread waits; a request cancelled (its client went away) while its
    item still queues is dropped, and the one behind it is stored."""
    committer = GroupCommitter(engine, translog)
    committer.start()
    gate = threading.Event()
    blocked = Row("a-blocked", gate=gate)
    outcomes, threads = _submit_all(committer, [blocked])
    assert blocked.claimed.wait(10)

    async def scenario() -> int | None:
        gone = asyncio.create_task(committer.submit_async(Row("b-gone")))
        kept = asyncio.create_task(committer.submit_async(Row("c-kept")))
        while committer._jobs.qsize() < 2:
            await asyncio.sleep(0.01)
        gone.cancel()
        await asyncio.sleep(0)
        gate.set()
        with pytest.raises(asyncio.CancelledError):
            await gone
        return (await kept).value

    try:
        kept_index = asyncio.run(scenario())
        for thread in threads:
            thread.join(10)
    finally:
        committer.stop()
    assert outcomes["a-blocked"].value == 0  # type: ignore[attr-defined]
    assert kept_index == 1
    assert _stored(engine) == {"a-blocked": 0, "c-kept": 1}
