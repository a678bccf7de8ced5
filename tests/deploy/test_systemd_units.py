"""The bare-metal systemd units in deploy/systemd: `systemd-analyze verify` says nothing about
them (a warning is a failure), they carry the sandbox, and they run options the CLI has.

`systemd-analyze verify` needs no running systemd, but it checks that ExecStart's binary
exists: each unit is verified as a copy whose /opt/stockade/bin/stockade is this venv's.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

pytestmark = pytest.mark.tools

REPO = Path(__file__).resolve().parents[2]
UNITS = REPO / "deploy" / "systemd"
INSTALLED = "/opt/stockade/bin/stockade"
STOCKADE = Path(sys.executable).parent / "stockade"

COMMON = {
    "ProtectSystem": "strict",
    "ProtectHome": "yes",
    "PrivateTmp": "yes",
    "NoNewPrivileges": "yes",
    "DevicePolicy": "closed",
    "CapabilityBoundingSet": "",
    "AmbientCapabilities": "",
    "RestrictAddressFamilies": "AF_UNIX AF_INET AF_INET6",
    "SystemCallFilter": "@system-service",
    "SystemCallArchitectures": "native",
    "ProtectKernelTunables": "yes",
    "ProtectKernelModules": "yes",
    "ProtectControlGroups": "yes",
    "RestrictNamespaces": "yes",
    "RestrictSUIDSGID": "yes",
    "UMask": "0077",
}


def _directives(unit: Path) -> dict[str, list[str]]:
    """Each directive's values in file order (continuation lines joined, comments left out)."""
    text = re.sub(r"\\\n", " ", unit.read_text())
    found: dict[str, list[str]] = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";", "[")):
            continue
        key, _, value = line.partition("=")
        found.setdefault(key.strip(), []).append(" ".join(value.split()))
    return found


def _exec_start(unit: Path) -> list[str]:
    (command,) = _directives(unit)["ExecStart"]
    return command.split()


@pytest.fixture(scope="module")
def systemd_analyze() -> str:
    path = shutil.which("systemd-analyze")
    if path is None:
        pytest.skip("systemd-analyze not installed (Debian systemd; scripts/bootstrap.sh)")
    return path


@pytest.mark.parametrize("name", ["stockade-agent.service", "stockade-verifier.service"])
def test_systemd_analyze_verify_says_nothing(
    name: str, systemd_analyze: str, tmp_path: Path
) -> None:
    assert STOCKADE.is_file(), f"{STOCKADE}: the venv's CLI is missing"
    copy = tmp_path / name
    copy.write_text((UNITS / name).read_text().replace(INSTALLED, str(STOCKADE)))
    env = {**os.environ, "SYSTEMD_LOG_LEVEL": "info", "SYSTEMD_COLORS": "0"}
    result = subprocess.run(
        [systemd_analyze, "verify", "--man=no", str(copy)],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        env=env,
        cwd=tmp_path,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0, output
    assert output == "", f"systemd-analyze verify {name}:\n{output}"


@pytest.mark.parametrize("name", ["stockade-agent.service", "stockade-verifier.service"])
def test_units_are_sandboxed(name: str) -> None:
    directives = _directives(UNITS / name)
    for key, value in COMMON.items():
        assert value in directives.get(key, []), f"{name}: no {key}={value}"
    assert "~@privileged" in directives["SystemCallFilter"]
    assert directives["ExecStart"][0].startswith(INSTALLED + " ")


def test_the_agent_reaches_only_the_tpm_and_starts_before_kubelet() -> None:
    agent = _directives(UNITS / "stockade-agent.service")
    assert agent["DeviceAllow"] == ["/dev/tpmrm0 rw"]
    assert "PrivateDevices" not in agent  # it would hide /dev/tpmrm0
    assert "kubelet.service" in agent["Before"][0].split()
    assert agent["StateDirectory"] == ["stockade"]
    assert agent["ReadWritePaths"] == ["/var/lib/stockade /run/stockade"]
    command = _exec_start(UNITS / "stockade-agent.service")
    assert command[1:3] == ["agent", "run"]
    assert "--tcti" in command and "device:/dev/tpmrm0" in command


def test_the_verifier_runs_as_a_dynamic_user_without_devices() -> None:
    verifier = _directives(UNITS / "stockade-verifier.service")
    assert verifier["DynamicUser"] == ["yes"]
    assert verifier["PrivateDevices"] == ["yes"]
    assert "DeviceAllow" not in verifier
    assert verifier["StateDirectory"] == ["stockade-verifier"]
    assert _exec_start(UNITS / "stockade-verifier.service")[1:3] == ["verifier", "serve"]


@pytest.mark.parametrize(
    ("name", "command"),
    [
        ("stockade-agent.service", ["agent", "run"]),
        ("stockade-verifier.service", ["verifier", "serve"]),
    ],
)
def test_exec_start_uses_options_the_cli_has(name: str, command: list[str]) -> None:
    """Every --option ExecStart passes is in the command's --help (the options may evolve)."""
    help_text = subprocess.run(
        [str(STOCKADE), *command, "--help"],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env={**os.environ, "COLUMNS": "200", "NO_COLOR": "1"},
    ).stdout
    known = set(re.findall(r"--[a-z][a-z0-9-]*", help_text))
    used = [word for word in _exec_start(UNITS / name) if word.startswith("--")]
    assert used
    unknown = [option for option in used if option not in known]
    assert not unknown, f"{name}: `stockade {' '.join(command)}` has no {unknown}"
