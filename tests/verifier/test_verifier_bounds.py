"""Bounds: event cursors and every query integer are validated (4xx JSON, never a traceback),
event streams are limited per client and in total and end after their lifetime, the data
directory and database are the owner's alone, and enrollment is rate-limited per address."""

from __future__ import annotations

import dataclasses
import hashlib
import os
import socket
import stat
import threading
import time

import httpx
import pytest
import uvicorn
from fastapi import Depends
from fastapi.testclient import TestClient
from verifier_support import QuoteOnlyAppraiser, operator_headers, policy_document, reader_headers

from stockade.verifier import VerifierConfig, create_app
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.models import Enrollment
from stockade.verifier.rate_limit import (
    ENROLLMENT_BURST,
    ConcurrencySlots,
    SlotsExhausted,
    TokenBucket,
    limit_enrollment,
)
from stockade.verifier.server import prepare
from support.cli import run_stockade


def _json_error(response: httpx.Response, statuses: tuple[int, ...], code: str | None = None):
    assert response.status_code in statuses, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}, body
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"] == code, body


@pytest.fixture
def strict(client) -> TestClient:
    """The same app, but any exception inside it fails the test (no 500 hidden)."""
    return TestClient(client.app, raise_server_exceptions=True, headers=reader_headers(client))


# -- event cursors ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "value", [str(2**80), str(2**63), "-1", "abc", "1e3", "0x10", "1.5", "", " ", "9" * 200]
)
def test_event_cursor_out_of_range_is_a_400(strict, value):
    """Before: ``Last-Event-ID: 2**80`` answered 200, then the stream died with a traceback."""
    if value.strip():
        _json_error(strict.get("/v1/events", headers={"Last-Event-ID": value}), (400,), "cursor")
    _json_error(strict.get("/v1/events", params={"after": value}), (400,), "cursor")
    assert strict.get("/v1/health").status_code == 200


def test_event_cursor_at_the_top_of_the_range_streams_nothing(strict):
    top = str(2**63 - 1)
    by_header = strict.get("/v1/events?follow=false", headers={"Last-Event-ID": top})
    by_query = strict.get("/v1/events", params={"follow": "false", "after": top})
    for answer in (by_header, by_query):
        assert answer.status_code == 200
        assert answer.text == "retry: 1000\n\n"


# -- query integers --------------------------------------------------------------------------

HUGE = str(2**80)


@pytest.mark.parametrize(
    ("path", "params"),
    [
        ("/v1/nodes/n/results", {"limit": HUGE}),
        ("/v1/nodes/n/results", {"limit": "-1"}),
        ("/v1/nodes/n/results", {"limit": "abc"}),
        ("/v1/executions", {"limit": HUGE}),
        ("/v1/executions", {"limit": "0"}),
        ("/v1/executions", {"limit": "abc"}),
        ("/v1/executions", {"since": HUGE}),
        ("/v1/executions", {"since": "-1"}),
        ("/v1/executions", {"since": "abc"}),
        ("/v1/executions", {"since": "2024-01-01T00:00:00"}),  # no zone
        ("/v1/executions", {"since": "0001-01-01T00:00:00+14:00"}),  # before year 1 in UTC
        ("/v1/executions", {"since": "9999-12-31T23:59:59-14:00"}),  # after year 9999 in UTC
        ("/v1/executions", {"since": "2024-01-01T00:00:00Z" + "0" * 100}),
        ("/v1/executions", {"node": "n" * 300}),
        ("/v1/log/entries", {"start": HUGE}),
        ("/v1/log/entries", {"start": "-1"}),
        ("/v1/log/entries", {"start": "abc"}),
        ("/v1/log/entries", {"start": "0", "end": HUGE}),
        ("/v1/log/entries", {"start": "0", "end": "-1"}),
        ("/v1/log/entries", {"start": "5", "end": "1"}),
        ("/v1/log/entries", {"start": str(2**63 - 1)}),
        ("/v1/log/proof/inclusion", {"index": HUGE}),
        ("/v1/log/proof/inclusion", {"index": "-1"}),
        ("/v1/log/proof/inclusion", {"index": "abc"}),
        ("/v1/log/proof/inclusion", {"index": "0", "size": HUGE}),
        ("/v1/log/proof/inclusion", {"index": "0", "size": "0"}),
        ("/v1/log/proof/inclusion", {"index": str(2**63 - 1), "size": str(2**63 - 1)}),
        ("/v1/log/proof/consistency", {"old": HUGE}),
        ("/v1/log/proof/consistency", {"old": "-1"}),
        ("/v1/log/proof/consistency", {"old": "abc"}),
        ("/v1/log/proof/consistency", {"old": "0", "new": HUGE}),
        ("/v1/log/proof/consistency", {"old": "0", "new": str(2**63 - 1)}),
        ("/v1/security-events", {"after": HUGE}),
        ("/v1/security-events", {"limit": HUGE}),
    ],
)
def test_query_integers_are_bounded(strict, path, params):
    if path == "/v1/security-events" and path not in strict.get("/v1/openapi.json").json()["paths"]:
        pytest.skip("no security events in this build")
    _json_error(strict.get(path, params=params), (400, 404, 422))
    assert strict.get("/v1/health").status_code == 200


