"""The rollout runbook (docs/rollout.md) followed step by step with the real command line: a
verifier over TLS whose policy lists release 1.0.0 (security version 3), three development
nodes (swtpm, verified boot, ``stockade agent run``) booted with it; release 1.1.0 (security
version 4) is built, signed, added to the policy, a canary is labelled, rebooted into it and
watched, then the rest; finally the minimum security version is raised to 4 and 1.0.0's
manifest removed. The event stream shows that no node was ever anything but trusted, and a
node rebooted into 1.0.0 afterwards is refused (the minimum is enforced)."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.demo.cluster import CMDLINE, AgentProcess, VerifierProcess
from support.cli import run_stockade
from support.rollout_fixtures import RolloutKit, Stand

pytestmark = pytest.mark.tools

# A node's result is valid this long; agents attest every second, so a reboot (agent
# stopped, TPM reset and measured again, agent started) fits well inside it: a node that
# went untrusted during the rollout would be a real gap, not a slow test.
VALIDITY = 30
NODES = ("web-1", "web-2", "web-3")
CANARY = "web-1"
OLD, NEW = "1.0.0", "1.1.0"
BAD_STATES = {"untrusted", "failed", "revoked"}


@dataclass
class Fleet:
    """The operator's working directory (the runbook's relative paths), the verifier and each
    node's agent (the stand), each node's swtpm name, and every node state seen while
    polling."""

    repo: Path
    stand: Stand
    tpms: dict[str, str]
    # Every rollout node's state at each read once all were trusted (``watching``).
    seen: list[dict[str, str]] = field(default_factory=list)
    watching: bool = False

    @property
    def verifier(self) -> VerifierProcess:
        return self.stand.verifier

    @property
    def agents(self) -> dict[str, AgentProcess]:
        return self.stand.agents

    def env(self) -> dict[str, str]:
        """What the runbook assumes of the shell: the verifier, its CA and the operator token
        (``stockade config set-context`` would do as well)."""
        return {
            **os.environ,
            "STOCKADE_VERIFIER": self.verifier.url,
            "STOCKADE_CA": str(self.verifier.ca),
            "STOCKADE_OPERATOR_TOKEN": self.verifier.operator_token() or "",
            "STOCKADE_VERIFIER_KEY": str(self.verifier.verifier_key),
            "COLUMNS": "250",
        }

    def run(self, *args: object, code: int = 0) -> subprocess.CompletedProcess[str]:
        """``stockade *args`` in the operator's directory, as the runbook writes it."""
        result = run_stockade(*args, env=self.env(), cwd=self.repo)
        assert result.returncode == code, (args, result.stdout, result.stderr)
        return result

    def json(self, *args: object) -> Any:
        return json.loads(self.run(*args, "--format", "json").stdout)

    def nodes(self) -> dict[str, dict[str, Any]]:
        """``nodes list`` by name; every rollout node must be trusted whenever it is read."""
        listed = {node["name"]: node for node in self.json("nodes", "list")["nodes"]}
        if self.watching:
            self.seen.append({name: listed[name]["state"] for name in NODES})
        return listed

    def on(self, names: tuple[str, ...], version: str) -> bool:
        listed = self.nodes()
        return all(
            name in listed
            and listed[name]["state"] == "trusted"
            and (listed[name]["release"] or {}).get("version") == version
            for name in names
        )

    def wait(self, condition: Callable[[], Any], what: str, timeout: float = 45) -> Any:
        return self.stand.wait(condition, timeout, what, shown=self.nodes, interval=0.5)

    def reboot(self, name: str, release: str) -> None:
        """A reboot into ``release``: the agent stops with the machine, the TPM is reset and
        the boot chain measured again (``stockade boot node``), the agent starts again with
        the state it kept on disk."""
        agent = self.agents[name]
        assert agent.stop() == 0, agent.lines()[-5:]
        booted = self.run(
            "boot", "node", "--tpm", self.tpms[name], "--platform", "platform",
            "--release", release,
        )  # fmt: skip
        assert f"booted stockade-os {release.removeprefix('release-')}" in booted.stdout
        agent.start()

    def latest(self, name: str) -> dict[str, Any]:
        """The node's latest result, its EAR verified (``results show``)."""
        (result,) = self.json("results", "show", name)["results"]
        return dict(result)

    def status(self) -> list[tuple[str | None, int | None, dict[str, int]]]:
        """``releases status``: (version, security version, states) per release."""
        return [
            (
                (entry["release"] or {}).get("version"),
                (entry["release"] or {}).get("security_version"),
                entry["states"],
            )
            for entry in self.json("releases", "status")["releases"]
        ]

    def events(self) -> list[dict[str, Any]]:
        """Every stored event, through ``stockade events watch --until-idle``."""
        shown = self.run("events", "watch", "--until-idle", "--format", "json").stdout
        return [json.loads(line) for line in shown.splitlines() if line.strip()]


