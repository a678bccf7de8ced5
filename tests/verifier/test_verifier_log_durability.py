"""The transparency log when the database loses commits under (or between runs of) a real
``stockade verifier serve``: PostgreSQL with ``synchronous_commit=off`` crashed under load
(and, when the crash happened to lose nothing signed, a restore of an earlier dump), and a
SQLite WAL deleted between runs, or a corrupt SQLite file.

The verifier is the real CLI process over TLS; only its appraisal core is the tests'
quote-only one (``verifier_support.QuoteOnlyAppraiser``), so software TPMs can attest.
Counts are printed (``pytest -s``).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import signal
import sqlite3
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text
from verifier_support import DevAgent, policy_document, reader_headers

from stockade.strict_json import canonical_json
from stockade.tpm.swtpm import start_swtpm
from stockade.translog import NoteVerifier, root_of
from stockade.translog.checkpoint import open_checkpoint
from stockade.translog.receipt import Receipt, verify_receipt
from support.verifier_serve import QUOTE_ONLY_APPRAISER, ServedVerifier, ek_ca_files, free_port


@dataclass
class Verifier(ServedVerifier):
    """``stockade verifier serve`` as a child process, with the tests' quote-only appraiser."""

    prelude: str = QUOTE_ONLY_APPRAISER

    @property
    def stderr_file(self) -> Path:
        return self.log_path

    def refused_start(self) -> tuple[int, str]:
        """Start expecting a refusal: the exit code and stderr."""
        done = self.run_to_exit()
        return done.returncode, done.stderr

    def client(self) -> httpx.Client:
        return self.httpx_client(timeout=20)


def _policy_file(directory: Path) -> Path:
    path = directory / "policy.json"
    path.write_bytes(canonical_json(policy_document()))
    return path


@pytest.fixture
def make_verifier(tmp_path, ek_ca) -> Iterator[Any]:
    """``make_verifier(database=None)``: a ``Verifier`` in ``tmp_path/verifier``, stopped at
    the end whatever happened."""
    made: list[Verifier] = []

    def make(database: str | None = None) -> Verifier:
        verifier = Verifier(
            tmp_path / "verifier", ek_ca_files(ek_ca), _policy_file(tmp_path), database
        )
        made.append(verifier)
        return verifier

    yield make
    for verifier in made:
        verifier.stop(sig=signal.SIGKILL)


@pytest.fixture
def make_agents(stockade_home, ek_ca, swtpm_template, request) -> Iterator[Any]:
    started: list[Any] = []

    def make(count: int) -> list[DevAgent]:
        agents = []
        for _ in range(count):
            name = f"durability-{request.node.name[-20:]}-{len(started)}"
            # The first is a clone of the session's template; the others get their own EK.
            template = None if started else swtpm_template
            tpm = start_swtpm(name, stockade_home, ek_ca, template=template)
            started.append(tpm)
            agents.append(DevAgent.create(tpm))
        return agents

    yield make
    for tpm in started:
        tpm.stop()


@dataclass
class Observed:
    """Everything the verifier answered: receipts, checkpoints, refusals."""

    receipts: list[Receipt] = field(default_factory=list)
    checkpoints: list[bytes] = field(default_factory=list)
    statuses: Counter[str] = field(default_factory=Counter)
    accepted_after_loss: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)
    loss: threading.Event = field(default_factory=threading.Event)


def _attest_until(
    agent: DevAgent, client: httpx.Client, stop: threading.Event, seen: Observed
) -> None:
    while not stop.is_set():
        try:
            response = agent.attest(client)
        except (httpx.TransportError, AssertionError):  # the database or the nonce call failed
            with seen.lock:
                seen.statuses["failed"] += 1
            time.sleep(0.05)
            continue
        with seen.lock:
            if response.status_code == 200:
                receipt = Receipt.from_json(response.json()["inclusion_proof"])
                seen.receipts.append(receipt)
                assert receipt.checkpoint is not None
                seen.checkpoints.append(receipt.checkpoint)
                seen.statuses["200"] += 1
                if seen.loss.is_set():
                    seen.accepted_after_loss += 1
            else:
                code = response.json().get("error", "?")
                seen.statuses[f"{response.status_code} {code}"] += 1


