"""Rollout inventory end to end: a real verifier, development nodes on swtpms booted with two
different signed releases (and one tampered boot that matches none), real agents. Each node's
result records the release it booted; ``nodes list -o wide`` shows it, ``releases status``
counts the nodes per release and state."""

from __future__ import annotations

from typing import Any

import pytest

from stockade.boot import DevelopmentPlatform, boot_node, load_release
from stockade.demo.cluster import OrgMaterial
from stockade.release.manifest import manifest_digest
from support.rollout_fixtures import RolloutKit, build_signed_release, reader_cli

pytestmark = pytest.mark.tools

VALIDITY = 60  # seconds: nodes stay trusted while the test reads
NEW_VERSION = "1.1.0"
NEW_SECURITY_VERSION = 4


@pytest.fixture(scope="module")
def fleet(rollout: RolloutKit) -> Any:
    org = rollout.org
    work = rollout.mktemp("rollout")
    # The organization's next release (1.1.0, security version 4), accepted beside 1.0.0.
    new = build_signed_release(org, work / "next", NEW_VERSION, NEW_SECURITY_VERSION)
    policy, _ = rollout.policy_file(work / "policy.json", VALIDITY, new.envelope.to_json())
    with rollout.serving(work / "verifier", policy) as stand:
        platform = DevelopmentPlatform.load(org.platform_dir)
        boots = {
            "old-1": (platform, load_release(org.release_dir)),
            "new-1": (platform, load_release(new.directory)),
            "new-2": (platform, load_release(new.directory)),
            # Secure Boot off and a modified kernel: the boot matches no accepted release.
            "tampered": (
                platform.with_secure_boot(False),
                load_release(org.release_dir, kernel=org.modified_kernel),
            ),
        }
        for name, (booted_platform, release) in boots.items():
            tpm = rollout.make_tpm()
            boot_node(tpm, booted_platform, release).check()
            stand.start_agent(name, tpm.name, work / "agents" / name)
        expected = {"old-1": "trusted", "new-1": "trusted", "new-2": "trusted",
                    "tampered": "failed"}  # fmt: skip
        stand.wait(lambda: stand.states() == expected, 60, "three trusted, one failed")
        yield stand.verifier, new.digest


def test_each_node_shows_the_release_it_booted(fleet: Any, org: OrgMaterial) -> None:
    verifier, new_digest = fleet
    old_digest = manifest_digest(load_release(org.release_dir).manifest).hex()
    nodes = {node["name"]: node for node in reader_cli(verifier, "nodes", "list")["nodes"]}
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
    wide = reader_cli(verifier, "nodes", "list", "-o", "wide", text=True).replace("┃", "│")
    rows = {line.split("│")[1].strip(): line for line in wide.splitlines() if "│" in line}
    assert "release" in rows["name"] and "svn" in rows["name"]
    assert "stockade-os 1.0.0" in rows["old-1"] and old_digest[:12] in rows["old-1"]
    assert "stockade-os 1.1.0" in rows["new-2"] and new_digest[:12] in rows["new-2"]
    assert "stockade-os" not in rows["tampered"]
    assert [cell.strip() for cell in rows["tampered"].split("│")[4:7]] == ["-", "-", "-"]
    # Without -o wide the table keeps its columns.
    narrow = reader_cli(verifier, "nodes", "list", text=True)
    assert "stockade-os" not in narrow and "svn" not in narrow


def test_releases_status_counts_nodes_per_release_and_state(fleet: Any) -> None:
    verifier, new_digest = fleet
    status = reader_cli(verifier, "releases", "status")
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

    shown = reader_cli(verifier, "releases", "status", text=True)
    rows = [line for line in shown.splitlines() if "│" in line]
    new_row = next(line for line in rows if "stockade-os 1.1.0" in line)
    assert "trusted 2" in new_row and f"│ {NEW_SECURITY_VERSION} " in new_row
    assert any("failed 1" in line and "stockade-os" not in line for line in rows)
