"""``stockade agent run`` as shipped: its probe listener (``--probe-address``) against a real
verifier and a swtpm node booted through the development chain (/readyz ready once attesting,
503 with the reason while the verifier is down, ready again when it is back; /livez alive
throughout; /metrics counting attestations, errors and the node's state), its log
(``--log-format json``: one JSON object per stderr line, one record per attestation naming the
node and the result, retries as warnings without a traceback), its ``--config`` file (flags and
environment win), and the OCI hook socket's decisions in the metrics."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest
from cluster_support import SECRET, Cluster, assert_no_secret, put_secret

from stockade.agent import Agent, AgentConfig, AgentState
from stockade.agent.metrics import AgentMetrics, AgentTelemetry
from stockade.agent.oci_hook import HookSettings, serving_hook_requests
from stockade.agent.source import NodeSource
from stockade.agent.state import Enrolled
from support.cli import stockade_command
from support.probe_servers import free_port, sample

REPO = Path(__file__).resolve().parents[2]


def _agent_run(
    tmp_path: Path,
    *args: object,
    name: str = "n1",
    verifier: str | None = None,
    tcti: str = "swtpm:port=1",
    event_log: Path | None = None,
    state_dir: Path | None = None,
) -> list[str]:
    """``stockade agent run`` for the node ``name``: by default one that cannot attest
    (nothing listens at its verifier, no TPM at its TCTI), its event log and state in
    ``tmp_path``."""
    return stockade_command(
        "agent", "run", "--name", name,
        "--verifier", verifier or f"https://127.0.0.1:{free_port()}", "--tcti", tcti,
        "--event-log", event_log or tmp_path / "log",
        "--state-dir", state_dir or tmp_path / "state", *args,
    )  # fmt: skip


def _launch(
    tmp_path: Path, command: list[str], *, env: dict[str, str] | None = None, **popen: Any
) -> subprocess.Popen[Any]:
    """Start an agent with its own Stockade home in ``tmp_path`` (and ``env`` besides)."""
    environment = {**os.environ, "STOCKADE_HOME": str(tmp_path / "home"), **(env or {})}
    return subprocess.Popen(command, stdin=subprocess.DEVNULL, env=environment, **popen)


def _looping_agent(
    tmp_path: Path, verifier: str, stale_after: float
) -> tuple[Agent, AgentTelemetry, list[str]]:
    """An in-process agent already enrolled as node-1 (its signing as the node skipped), its
    telemetry and the lines it logs, not started."""
    state = tmp_path / "state"
    AgentState(state).save_enrolled(Enrolled("node-1", "n1", "https://v"))
    AgentState(state).channel_key_path.write_bytes(b"")
    telemetry = AgentTelemetry(stale_after=stale_after)
    lines: list[str] = []
    agent = Agent(
        AgentConfig(
            verifier=verifier,
            ca=None,
            name="n1",
            source=NodeSource("swtpm:port=1", tmp_path / "log", "nowhere"),
            state_dir=state,
            initial_backoff=0.05,
            max_backoff=0.1,
        ),
        log=lines.append,
        telemetry=telemetry,
    )
    agent.sign_as_node = lambda client, enrolled: None  # type: ignore[method-assign]
    return agent, telemetry, lines


def _wait(condition: Callable[[], Any], timeout: float, what: str, process: Any) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        assert process.poll() is None, f"the agent exited while waiting for {what}"
        value = condition()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def _get(port: int, path: str) -> httpx.Response | None:
    try:
        return httpx.get(f"http://127.0.0.1:{port}{path}", timeout=5)
    except httpx.HTTPError:
        return None


def _metrics(port: int) -> str:
    answer = _get(port, "/metrics")
    assert answer is not None and answer.status_code == 200
    return answer.text


def _status(port: int, path: str) -> int | None:
    answer = _get(port, path)
    return None if answer is None else answer.status_code


@pytest.mark.tools
@pytest.mark.swtpm
def test_probes_metrics_and_json_log_against_a_real_verifier(
    cluster: Cluster, booted, tmp_path: Path
) -> None:
    tpm, log = booted()
    state = tmp_path / "state"
    port = free_port()
    command = _agent_run(
        tmp_path, "--ca", cluster.verifier.ca,
        "--interval", "0.3", "--jitter", "0", "--max-backoff", "0.3",
        "--probe-address", f"127.0.0.1:{port}", "--log-format", "json", "--secret", "probe-db",
        name="probed-1", verifier=cluster.verifier.url, tcti=tpm.tcti, event_log=log,
        state_dir=state,
    )  # fmt: skip
    stderr_path = tmp_path / "agent.stderr"
    with stderr_path.open("wb") as stderr:
        process = _launch(tmp_path, command, stdout=subprocess.PIPE, stderr=stderr)
    try:
        # Ready once it attests: the verifier answered, the node is trusted.
        _wait(lambda: _status(port, "/readyz") == 200, 90, "ready", process)
        ready = _get(port, "/readyz")
        assert ready is not None and "attesting" in ready.text and "trusted" in ready.text
        assert _status(port, "/livez") == 200
        metrics = _get(port, "/metrics")
        assert metrics is not None and metrics.status_code == 200
        text = metrics.text
        assert (sample(text, "stockade_agent_attestations_total", status="affirming") or 0) >= 1
        assert sample(text, "stockade_agent_node_state", state="trusted") == 1
        assert sample(text, "stockade_agent_node_state", state="untrusted") == 0
        assert (sample(text, "stockade_agent_attestation_seconds_count") or 0) >= 1
        last = sample(text, "stockade_agent_last_attestation_timestamp_seconds")
        assert last is not None and abs(time.time() - last) < 60
        # A secret not granted yet: the fetch fails; granted, it is released.
        secrets = "stockade_agent_secret_releases_total"
        _wait(
            lambda: (sample(_metrics(port), secrets, outcome="failed") or 0) >= 1,
            30, "the ungranted secret's fetch", process,
        )  # fmt: skip
        assert sample(_metrics(port), secrets, outcome="released") is None
        put_secret(cluster, "probe-db", SECRET, "node:probed-1")
        _wait(
            lambda: (sample(_metrics(port), secrets, outcome="released") or 0) >= 1,
            30, "the secret released", process,
        )  # fmt: skip

        # The verifier goes away: not ready, and why; still alive (waiting is not hanging).
        cluster.verifier.stop()
        try:
            _wait(lambda: _status(port, "/readyz") == 503, 30, "unready", process)
            down = _get(port, "/readyz")
            assert down is not None and "unreachable" in down.text, down and down.text
            assert _status(port, "/livez") == 200
            text = _metrics(port)
            assert (sample(text, "stockade_agent_errors_total", kind="unreachable") or 0) >= 1
        finally:
            cluster.verifier.start()
        # It comes back: ready again, attesting again.
        _wait(lambda: _status(port, "/readyz") == 200, 60, "ready again", process)
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=20)
    assert process.returncode == 0
    assert stdout == b""

    node_id = AgentState(state).enrolled().node_id  # type: ignore[union-attr]
    lines = stderr_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # one JSON object per line, every line
    assert all({"time", "level", "logger", "event"} <= r.keys() for r in records)
    assert all(r["time"].endswith("Z") for r in records)
    attestations = [r for r in records if r["event"] == "attestation"]
    assert len(attestations) >= 2
    for record in attestations:
        assert record["node"] == node_id and record["node_name"] == "probed-1"
        assert record["result"] and record["status"] == "affirming"
        assert record["state"] == "trusted" and record["level"] == "info"
    retries = [r for r in records if r["event"].startswith("retry in")]
    assert retries, "no retry while the verifier was down"
    for record in retries:
        assert record["level"] == "warning" and record["kind"] == "unreachable"
        assert isinstance(record["delay"], float) and record["node"] == node_id
        assert "unreachable" in record["error"] and "\n" not in record["error"]
    assert not any("traceback" in r or "Traceback" in r["event"] for r in records)
    assert_no_secret(lines)


def _first_record(
    tmp_path: Path, *args: object, env: dict[str, str] | None = None
) -> dict[str, Any]:
    """Start an agent that cannot attest, return its ``agent ...`` start record, stop it."""
    process = _launch(
        tmp_path, _agent_run(tmp_path, *args), env=env,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert process.stderr is not None
        for line in process.stderr:
            record = json.loads(line)
            if record["event"].startswith("agent n1:"):
                return record
        raise AssertionError("the agent exited without starting")
    finally:
        process.send_signal(signal.SIGTERM)
        process.communicate(timeout=15)


@pytest.mark.tools
def test_a_config_file_sets_the_interval_and_flags_and_environment_win(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("interval: 0.3\njitter: 0\nlog-format: json\nmax-backoff: 5\n")
    from_file = _first_record(tmp_path, "--config", config)
    assert "every 0.3s +/- 0s" in from_file["event"]
    assert from_file["level"] == "info" and from_file["logger"] == "stockade.agent"
    flag = _first_record(tmp_path, "--config", config, "--interval", "0.7")
    assert "every 0.7s +/- 0s" in flag["event"]
    env = _first_record(tmp_path, "--config", config, env={"STOCKADE_AGENT_RUN_INTERVAL": "0.5"})
    assert "every 0.5s +/- 0s" in env["event"]


@pytest.mark.tools
def test_a_bad_config_or_probe_address_stops_the_start_with_one_line(tmp_path: Path) -> None:
    config = tmp_path / "agent.yaml"
    config.write_text("intervall: 3\n")

    def command(*args: object) -> list[str]:
        return _agent_run(tmp_path, *args, verifier="https://127.0.0.1:9")

    done = subprocess.run(
        command("--config", config),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2
    assert "unknown key 'intervall'" in done.stderr and "Traceback" not in done.stderr
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        busy = taken.getsockname()[1]
        done = subprocess.run(
            command("--probe-address", f"127.0.0.1:{busy}"),
            capture_output=True, text=True, timeout=60, check=False,
        )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "--probe-address" in done.stderr and "Traceback" not in done.stderr
    done = subprocess.run(
        command("--probe-address", "localhost"),
        capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert done.returncode == 2 and "HOST:PORT" in done.stderr


def test_the_shipped_agent_config_and_manifest_use_options_the_cli_has() -> None:
    import yaml
    from typer import _click as click

    from stockade.cli.daemon_options import DAEMONS, load_config_file

    (daemon,) = [d for d in DAEMONS if d.command == "stockade agent run"]
    command = daemon.click_command()
    with click.Context(command) as ctx:
        settings = load_config_file(ctx, REPO / "deploy" / "config" / "agent.yaml")
    assert settings["probe_address"].startswith("127.0.0.1:")
    assert settings["log_format"] == "json"
    options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
    manifest = REPO / "deploy" / "kubernetes" / "20-agent.yaml"
    (daemonset,) = [d for d in yaml.safe_load_all(manifest.read_text()) if d["kind"] == "DaemonSet"]
    (container,) = daemonset["spec"]["template"]["spec"]["containers"]
    for argument in container["args"][2:]:
        assert argument.split("=")[0] in options, argument
    assert "--log-format=json" in container["args"]


# -- in process: what the loop tells the probes -------------------------------------------------


def test_the_loop_reports_an_unreachable_verifier(tmp_path: Path) -> None:
    agent, telemetry, lines = _looping_agent(tmp_path, f"http://127.0.0.1:{free_port()}", 0.5)
    ready, reason = telemetry.health.readiness()
    assert not ready and "not enrolled yet" in reason
    import threading

    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        deadline = time.monotonic() + 10
        while sum(line.startswith("retry in") for line in lines) < 3:
            assert time.monotonic() < deadline, lines
            time.sleep(0.02)
        ready, reason = telemetry.health.readiness()
        assert not ready and "unreachable" in reason
        assert telemetry.health.liveness()[0]  # the loop beats while it waits
        assert telemetry.metrics.errors.labels("unreachable")._value.get() >= 3
        assert all("kind=unreachable" in line and "node=node-1" in line for line in lines[1:4])
    finally:
        agent.stop.set()
        thread.join(5)
    time.sleep(0.6)
    assert not telemetry.health.liveness()[0]  # stopped: no more beats, stale


def test_the_hook_socket_counts_its_decisions(tmp_path: Path) -> None:
    metrics = AgentMetrics()
    path = tmp_path / "hook.sock"
    with serving_hook_requests(path, HookSettings(), on_decision=metrics.hook_decision):
        for _ in range(2):
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
                client.connect(str(path))
                client.sendall(b"{not an OCI state")
                client.shutdown(socket.SHUT_WR)
                answer = client.makefile("rb").readline()
            assert answer.startswith(b"ERR ")
    assert metrics.hook_decisions.labels("refused")._value.get() == 2
    assert metrics.hook_decisions.labels("admitted")._value.get() == 0


def test_livez_goes_stale_while_a_round_hangs_and_recovers(tmp_path: Path) -> None:
    """A verifier that accepts the connection and answers nothing for 3 s: the round hangs,
    /livez goes stale (1 s here); the connection closed, the loop beats again."""
    import threading

    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen()
    held: list[socket.socket] = []

    def hold() -> None:
        while True:
            try:
                connection, _ = listener.accept()
            except OSError:
                return
            held.append(connection)
            threading.Timer(3.0, connection.close).start()

    threading.Thread(target=hold, daemon=True).start()
    verifier = f"http://127.0.0.1:{listener.getsockname()[1]}"
    agent, telemetry, lines = _looping_agent(tmp_path, verifier, 1.0)
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        time.sleep(1.8)
        alive, why = telemetry.health.liveness()
        assert not alive and "has not run" in why  # stuck in its round
        assert thread.is_alive() and not any(line.startswith("retry") for line in lines)
        deadline = time.monotonic() + 10
        while not any(line.startswith("retry") for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        assert telemetry.health.liveness()[0]  # the round ended: beating again
    finally:
        agent.stop.set()
        listener.close()
        thread.join(15)
        for connection in held:
            connection.close()