class Load:
    """One attesting thread per agent, until stopped."""

    def __init__(self, agents: list[DevAgent], client: httpx.Client, seen: Observed) -> None:
        self.stop = threading.Event()
        self.threads = [
            threading.Thread(target=_attest_until, args=(agent, client, self.stop, seen))
            for agent in agents
        ]
        for thread in self.threads:
            thread.start()

    def finish(self) -> None:
        self.stop.set()
        for thread in self.threads:
            thread.join(timeout=60)


def _served_entries(client: httpx.Client, data_dir: Path) -> list[bytes]:
    import base64

    entries: list[bytes] = []
    while True:
        page = client.get(
            "/v1/log/entries", params={"start": len(entries)}, headers=reader_headers(data_dir)
        )
        assert page.status_code == 200, page.text
        rows = page.json()["entries"]
        entries += [base64.b64decode(row["entry"]) for row in rows]
        if page.json()["end"] >= page.json()["size"]:
            return entries


@dataclass
class Audit:
    entries: int
    checkpoints: int
    checked: int
    beyond: int


def _audit(seen: Observed, key: NoteVerifier, served: list[bytes]) -> Audit:
    """Every receipt verifies; no index was receipted twice; one root per size; every
    signed checkpoint the served entries reach is their root."""
    for receipt in seen.receipts:
        verify_receipt(receipt, [key], required=[key.name])
    twice = {index: n for index, n in Counter(r.log_index for r in seen.receipts).items() if n > 1}
    assert not twice, f"indices receipted more than once: {twice}"
    roots: dict[int, bytes] = {}
    for note in seen.checkpoints:
        checkpoint, _ = open_checkpoint(note, [key])
        assert roots.setdefault(checkpoint.size, checkpoint.root) == checkpoint.root, (
            f"two roots signed for size {checkpoint.size}"
        )
    checked = beyond = 0
    for size, root in sorted(roots.items()):
        if size > len(served):
            beyond += 1
            continue
        assert root_of(served[:size]) == root, f"the served entries do not hash to size {size}"
        checked += 1
    return Audit(len(served), len(roots), checked, beyond)


# -- PostgreSQL with synchronous_commit=off, crashed under load --------------------------------


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


