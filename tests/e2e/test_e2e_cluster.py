"""Three development nodes and a verifier, all real processes: two good nodes become
trusted, the tampered one (modified kernel, Secure Boot off) fails with reasons naming
PCRs and events, a stopped agent's node goes stale right after its deadline, and a
verifier restart loses no node, result or event."""

from __future__ import annotations

import json
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stockade.boot import DevelopmentPlatform, boot_node, load_release
from stockade.demo.cluster import (
    AgentProcess,
    ClusterError,
    OrgMaterial,
    VerifierProcess,
    policy_document,
    wait_for,
)
from support.cli import run_stockade

VALIDITY = 4  # seconds a result stays valid; agents attest every second


def cli(verifier: VerifierProcess, *args: str) -> Any:
    """A reading command, with the reader token (reads of trust state need a credential)."""
    result = run_stockade(
        *args, "--verifier", verifier.url, "--ca", verifier.ca,
        "--token-file", verifier.reader_token_file, "--format", "json",
        *(("--verifier-key", verifier.verifier_key) if args[0] == "results" else ()),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout)


def states(verifier: VerifierProcess) -> dict[str, str]:
    return {node["name"]: node["state"] for node in cli(verifier, "nodes", "list")["nodes"]}


def events(verifier: VerifierProcess) -> list[dict[str, Any]]:
    with verifier.client() as client:
        return list(client.stream_events(follow=False))


def write_policy(org: OrgMaterial, path: Path, validity_seconds: int) -> Path:
    path.write_text(json.dumps(policy_document(org, validity_seconds=validity_seconds)))
    return path


def _time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


@pytest.fixture(scope="module")
def cluster(
    org: OrgMaterial,
    make_module_tpm: Any,
    tmp_path_factory: pytest.TempPathFactory,
    ek_ca_file: Path,
    database_url: str | None,
    stockade_home: Path,
) -> Any:
    work = tmp_path_factory.mktemp("cluster")
    verifier = VerifierProcess(
        work / "verifier",
        ek_ca_file,
        write_policy(org, work / "policy.json", VALIDITY),
        database=database_url,
    )
    verifier.start()
    platform = DevelopmentPlatform.load(org.platform_dir)
    agents: dict[str, AgentProcess] = {}
    try:
        for name in ("good-1", "good-2", "tampered"):
            tpm = make_module_tpm()
            if name == "tampered":
                booted = boot_node(
                    tpm,
                    platform.with_secure_boot(False),
                    load_release(org.release_dir, kernel=org.modified_kernel),
                )
            else:
                booted = boot_node(tpm, platform, load_release(org.release_dir))
            booted.check()
            agent = AgentProcess(name, tpm.name, verifier, stockade_home, work / "agents" / name)
            agent.start()
            agents[name] = agent
        yield verifier, agents
    finally:
        for agent in agents.values():
            agent.stop()
        verifier.stop()


def test_good_nodes_trusted_tampered_node_failed(cluster: Any) -> None:
    verifier, agents = cluster
    try:
        wait_for(
            lambda: states(verifier) == {"good-1": "trusted", "good-2": "trusted",
                                         "tampered": "failed"},
            40, "two trusted nodes and one failed",
        )  # fmt: skip
    except ClusterError:
        logs = {name: agent.lines()[-5:] for name, agent in agents.items()}
        raise AssertionError(f"{states(verifier)}\n{logs}\n{verifier.tail()}") from None
    shown = cli(verifier, "results", "show", "tampered")
    (result,) = shown["results"]
    assert result["status"] == "contraindicated"
    assert result["ear_signature"] == "verified"
    reasons = " ".join(result["reasons"])
    assert "PCR 4" in reasons
    assert "PCR 7" in reasons
    assert "EV_" in reasons  # the differing events are named
    good = cli(verifier, "results", "show", "good-1")["results"][0]
    assert good["status"] == "affirming", good["reasons"]
    # Each agent logs one line per attestation with its status.
    assert any("status=affirming" in line for line in agents["good-1"].lines())
    assert any("status=contraindicated" in line for line in agents["tampered"].lines())


def test_stopped_agent_goes_stale_after_its_deadline(cluster: Any) -> None:
    verifier, agents = cluster
    wait_for(lambda: states(verifier).get("good-2") == "trusted", 30, "good-2 trusted")
    assert agents["good-2"].stop() == 0  # SIGTERM: a clean exit
    node = next(n for n in cli(verifier, "nodes", "list")["nodes"] if n["name"] == "good-2")
    deadline = _time(node["trusted_until"])
    # Polled over one open API connection: a CLI process per poll costs ~0.6 s to start,
    # which measured the CLI, not the verifier.
    with verifier.client() as client:
        wait_for(
            lambda: {n["name"]: n["state"] for n in client.nodes()}["good-2"] == "untrusted",
            VALIDITY + 10,
            "good-2 stale",
        )
        noticed = datetime.now(UTC)
    assert (noticed - deadline).total_seconds() < 2.0
    # The state is computed at read time; the sweeper records the event within its interval.
    stale = wait_for(
        lambda: [e for e in events(verifier) if e["name"] == "good-2" and e["to"] == "untrusted"],
        5, "the stale event",
    )  # fmt: skip
    assert "stale" in stale[-1]["reason"]
    assert states(verifier)["good-1"] == "trusted"  # still attesting


def test_verifier_restart_loses_nothing(cluster: Any) -> None:
    verifier, agents = cluster
    before_nodes = {n["node_id"]: n["name"] for n in cli(verifier, "nodes", "list")["nodes"]}
    before_events = events(verifier)
    before_results = {
        name: [r["result_id"] for r in cli(verifier, "results", "show", name)["results"]]
        for name in before_nodes.values()
    }
    verifier.stop()
    time.sleep(0.5)  # agents see the verifier down and back off
    verifier.start()
    after_nodes = {n["node_id"]: n["name"] for n in cli(verifier, "nodes", "list")["nodes"]}
    assert after_nodes == before_nodes
    after_events = events(verifier)
    assert after_events[: len(before_events)] == before_events
    for name, result_ids in before_results.items():
        shown = cli(verifier, "results", "show", name, "--limit", "50")["results"]
        assert set(result_ids) <= {r["result_id"] for r in shown}
    # Agents reconnect without enrolling again.
    wait_for(lambda: states(verifier)["good-1"] == "trusted", 20, "good-1 trusted again")
    assert sum("enrolled " in line for line in agents["good-1"].lines()) == 1
    assert any("retry in" in line for line in agents["good-1"].lines())
