"""The stored log (stockade.translog.store.MerkleLog): roots and proofs read from stored
subtree hashes agree with the brute-force reference for every size, appends are
serialized, and a rewritten, truncated or forked log is caught by consistency checks
against checkpoints signed earlier.

Runs on SQLite in tmp, and also on the database in ``STOCKADE_TEST_DATABASE_URL`` (e.g.
``postgresql+psycopg://...``) when it is set, after dropping the log's tables there.
"""

from __future__ import annotations

import os
import random
import subprocess
import sys
import threading
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from sqlalchemy import Engine, create_engine, event, inspect, select, text, update

from stockade.translog import (
    EMPTY_ROOT,
    LogCorrupted,
    LogRangeError,
    MerkleLog,
    NoteSigner,
    ProofError,
    create_tables,
    leaf_hash,
    open_checkpoint,
    root_of,
    sign_checkpoint,
    verify_consistency,
    verify_inclusion,
)
from stockade.translog import store as translog_store
from stockade.verifier.db import make_engine, migrate

DATABASE_ENV = "STOCKADE_TEST_DATABASE_URL"
ORIGIN = "verifier.example/translog"
ENTRIES = [f"entry {n}: {'x' * (n % 13)}".encode() for n in range(256)]


def _drop_log_tables(url: str) -> None:
    engine = create_engine(url)
    with engine.begin() as connection:
        for table in ("translog_leaves", "translog_subtrees", "translog_state"):
            connection.execute(text(f"DROP TABLE IF EXISTS {table}"))
    engine.dispose()


@pytest.fixture(params=["sqlite", "external"] if os.environ.get(DATABASE_ENV) else ["sqlite"])
def make_log(request, tmp_path):
    """``make_log(name)``: a fresh, empty log in its own database (SQLite file) or, for
    the external database, the one log there (``name`` is ignored)."""
    engines: list[Engine] = []
    if request.param == "external":
        url = os.environ.get(DATABASE_ENV)
        if not url:
            pytest.skip(f"{DATABASE_ENV} not set")
        _drop_log_tables(url)

    def make(name: str = "log", clock=None) -> MerkleLog:
        if request.param == "external":
            if engines:
                pytest.skip("the external database holds one log")
            engine = make_engine(os.environ[DATABASE_ENV])
        else:
            engine = make_engine(f"sqlite:///{tmp_path / name}.db")
        engines.append(engine)
        create_tables(engine)
        return MerkleLog(engine) if clock is None else MerkleLog(engine, clock=clock)

    yield make
    for engine in engines:
        engine.dispose()
    if request.param == "external":
        _drop_log_tables(os.environ[DATABASE_ENV])


def _grow(log: MerkleLog, entries: list[bytes], seed: str = "batches") -> None:
    rng = random.Random(seed)
    position = 0
    while position < len(entries):
        step = rng.choice([1, 1, 2, 5, 16, 31])
        batch = entries[position : position + step]
        assert log.append_many(batch) == list(range(position, position + len(batch)))
        position += len(batch)


@pytest.fixture
def full_log(make_log):
    log = make_log()
    _grow(log, ENTRIES)
    return log


def _count_statements(engine: Engine) -> list[str]:
    statements: list[str] = []

    def record(_conn, _cursor, statement, _parameters, _context, _executemany) -> None:
        statements.append(statement)

    event.listen(engine, "before_cursor_execute", record)
    return statements


# -- basics ----------------------------------------------------------------------------------


def test_empty_log(make_log):
    log = make_log()
    assert log.size() == 0
    assert log.root() == EMPTY_ROOT
    assert log.head() == (0, EMPTY_ROOT)
    assert log.consistency_proof(0) == []
    assert log.entries(0, 0) == []
    with pytest.raises(LogRangeError, match="not in a tree of 0 entries"):
        log.inclusion_proof(0)
    with pytest.raises(LogRangeError):
        log.entry(0)
    assert log.append_many([]) == []