class Postgres:
    """A throwaway cluster with asynchronous commit, which an immediate stop may rob of
    its last commits."""

    def __init__(self, bindir: Path) -> None:
        self.bindir = bindir
        self.dir = Path(tempfile.mkdtemp(prefix="stockade-durability-pg-"))
        self.port = free_port()
        self.url = f"postgresql+psycopg://postgres@127.0.0.1:{self.port}/postgres"
        self.plain = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"
        if os.getuid() == 0:
            shutil.chown(self.dir, "postgres")
        self._run("initdb", "-D", str(self.dir / "data"), "-U", "postgres", "-A", "trust",
                  "--no-sync")  # fmt: skip
        self.start()

    def _run(self, tool: str, *args: str) -> None:
        command = [str(self.bindir / tool), *args]
        if os.getuid() == 0:
            command = ["runuser", "-u", "postgres", "--", *command]
        subprocess.run(command, check=True, capture_output=True, timeout=60)

    def start(self) -> None:
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.dir} -c synchronous_commit=off "
            "-c wal_writer_delay=10000 -c bgwriter_lru_maxpages=0 -c max_connections=100"
        )
        self._run("pg_ctl", "-D", str(self.dir / "data"), "-l", str(self.dir / "server.log"),
                  "-w", "-t", "60", "-o", options, "start")  # fmt: skip

    def _wal_writer(self) -> int:
        postmaster = int((self.dir / "data" / "postmaster.pid").read_text().split()[0])
        for stat in Path("/proc").glob("[0-9]*/stat"):
            with contextlib.suppress(OSError):
                fields = stat.read_text().rsplit(")", 1)[1].split()
                if (
                    int(fields[1]) == postmaster
                    and b"walwriter" in (stat.parent / "cmdline").read_bytes()
                ):
                    return int(stat.parent.name)
        raise AssertionError("no walwriter process")

    @contextlib.contextmanager
    def wal_unwritten(self) -> Iterator[None]:
        """Commits acknowledged in the block stay in the server's memory: with asynchronous
        commit only the WAL writer writes them, and it is stopped. Then the server crashes."""
        writer = self._wal_writer()
        os.kill(writer, signal.SIGSTOP)
        try:
            yield
        finally:
            os.kill(writer, signal.SIGKILL)
            with contextlib.suppress(subprocess.CalledProcessError):
                self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")

    def dump(self, path: Path) -> None:
        subprocess.run(
            [str(self.bindir / "pg_dump"), "-Fc", "-f", str(path), self.plain],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def restore(self, path: Path) -> None:
        engine = create_engine(self.url)
        with engine.begin() as connection:
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        engine.dispose()
        subprocess.run(
            [str(self.bindir / "pg_restore"), "-d", self.plain, str(path)],
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def log_size(self) -> int:
        engine = create_engine(self.url)
        try:
            with engine.connect() as connection:
                return int(connection.execute(text("SELECT size FROM translog_state")).scalar_one())
        finally:
            engine.dispose()

    def remove(self) -> None:
        with contextlib.suppress(subprocess.CalledProcessError):
            self._run("pg_ctl", "-D", str(self.dir / "data"), "-m", "immediate", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture
def postgres() -> Iterator[Postgres]:
    bindir = _postgres_bin()
    if bindir is None:
        pytest.skip("no PostgreSQL server binaries (scripts/ci_postgres.sh installs them)")
    cluster = Postgres(bindir)
    try:
        yield cluster
    finally:
        cluster.remove()


def _max_signed(seen: Observed) -> int:
    with seen.lock:
        return max((r.tree_size for r in seen.receipts), default=0)


def _wait_for(condition: Any, seconds: float) -> None:
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


@pytest.mark.swtpm
def test_postgres_losing_commits_under_a_running_verifier_is_refused_not_forked(
    tmp_path, make_verifier, make_agents, postgres
):
    verifier = make_verifier(postgres.url)
    verifier.start()
    seen = Observed()
    snapshot = tmp_path / "early.dump"
    try:
        with verifier.client() as client:
            key = NoteVerifier.from_key_string(client.get("/v1/log/key").text)
            agents = make_agents(3)
            for number, agent in enumerate(agents):
                agent.enroll(client, f"durable-{number}")
            load = Load(agents, client, seen)
            _wait_for(lambda: _max_signed(seen) >= 15, 30)
            postgres.dump(snapshot)  # an earlier backup, in case the crash loses nothing signed
            _wait_for(lambda: _max_signed(seen) >= 30, 30)
            with postgres.wal_unwritten():  # crashed under load, commits not yet written
                signed = _max_signed(seen)
                _wait_for(lambda: _max_signed(seen) >= signed + 5, 30)
            signed_before = _max_signed(seen)
            postgres.start()
            stored = postgres.log_size()
            lost_in_crash = signed_before > stored
            if not lost_in_crash:
                # Nothing signed was lost this time: restore the earlier backup under the
                # running verifier (what a restore or a failover to a lagging standby does).
                load.finish()
                signed_before = _max_signed(seen)
                postgres.restore(snapshot)
                stored = postgres.log_size()
                load = Load(agents, client, seen)
            seen.loss.set()
            time.sleep(3)  # the load goes on against the shrunk log
            load.finish()
            head = client.get("/v1/log/checkpoint")
            served = _served_entries(client, verifier.data_dir)
        audit = _audit(seen, key, served)
    finally:
        verifier.stop()
    refused = seen.statuses["503 log-corrupted"]
    print(
        f"\nPostgreSQL: signed up to {signed_before}, database kept {stored} "
        f"({'lost in the crash' if lost_in_crash else 'crash lost nothing signed; restored'}); "
        f"entries served {audit.entries}, checkpoints {audit.checkpoints} "
        f"(checked against served entries {audit.checked}, beyond them {audit.beyond}); "
        f"answers {dict(seen.statuses)}"
    )
    assert stored < signed_before
    assert seen.accepted_after_loss == 0, "a receipt was signed on the shrunk log"
    assert refused > 0 and head.status_code == 503 and head.json()["error"] == "log-corrupted"
    assert audit.entries == stored and audit.beyond > 0
    # One line says why, not one per refused request.
    said = [line for line in verifier.stderr_file.read_text().splitlines() if "refuses" in line]
    assert said and len(said) <= 2 and f"a checkpoint of {signed_before}" in said[-1], said
    # A restart on the shrunk database is refused too, naming both sizes.
    code, stderr = verifier.refused_start()
    assert code != 0 and "Traceback" not in stderr
    assert re.search(
        rf"has {stored} entries, but a checkpoint of {signed_before} was already signed", stderr
    ), stderr


# -- SQLite: a deleted WAL, a corrupt file -----------------------------------------------------


@pytest.mark.swtpm
def test_sqlite_wal_deleted_between_runs_is_refused_at_start(make_verifier, make_agents):
    verifier = make_verifier()
    database = verifier.data_dir / "verifier.db"
    (agent,) = make_agents(1)
    verifier.start()
    with verifier.client() as client:
        agent.enroll(client, "wal-node")
        for _ in range(3):
            assert agent.attest(client).status_code == 200
    verifier.stop()  # a clean stop: the WAL is checkpointed into the database file
    verifier.start()
    with verifier.client() as client:
        sizes = [agent.attest(client).json()["inclusion_proof"]["tree_size"] for _ in range(4)]
    verifier.stop(sig=signal.SIGKILL)  # the acknowledged results live only in the WAL
    wal = database.with_name("verifier.db-wal")
    assert wal.stat().st_size > 0 and sizes == [4, 5, 6, 7]
    wal.unlink()
    database.with_name("verifier.db-shm").unlink(missing_ok=True)
    code, stderr = verifier.refused_start()
    assert code != 0 and "Traceback" not in stderr, stderr
    lines = stderr.strip().splitlines()
    assert len(lines) == 1, stderr
    assert "has 3 entries, but a checkpoint of 7 was already signed" in lines[0]
    assert "latest-checkpoint" in lines[0]


@pytest.mark.swtpm
def test_corrupt_sqlite_file_is_refused_in_one_line(make_verifier):
    verifier = make_verifier()
    database = verifier.data_dir / "verifier.db"
    verifier.start()
    verifier.stop()
    pristine = database.read_bytes()
    page = int.from_bytes(pristine[16:18], "big")
    # An index page in the middle overwritten: found by PRAGMA quick_check, before anything is
    # served (a damaged table or schema page makes the pragma itself fail: refused too, but
    # worded otherwise; which page is which moves with every migration).
    with contextlib.closing(sqlite3.connect(database)) as db:
        indexes = [
            number
            for (number,) in db.execute(
                "SELECT pageno FROM dbstat WHERE name IN "
                "(SELECT name FROM sqlite_schema WHERE type = 'index')"
            )
        ]
    halfway = len(pristine) // page // 2 + 1
    number = min(indexes, key=lambda n: abs(n - halfway))
    damaged = bytearray(pristine)
    middle = (number - 1) * page
    damaged[middle : middle + page] = b"\xa5" * page
    database.write_bytes(bytes(damaged))
    code, stderr = verifier.refused_start()
    assert code != 0 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert "failed PRAGMA quick_check" in stderr, stderr
    # The header overwritten: not a database at all.
    database.write_bytes(b"\x00" * 100 + pristine[100:])
    code, stderr = verifier.refused_start()
    assert code != 0 and "Traceback" not in stderr and len(stderr.strip().splitlines()) == 1
    assert "file is not a database" in stderr, stderr
