"""The evidence kept with results (migration 0015): insert-if-absent by digest, so the same
log is one row; two transactions inserting the same digests at once (two replicas' batches on
PostgreSQL) both commit, whatever order their items came in; the migration goes down and up.

Runs on SQLite, and on PostgreSQL when ``STOCKADE_TEST_DATABASE_URL`` is set (the concurrent
cases need a second writer, so PostgreSQL only)."""

from __future__ import annotations

import hashlib
import threading
import time
from datetime import UTC, datetime
from typing import Any

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from sqlalchemy import Engine, func, inspect, select

from stockade.verifier.attestation import StoredBlob
from stockade.verifier.committer import _write_shared_rows
from stockade.verifier.db import MIGRATIONS
from stockade.verifier.models import EvidenceBlob

NOW = datetime(2026, 12, 6, tzinfo=UTC)


def blob(body: bytes, kind: str = "event-log") -> StoredBlob:
    return StoredBlob(hashlib.sha256(body).hexdigest(), kind, body, NOW)


class Item:
    """A batch item that shares rows (as an attestation's ``_StoreResult`` does)."""

    def __init__(self, *rows: StoredBlob) -> None:
        self.shared_rows = rows


def count(engine: Engine) -> int:
    with engine.connect() as connection:
        return int(connection.scalar(select(func.count()).select_from(EvidenceBlob)) or 0)


def test_the_same_digest_is_stored_once(engine: Engine) -> None:
    log = blob(b"log" * 1000)
    with engine.begin() as connection:
        log.write(connection)
        log.write(connection)  # in the same transaction
        _write_shared_rows(connection, [Item(log), Item(log, blob(b"envelope", "x"))])
    with engine.begin() as connection:
        log.write(connection)  # in another
    assert count(engine) == 2
    with engine.connect() as connection:
        stored = connection.execute(select(EvidenceBlob.kind, EvidenceBlob.body)).all()
    assert sorted(stored) == sorted([("event-log", b"log" * 1000), ("x", b"envelope")])


class Pausing:
    """A shared row that, once written, lets the other transaction start and waits: that one
    then queues behind this transaction's uncommitted row."""

    def __init__(self, row: StoredBlob, written: threading.Event) -> None:
        self.row, self.written = row, written

    @property
    def key(self) -> str:
        return self.row.key

    def write(self, connection: Any) -> None:
        self.row.write(connection)
        self.written.set()
        time.sleep(1.0)


def test_concurrent_batches_with_the_same_digests_both_commit(engine: Engine) -> None:
    if engine.dialect.name != "postgresql":
        pytest.skip("PostgreSQL only (set STOCKADE_TEST_DATABASE_URL): SQLite has one writer")
    low, high = sorted((blob(b"a" * 5000), blob(b"b" * 5000)), key=lambda row: row.key)
    written = threading.Event()
    errors: list[BaseException] = []

    def second_batch() -> None:
        # Its items in the opposite order: the rows are still written in key order, so it
        # waits on the first batch's lowest row and holds nothing the first one needs.
        try:
            written.wait(10)
            with engine.begin() as connection:
                _write_shared_rows(connection, [Item(high), Item(low)])
        except BaseException as error:  # what the test asserts against
            errors.append(error)

    thread = threading.Thread(target=second_batch)
    thread.start()
    with engine.begin() as connection:
        _write_shared_rows(connection, [Item(Pausing(low, written)), Item(high)])  # type: ignore[arg-type]
    thread.join(30)
    assert not thread.is_alive()
    assert errors == []  # no deadlock, no unique violation: the batch commits
    assert count(engine) == 2


def test_the_migration_goes_down_and_up(engine: Engine) -> None:
    def columns() -> set[str]:
        return {column["name"] for column in inspect(engine).get_columns("results")}

    added = {"event_log_digest", "release_envelope_digest"}
    assert added <= columns() and inspect(engine).has_table("evidence_blobs")
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0014")
    assert not added & columns()
    assert not inspect(engine).has_table("evidence_blobs")
    assert "release_digest" in columns()
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, "head")
    assert added <= columns() and inspect(engine).has_table("evidence_blobs")
