"""A verifier whose policy is a golden machine's capture, all real processes: the policy is
captured with `stockade policy capture` from a development node's real boot log and given
to `stockade verifier serve --policy` as the YAML file it is; another machine of the same
model booting the same chain is trusted, one with Secure Boot off fails with reasons naming
PCR 7 and the event. Then `stockade policy apply` combines the capture with the signed
release (YAML, by the CLI), and the nodes stay as they were under the new version."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.boot import DevelopmentPlatform, boot_node, load_release
from stockade.demo.cluster import (
    AgentProcess,
    ClusterError,
    OrgMaterial,
    VerifierProcess,
    wait_for,
)
from support.cli import run_stockade


def _cli(verifier: VerifierProcess, *args: object, token: Path | None = None) -> Any:
    result = run_stockade(
        *args, "--verifier", verifier.url, "--ca", verifier.ca,
        "--token-file", token or verifier.reader_token_file, "--format", "json",
        *(("--verifier-key", verifier.verifier_key) if args[0] == "results" else ()),
    )  # fmt: skip
    assert result.returncode == 0, result.stdout + result.stderr
    return json.loads(result.stdout)


def _states(verifier: VerifierProcess) -> dict[str, str]:
    return {node["name"]: node["state"] for node in _cli(verifier, "nodes", "list")["nodes"]}


@pytest.fixture(scope="module")
def fleet(
    org: OrgMaterial,
    make_module_tpm: Any,
    tmp_path_factory: pytest.TempPathFactory,
    ek_ca_file: Path,
    database_url: str | None,
    stockade_home: Path,
) -> Any:
    work = tmp_path_factory.mktemp("captured")
    platform = DevelopmentPlatform.load(org.platform_dir)
    booted: dict[str, Any] = {}
    for name in ("golden", "same-model", "secure-boot-off"):
        tpm = make_module_tpm()
        chosen = platform.with_secure_boot(False) if name == "secure-boot-off" else platform
        result = boot_node(tpm, chosen, load_release(org.release_dir))
        result.check()
        booted[name] = (tpm, result)
    golden_log = work / "golden.log"
    golden_log.write_bytes(booted["golden"][1].log_bytes)
    policy = work / "golden.yaml"
    capture = run_stockade(
        "policy", "capture", "--event-log", golden_log, "--id", "golden", "--out", policy
    )
    assert capture.returncode == 0, capture.stderr
    verifier = VerifierProcess(work / "verifier", ek_ca_file, policy, database=database_url)
    verifier.start()
    agents: dict[str, AgentProcess] = {}
    try:
        for name, (tpm, _) in booted.items():
            agent = AgentProcess(name, tpm.name, verifier, stockade_home, work / "agents" / name)
            agent.start()
            agents[name] = agent
        yield verifier, agents, policy, work
    finally:
        for agent in agents.values():
            agent.stop()
        verifier.stop()


def _wait_states(verifier: VerifierProcess, agents: dict[str, AgentProcess]) -> None:
    wanted = {"golden": "trusted", "same-model": "trusted", "secure-boot-off": "failed"}
    try:
        wait_for(lambda: _states(verifier) == wanted, 40, str(wanted))
    except ClusterError:
        logs = {name: agent.lines()[-5:] for name, agent in agents.items()}
        raise AssertionError(f"{_states(verifier)}\n{logs}\n{verifier.tail()}") from None


def test_the_golden_model_is_trusted_and_secure_boot_off_names_pcr_7(fleet: Any) -> None:
    verifier, agents, _, _ = fleet
    _wait_states(verifier, agents)
    (failed,) = _cli(verifier, "results", "show", "secure-boot-off")["results"]
    assert failed["status"] == "contraindicated"
    assert failed["policy"] == "golden@1"
    secure_boot = [r for r in failed["reasons"] if r.startswith("PCR 7: event ")]
    assert secure_boot, failed["reasons"]
    assert any("EV_EFI_VARIABLE_DRIVER_CONFIG" in r and "SecureBoot" in r for r in secure_boot)
    (good,) = _cli(verifier, "results", "show", "same-model")["results"]
    assert good["status"] == "affirming", good["reasons"]


def test_the_capture_combined_with_the_signed_release_keeps_the_fleet(
    fleet: Any, org: OrgMaterial
) -> None:
    verifier, agents, policy, work = fleet
    _wait_states(verifier, agents)
    combined = {
        "id": "golden",
        "result_validity_seconds": 60,
        "captured": yaml.safe_load(policy.read_text()),
        "releases": {
            "signers": [org.org_pub],
            "min_security_version": 0,
            "manifests": [org.envelope],
        },
    }
    path = work / "combined.yaml"
    path.write_text(yaml.safe_dump(combined, sort_keys=False))
    token = verifier.data_dir / "operator-token"
    stored = _cli(verifier, "policy", "apply", path, token=token)
    assert stored["version"] == 2
    # Every node attests under the new version and keeps its state.
    wait_for(
        lambda: all(
            r["policy"] == "golden@2"
            for name in agents
            for r in _cli(verifier, "results", "show", name)["results"]
        ),
        30,
        "results under golden@2",
    )
    _wait_states(verifier, agents)


def test_another_policy_is_activated_on_the_cli_and_the_active_one_kept(
    fleet: Any,
) -> None:
    verifier, agents, policy, work = fleet
    _wait_states(verifier, agents)
    token = verifier.data_dir / "operator-token"
    document = yaml.safe_load(policy.read_text())
    document["id"] = "golden-next"
    path = work / "golden-next.yaml"
    path.write_text(yaml.safe_dump(document, sort_keys=False))
    assert _cli(verifier, "policy", "apply", path, token=token)["version"] == 1
    # Stored, not active: the nodes stay under golden.
    assert _cli(verifier, "results", "show", "golden")["results"][0]["policy"].startswith("golden@")
    activated = _cli(verifier, "policy", "activate", "golden-next", token=token)
    assert activated["id"] == "golden-next"
    wait_for(
        lambda: (
            _cli(verifier, "results", "show", "same-model")["results"][0]["policy"]
            == "golden-next@1"
        ),
        30,
        "results under golden-next@1",
    )
    refused = run_stockade(
        "policy", "delete", "golden-next", "--verifier", verifier.url, "--ca", verifier.ca,
        "--token-file", token,
    )  # fmt: skip
    assert refused.returncode != 0 and "policy-active" in refused.stderr, refused.stderr
    deleted = run_stockade(
        "policy", "delete", "golden", "--verifier", verifier.url, "--ca", verifier.ca,
        "--token-file", token,
    )  # fmt: skip
    assert deleted.returncode == 0, deleted.stderr
    _wait_states(verifier, agents)