# -- event streams ---------------------------------------------------------------------------


class ThreadedVerifier:
    """The app under uvicorn in a thread (real sockets, real concurrent streams)."""

    def __init__(self, app) -> None:
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        self.url = f"http://127.0.0.1:{self.port}"
        self.server = uvicorn.Server(
            uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning")
        )
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 15
        while not self.server.started:
            assert self.thread.is_alive() and time.monotonic() < deadline, "uvicorn did not start"
            time.sleep(0.01)

    def stop(self) -> None:
        self.server.should_exit = True
        self.thread.join(10)


ALICE = "alice-reader-token-0123456789abc"
BOB = "bob-reader-token-0123456789abcdef"


@pytest.fixture
def streaming(verifier_config, tmp_path):
    credentials = tmp_path / "credentials"
    credentials.write_text(
        "".join(
            f"{name} reader sha256:{hashlib.sha256(token.encode()).hexdigest()}\n"
            for name, token in (("alice", ALICE), ("bob", BOB))
        )
    )
    config = dataclasses.replace(
        verifier_config,
        credentials_file=credentials,
        max_event_streams=3,
        max_event_streams_per_client=2,
        event_stream_max_seconds=2.0,
    )
    server = ThreadedVerifier(create_app(config, appraiser=QuoteOnlyAppraiser()))
    yield server, config
    server.stop()


def _open(client: httpx.Client, headers: dict[str, str]):
    stream = client.stream("GET", "/v1/events", headers=headers)
    response = stream.__enter__()
    return stream, response


def test_event_streams_are_limited_per_client_and_in_total(streaming):
    server, config = streaming
    reader = reader_headers(config.data_dir)
    alice = {"Authorization": f"Bearer {ALICE}"}
    bob = {"Authorization": f"Bearer {BOB}"}
    with httpx.Client(base_url=server.url, timeout=10) as client:
        opened = [_open(client, reader), _open(client, reader)]
        assert all(response.status_code == 200 for _, response in opened)
        third = client.get("/v1/events", headers=reader)
        _json_error(third, (429,), "too-many-streams")
        assert int(third.headers["retry-after"]) >= 1
        assert "this client's limit of 2" in third.json()["detail"]
        # Another credential has its own allowance, up to the verifier's total of 3.
        opened.append(_open(client, alice))
        assert opened[-1][1].status_code == 200
        refused = client.get("/v1/events", headers=bob)
        _json_error(refused, (429,), "too-many-streams")
        assert "the verifier's limit of 3" in refused.json()["detail"]
        # Short answers are still served while the streams are held.
        assert client.get("/v1/nodes", headers=reader).status_code == 200
        # A closed stream gives its slot back.
        stream, _ = opened.pop(0)
        stream.__exit__(None, None, None)
        deadline = time.monotonic() + 10
        while True:
            answer = client.get("/v1/events", params={"follow": "false"}, headers=bob)
            if answer.status_code == 200:
                break
            assert time.monotonic() < deadline, answer.text
            time.sleep(0.1)
        for stream, _ in opened:
            stream.__exit__(None, None, None)