def test_append_and_read_back(make_log):
    moment = datetime(2026, 5, 1, 12, 0, tzinfo=UTC)
    log = make_log(clock=lambda: moment)
    assert log.append(b"first") == 0
    assert log.append_many([b"second", b"", b"\x00" * 1000]) == [1, 2, 3]
    assert log.append(b"fifth", now=moment + timedelta(hours=1)) == 4
    assert log.size() == 5
    assert log.entry(0) == b"first"
    assert log.entries(1, 4) == [b"second", b"", b"\x00" * 1000]
    assert log.leaf_hashes(0, 2) == [leaf_hash(b"first"), leaf_hash(b"second")]
    assert log.root() == root_of([b"first", b"second", b"", b"\x00" * 1000, b"fifth"])
    with log.engine.connect() as connection:
        times = connection.execute(
            select(translog_store.leaves.c.created_at).order_by(translog_store.leaves.c.leaf_index)
        ).scalars()
        assert [value.replace(tzinfo=UTC) for value in times] == [moment] * 4 + [
            moment + timedelta(hours=1)
        ]
    with pytest.raises(ValueError, match="naive"):
        log.append(b"x", now=datetime(2026, 1, 1))


def test_checkpoint_of_the_log_verifies_end_to_end(make_log):
    log = make_log()
    indices = log.append_many([b"result %d" % n for n in range(37)])
    signer = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(log.checkpoint(ORIGIN), [signer])
    checkpoint, verified = open_checkpoint(note, [signer.verifier], origin=ORIGIN)
    assert verified == [ORIGIN]
    assert checkpoint.size == 37
    for index in indices:
        proof = log.inclusion_proof(index, checkpoint.size)
        verify_inclusion(
            leaf_hash(log.entry(index)), index, checkpoint.size, proof, checkpoint.root
        )


# -- against the reference, every size ----------------------------------------------------------


def test_every_root_matches_the_reference(full_log):
    for size in range(0, 257):
        assert full_log.root(size) == root_of(ENTRIES[:size]), size


