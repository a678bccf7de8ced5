"""A log can lie by saying nothing: sign a newer checkpoint and never serve the proof that it
extends what a monitor verified (hiding a fork), or freeze. The monitor alerts on both:
``withholding`` after bounded retries, ``stale`` past ``--max-age``; an outage before any
newer checkpoint was signed is not a withholding."""

from __future__ import annotations

import http.server
import json
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field

import pytest

from stockade.translog.checkpoint import Checkpoint, NoteSigner, sign_checkpoint
from stockade.translog.merkle import consistency_proof, leaf_hash, root_of
from stockade.translog.monitor import (
    Alert,
    SourceUnavailable,
    Watch,
    Withheld,
    observe,
)
from support.cli import run_stockade

ORIGIN = "stockade.test/quiet-log"


def _entries(count: int, tag: bytes = b"") -> list[bytes]:
    return [b"entry %d%s" % (number, tag) for number in range(count)]


@dataclass
class Log:
    """A log the attacker runs: real signed checkpoints over a real RFC 9162 tree, and the
    power to serve or refuse anything."""

    signer: NoteSigner
    entries: list[bytes] = field(default_factory=lambda: _entries(3))
    refuse_proofs: bool = False
    refuse_entries: bool = False
    down: bool = False

    def checkpoint(self) -> bytes:
        if self.down:
            raise SourceUnavailable("connection refused")
        head = Checkpoint(ORIGIN, len(self.entries), root_of(self.entries))
        return sign_checkpoint(head, [self.signer])

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        if self.refuse_proofs or self.down:
            raise SourceUnavailable("503 try later")
        return consistency_proof(old_size, new_size, self._read)

    def entries_between(self, start: int, end: int) -> list[tuple[bytes, bytes]]:
        if self.refuse_entries or self.down:
            raise SourceUnavailable("503 try later")
        return [(entry, leaf_hash(entry)) for entry in self.entries[start:end]]

    def _read(self, ids):
        return {(level, index): root_of(self.entries[index << level : (index + 1) << level])
                for level, index in ids}  # fmt: skip


class Source:
    def __init__(self, log: Log) -> None:
        self.log = log

    def checkpoint(self) -> bytes:
        return self.log.checkpoint()

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return self.log.consistency_proof(old_size, new_size)

    def entries(self, start: int, end: int) -> list[tuple[bytes, bytes]]:
        return self.log.entries_between(start, end)


@pytest.fixture
def log() -> Log:
    return Log(NoteSigner.generate(ORIGIN))


def _step(log: Log, state, watch: Watch, now: float):
    """One monitor step as `stockade log monitor` takes it."""
    try:
        observation = observe(Source(log), log.signer.verifier, state)
    except (Withheld, SourceUnavailable) as error:
        watch.failed(error, now, state.checkpoint.size if state else None)
        return state
    watch.succeeded(observation, now)
    return observation.state


def test_a_newer_checkpoint_without_its_proof_is_a_withholding_alert(log):
    watch = Watch(started=0.0, proof_retries=3)
    state = _step(log, None, watch, 0.0)
    assert state.checkpoint.size == 3
    # The log signs a larger tree, but it is a fork: it will not (cannot) prove it.
    log.entries = _entries(5, b" forked")
    log.refuse_proofs = True
    state = _step(log, state, watch, 1.0)
    state = _step(log, state, watch, 2.0)  # still retrying, still at the last verified 3
    assert state.checkpoint.size == 3
    with pytest.raises(Alert) as raised:
        _step(log, state, watch, 3.0)
    assert raised.value.kind == "withholding"
    assert "checkpoint 5 was signed" in raised.value.detail
    assert "consistency proof from 3" in raised.value.detail


def test_withheld_entries_of_a_newer_checkpoint_are_a_withholding_too(log):
    watch = Watch(started=0.0, proof_retries=2)
    state = _step(log, None, watch, 0.0)
    log.entries += [b"entry 3", b"entry 4"]
    log.refuse_entries = True
    state = _step(log, state, watch, 1.0)
    with pytest.raises(Alert, match="entries 3 to 5"):
        _step(log, state, watch, 2.0)