def test_a_stream_ends_after_its_lifetime_and_resumes(streaming):
    server, config = streaming
    reader = reader_headers(config.data_dir)
    operator = operator_headers(config.data_dir)
    with httpx.Client(base_url=server.url, timeout=10) as client:
        assert client.put("/v1/policies/test", json=policy_document(), headers=operator).is_success
        started = time.monotonic()
        with client.stream("GET", "/v1/events", headers=reader) as stream:
            lines = list(stream.iter_lines())  # the server ends it
        lasted = time.monotonic() - started
        assert 1.5 <= lasted < 10, lasted
        assert lines[0] == "retry: 1000"
        # Ended streams hold no slot: the per-client allowance is whole again.
        for _ in range(2):
            stored = client.get("/v1/events", params={"follow": "false"}, headers=reader)
            assert stored.status_code == 200
        resumed = client.get(
            "/v1/events", params={"follow": "false"}, headers={**reader, "Last-Event-ID": "0"}
        )
        assert resumed.status_code == 200


def test_concurrency_slots():
    slots = ConcurrencySlots(total=3, per_key=2)
    first = slots.acquire("a")
    slots.acquire("a")
    with pytest.raises(SlotsExhausted) as caught:
        slots.acquire("a")
    assert caught.value.scope == "client"
    slots.acquire("b")
    with pytest.raises(SlotsExhausted) as caught:
        slots.acquire("c")
    assert caught.value.scope == "total"
    first()
    first()  # idempotent: one slot back, not two
    assert slots.in_use("a") == 1 and slots.in_use() == 2
    slots.acquire("c")
    with pytest.raises(SlotsExhausted):
        slots.acquire("d")


# -- the data directory and the database -----------------------------------------------------


@pytest.fixture
def sqlite_config(tmp_path, ek_ca) -> VerifierConfig:
    return VerifierConfig(
        data_dir=tmp_path / "verifier",
        ek_roots=ek_ca.trusted_roots(),
        ek_intermediates=ek_ca.intermediates(),
    )


@pytest.mark.parametrize("mode", [0o755, 0o711, 0o701, 0o777, 0o705])
def test_a_data_dir_others_may_enter_is_refused(sqlite_config, mode):
    data_dir = sqlite_config.data_dir
    data_dir.mkdir(mode=0o700)
    data_dir.chmod(mode)
    for start in (
        lambda: create_app(sqlite_config),
        lambda: prepare(sqlite_config, "127.0.0.1", 1),
    ):
        with pytest.raises(ConfigurationError) as caught:
            start()
        assert str(data_dir) in str(caught.value)
        assert f"chmod 700 {data_dir}" in str(caught.value)
    # Nothing was made in it: no key, no token, no database.
    assert list(data_dir.iterdir()) == []


def test_group_access_only_for_the_process_own_group(sqlite_config, monkeypatch):
    """Kubernetes volumes carry the pod's fsGroup with group access: accepted when that group
    is the process's own, refused for any other group."""
    data_dir = sqlite_config.data_dir
    data_dir.mkdir(mode=0o700)
    data_dir.chmod(0o2770)
    assert data_dir.stat().st_gid == os.getegid()
    create_app(sqlite_config)
    prepare(sqlite_config, "127.0.0.1", 1)
    for key in ("operator-token", "reader-token", "keys/session-key", "keys/ear-signing-key.pem"):
        assert (data_dir / key).stat().st_mode & 0o077 == 0, key
    monkeypatch.setattr("stockade.verifier.datadir.os.getegid", lambda: data_dir.stat().st_gid + 1)
    with pytest.raises(ConfigurationError, match=f"open to group {data_dir.stat().st_gid}"):
        create_app(sqlite_config)


