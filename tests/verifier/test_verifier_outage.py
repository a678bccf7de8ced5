"""The database going away under a real ``stockade verifier serve``: 503 ``database-unavailable``
with Retry-After over the same keep-alive connection, a few log lines and no traceback, and
recovery without a restart when the database returns."""

from __future__ import annotations

import http.client
import json
import logging
import os
import shutil
import subprocess
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from sqlalchemy import event
from verifier_support import operator_headers, policy_document, reader_headers

from support.verifier_serve import ServedVerifier

REPO = Path(__file__).resolve().parents[2]


def _postgres_bin() -> Path | None:
    found = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return found[-1].parent if found else None


def _as_postgres(command: list[str]) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else command


@dataclass
class Postgres:
    directory: Path
    url: str
    port: int

    def _pg_ctl(self, *args: str) -> None:
        bin_dir = _postgres_bin()
        assert bin_dir is not None
        subprocess.run(
            _as_postgres([str(bin_dir / "pg_ctl"), "-D", str(self.directory / "data"), *args]),
            check=True,
            capture_output=True,
            timeout=60,
        )

    def stop(self) -> None:
        # Not -m immediate: with this throwaway server's fsync=off, crash recovery lost the
        # verifier's tables.
        self._pg_ctl("-m", "fast", "-w", "stop")

    def start(self) -> None:
        options = (
            f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off -c max_connections=200"
        )
        self._pg_ctl(
            "-l", str(self.directory / "server.log"), "-w", "-t", "30", "-o", options, "start"
        )


@pytest.fixture
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Postgres]:
    """A PostgreSQL of this test's own (it is stopped and started: never the shared one)."""
    if _postgres_bin() is None:
        pytest.skip("PostgreSQL is not installed (scripts/bootstrap.sh)")
    directory = Path(f"/tmp/stockade-outage-{os.getpid()}-{time.monotonic_ns()}")
    script = REPO / "scripts" / "ci_postgres.sh"
    url = subprocess.run(
        [str(script), "start", str(directory)], check=True, capture_output=True, text=True
    ).stdout.strip()
    try:
        yield Postgres(directory, url, int((directory / "port").read_text()))
    finally:
        subprocess.run([str(script), "stop", str(directory)], capture_output=True, check=False)
        shutil.rmtree(directory, ignore_errors=True)


@dataclass
class Served(ServedVerifier):
    """The verifier with its log (stderr) read as lines, and a keep-alive connection."""

    @property
    def stderr(self) -> list[str]:
        return self.stderr_lines()

    def connection(self) -> http.client.HTTPSConnection:
        return http.client.HTTPSConnection(
            "127.0.0.1", self.port, context=self.ssl_context(), timeout=10
        )


@pytest.fixture
def serve(tmp_path: Path) -> Iterator[Callable[[str | None], Served]]:
    started: list[Served] = []

    def start(database_url: str | None) -> Served:
        served = Served(tmp_path / "data", database=database_url)
        started.append(served)
        served.start()
        return served

    yield start
    for served in started:
        served.stop()


@dataclass
class Answer:
    status: int
    headers: dict[str, str]
    body: dict
    local: tuple[str, int]


def ask(connection: http.client.HTTPSConnection, path: str, headers: dict[str, str]) -> Answer:
    connection.request("GET", path, headers=headers)
    response = connection.getresponse()
    body = json.loads(response.read() or b"{}")
    assert connection.sock is not None, "the server closed the keep-alive connection"
    return Answer(
        response.status,
        {k.lower(): v for k, v in response.getheaders()},
        body,
        connection.sock.getsockname()[:2],
    )


def _wait_until(predicate, timeout: float) -> float:
    started = time.monotonic()
    while not predicate():
        assert time.monotonic() - started < timeout, "timed out"
        time.sleep(0.1)
    return time.monotonic() - started


@pytest.mark.tools
def test_postgres_outage_is_503_on_the_same_connection_and_recovers(postgres, serve):
    served = serve(postgres.url)
    reader = reader_headers(served.data_dir)
    connection = served.connection()
    paths = ("/v1/nodes", "/v1/nodes/no-such-node/status")
    ok = ask(connection, "/v1/nodes", reader)
    assert ok.status == 200, ok.body
    assert ask(connection, "/readyz", {}).status == 200
    socket_before = ok.local
    logged_before = len(served.stderr)

    postgres.stop()
    answers = []
    started = time.monotonic()
    while time.monotonic() - started < 3:
        for path in paths:
            answers.append(ask(connection, path, reader))
        time.sleep(0.05)
    ready = ask(connection, "/readyz", {})
    during = served.stderr[logged_before:]

    assert answers and all(a.status == 503 for a in answers), [(a.status, a.body) for a in answers]
    assert all(a.body["error"] == "database-unavailable" for a in answers)
    assert all(int(a.headers["retry-after"]) > 0 for a in answers)
    assert all(a.headers.get("connection", "").lower() != "close" for a in answers)
    assert {a.local for a in answers} == {socket_before}, "the connection was not kept"
    assert ready.status == 503 and "retry-after" in ready.headers
    assert not any("Traceback" in line for line in during), "".join(during)
    assert len(during) <= 3, "".join(during)
    print(f"\noutage: {len(answers)} requests answered 503, {len(during)} log lines: {during}")

    postgres.start()
    recovery = _wait_until(lambda: ask(connection, "/v1/nodes", reader).status == 200, 30)
    assert ask(connection, "/readyz", {}).status == 200
    assert ask(connection, "/v1/nodes", reader).local == socket_before
    after = served.stderr[logged_before:]
    assert not any("Traceback" in line for line in after), "".join(after)
    assert len(after) <= 4, "".join(after)
    print(f"recovered {recovery:.2f} s after PostgreSQL started; log: {after}")


def test_sqlite_disk_full_is_503_and_recovers(client, verifier_config, caplog):
    """``database or disk is full`` (SQLITE_FULL, made here with max_page_count): 503 with
    Retry-After, one log line for the whole burst, no traceback; writable again, 200."""
    service = client.app.state.service
    if service.engine.dialect.name != "sqlite":
        pytest.skip("SQLite only")

    def full(connection, _record) -> None:
        cursor = connection.cursor()
        cursor.execute("PRAGMA page_count")
        pages = cursor.fetchone()[0]
        cursor.execute(f"PRAGMA max_page_count = {pages}")
        cursor.close()

    enrollment = {"name": "x", "ek_certificate": "", "ek_public": "", "ak_public": ""}
    event.listen(service.engine, "connect", full)
    service.engine.dispose()
    try:
        with caplog.at_level(logging.WARNING):
            answers = []
            for index in range(20):
                filler = {"page": "x" * 100_000, "index": index}
                answers.append(
                    client.put(
                        "/v1/policies/filler",
                        json={**policy_document("filler"), "reference": filler},
                        headers=operator_headers(verifier_config.data_dir),
                    )
                )
    finally:
        event.remove(service.engine, "connect", full)
        service.engine.dispose()
    refused = [a for a in answers if a.status_code == 503]
    assert refused, [(a.status_code, a.text[:200]) for a in answers]
    assert all(a.json()["error"] == "database-unavailable" for a in refused)
    assert all(a.headers["Retry-After"] for a in refused)
    lines = [r for r in caplog.records if r.levelno >= logging.ERROR]
    assert len(lines) == 1 and "database or disk is full" in lines[0].getMessage(), [
        r.getMessage() for r in lines
    ]
    assert all(r.exc_info is None for r in caplog.records)
    assert client.get("/readyz").status_code == 200
    assert client.post("/v1/enrollments", json=enrollment).status_code != 503