def test_a_proof_served_in_time_resets_the_count(log):
    watch = Watch(started=0.0, proof_retries=2)
    state = _step(log, None, watch, 0.0)
    log.entries += [b"entry 3"]
    log.refuse_proofs = True
    state = _step(log, state, watch, 1.0)  # one failure
    log.refuse_proofs = False
    state = _step(log, state, watch, 2.0)
    assert state.checkpoint.size == 4 and watch.failures == 0
    log.entries += [b"entry 4"]
    log.refuse_proofs = True
    state = _step(log, state, watch, 3.0)  # one failure again: no alert
    assert watch.failures == 1


def test_an_outage_is_not_a_withholding(log):
    watch = Watch(started=0.0, proof_retries=2)
    state = _step(log, None, watch, 0.0)
    log.down = True
    for now in range(1, 10):
        state = _step(log, state, watch, float(now))  # no alert without --max-age
    assert watch.failures == 0 and state.checkpoint.size == 3


def test_a_frozen_log_is_stale_after_max_age(log):
    watch = Watch(started=0.0, max_age=60)
    state = _step(log, None, watch, 0.0)
    state = _step(log, state, watch, 30.0)  # same checkpoint: fine so far
    with pytest.raises(Alert) as raised:
        _step(log, state, watch, 61.0)
    assert raised.value.kind == "stale"
    assert "3 entries" in raised.value.detail


def test_an_unreachable_log_is_stale_after_max_age(log):
    watch = Watch(started=0.0, max_age=60)
    log.down = True
    _step(log, None, watch, 59.0)
    with pytest.raises(Alert, match="no verified checkpoint"):
        _step(log, None, watch, 61.0)


def test_a_growing_log_is_never_stale(log):
    watch = Watch(started=0.0, max_age=60)
    state = None
    for minute in range(10):
        log.entries.append(b"entry at minute %d" % minute)
        state = _step(log, state, watch, minute * 50.0)
    assert state.checkpoint.size == 13


# -- the real monitor (`stockade log monitor`) against a withholding log over HTTP ---------


@pytest.fixture
def served(log) -> Iterator[str]:
    class Handler(http.server.BaseHTTPRequestHandler):
        def log_message(self, *args) -> None:
            pass

        def do_GET(self) -> None:
            path = self.path.split("?")[0]
            if path == "/v1/log/checkpoint":
                self._answer(200, {"checkpoint": log.checkpoint().decode()})
            elif path == "/v1/log/proof/consistency" and log.refuse_proofs:
                self._answer(503, {"error": "unavailable", "detail": "try later"})
            elif path == "/v1/log/proof/consistency":
                query = dict(p.split("=") for p in self.path.split("?")[1].split("&"))
                proof = log.consistency_proof(int(query["old"]), int(query["new"]))
                self._answer(200, {"proof": [_b64(p) for p in proof]})
            else:
                self._answer(404, {"error": "not-found", "detail": path})

        def _answer(self, status: int, document: dict) -> None:
            body = json.dumps(document).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        server.server_close()


def _b64(data: bytes) -> str:
    import base64

    return base64.b64encode(data).decode()


@pytest.mark.tools
def test_the_monitor_alerts_when_a_log_withholds_its_proof(log, served, tmp_path):
    key = log.signer.verifier.key_string()
    state = tmp_path / "monitor.json"
    common = ["log", "monitor", "--verifier", served, "--key", key, "--no-entries"]
    first = run_stockade(*common, "--state", state, "--once")
    assert first.returncode == 0, first.stderr
    log.entries = _entries(6, b" forked")
    log.refuse_proofs = True
    alert = run_stockade(
        *common, "--state", state, "--once", "--proof-retries", "2", "--interval", "0.1"
    )
    assert alert.returncode == 1, (alert.stdout, alert.stderr)
    assert "ALERT" in alert.stderr and "WITHHOLDING" in alert.stderr
    assert "checkpoint 6 was signed" in alert.stderr
    # the last verified checkpoint is kept
    assert '"checkpoint"' in state.read_text() and "\n3\n" in state.read_text().replace("\\n", "\n")


@pytest.mark.tools
def test_the_monitor_alerts_when_the_log_stops_growing(log, served):
    key = log.signer.verifier.key_string()
    stale = run_stockade(
        "log", "monitor", "--verifier", served, "--key", key, "--no-entries",
        "--interval", "0.2", "--max-age", "1",
        timeout=30,
    )  # fmt: skip
    assert stale.returncode == 1, (stale.stdout, stale.stderr)
    assert "ALERT" in stale.stderr and "STALE" in stale.stderr