def test_a_new_data_dir_is_made_owner_only(sqlite_config, tmp_path):
    previous = os.umask(0o022)
    try:
        create_app(sqlite_config)
    finally:
        os.umask(previous)
    assert stat.S_IMODE(sqlite_config.data_dir.stat().st_mode) == 0o700


def test_the_database_files_are_owner_only(sqlite_config):
    """With the usual umask (022) SQLite would make verifier.db, -wal and -shm 0644."""
    data_dir = sqlite_config.data_dir
    previous = os.umask(0o022)
    try:
        with TestClient(create_app(sqlite_config, appraiser=QuoteOnlyAppraiser())) as client:
            document = policy_document()
            stored = client.put(
                f"/v1/policies/{document['id']}", json=document, headers=operator_headers(data_dir)
            )
            assert stored.status_code == 200, stored.text  # one write
            for name in ("verifier.db", "verifier.db-wal", "verifier.db-shm"):
                mode = stat.S_IMODE((data_dir / name).stat().st_mode)
                assert mode & 0o077 == 0, (name, oct(mode))
    finally:
        os.umask(previous)


def test_database_files_a_previous_version_left_open_are_closed(sqlite_config):
    data_dir = sqlite_config.data_dir
    create_app(sqlite_config).state.service.engine.dispose()
    database = data_dir / "verifier.db"
    database.chmod(0o644)
    (data_dir / "verifier.db-wal").write_bytes(b"")
    (data_dir / "verifier.db-wal").chmod(0o666)
    engine = create_app(sqlite_config).state.service.engine
    try:
        assert stat.S_IMODE(database.stat().st_mode) == 0o600
        assert stat.S_IMODE((data_dir / "verifier.db-wal").stat().st_mode) == 0o600
    finally:
        engine.dispose()


@pytest.mark.tools
def test_serve_refuses_a_world_readable_data_dir(tmp_path):
    data_dir = tmp_path / "open"
    data_dir.mkdir()
    data_dir.chmod(0o755)
    done = run_stockade("verifier", "serve", "--data-dir", data_dir, "--port", "1", timeout=60)
    assert done.returncode == 2, done.stdout + done.stderr
    assert f"chmod 700 {data_dir}" in done.stderr
    assert "Traceback" not in done.stderr
    assert list(data_dir.iterdir()) == []


# -- enrollment flood ------------------------------------------------------------------------


def _garbage_enrollment() -> dict[str, str]:
    return {"name": "flood", "ek_certificate": "AA==", "ek_public": "AA==", "ak_public": "AA=="}


def test_enrollment_flood_is_rate_limited_per_address(make_client, verifier_config):
    """``POST /v1/enrollments`` is unauthenticated and costs certificate checks and a
    MakeCredential: one address gets a burst of 20, then 429 until its budget refills."""
    config = dataclasses.replace(verifier_config, enrollment_rate_per_minute=1.0)
    app = make_client(config).app
    flooder = TestClient(app, client=("203.0.113.7", 40000))
    answers = [flooder.post("/v1/enrollments", json=_garbage_enrollment()) for _ in range(25)]
    assert all(a.status_code != 429 for a in answers[:ENROLLMENT_BURST])
    for answer in answers[ENROLLMENT_BURST:]:
        _json_error(answer, (429,), "rate-limited")
        assert int(answer.headers["retry-after"]) >= 1
    activation = flooder.post("/v1/enrollments/x/activation", json={"secret": "AA=="})
    _json_error(activation, (429,), "rate-limited")
    # Another address is served; nothing was stored for the flood.
    other = TestClient(app, client=("198.51.100.9", 40000))
    assert other.post("/v1/enrollments", json=_garbage_enrollment()).status_code != 429
    with app.state.service.sessions() as session:
        assert session.query(Enrollment).count() == 0


