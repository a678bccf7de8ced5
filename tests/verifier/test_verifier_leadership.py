"""Leader leases (``stockade.verifier.leadership``): one holder at a time, renewed while held,
taken over after expiry on the database clock, released on a clean stop; and the stale
sweeper runs only on the holder of its lease.

Runs on SQLite, and on PostgreSQL when ``STOCKADE_TEST_DATABASE_URL`` is set."""

from __future__ import annotations

import threading
import time
import uuid
from datetime import UTC, datetime, timedelta

from sqlalchemy import Connection, Engine, text, update
from sqlalchemy.orm import sessionmaker

from stockade.verifier.db import make_engine
from stockade.verifier.leadership import SWEEPER, Lease, leases, replica_id
from stockade.verifier.webhooks import database_now_ms
from support.nodes import placeholder_node


class DatabaseClock:
    """A database clock tests move by hand (milliseconds)."""

    def __init__(self) -> None:
        self.now = 1_800_000_000_000

    def __call__(self, _connection: Connection) -> int:
        return self.now


def test_one_holder_renews_another_takes_over_after_expiry(engine: Engine) -> None:
    clock = DatabaseClock()
    a = Lease(engine, "job", "replica-a", lease_seconds=5, now_ms=clock)
    b = Lease(engine, "job", "replica-b", lease_seconds=5, now_ms=clock)
    assert a.acquire()
    assert not b.acquire()
    first = a.read()
    assert first is not None and (first.holder, first.term) == ("replica-a", 1)
    clock.now += 4_999
    assert a.acquire()  # renewed: now held until 4.999 s + 5 s
    renewed = a.read()
    assert renewed is not None and renewed.term == 1  # the same holder keeps its term
    clock.now += 4_999
    assert not b.acquire()  # the renewal counts, not the first acquisition
    clock.now += 2
    assert b.acquire()  # expired: taken over, in a new term
    taken = b.read()
    assert taken is not None and (taken.holder, taken.term) == ("replica-b", 2)
    assert not a.acquire()  # the old holder cannot renew what it lost
    assert not a.held
    a.release()  # and cannot release it either
    after = b.read()
    assert after is not None and after.holder == "replica-b"
    b.release()  # a clean stop: free now, not after the lease
    released = b.read()
    assert released is not None and (released.holder, released.lease_until) == (None, None)
    assert a.acquire()
    assert a.read() == type(released)("replica-a", clock.now + 5_000, 3)


def test_the_holder_stops_believing_it_holds_once_its_lease_could_have_run_out(
    engine: Engine,
) -> None:
    ticks = [100.0]
    lease = Lease(engine, "job", lease_seconds=2, monotonic=lambda: ticks[0])
    assert lease.acquire() and lease.held
    ticks[0] += 1.9
    assert lease.held
    ticks[0] += 0.2  # no renewal for longer than the lease: another may hold it now
    assert not lease.held


def test_racing_replicas_never_both_take_a_free_lease(engine: Engine) -> None:
    contenders = [Lease(engine, "race", f"replica-{n}", lease_seconds=30) for n in range(4)]
    for _round in range(5):
        barrier = threading.Barrier(len(contenders))
        won: list[str] = []

        def race(lease: Lease, barrier: threading.Barrier = barrier, won: list[str] = won) -> None:
            barrier.wait()
            if lease.acquire():
                won.append(lease.holder)

        threads = [threading.Thread(target=race, args=(lease,)) for lease in contenders]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert len(won) == 1, won
        holding = contenders[0].read()
        assert holding is not None and holding.holder == won[0]
        next(lease for lease in contenders if lease.holder == won[0]).release()


def test_leases_use_the_database_clock(engine: Engine) -> None:
    lease = Lease(engine, "job", lease_seconds=3)
    with engine.connect() as connection:
        before = database_now_ms(connection)
    assert lease.acquire()
    holding = lease.read()
    assert holding is not None and holding.lease_until is not None
    assert before + 3_000 <= holding.lease_until <= before + 3_000 + 5_000


def test_replica_ids_name_the_process_and_fit_the_column() -> None:
    import os

    first, second = replica_id(), replica_id()
    assert first != second
    assert len(first) <= 64 and first.rsplit("-", 2)[1] == str(os.getpid())


def _expired_trusted_node(engine: Engine) -> str:
    now = datetime.now(UTC)
    node_id = str(uuid.uuid4())
    with sessionmaker(engine)() as session, session.begin():
        session.add(
            placeholder_node(
                node_id,
                f"stale-{node_id[:8]}",
                now,
                state="trusted",
                trusted_until=now - timedelta(minutes=5),
            )
        )
    return node_id


def _state(engine: Engine, node_id: str) -> str:
    with engine.connect() as connection:
        return str(
            connection.execute(
                text("SELECT state FROM nodes WHERE id = :id"), {"id": node_id}
            ).scalar_one()
        )


def test_only_the_holder_of_the_sweeper_lease_sweeps(client) -> None:
    """The app's sweeper runs every 0.05 s; while another replica holds the lease it marks
    nothing stale, and once that replica releases it, this one takes over and sweeps."""
    engine = client.app.state.service.engine
    deadline = time.monotonic() + 5
    while Lease(engine, SWEEPER).read() is None:  # the app's sweeper asked for it
        assert time.monotonic() < deadline
        time.sleep(0.05)
    with engine.begin() as connection:  # another replica holds it for a minute
        now = database_now_ms(connection)
        connection.execute(
            update(leases)
            .where(leases.c.name == SWEEPER)
            .values(holder="elsewhere-1-x", lease_until=now + 60_000)
        )
    node_id = _expired_trusted_node(engine)
    time.sleep(1.0)  # twenty sweeper passes
    assert _state(engine, node_id) == "trusted"  # stored as trusted: nobody swept it
    holding = Lease(engine, SWEEPER).read()
    assert holding is not None and holding.holder == "elsewhere-1-x"

    with engine.begin() as connection:  # the other replica stops cleanly
        connection.execute(
            update(leases).where(leases.c.name == SWEEPER).values(holder=None, lease_until=None)
        )
    deadline = time.monotonic() + 5
    while _state(engine, node_id) != "untrusted":
        assert time.monotonic() < deadline, "the sweeper never took the released lease"
        time.sleep(0.05)
    holding = Lease(engine, SWEEPER).read()
    assert holding is not None and holding.holder not in (None, "elsewhere-1-x")
    with engine.connect() as connection:
        reasons = connection.execute(
            text("SELECT reason FROM events WHERE node_id = :id"), {"id": node_id}
        ).scalars()
        assert list(reasons) == ["stale"]


def test_a_clean_stop_releases_the_sweeper_lease(make_client) -> None:
    app_client = make_client()
    engine = app_client.app.state.service.engine
    deadline = time.monotonic() + 5
    while (holding := Lease(engine, SWEEPER).read()) is None or holding.holder is None:
        assert time.monotonic() < deadline
        time.sleep(0.05)
    keep = make_engine(str(engine.url.render_as_string(hide_password=False)))
    try:
        app_client.__exit__(None, None, None)  # the lifespan ends: the sweeper stops
        released = Lease(keep, SWEEPER).read()
        assert released is not None and released.holder is None
    finally:
        keep.dispose()