def wide_row(fleet: Fleet, name: str) -> str:
    """The node's row of ``nodes list -o wide``."""
    table = fleet.run("nodes", "list", "-o", "wide").stdout.replace("┃", "│")
    return next(line for line in table.splitlines() if f"│ {name} " in line)


def dry_run(fleet: Fleet) -> dict[str, Any]:
    """``policy apply --dry-run fleet.yaml``, its text checked against its JSON."""
    shown = fleet.run("policy", "apply", "--dry-run", "fleet.yaml").stdout
    answer: dict[str, Any] = fleet.json("policy", "apply", "--dry-run", "fleet.yaml")
    assert "(nothing stored)" in shown
    assert f"{answer['changed']} of {answer['nodes']} enrolled nodes would change" in shown
    return answer


def retire(fleet: Fleet, name: str) -> dict[str, Any]:
    """Step 6's document, written to ``name``: fleet.yaml with the minimum security version
    raised to 4 and 1.0.0's manifest removed."""
    document = yaml.safe_load((fleet.repo / "fleet.yaml").read_text())
    document["releases"]["min_security_version"] = 4
    document["releases"]["manifests"].remove(f"release-{OLD}/manifest.dsse.json")
    (fleet.repo / name).write_text(yaml.safe_dump(document, sort_keys=False))
    return dict(document)


@pytest.fixture(scope="module")
def fleet(rollout: RolloutKit) -> Iterator[Fleet]:
    """The operator's directory (keys/, platform/, release-1.0.0/, fleet.yaml written by
    ``policy new``), a verifier serving fleet.yaml, three nodes trusted on 1.0.0."""
    org = rollout.org
    material = org.release_dir.parent  # make_org_material's directory
    repo = rollout.mktemp("fleet-repo")
    # Copies, not links: `policy new` names files by their resolved paths.
    shutil.copytree(material / "keys", repo / "keys")
    shutil.copytree(org.platform_dir, repo / "platform")
    shutil.copy(material / "vmlinuz.signed", repo / "vmlinuz.signed")
    old = repo / f"release-{OLD}"
    shutil.copytree(org.release_dir, old)
    envelope = old / "manifest.dsse.json"
    if not envelope.exists():
        envelope.write_text(json.dumps(org.envelope))
    created = run_stockade(
        "policy", "new", "--id", "fleet", "--signer", "keys/org.pub",
        "--platform", "platform/platform.json", "--release", f"release-{OLD}/manifest.dsse.json",
        "--result-validity-seconds", str(VALIDITY), "--out", "fleet.yaml", cwd=repo,
    )  # fmt: skip
    assert created.returncode == 0, created.stderr
    with rollout.serving(rollout.mktemp("verifier") / "data", repo / "fleet.yaml") as stand:
        fleet = Fleet(repo, stand, {})
        for name in NODES:
            tpm = rollout.make_tpm()
            fleet.tpms[name] = tpm.name
            fleet.run(
                "boot", "node", "--tpm", tpm.name, "--platform", "platform",
                "--release", f"release-{OLD}",
            )  # fmt: skip
            stand.start_agent(name, tpm.name, repo.parent / "agents" / name)
        fleet.wait(lambda: fleet.on(NODES, OLD), "three nodes trusted on 1.0.0", timeout=60)
        fleet.watching = True
        yield fleet


