"""/readyz follows the database: a real ``stockade verifier serve`` on its own throwaway
PostgreSQL (never CI's: its own directory and port, from ``scripts/ci_postgres.sh``). Stopping
PostgreSQL makes /readyz 503 within 5 s while /livez stays 200; starting it again makes /readyz
200 again. A server that hangs (its processes stopped with SIGSTOP: connections accepted, no
answer) is lost within 5 s too, by the readiness timeout, and found again when it resumes."""

from __future__ import annotations

import glob
import json
import os
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from stockade.verifier.metrics import CACHE_SECONDS
from support.verifier_serve import ServedVerifier

pytestmark = pytest.mark.tools

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "ci_postgres.sh"
# The shipped settings (JSON logs among them); flags give this test's port, host and data dir.
SHIPPED_CONFIG = ROOT / "deploy" / "config" / "verifier.yaml"
LOST_WITHIN = 5.0  # issue 17: 503 within 5 s of losing the database
BACK_WITHIN = 20.0


def _bindir() -> Path:
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin"))
    if not found:
        pytest.skip("PostgreSQL binaries are not installed (/usr/lib/postgresql/*/bin)")
    return Path(found[-1])


def _as_postgres(*command: str) -> list[str]:
    return ["runuser", "-u", "postgres", "--", *command] if os.geteuid() == 0 else [*command]


def _parent(stat: Path) -> int | None:
    try:
        return int(stat.read_text().rsplit(")", 1)[1].split()[1])
    except (OSError, IndexError, ValueError):
        return None  # gone meanwhile


class Postgres:
    """The throwaway server ``ci_postgres.sh`` started in ``directory``: stop and start it."""

    def __init__(self, bindir: Path, directory: Path) -> None:
        self.bindir = bindir
        self.directory = directory
        self.port = (directory / "port").read_text().strip()

    def stop(self) -> None:
        subprocess.run(
            _as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"),
                         "-m", "fast", "-w", "stop"),
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip

    def processes(self) -> list[int]:
        """The postmaster (first line of its pid file) and its children (the backends)."""
        postmaster = int((self.directory / "data" / "postmaster.pid").read_text().split()[0])
        children = [
            int(stat.parent.name)
            for stat in Path("/proc").glob("[0-9]*/stat")
            if _parent(stat) == postmaster
        ]
        return [postmaster, *children]

    def signal(self, number: int) -> None:
        for pid in self.processes():
            os.kill(pid, number)

    def start(self) -> None:
        options = f"-h 127.0.0.1 -p {self.port} -k {self.directory} -c fsync=off"
        subprocess.run(
            _as_postgres(str(self.bindir / "pg_ctl"), "-D", str(self.directory / "data"),
                         "-l", str(self.directory / "server.log"), "-w", "-t", "30",
                         "-o", options, "start"),
            check=True, capture_output=True, timeout=60,
        )  # fmt: skip


@pytest.fixture
def postgres() -> Iterator[tuple[str, Postgres]]:
    bindir = _bindir()
    if shutil.which("runuser") is None and os.geteuid() == 0:
        pytest.skip("runuser is needed to run PostgreSQL as root")
    # Not pytest's tmp_path: the postgres user must reach it (tmp_path's parents are 0700).
    directory = Path(tempfile.mkdtemp(prefix="stockade-readyz-pg-"))
    try:
        started = subprocess.run(
            [str(SCRIPT), "start", str(directory)],
            check=True, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        yield started.stdout.strip().splitlines()[-1], Postgres(bindir, directory)
    finally:
        subprocess.run([str(SCRIPT), "stop", str(directory)], check=False, timeout=120)
        shutil.rmtree(directory, ignore_errors=True)


def _wait_for(client: httpx.Client, path: str, status: int, within: float) -> float:
    """Poll ``path`` until it answers ``status``; how long that took."""
    started = time.monotonic()
    last: object = None
    while time.monotonic() - started < within:
        try:
            last = client.get(path).status_code
        except httpx.HTTPError as error:  # the verifier must answer; record and keep asking
            last = error
        if last == status:
            return time.monotonic() - started
        time.sleep(0.1)
    raise AssertionError(f"{path} did not answer {status} within {within} s (last: {last})")


def _scrape(client: httpx.Client, token: str) -> dict[str, float]:
    """/metrics answers while the database is away (its gauges grow old, it does not hang)."""
    started = time.monotonic()
    response = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
    assert response.status_code == 200, response.text
    assert time.monotonic() - started < LOST_WITHIN
    return {
        sample.name: sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
        if not sample.labels
    }


def test_readyz_follows_postgresql_down_and_back(
    tmp_path: Path, postgres: tuple[str, Postgres]
) -> None:
    url, server = postgres
    with (
        ServedVerifier(
            tmp_path / "verifier",
            database=url,
            extra=("--config", str(SHIPPED_CONFIG), "--host", "127.0.0.1"),
        ) as verifier,
        verifier.httpx_client(timeout=LOST_WITHIN) as client,
    ):
        assert client.get("/readyz").status_code == 200
        token = verifier.reader_token_file.read_text().strip()
        assert _scrape(client, token)["stockade_database_errors_total"] == 0
        server.stop()
        lost = _wait_for(client, "/readyz", 503, LOST_WITHIN)
        down = client.get("/readyz")
        assert down.status_code == 503 and down.json()["error"] == "database-unavailable"
        assert "retry-after" in down.headers
        assert client.get("/livez").status_code == 200  # alive, only not ready
        assert _scrape(client, token)["stockade_database_errors_total"] >= 1
        server.start()
        back = _wait_for(client, "/readyz", 200, BACK_WITHIN)
        assert client.get("/readyz").json() == {"status": "ready"}

        server.signal(signal.SIGSTOP)
        try:
            hung = _wait_for(client, "/readyz", 503, LOST_WITHIN)
            assert client.get("/livez").status_code == 200
            time.sleep(CACHE_SECONDS)  # the next scrape reads the database again: it hangs
            stale = _scrape(client, token)["stockade_database_state_age_seconds"]
            assert stale >= CACHE_SECONDS
        finally:
            server.signal(signal.SIGCONT)
        resumed = _wait_for(client, "/readyz", 200, BACK_WITHIN)
    # The outage was logged as the shipped config asks: JSON, one object per line, and the
    # database's loss is one warning or error record, not a traceback.
    records = [json.loads(line) for line in verifier.stderr_lines()]
    assert any("database unavailable" in record["event"] for record in records), records
    assert not any("traceback" in record for record in records), records
    print(
        f"/readyz 503 {lost:.2f} s after the stop, 200 {back:.2f} s after the restart; "
        f"503 {hung:.2f} s after the hang, 200 {resumed:.2f} s after it resumed"
    )
