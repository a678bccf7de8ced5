"""The agent's shell without a verifier: state across restarts, where evidence comes from,
backoff when the verifier is down or failing, and a clean exit on SIGTERM."""

from __future__ import annotations

import http.server
import itertools
import os
import re
import signal
import socket
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from stockade.agent import Agent, AgentConfig, AgentState, resolve_source
from stockade.agent.client import VerifierClient, VerifierRefused, VerifierUnavailable
from stockade.agent.source import NodeSource
from stockade.agent.state import Enrolled
from stockade.errors import InputError, TpmUnavailable
from support.cli import stockade_command


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


class _Failing(http.server.BaseHTTPRequestHandler):
    """Answers every request 503, then (after ``fail_first``) 404 with a protocol error."""

    fail_first = 3
    seen: list[str]

    def do_POST(self) -> None:
        self.seen.append(self.path)
        if len(self.seen) <= self.fail_first:
            self._answer(503, b'{"error": "unavailable", "detail": "database is down"}')
        else:
            self._answer(409, b'{"error": "revoked", "detail": "node is revoked"}')

    def _answer(self, status: int, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def failing_verifier() -> Iterator[tuple[str, list[str]]]:
    seen: list[str] = []
    handler = type("Handler", (_Failing,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()
    server.server_close()


class _SoftwareChannelAgent(Agent):
    """These tests are about retries, not the TPM: the channel key is a software key."""

    def sign_as_node(self, client, enrolled) -> None:  # type: ignore[no-untyped-def]
        from cryptography.hazmat.primitives import hashes
        from cryptography.hazmat.primitives.asymmetric import ec, utils

        key = ec.generate_private_key(ec.SECP256R1())

        def sign(digest: bytes) -> bytes:
            der = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
            r, s = utils.decode_dss_signature(der)
            return r.to_bytes(32, "big") + s.to_bytes(32, "big")

        client.as_node(enrolled.node_id, sign)


def _agent(tmp_path: Path, verifier: str, **overrides: float) -> tuple[Agent, list[str]]:
    lines: list[str] = []
    state = tmp_path / "state"
    AgentState(state).save_enrolled(Enrolled("node-1", "n1", verifier))
    AgentState(state).channel_key_path.write_bytes(b"")
    config = AgentConfig(
        verifier=verifier,
        ca=None,
        name="n1",
        source=NodeSource("swtpm:port=1", tmp_path / "log", "nowhere"),
        state_dir=state,
        **{"initial_backoff": 0.05, "max_backoff": 0.2, **overrides},  # type: ignore[arg-type]
    )
    return _SoftwareChannelAgent(config, log=lines.append), lines


def _run_for(agent: Agent, seconds: float) -> None:
    thread = threading.Thread(target=agent.run)
    thread.start()
    time.sleep(seconds)
    agent.stop.set()
    thread.join(5)
    assert not thread.is_alive()


def _delays(lines: list[str]) -> list[float]:
    return [float(m.group(1)) for line in lines if (m := re.match(r"retry in ([\d.]+)s", line))]


def test_state_keeps_the_node_id(tmp_path: Path) -> None:
    state = AgentState(tmp_path / "s")
    assert state.enrolled() is None
    assert not state.has_ak()
    state.save_enrolled(Enrolled("id-1", "node", "https://v"))
    assert AgentState(tmp_path / "s").enrolled() == Enrolled("id-1", "node", "https://v")
    state.forget_enrollment()
    assert state.enrolled() is None


def test_unreadable_state_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "node.json").write_text("{not json")
    with pytest.raises(InputError, match=r"node\.json"):
        AgentState(tmp_path).enrolled()


def test_source_needs_a_log_with_an_explicit_tcti(tmp_path: Path) -> None:
    with pytest.raises(InputError, match="--event-log"):
        resolve_source(tcti="swtpm:port=2321")
    source = resolve_source(tcti="swtpm:port=2321", event_log=tmp_path / "log")
    assert source.tcti == "swtpm:port=2321"
    with pytest.raises(InputError, match="boot event log"):
        source.read_event_log()


def test_source_finds_a_development_tpm_by_name(software_tpm, stockade_home: Path) -> None:
    source = resolve_source(tpm_name=software_tpm.name, home=stockade_home)
    if source.tcti.startswith("device:"):
        pytest.skip("this machine has a hardware TPM")
    assert source.tcti == software_tpm.tcti
    assert source.event_log == software_tpm.instance_dir / "binary_bios_measurements"
    with pytest.raises(TpmUnavailable, match="no running development TPM"):
        resolve_source(tpm_name="no-such-tpm", home=stockade_home)


def test_client_errors_are_typed(failing_verifier: tuple[str, list[str]]) -> None:
    url, _ = failing_verifier
    with VerifierClient(url) as client:
        for _ in range(3):
            with pytest.raises(VerifierUnavailable, match="503"):
                client.nonce("n")
        with pytest.raises(VerifierRefused) as refused:
            client.nonce("n")
    assert (refused.value.status, refused.value.code) == (409, "revoked")
    with (
        VerifierClient(f"http://127.0.0.1:{_closed_port()}") as client,
        pytest.raises(VerifierUnavailable, match="unreachable"),
    ):
        client.nodes()


def test_backs_off_exponentially_when_the_verifier_is_down(tmp_path: Path) -> None:
    agent, lines = _agent(tmp_path, f"http://127.0.0.1:{_closed_port()}")
    _run_for(agent, 1.0)
    delays = _delays(lines)
    assert len(delays) >= 3
    # Full jitter: each within its doubling ceiling (0.05, 0.1, 0.2, then capped at 0.2).
    ceilings = [0.05, 0.1] + [0.2] * (len(delays) - 2)
    assert all(0 <= d <= c + 5e-4 for d, c in zip(delays, ceilings, strict=True)), delays
    assert len(set(delays)) > 1  # drawn, not fixed
    assert all("unreachable" in line for line in lines if line.startswith("retry"))
    assert lines[-1].endswith("stopped after 0 attestations")


def test_retries_5xx_and_keeps_trying_when_refused(
    tmp_path: Path, failing_verifier: tuple[str, list[str]]
) -> None:
    url, seen = failing_verifier
    agent, lines = _agent(tmp_path, url)
    _run_for(agent, 1.0)
    assert seen[0] == "/v1/nodes/node-1/nonces"
    assert len(seen) > 4
    assert any("503" in line for line in lines)
    assert any("revoked" in line for line in lines)
    assert AgentState(tmp_path / "state").enrolled() is not None  # 409 does not re-enroll


class _RateLimiting(_Failing):
    """Answers 429 with ``Retry-After: 1``, as the verifier's enrollment limiter does."""

    def do_POST(self) -> None:
        self.seen.append(f"{time.monotonic():.3f} {self.path}")
        body = b'{"error": "rate-limited", "detail": "too many requests"}'
        self.send_response(429)
        self.send_header("Content-Type", "application/json")
        self.send_header("Retry-After", "1")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_a_rate_limited_agent_waits_as_long_as_it_is_told(tmp_path: Path) -> None:
    seen: list[str] = []
    handler = type("Handler", (_RateLimiting,), {"seen": seen})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        agent, lines = _agent(tmp_path, f"http://127.0.0.1:{server.server_address[1]}")
        _run_for(agent, 2.5)
    finally:
        server.shutdown()
        server.server_close()
    times = [float(entry.split()[0]) for entry in seen]
    # Backoff alone would have asked again after 0.05, 0.1, 0.2 s: many requests; Retry-After
    # keeps them a second apart.
    assert 2 <= len(times) <= 3, seen
    assert all(later - earlier >= 0.95 for earlier, later in itertools.pairwise(times)), seen
    assert any("429 rate-limited" in line for line in lines), lines


def test_sigterm_stops_the_agent_cleanly(tmp_path: Path) -> None:
    command = stockade_command(
        "agent", "run", "--name", "n1", "--verifier", f"http://127.0.0.1:{_closed_port()}",
        "--tcti", "swtpm:port=1", "--event-log", tmp_path / "log",
        "--state-dir", tmp_path / "state", "--max-backoff", "0.2",
    )  # fmt: skip
    process = subprocess.Popen(
        command,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env={**os.environ, "STOCKADE_HOME": str(tmp_path / "home")},
    )
    assert process.stderr is not None
    first = process.stderr.readline()  # the agent is running (handlers installed) once it logs
    assert "stockade.agent: agent n1:" in first, first
    time.sleep(0.5)
    process.send_signal(signal.SIGTERM)
    stdout, stderr = process.communicate(timeout=10)
    assert process.returncode == 0, stderr
    assert "retry in" in stderr
    assert "stopped after 0 attestations" in stderr
    assert "Traceback" not in stderr  # an unreachable verifier is expected: no traceback
    assert stdout == ""  # the log is on stderr