def test_the_runbook_moves_every_node_without_an_untrusted_moment(fleet: Fleet) -> None:
    first_event = fleet.events()[-1]["id"]
    assert fleet.status() == [(OLD, 3, {"trusted": 3})]

    # 1. Build, sign and check the release.
    (fleet.repo / "initrd-1.1.0.img").write_bytes(os.urandom(20000))
    (fleet.repo / "usr-1.1.0.img").write_bytes(os.urandom(5 * 4096))
    fleet.run(
        "release", "build", "--kernel", "vmlinuz.signed", "--initrd", "initrd-1.1.0.img",
        "--cmdline", CMDLINE, "--usr-image", "usr-1.1.0.img", "--version", NEW,
        "--security-version", "4", "--out", f"release-{NEW}",
    )  # fmt: skip
    fleet.run("release", "sign", f"release-{NEW}/manifest.json", "--key", "keys/org.key")
    verified = fleet.run(
        "release", "verify", f"release-{NEW}/manifest.dsse.json", "--pub", "keys/org.pub",
        "--artifacts", f"release-{NEW}",
    )  # fmt: skip
    assert f"release stockade-os {NEW} (security version 4) and its artifacts valid" in (
        verified.stdout
    )

    # 2. Accept the new release beside the old one.
    added = fleet.run("policy", "add-release", "fleet.yaml", f"release-{NEW}/manifest.dsse.json")
    assert f"release stockade-os {NEW} (security version 4) added" in added.stdout
    diff = fleet.json("policy", "diff", "fleet", "fleet.yaml")
    assert diff["from"] == "fleet@1"
    assert [(r["version"], r["security_version"]) for r in diff["releases_added"]] == [(NEW, 4)]
    assert diff["releases_removed"] == [] and diff["min_security_version"] is None
    assert (
        "+ release stockade-os 1.1.0" in fleet.run("policy", "diff", "fleet", "fleet.yaml").stdout
    )
    answer = dry_run(fleet)
    assert (answer["ref"], answer["nodes"], answer["changed"]) == ("fleet@2", 3, 0), answer
    assert answer["unknown"] == 0, answer
    assert "policy fleet version 2" in fleet.run("policy", "apply", "fleet.yaml").stdout
    assert "active policy: fleet@2" in fleet.run("policy", "activate", "fleet").stdout
    # Accepting a release moves no node.
    fleet.wait(lambda: fleet.on(NODES, OLD), "every node still on 1.0.0")
    assert fleet.status() == [(OLD, 3, {"trusted": 3})]

    # 3. Mark and move the canary.
    labelled = fleet.run("nodes", "label", CANARY, "role=web", "rollout=canary")
    assert "rollout=canary" in labelled.stdout
    assert fleet.nodes()[CANARY]["labels"] == {"role": "web", "rollout": "canary"}
    fleet.reboot(CANARY, f"release-{NEW}")

    # 4. Watch the canary.
    fleet.wait(lambda: fleet.on((CANARY,), NEW), "the canary trusted on 1.1.0")
    assert "stockade-os 1.1.0" in wide_row(fleet, CANARY)
    assert "trusted" in wide_row(fleet, CANARY)
    assert "stockade-os 1.0.0" in wide_row(fleet, "web-2")
    assert fleet.status() == [(OLD, 3, {"trusted": 2}), (NEW, 4, {"trusted": 1})]

    # 5. Move the rest (a batch of one, then the last).
    fleet.reboot("web-2", f"release-{NEW}")
    fleet.wait(lambda: fleet.on(("web-2",), NEW), "web-2 trusted on 1.1.0")
    assert fleet.status() == [(OLD, 3, {"trusted": 1}), (NEW, 4, {"trusted": 2})]
    # The dry run of step 6 is not empty words: while web-3 still runs 1.0.0 it names it.
    retired = retire(fleet, "fleet-next.yaml")
    early = fleet.json("policy", "apply", "--dry-run", "fleet-next.yaml")
    assert [(c["name"], c["from"], c["to"]) for c in early["changes"]] == [
        ("web-3", "affirming", "contraindicated")
    ], early
    assert "no accepted release matches" in early["changes"][0]["reason"]
    fleet.reboot("web-3", f"release-{NEW}")
    fleet.wait(lambda: fleet.on(("web-3",), NEW), "web-3 trusted on 1.1.0")
    assert fleet.status() == [(NEW, 4, {"trusted": 3})]  # no '-' row, nothing left on 1.0.0

    # 6. Retire 1.0.0: raise the minimum security version and drop its manifest.
    document = yaml.safe_load((fleet.repo / "fleet.yaml").read_text())
    document["releases"]["min_security_version"] = 4
    (fleet.repo / "fleet.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    # A policy that still lists a release below its minimum is refused.
    refused = fleet.run("policy", "validate", "fleet.yaml", code=1)
    assert (
        "releases.manifests[0]: release stockade-os 1.0.0 has security version 3, below the"
        " minimum 4" in refused.stderr
    ), refused.stderr
    document["releases"]["manifests"].remove(f"release-{OLD}/manifest.dsse.json")
    (fleet.repo / "fleet.yaml").write_text(yaml.safe_dump(document, sort_keys=False))
    assert document == retired
    valid = fleet.run("policy", "validate", "fleet.yaml")
    assert f"1 releases: stockade-os {NEW}" in valid.stdout
    diff = fleet.json("policy", "diff", "fleet", "fleet.yaml")
    assert [(r["version"], r["security_version"]) for r in diff["releases_removed"]] == [(OLD, 3)]
    assert diff["releases_added"] == [] and diff["min_security_version"] == {"from": 3, "to": 4}
    assert (
        "~ min_security_version: 3 -> 4"
        in fleet.run("policy", "diff", "fleet", "fleet.yaml").stdout
    )
    answer = dry_run(fleet)
    assert (answer["ref"], answer["nodes"], answer["changed"]) == ("fleet@3", 3, 0), answer
    assert "policy fleet version 3" in fleet.run("policy", "apply", "fleet.yaml").stdout
    # Every node attests again under fleet@3 and stays trusted on 1.1.0.
    fleet.wait(
        lambda: (
            fleet.on(NODES, NEW)
            and all(fleet.latest(name)["policy"] == "fleet@3" for name in NODES)
        ),
        "every node trusted under fleet@3",
    )
    assert fleet.status() == [(NEW, 4, {"trusted": 3})]

    # No node was ever anything but trusted: not in any event, not in any read.
    history = [event for event in fleet.events() if event["name"] in NODES]
    assert [e for e in history if e["to"] in BAD_STATES] == [], history
    rollout = [event for event in history if event["id"] > first_event]
    # Trusted throughout: the one event of a rollout node is the label change (an operator's
    # act recorded with the node's unchanged state).
    assert [(e["name"], e["from"], e["to"], e["actor"], e["reason"]) for e in rollout] == [
        (CANARY, "trusted", "trusted", "operator", "labels set: role=web, rollout=canary")
    ], rollout
    assert fleet.seen and all(set(s.values()) == {"trusted"} for s in fleet.seen), fleet.seen

    # The negative control, after the count above: a node booting 1.0.0 again (a rollback)
    # matches no accepted release and is refused.
    fleet.reboot("web-3", f"release-{OLD}")
    fleet.wait(lambda: fleet.latest("web-3")["status"] == "contraindicated", "web-3 refused")
    listed = {node["name"]: node for node in fleet.json("nodes", "list")["nodes"]}
    assert (listed["web-3"]["state"], listed["web-3"]["release"]) == ("failed", None)
    reasons = fleet.latest("web-3")["reasons"]
    assert reasons[0].startswith("no accepted release matches"), reasons
    assert f"the node booted stockade-os {OLD}" in reasons[0], reasons
    assert fleet.status() == [(NEW, 4, {"trusted": 2}), (None, None, {"failed": 1})]
    (refusal,) = [e for e in fleet.events() if e["name"] == "web-3" and e["to"] == "failed"]
    assert refusal["from"] == "trusted"


def test_an_auditor_checks_the_rollout_offline(fleet: Fleet) -> None:
    """After the rollout (the test above), an auditor exports what happened and checks it
    against the keys pinned once, with nothing but the exports: every result of every node,
    each naming the release it booted, proven in the log; and every operator act of the
    rollout (policies stored and activated, the canary label) with the operator's name."""
    log_key = fleet.verifier.data_dir / "keys" / "log-key.pub"
    exported = fleet.run("audit", "results", "--format", "json").stdout
    results = json.loads(exported)["results"]
    assert {r["node"] for r in results} >= set(NODES)
    assert all(isinstance(r["log_index"], int) and r["inclusion_proof"] for r in results)
    # Each result names the release its node booted: the rollout is in the export.
    booted = {(r["node"], (r.get("release") or {}).get("version")) for r in results}
    assert {(name, OLD) for name in NODES} <= booted, booted
    assert {(name, NEW) for name in NODES} <= booted, booted
    path = fleet.repo / "audit-results.json"
    path.write_text(exported)  # as printed
    pinned = ("--key", log_key, "--verifier-key", fleet.verifier.verifier_key)
    verified = fleet.run("log", "verify", path, *pinned)
    lines = verified.stdout.splitlines()
    assert len(lines) == len(results) and all(line.startswith("verified: ") for line in lines)
    assert all("EAR verified" in line for line in lines), lines[:3]
    # One byte of one result changed: the whole export is refused.
    tampered = json.loads(exported)
    tampered["results"][0]["status"] = (
        "affirming" if tampered["results"][0]["status"] != "affirming" else "contraindicated"
    )
    tampered["results"][0]["ear"] = tampered["results"][-1]["ear"]
    path.write_text(json.dumps(tampered))
    fleet.run("log", "verify", path, *pinned, code=1)

    acts = json.loads(fleet.run("audit", "actions", "--format", "json").stdout)["actions"]
    done = [(a["actor"], a["action"], a["subject"]) for a in acts]
    for act in (
        ("operator", "policy.store", "fleet@2"),
        ("operator", "policy.activate", "fleet@2"),
        ("operator", "policy.store", "fleet@3"),
        ("operator", "node.labels", fleet.nodes()[CANARY]["node_id"]),
    ):
        assert act in done, (act, done)
    path = fleet.repo / "audit-actions.json"
    path.write_text(json.dumps({"actions": acts}))
    checked = fleet.run("log", "verify", path, "--key", log_key).stdout.splitlines()
    assert len(checked) == len(acts) and all("operator-action" in line for line in checked)
