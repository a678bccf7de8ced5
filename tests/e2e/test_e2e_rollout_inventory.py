"""Rollout inventory end to end: a real verifier, development nodes on swtpms booted with two
different signed releases (and one tampered boot that matches none), real agents. Each node's
result records the release it booted; ``nodes list -o wide`` shows it, ``releases status``
counts the nodes per release and state."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stockade.boot import DevelopmentPlatform, boot_node, load_release
from stockade.demo.cluster import (
    CMDLINE,
    AgentProcess,
    ClusterError,
    OrgMaterial,
    VerifierProcess,
    policy_document,
    wait_for,
)
from stockade.release.manifest import manifest_digest
from support.cli import run_stockade

pytestmark = pytest.mark.tools

VALIDITY = 60  # seconds: nodes stay trusted while the test reads
NEW_VERSION = "1.1.0"
NEW_SECURITY_VERSION = 4


def build_second_release(org: OrgMaterial, directory: Path) -> tuple[Path, dict[str, Any], str]:
    """The organization's next release (1.1.0, security version 4: the same kernel, a new
    initrd and /usr), signed with its key: its directory, envelope and manifest digest."""
    from stockade.release.build import ReleaseInputs, build_release
    from stockade.release.keys import load_signing_key
    from stockade.release.manifest import sign_manifest

    material = org.release_dir.parent  # make_org_material's directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "initrd.in").write_bytes(os.urandom(20000))
    (directory / "usr.in").write_bytes(os.urandom(5 * 4096))
    release_dir = directory / "release"
    manifest = build_release(
        ReleaseInputs(
            "stockade-os", NEW_VERSION, NEW_SECURITY_VERSION, material / "vmlinuz.signed",
            directory / "initrd.in", CMDLINE, directory / "usr.in",
        ),
        release_dir,
        datetime.now(UTC),
    )  # fmt: skip
    org_key = load_signing_key((material / "keys" / "org.key").read_bytes())
    envelope = sign_manifest(manifest, [org_key])
    return release_dir, envelope.to_json(), manifest_digest(manifest).hex()


def cli(verifier: VerifierProcess, *args: str, text: bool = False) -> Any:
    """A reading command with the reader token: its JSON, or (``text``) its text output on a
    terminal wide enough for the wide table."""
    result = run_stockade(
        *args, "--verifier", verifier.url, "--ca", verifier.ca,
        "--token-file", verifier.reader_token_file, *(() if text else ("--format", "json")),
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout if text else json.loads(result.stdout)


def states(verifier: VerifierProcess) -> dict[str, str]:
    return {node["name"]: node["state"] for node in cli(verifier, "nodes", "list")["nodes"]}


@pytest.fixture(scope="module")
def fleet(
    org: OrgMaterial,
    make_module_tpm: Any,
    tmp_path_factory: pytest.TempPathFactory,
    ek_ca_file: Path,
    database_url: str | None,
    stockade_home: Path,
) -> Any:
    work = tmp_path_factory.mktemp("rollout")
    new_release, new_envelope, new_digest = build_second_release(org, work / "next")
    document = policy_document(org, validity_seconds=VALIDITY)
    document["releases"]["manifests"].append(new_envelope)
    policy = work / "policy.json"
    policy.write_text(json.dumps(document))
    verifier = VerifierProcess(work / "verifier", ek_ca_file, policy, database=database_url)
    verifier.start()
    platform = DevelopmentPlatform.load(org.platform_dir)
    boots = {
        "old-1": (platform, load_release(org.release_dir)),
        "new-1": (platform, load_release(new_release)),
        "new-2": (platform, load_release(new_release)),
        # Secure Boot off and a modified kernel: the boot matches no accepted release.
        "tampered": (
            platform.with_secure_boot(False),
            load_release(org.release_dir, kernel=org.modified_kernel),
        ),
    }
    agents: dict[str, AgentProcess] = {}
    try:
        for name, (booted_platform, release) in boots.items():
            tpm = make_module_tpm()
            boot_node(tpm, booted_platform, release).check()
            agent = AgentProcess(name, tpm.name, verifier, stockade_home, work / "agents" / name)
            agent.start()
            agents[name] = agent
        expected = {"old-1": "trusted", "new-1": "trusted", "new-2": "trusted",
                    "tampered": "failed"}  # fmt: skip
        try:
            wait_for(lambda: states(verifier) == expected, 60, "three trusted, one failed")
        except ClusterError:
            logs = {name: agent.lines()[-5:] for name, agent in agents.items()}
            raise AssertionError(f"{states(verifier)}\n{logs}\n{verifier.tail()}") from None
        yield verifier, new_digest
    finally:
        for agent in agents.values():
            agent.stop()
        verifier.stop()


def test_each_node_shows_the_release_it_booted(fleet: Any, org: OrgMaterial) -> None:
    verifier, new_digest = fleet
    old_digest = manifest_digest(load_release(org.release_dir).manifest).hex()
    nodes = {node["name"]: node for node in cli(verifier, "nodes", "list")["nodes"]}
    assert nodes["old-1"]["release"] == {
        "name": "stockade-os", "version": "1.0.0", "security_version": 3, "digest": old_digest,
    }  # fmt: skip
    for name in ("new-1", "new-2"):
        assert nodes[name]["release"] == {
            "name": "stockade-os", "version": NEW_VERSION,
            "security_version": NEW_SECURITY_VERSION, "digest": new_digest,
        }  # fmt: skip
    assert nodes["tampered"]["release"] is None  # JSON always carries the key
    # The latest result itself records it too.
    with verifier.client() as api:
        (latest,) = api.results("new-1")
    assert latest["release"] == nodes["new-1"]["release"]

    # Rich draws the header row with heavy bars, the others with light ones.
    wide = cli(verifier, "nodes", "list", "-o", "wide", text=True).replace("┃", "│")
    rows = {line.split("│")[1].strip(): line for line in wide.splitlines() if "│" in line}
    assert "release" in rows["name"] and "svn" in rows["name"]
    assert "stockade-os 1.0.0" in rows["old-1"] and old_digest[:12] in rows["old-1"]
    assert "stockade-os 1.1.0" in rows["new-2"] and new_digest[:12] in rows["new-2"]
    assert "stockade-os" not in rows["tampered"]
    assert [cell.strip() for cell in rows["tampered"].split("│")[4:7]] == ["-", "-", "-"]
    # Without -o wide the table keeps its columns.
    narrow = cli(verifier, "nodes", "list", text=True)
    assert "stockade-os" not in narrow and "svn" not in narrow


def test_releases_status_counts_nodes_per_release_and_state(fleet: Any) -> None:
    verifier, new_digest = fleet
    status = cli(verifier, "releases", "status")
    assert status["nodes"] == 4
    counts = [
        (
            (entry["release"] or {}).get("version"),
            (entry["release"] or {}).get("security_version"),
            entry["nodes"],
            entry["states"],
        )
        for entry in status["releases"]
    ]
    assert counts == [
        ("1.0.0", 3, 1, {"trusted": 1}),
        (NEW_VERSION, NEW_SECURITY_VERSION, 2, {"trusted": 2}),
        (None, None, 1, {"failed": 1}),
    ]
    assert status["releases"][1]["release"]["digest"] == new_digest

    shown = cli(verifier, "releases", "status", text=True)
    rows = [line for line in shown.splitlines() if "│" in line]
    new_row = next(line for line in rows if "stockade-os 1.1.0" in line)
    assert "trusted 2" in new_row and f"│ {NEW_SECURITY_VERSION} " in new_row
    assert any("failed 1" in line and "stockade-os" not in line for line in rows)
