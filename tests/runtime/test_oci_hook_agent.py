"""``stockade agent run --hook-socket``: the agent hosts the OCI hook's admission server in its
own process, measuring into the TPM and execution log it attests. No separate server."""

from __future__ import annotations

import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from runtime_support import REFERENCE, TAG, Keys, Node, sign
from typer.testing import CliRunner

from stockade.agent.loop import Agent, AgentConfig
from stockade.agent.oci_hook import HookSettings
from stockade.agent.run import BindMount, ContainerRefused, run_image
from stockade.agent.source import NodeSource
from stockade.evidence.cel import parse_cel
from stockade.evidence.execution import ContainerStart, decode_record


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="ag-") as name:
        yield Path(name)


def test_agent_run_passes_the_hook_socket_and_settings(tmp_path, monkeypatch):
    from stockade.cli import app

    seen: list[AgentConfig] = []
    monkeypatch.setattr(Agent, "run", lambda self, *a, **k: seen.append(self.config))
    event_log = tmp_path / "boot.log"
    event_log.write_bytes(b"")
    result = CliRunner().invoke(
        app,
        [
            "agent", "run", "--name", "n1", "--verifier", "https://verifier.invalid",
            "--tcti", "swtpm:port=1", "--event-log", str(event_log),
            "--hook-socket", str(tmp_path / "hook.sock"),
            "--hook-option", "policy=/etc/p.json",
            "--hook-option", "--org-key=/k1", "--hook-option", "org-key=/k2",
            "--hook-option", "containers-storage=/var/lib/containers/storage",
            "--hook-option", "layout-cache=/cache",
        ],
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    (config,) = seen
    assert config.hook_socket == tmp_path / "hook.sock"
    settings = config.admission_settings()
    assert settings.tcti == "swtpm:port=1"  # the agent's own TPM and log, always
    assert settings.log_path == config.source.execution_log
    assert settings.policy_path == Path("/etc/p.json")
    assert settings.org_keys == (Path("/k1"), Path("/k2"))
    assert settings.containers_storage == Path("/var/lib/containers/storage")
    assert settings.layout_cache == Path("/cache")
    assert settings.agent_socket is None


@pytest.mark.parametrize("option", ["tcti=swtpm:port=2", "log=/tmp/x", "policy", "nonsense=1"])
def test_agent_run_refuses_a_hook_option_it_does_not_take(tmp_path, monkeypatch, option):
    from stockade.cli import app

    monkeypatch.setattr(Agent, "run", lambda self, *a, **k: None)
    event_log = tmp_path / "boot.log"
    event_log.write_bytes(b"")
    result = CliRunner().invoke(
        app,
        [
            "agent", "run", "--name", "n1", "--verifier", "https://verifier.invalid",
            "--tcti", "swtpm:port=1", "--event-log", str(event_log),
            "--hook-socket", str(tmp_path / "hook.sock"), "--hook-option", option,
        ],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "--hook-option" in str(result.exception) + result.output


@pytest.mark.swtpm
@pytest.mark.tools
def test_the_running_agent_admits_containers(node: Node, keys: Keys, image_layout, short_dir):
    sock = short_dir / "hook.sock"
    lines: list[str] = []
    agent = Agent(
        AgentConfig(
            verifier="https://127.0.0.1:9",  # nothing there: the agent keeps retrying
            ca=None,
            name="hooked",
            source=NodeSource(
                node.tcti, short_dir / "boot.log", "test TPM", execution_log=node.log_path
            ),
            state_dir=short_dir / "state",
            initial_backoff=600.0,
            hook_socket=sock,
            hook_settings=HookSettings(policy_path=node.policy_path, org_keys=(node.org_pub,)),
        ),
        log=lines.append,
    )
    thread = threading.Thread(target=agent.run, daemon=True)
    thread.start()
    try:
        # Wait for its first attempt (which uses the TPM) to end: a swtpm serves one client.
        deadline = time.monotonic() + 60
        while not any(line.startswith("retry in") for line in lines):
            assert time.monotonic() < deadline, lines
            time.sleep(0.05)
        assert sock.exists()
        assert any("container admissions served on" in line for line in lines)
        settings = node.settings(agent_socket=sock)
        common = {
            "settings": settings,
            "args": ("/probe", "write", "/out/ran"),
            "mounts": [BindMount(node.out, "/out")],
            "runc_root": short_dir / "runc",
            "bundle_parent": short_dir,
        }
        with pytest.raises(ContainerRefused, match="unsigned"):
            run_image(image_layout, TAG, reference=REFERENCE, container_id="a-unsigned", **common)
        assert not (node.out / "ran").exists()
        sign(image_layout, REFERENCE, keys.build)
        assert (
            run_image(image_layout, TAG, reference=REFERENCE, container_id="a-signed", **common)
            == 0
        )
        assert (node.out / "ran").exists()
    finally:
        agent.stop.set()
        thread.join(timeout=30)
    assert not thread.is_alive()
    assert not sock.exists(), "the socket outlived the agent"
    starts = [
        decode_record(r.content)
        for r in parse_cel(node.log_path.read_bytes())
        if isinstance(decode_record(r.content), ContainerStart)
    ]
    assert [s.container_id for s in starts] == ["a-signed"]