@pytest.mark.tools
@pytest.mark.parametrize("rate", [1, 60_000])
def test_serve_takes_the_enrollment_rate(tmp_path, ek_ca, rate):
    """``verifier serve --enrollment-rate``: a flood from one address past the burst is
    refused at 1 a minute, and served when the operator raised the rate for a NAT."""
    from support.verifier_serve import ServedVerifier, ek_ca_files

    with (
        ServedVerifier(
            tmp_path / "verifier", ek_ca_files(ek_ca), extra=("--enrollment-rate", str(rate))
        ) as served,
        served.httpx_client() as client,
    ):
        answers = [
            client.post("/v1/enrollments", json=_garbage_enrollment())
            for _ in range(ENROLLMENT_BURST + 5)
        ]
    refused = [answer for answer in answers if answer.status_code == 429]
    assert len(refused) == (5 if rate == 1 else 0), [a.status_code for a in answers]


def test_limit_enrollment_dependency(make_client, verifier_config):
    config = dataclasses.replace(verifier_config, enrollment_rate_per_minute=1.0)
    app = make_client(config).app

    @app.post("/probe", dependencies=[Depends(limit_enrollment)])
    def probe() -> dict[str, str]:
        return {"ok": "yes"}

    flooder = TestClient(app, client=("203.0.113.8", 40000))
    codes = [flooder.post("/probe").status_code for _ in range(ENROLLMENT_BURST + 2)]
    assert codes == [200] * ENROLLMENT_BURST + [429, 429]
    refused = flooder.post("/probe")
    assert refused.json()["error"] == "rate-limited"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    assert TestClient(app, client=("203.0.113.9", 1)).post("/probe").status_code == 200


class FakeClock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_token_bucket():
    clock = FakeClock()
    bucket = TokenBucket.per_minute(60, 3, clock=clock)
    assert [bucket.take("a") for _ in range(3)] == [0.0, 0.0, 0.0]
    assert bucket.take("a") == pytest.approx(1.0)
    assert bucket.take("b") == 0.0  # keys are separate
    clock.now += 0.5
    assert bucket.take("a") == pytest.approx(0.5)  # refused: nothing spent
    clock.now += 0.5
    assert bucket.take("a") == 0.0
    clock.now += 3600
    assert [bucket.take("a") for _ in range(4)][-1] > 0  # refilled to the burst, no more
    clock.now -= 100  # a clock step back never adds tokens
    assert bucket.take("a") > 0


def test_token_bucket_keeps_a_bounded_number_of_keys():
    clock = FakeClock()
    bucket = TokenBucket(1.0, 1, max_keys=100, clock=clock)
    for number in range(10_000):
        bucket.take(f"10.0.{number // 256}.{number % 256}")
    assert len(bucket) == 100
    bucket.take("recent")
    assert bucket.take("recent") > 0


@pytest.mark.parametrize(
    ("rate", "burst"), [(0, 1), (-1, 1), (float("nan"), 1), (float("inf"), 1), (1, 0)]
)
def test_token_bucket_refuses_nonsense(rate, burst):
    with pytest.raises(ValueError):
        TokenBucket(rate, burst)


@pytest.mark.parametrize(
    "field",
    [
        "max_event_streams",
        "max_event_streams_per_client",
        "event_stream_max_seconds",
        "enrollment_rate_per_minute",
    ],
)
def test_limits_must_be_positive(sqlite_config, field):
    with pytest.raises(ConfigurationError, match="must be positive"):
        create_app(dataclasses.replace(sqlite_config, **{field: 0}))