def test_inclusion_proofs_match_and_verify(full_log):
    sizes = [*range(1, 41), 63, 64, 65, 127, 128, 129, 200, 255, 256]
    for size in sizes:
        root = root_of(ENTRIES[:size])
        indices = range(size) if size <= 65 else sorted({0, 1, size // 2, size - 2, size - 1})
        for index in indices:
            proof = full_log.inclusion_proof(index, size)
            verify_inclusion(leaf_hash(ENTRIES[index]), index, size, proof, root)
            assert len(proof) <= (size - 1).bit_length()
    # default size: the current one
    verify_inclusion(
        leaf_hash(ENTRIES[77]), 77, 256, full_log.inclusion_proof(77), root_of(ENTRIES)
    )


def test_consistency_proofs_match_and_verify(full_log):
    roots = [root_of(ENTRIES[:size]) for size in range(257)]
    pairs = [(old, new) for new in range(0, 33) for old in range(0, new + 1)]
    rng = random.Random("store consistency")
    pairs += [tuple(sorted((rng.randrange(257), rng.randrange(257)))) for _ in range(200)]
    for old, new in pairs:
        proof = full_log.consistency_proof(old, new)
        verify_consistency(old, new, roots[old], roots[new], proof)
    verify_consistency(100, 256, roots[100], roots[256], full_log.consistency_proof(100))


def test_requests_beyond_the_log_are_range_errors(full_log):
    with pytest.raises(LogRangeError, match="tree size 257"):
        full_log.root(257)
    with pytest.raises(LogRangeError, match="tree size 300"):
        full_log.inclusion_proof(3, 300)
    with pytest.raises(LogRangeError, match="entry 10 is not in a tree of 10"):
        full_log.inclusion_proof(10, 10)
    with pytest.raises(LogRangeError, match="old size 11"):
        full_log.consistency_proof(11, 10)
    with pytest.raises(LogRangeError):
        full_log.consistency_proof(-1, 10)
    with pytest.raises(LogRangeError):
        full_log.entries(250, 257)
    with pytest.raises(LogRangeError):
        full_log.entries(5, 4)
    with pytest.raises(LogRangeError):
        full_log.leaf_hashes(0, 1000)


# -- cost: stored hashes, not recomputation --------------------------------------------------


def test_appends_write_only_what_they_complete(make_log):
    log = make_log()
    _grow(log, ENTRIES[:200], seed="rows")
    with log.engine.connect() as connection:
        subtree_rows = connection.execute(select(translog_store.subtrees.c.level)).scalars().all()
    assert len(subtree_rows) == 200 - (200).bit_count()


def test_a_proof_is_a_constant_number_of_queries(full_log):
    statements = _count_statements(full_log.engine)
    full_log.inclusion_proof(100, 256)
    assert len(statements) <= 2
    statements.clear()
    full_log.consistency_proof(37, 255)
    assert len(statements) <= 2
    statements.clear()
    full_log.root(201)
    assert len(statements) <= 2


def test_an_append_batch_is_a_constant_number_of_statements(make_log):
    log = make_log()
    log.append_many(ENTRIES[:7])
    statements = _count_statements(log.engine)
    log.append_many(ENTRIES[7:200])
    writes = [s for s in statements if not s.lstrip().upper().startswith(("BEGIN", "COMMIT"))]
    assert len(writes) <= 4


# -- serialized appends ------------------------------------------------------------------------


def test_append_on_a_connection_commits_and_rolls_back_with_the_caller(make_log):
    """The verifier logs a result in the transaction that stores it: the append is the
    caller's, and so is its fate. The head and proof it returns are the stored log's."""
    log = make_log()
    _grow(log, ENTRIES[:10])
    with log.engine.begin() as connection:
        appended = log.append_on(connection, [b"kept"])
    assert (appended.start, appended.size, list(appended.indices)) == (10, 11, [10])
    assert (appended.size, appended.root) == log.head()
    assert list(appended.last_proof) == log.inclusion_proof(10, 11)
    verify_inclusion(leaf_hash(b"kept"), 10, 11, appended.last_proof, appended.root)

    with pytest.raises(RuntimeError), log.engine.begin() as connection:
        log.append_on(connection, [b"lost", b"also lost"])
        raise RuntimeError("the caller's transaction fails after the append")
    assert log.size() == 11 and log.entries(10, 11) == [b"kept"]

    for batch in ([ENTRIES[20]], ENTRIES[21:26], ENTRIES[26:58]):
        with log.engine.begin() as connection:
            appended = log.append_on(connection, batch)
        assert (appended.size, appended.root) == log.head()
        assert list(appended.last_proof) == log.inclusion_proof(appended.size - 1)
    with pytest.raises(LogRangeError), log.engine.begin() as connection:
        log.append_on(connection, [])


def _lose_tail(log: MerkleLog, size: int) -> None:
    """What a restore, a failover or a crash with asynchronous commit leaves: the log as it
    was at ``size``, every later commit gone (leaves, the subtrees they completed, size)."""
    leaves, subtrees = translog_store.leaves, translog_store.subtrees
    with log.engine.begin() as connection:
        connection.execute(leaves.delete().where(leaves.c.leaf_index >= size))
        for level in range(1, 64):
            connection.execute(
                subtrees.delete().where(
                    subtrees.c.level == level, subtrees.c.node_index >= size >> level
                )
            )
        connection.execute(update(translog_store.state).values(size=size))


def _head(log: MerkleLog) -> translog_store.TreeHead:
    return translog_store.TreeHead(*log.head())


def test_append_on_proves_the_expected_head_in_the_query_that_reads_the_peaks(make_log):
    """An append checks the stored tree against the newest signed head in one SELECT (the
    peaks it extends, plus the consistency proof when the log grew past that head)."""
    log = make_log()
    _grow(log, ENTRIES[:13])
    signed = _head(log)
    statements = _count_statements(log.engine)
    with log.engine.begin() as connection:
        first = log.append_on(connection, [ENTRIES[13]], expect=signed)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert (first.start, first.base_root, first.checked) == (13, signed.root, signed)
    assert (first.size, first.root) == log.head() == (14, root_of(ENTRIES[:14]))
    log.append_many(ENTRIES[14:20])  # another replica appends
    statements.clear()
    with log.engine.begin() as connection:
        third = log.append_on(connection, [ENTRIES[20]], expect=signed)
    assert len([s for s in statements if s.lstrip().upper().startswith("SELECT")]) == 1
    assert (third.size, third.root) == (21, root_of(ENTRIES[:21]))


def test_append_on_refuses_a_log_that_lost_its_tail(make_log):
    """The stored log lost commits after a head was signed: the append is refused before it
    writes anything, and keeps being refused."""
    log = make_log()
    _grow(log, ENTRIES[:40])
    signed = _head(log)
    _lose_tail(log, 33)
    for _ in range(2):
        with (
            pytest.raises(translog_store.LogRolledBack, match=r"has 33 entries.*checkpoint of 40"),
            log.engine.begin() as connection,
        ):
            log.append_on(connection, [b"after the loss"], expect=signed)
    assert log.size() == 33 and log.root() == root_of(ENTRIES[:33])


def test_append_on_refuses_a_rewritten_tail_of_the_same_size(make_log):
    """Lost and regrown to the signed size with other entries (what reusing cached peaks
    used to hide): the stored tree is not the signed one."""
    log = make_log()
    _grow(log, ENTRIES[:40])
    signed = _head(log)
    _lose_tail(log, 37)
    log.append_many([b"other 37", b"other 38", b"other 39"])
    assert log.size() == 40
    with (
        pytest.raises(
            translog_store.LogForked, match="does not extend the signed checkpoint of 40"
        ),
        log.engine.begin() as connection,
    ):
        log.append_on(connection, [b"next"], expect=signed)
    assert log.size() == 40


def test_append_on_refuses_a_rewritten_log_that_grew_past_the_signed_head(make_log):
    log = make_log()
    _grow(log, ENTRIES[:40])
    signed = _head(log)
    _lose_tail(log, 38)
    log.append_many([b"other %d" % n for n in range(10)])
    with (
        pytest.raises(translog_store.LogForked, match="log of 48 entries"),
        log.engine.begin() as connection,
    ):
        log.append_on(connection, [b"next"], expect=signed)
    # the honest extension of the same head is accepted
    honest = make_log("honest")
    _grow(honest, ENTRIES[:48])
    with honest.engine.begin() as connection:
        appended = honest.append_on(connection, [ENTRIES[48]], expect=signed)
    assert (appended.size, appended.root) == (49, root_of(ENTRIES[:49]))


def test_extension_and_check_newest_read_the_stored_tail(make_log):
    log = make_log()
    _grow(log, ENTRIES[:20])
    signed = _head(log)
    log.append_many(ENTRIES[20:30])
    head, proof = log.extension(signed)
    verify_consistency(20, 30, signed.root, head.root, proof)
    assert log.check_newest() == 30
    with log.engine.begin() as connection:
        connection.execute(
            update(translog_store.leaves)
            .where(translog_store.leaves.c.leaf_index == 29)
            .values(entry=b"altered")
        )
    with pytest.raises(LogCorrupted, match="entry 29 does not hash"):
        log.check_newest()
    _lose_tail(log, 10)
    with pytest.raises(translog_store.LogRolledBack, match="has 10 entries"):
        log.extension(signed)


def test_concurrent_appenders_get_distinct_consecutive_indices(make_log):
    log = make_log()
    results: dict[bytes, int] = {}
    lock = threading.Lock()
    errors: list[BaseException] = []

    def worker(number: int) -> None:
        try:
            for batch in range(10):
                entries = [b"w%d-b%d-e%d" % (number, batch, e) for e in range(1 + batch % 3)]
                indices = log.append_many(entries)
                with lock:
                    results.update(zip(entries, indices, strict=True))
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=worker, args=(n,)) for n in range(6)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert not errors
    size = log.size()
    assert sorted(results.values()) == list(range(size))
    by_index = sorted(results, key=results.__getitem__)
    assert log.entries(0, size) == by_index
    assert log.root() == root_of(by_index)


APPENDER = """
import sys
from sqlalchemy import create_engine
from stockade.translog import MerkleLog
log = MerkleLog(create_engine(sys.argv[1], connect_args={"timeout": 30}))
for batch in range(20):
    log.append_many([b"%s-%d-%d" % (sys.argv[2].encode(), batch, n) for n in range(5)])
"""


@pytest.mark.tools
def test_two_processes_append_to_one_sqlite_log(tmp_path):
    url = f"sqlite:///{tmp_path / 'shared.db'}"
    engine = make_engine(url)
    create_tables(engine)
    processes = [
        subprocess.Popen([sys.executable, "-c", APPENDER, url, name]) for name in ("a", "b")
    ]
    assert [process.wait(timeout=120) for process in processes] == [0, 0]
    log = MerkleLog(engine)
    assert log.size() == 200
    entries = log.entries(0, 200)
    assert len(set(entries)) == 200
    assert log.root() == root_of(entries)
    engine.dispose()


# -- rewritten, truncated and forked logs ---------------------------------------------------------


@pytest.fixture
def signed_at_100(make_log):
    """A log of 100 entries, a checkpoint its key signed then, and the verifier's view."""
    log = make_log("honest")
    log.append_many(ENTRIES[:100])
    signer = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(log.checkpoint(ORIGIN), [signer])
    checkpoint, _ = open_checkpoint(note, [signer.verifier])
    return log, signer, checkpoint


def _later_checkpoint(log: MerkleLog, signer: NoteSigner):
    note = sign_checkpoint(log.checkpoint(ORIGIN), [signer])
    return open_checkpoint(note, [signer.verifier])[0]


def test_honest_growth_is_consistent(signed_at_100):
    log, signer, old = signed_at_100
    log.append_many(ENTRIES[100:150])
    new = _later_checkpoint(log, signer)
    verify_consistency(
        old.size, new.size, old.root, new.root, log.consistency_proof(old.size, new.size)
    )


def test_rewritten_log_is_caught(signed_at_100, make_log):
    _, signer, old = signed_at_100
    rewritten = make_log("rewritten")
    history = list(ENTRIES[:150])
    history[42] = b"an attestation result the operator wants forgotten"
    rewritten.append_many(history)
    new = _later_checkpoint(rewritten, signer)
    proof = rewritten.consistency_proof(old.size, new.size)
    with pytest.raises(ProofError, match="old tree is not a prefix"):
        verify_consistency(old.size, new.size, old.root, new.root, proof)


def test_truncated_log_is_caught(signed_at_100, make_log):
    _, signer, old = signed_at_100
    truncated = make_log("truncated")
    truncated.append_many(ENTRIES[:80])
    shrunk = _later_checkpoint(truncated, signer)
    with pytest.raises(ProofError, match="never shrinks"):
        verify_consistency(old.size, shrunk.size, old.root, shrunk.root, [])
    # ... and regrown past the old size with other entries
    truncated.append_many([b"replacement %d" % n for n in range(70)])
    regrown = _later_checkpoint(truncated, signer)
    proof = truncated.consistency_proof(old.size, regrown.size)
    with pytest.raises(ProofError):
        verify_consistency(old.size, regrown.size, old.root, regrown.root, proof)


def test_forked_log_is_caught(signed_at_100, make_log):
    honest, signer, old = signed_at_100
    fork = make_log("fork")
    fork.append_many(ENTRIES[:100])
    honest.append_many([b"honest %d" % n for n in range(50)])
    fork.append_many([b"fork %d" % n for n in range(50)])
    seen_by_alice = _later_checkpoint(honest, signer)
    seen_by_bob = _later_checkpoint(fork, signer)
    # each branch alone is consistent with what was signed before the split ...
    for log, checkpoint in ((honest, seen_by_alice), (fork, seen_by_bob)):
        verify_consistency(
            old.size, checkpoint.size, old.root, checkpoint.root, log.consistency_proof(100)
        )
    # ... but comparing the two checkpoints exposes the fork
    with pytest.raises(ProofError, match="forked"):
        verify_consistency(
            seen_by_alice.size, seen_by_bob.size, seen_by_alice.root, seen_by_bob.root, []
        )
    # and so does asking either branch to extend a checkpoint of the other
    honest.append_many([b"more"])
    later = _later_checkpoint(honest, signer)
    with pytest.raises(ProofError):
        verify_consistency(
            seen_by_bob.size,
            later.size,
            seen_by_bob.root,
            later.root,
            honest.consistency_proof(seen_by_bob.size, later.size),
        )


def test_tampered_storage_is_caught(signed_at_100):
    """Rewriting stored hashes: proofs through the altered subtree no longer verify against
    the signed root; an altered peak changes the root itself; a missing row is reported."""
    log, _, old = signed_at_100
    with log.engine.begin() as connection:
        connection.execute(
            update(translog_store.subtrees)
            .where(translog_store.subtrees.c.level == 3, translog_store.subtrees.c.node_index == 2)
            .values(hash=leaf_hash(b"tampered"))
        )
    proof = log.inclusion_proof(27, old.size)
    with pytest.raises(ProofError, match="not the expected"):
        verify_inclusion(leaf_hash(ENTRIES[27]), 27, old.size, proof, old.root)
    with log.engine.begin() as connection:
        connection.execute(
            update(translog_store.subtrees)
            .where(translog_store.subtrees.c.level == 6, translog_store.subtrees.c.node_index == 0)
            .values(hash=leaf_hash(b"tampered"))
        )
    assert log.root(old.size) != old.root
    with log.engine.begin() as connection:
        connection.execute(
            translog_store.subtrees.delete().where(translog_store.subtrees.c.level == 6)
        )
    with pytest.raises(LogCorrupted, match="level 6 index 0"):
        log.root(old.size)


def test_missing_state_row_is_reported(make_log):
    log = make_log()
    with log.engine.begin() as connection:
        connection.execute(translog_store.state.delete())
    with pytest.raises(LogCorrupted, match="translog_state has no row"):
        log.append(b"x")
    with pytest.raises(LogCorrupted, match="translog_state has no row"):
        log.size()


# -- the Alembic migration -----------------------------------------------------------------------


def test_verifier_migrations_create_the_log(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'verifier.db'}")
    migrate(engine)
    tables = set(inspect(engine).get_table_names())
    assert {"translog_leaves", "translog_subtrees", "translog_state"} <= tables
    for table in translog_store.metadata.sorted_tables:
        columns = {column["name"] for column in inspect(engine).get_columns(table.name)}
        assert columns == set(table.columns.keys()), table.name
    log = MerkleLog(engine)
    assert log.size() == 0
    log.append_many(ENTRIES[:21])
    assert log.root() == root_of(ENTRIES[:21])
    migrate(engine)  # idempotent at head
    assert log.size() == 21
    with engine.connect() as connection:
        assert connection.execute(text("SELECT version_num FROM alembic_version")).scalar() == (
            _migration_head()
        )
    engine.dispose()


def test_migration_keeps_a_log_that_create_tables_made(tmp_path: Path):
    engine = make_engine(f"sqlite:///{tmp_path / 'early.db'}")
    create_tables(engine)
    MerkleLog(engine).append_many(ENTRIES[:5])
    migrate(engine)
    log = MerkleLog(engine)
    assert log.size() == 5
    assert log.root() == root_of(ENTRIES[:5])
    engine.dispose()


def _migration_head() -> str:
    from alembic.script import ScriptDirectory

    from stockade.verifier.db import MIGRATIONS

    head = ScriptDirectory(str(MIGRATIONS)).get_current_head()
    assert head is not None
    return head


def test_every_entry_of_a_batch_gets_its_audit_path_without_a_query(make_log):
    """A batch append answers the proof of each of its entries from what it computed; each is
    the one the stored tree gives and verifies against the new root."""
    log = make_log()
    rng = random.Random("batch proofs")
    size = 0
    for batch_size in (1, 3, 1, 8, 5, 16, 2, 31, 7, 64):
        batch = [f"batch entry {size + offset}".encode() for offset in range(batch_size)]
        with log.engine.begin() as connection:
            appended = log.append_on(connection, batch)
        for index in rng.sample(list(appended.indices), min(batch_size, 6)):
            proof = appended.inclusion_proof(index)
            assert proof == log.inclusion_proof(index, appended.size)
            leaf = leaf_hash(batch[index - appended.start])
            verify_inclusion(leaf, index, appended.size, proof, appended.root)
        size = appended.size
    with pytest.raises(LogRangeError, match="was not appended here"):
        appended.inclusion_proof(appended.start - 1)
