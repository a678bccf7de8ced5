"""``stockade events watch`` against a real ``stockade verifier serve`` over TLS: every stored
event once, in order (JSON lines or readable text), ``--after``, ``--node``, ``--limit`` and
``--until-idle``; following the stream across a verifier restart, resuming after the last
event printed with no duplicate and no gap; SIGTERM and SIGINT end it with exit code 0; a
refused credential ends it at once."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert
from sqlalchemy.orm import sessionmaker

from stockade.verifier.db import make_engine
from stockade.verifier.models import Event
from support.cli import run_stockade, stockade_command
from support.nodes import placeholder_node
from support.verifier_serve import ServedVerifier


@pytest.fixture
def verifier(tmp_path: Path) -> Iterator[ServedVerifier]:
    with ServedVerifier(tmp_path / "data") as served:
        yield served


def _headers(verifier: ServedVerifier, role: str = "operator") -> dict[str, str]:
    token = (verifier.data_dir / f"{role}-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def _add_nodes(verifier: ServedVerifier, *names: str) -> list[str]:
    engine = make_engine(f"sqlite:///{verifier.data_dir / 'verifier.db'}")
    ids = [str(uuid.uuid4()) for _ in names]
    with sessionmaker(engine)() as session, session.begin():
        for node_id, name in zip(ids, names, strict=True):
            session.add(placeholder_node(node_id, name, datetime.now(UTC)))
    engine.dispose()
    return ids


def _act(verifier: ServedVerifier, node_id: str, action: str) -> None:
    with verifier.httpx_client() as client:
        answer = client.post(f"/v1/nodes/{node_id}/{action}", json={}, headers=_headers(verifier))
        assert answer.status_code == 200, answer.text


def _stored(verifier: ServedVerifier) -> list[dict[str, Any]]:
    """Every stored event as ``GET /v1/events?follow=false`` serves it."""
    events = []
    with (
        verifier.httpx_client() as client,
        client.stream(
            "GET", "/v1/events?after=0&follow=false", headers=_headers(verifier, "reader")
        ) as response,
    ):
        for line in response.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line.removeprefix("data: ")))
    return events


def _options(verifier: ServedVerifier) -> list[str]:
    return [
        "--verifier", verifier.url, "--ca", str(verifier.ca),
        "--token-file", str(verifier.data_dir / "reader-token"),
    ]  # fmt: skip


def _watch(verifier: ServedVerifier, *args: str) -> subprocess.CompletedProcess[str]:
    return run_stockade("events", "watch", *_options(verifier), *args, timeout=60)


def _json_lines(text: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in text.splitlines()]


def test_until_idle_prints_every_stored_event_once_with_after_node_and_limit(
    verifier: ServedVerifier,
) -> None:
    first, second = _add_nodes(verifier, "watch-a", "watch-b")
    for node_id, action in ((first, "revoke"), (second, "revoke"), (first, "allow")):
        _act(verifier, node_id, action)
    stored = _stored(verifier)
    assert len(stored) == 3

    everything = _watch(verifier, "--until-idle", "--format", "json")
    assert everything.returncode == 0, everything.stderr
    assert _json_lines(everything.stdout) == stored  # one event object per line

    after = _watch(verifier, "--until-idle", "--format", "json", "--after", str(stored[0]["id"]))
    assert _json_lines(after.stdout) == stored[1:]

    only_a = _watch(verifier, "--until-idle", "--format", "json", "--node", "watch-a")
    assert [e["node_id"] for e in _json_lines(only_a.stdout)] == [first, first]
    by_id = _watch(verifier, "--until-idle", "--format", "json", "--node", second)
    assert _json_lines(by_id.stdout) == [stored[1]]

    limited = _watch(verifier, "--format", "json", "--limit", "2")  # following, ends at 2
    assert limited.returncode == 0, limited.stderr
    assert _json_lines(limited.stdout) == stored[:2]


def test_text_output_is_readable_lines(verifier: ServedVerifier) -> None:
    (node_id,) = _add_nodes(verifier, "watch-text")
    _act(verifier, node_id, "revoke")
    answer = _watch(verifier, "--until-idle")
    assert answer.returncode == 0, answer.stderr
    (line,) = answer.stdout.splitlines()
    assert re.fullmatch(
        rf"#\d+ \S+ watch-text \({node_id}\) enrolled -> revoked: \S.* by \S+", line
    ), line
    for python_repr in ("None", "{", "'", "[", "datetime"):
        assert python_repr not in line, line


def _follow(verifier: ServedVerifier, out: Path, err: Path) -> subprocess.Popen[bytes]:
    with out.open("wb") as stdout, err.open("wb") as stderr:
        return subprocess.Popen(
            stockade_command(
                "events", "watch", *_options(verifier), "--format", "json", "--max-backoff", "1"
            ),
            stdout=stdout,
            stderr=stderr,
            stdin=subprocess.DEVNULL,
        )


def _until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, what
        time.sleep(0.05)


def test_following_resumes_after_a_verifier_restart_without_duplicates_or_gaps(
    verifier: ServedVerifier, tmp_path: Path
) -> None:
    nodes = _add_nodes(verifier, "follow-a", "follow-b", "follow-c")
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    watcher = _follow(verifier, out, err)
    try:

        def printed() -> list[dict[str, Any]]:
            return _json_lines(out.read_text()) if out.read_text().endswith("\n") else []

        for node_id in nodes[:2]:
            _act(verifier, node_id, "revoke")
        _until(lambda: len(printed()) == 2, f"two events: {err.read_text()}")

        verifier.stop()
        # Committed while the verifier is down: positioned when it is back, after the cursor.
        engine = make_engine(f"sqlite:///{verifier.data_dir / 'verifier.db'}")
        with engine.begin() as connection:
            connection.execute(
                insert(Event).values(
                    node_id=nodes[2], name="follow-c", from_state="enrolled",
                    to_state="revoked", reason="while-down", time=datetime.now(UTC),
                )
            )  # fmt: skip
        engine.dispose()
        _until(lambda: "resuming after event" in err.read_text(), "a reconnect attempt")
        verifier.start()
        for node_id in nodes[:2]:
            _act(verifier, node_id, "allow")

        stored = _stored(verifier)
        assert len(stored) == 5
        _until(lambda: len(printed()) >= 5, f"five events: {err.read_text()}")
        time.sleep(0.5)  # nothing more may come
        assert printed() == stored  # every event once, in stream order
        assert watcher.poll() is None  # still following
        watcher.send_signal(signal.SIGTERM)
        assert watcher.wait(15) == 0, err.read_text()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert "Traceback" not in err.read_text()
    assert f"resuming after event {stored[1]['id']}" in err.read_text()


def test_sigint_ends_a_following_watch_with_exit_code_0(
    verifier: ServedVerifier, tmp_path: Path
) -> None:
    out, err = tmp_path / "watch.out", tmp_path / "watch.err"
    (node_id,) = _add_nodes(verifier, "follow-int")
    watcher = _follow(verifier, out, err)
    try:
        _act(verifier, node_id, "revoke")
        _until(lambda: out.read_text().count("\n") == 1, f"one event: {err.read_text()}")
        watcher.send_signal(signal.SIGINT)
        assert watcher.wait(15) == 0, err.read_text()
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert err.read_text() == ""


def test_a_refused_credential_ends_the_watch_at_once(
    verifier: ServedVerifier, tmp_path: Path
) -> None:
    wrong = tmp_path / "wrong-token"
    wrong.write_text("not-a-token\n")
    answer = run_stockade(
        "events", "watch", "--verifier", verifier.url, "--ca", str(verifier.ca),
        "--token-file", str(wrong), timeout=30,
    )  # fmt: skip
    assert answer.returncode == 2, answer.stderr
    assert "401" in answer.stderr and "Traceback" not in answer.stderr
    assert answer.stdout == ""
