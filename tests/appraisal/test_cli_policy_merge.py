"""`stockade policy capture --machine` and `stockade policy merge` as subprocesses, on a real
event log and copies of it (rewritten with the log's own writer, digests recomputed):
merge writes a reviewable YAML fleet policy and prints which PCRs got variants and which
events became per machine and why; `stockade appraise` affirms each firmware version of a
merged policy; without a node name (`appraise` has no --node yet) a per-node event is
named with the machines listed, and under --per-machine exclude it is not compared. A
firmware rollout: the canary updated (a firmware volume and its SMBIOS tables), captured
again under its name and merged with the fleet's policy file, keeps both its captures, and
its old and new logs and the other machine's affirm with --node. Two banks, an unreadable
policy and an existing --out without --force exit 2 with one line.
The merge itself, and every fixture log merged with itself, are tested in process in
tests/appraisal/test_appraisal_captured_fleet.py.

Every command of a stage runs at once (each is a Python start-up of about half a second).
"""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import pytest
import yaml

from stockade.evidence.event_data import UefiVariableData, decode
from stockade.evidence.eventlog import EventType, parse_event_log
from support.cli import run_stockade
from support.eventlogs import rewritten
from support.fixtures import EVENT_LOGS, SHARED, event_log_path

pytestmark = pytest.mark.tools

REAL = "keylime-shim-grub"  # handoff tables and boot options in PCR 1
SHA1 = "event-uefi-sha1-log"


def _run_all(commands: dict[Any, list[object]]) -> dict[Any, subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(run_stockade, *args) for key, args in commands.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    for name in (REAL, SHA1):
        if not (SHARED / EVENT_LOGS[name]).is_dir():
            pytest.skip(f"event log fixtures not found at {SHARED} (they live outside the repo)")
    base = tmp_path_factory.mktemp("merge-cli")
    log = parse_event_log(event_log_path(REAL).read_bytes())
    boot = next(
        e
        for e in log.events
        if e.pcr == 1
        and e.type == EventType.EV_EFI_VARIABLE_BOOT
        and isinstance(decode(e), UefiVariableData)
    )
    variable = decode(boot)
    assert isinstance(variable, UefiVariableData)
    other_disk = UefiVariableData(
        variable.variable_name,
        variable.unicode_name,
        variable.variable_data[:-1] + bytes([variable.variable_data[-1] ^ 1]),
    ).encode()
    version = next(e for e in log.events if e.type == EventType.EV_S_CRTM_VERSION)
    blob = next(e for e in log.events if e.type == EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB)
    table = next(e for e in log.events if e.type == EventType.EV_EFI_HANDOFF_TABLES)
    logs = {
        "a": event_log_path(REAL),
        "b": base / "b.bin",  # another disk in a boot option
        "new-firmware": base / "new-firmware.bin",
        "third-firmware": base / "third-firmware.bin",
        "a-updated": base / "a-updated.bin",  # a BIOS update: a firmware volume, SMBIOS
    }
    logs["b"].write_bytes(rewritten(log, boot.number, other_disk).marshal())
    logs["new-firmware"].write_bytes(
        rewritten(log, version.number, "N40ET99W \x00".encode("utf-16-le")).marshal()
    )
    logs["third-firmware"].write_bytes(rewritten(log, version.number).marshal())
    updated = parse_event_log(rewritten(log, blob.number).marshal())
    logs["a-updated"].write_bytes(rewritten(updated, table.number).marshal())
    captures = _run_all(
        {
            name: ["policy", "capture", "--event-log", path, "--id", f"golden-{name}",
                   "--machine", name, "--out", base / f"{name}.yaml"]
            for name, path in logs.items()
            if name != "a-updated"
        }
    )  # fmt: skip
    captures["a-updated"] = run_stockade(
        "policy", "capture", "--event-log", logs["a-updated"], "--id", "golden-a-updated",
        "--machine", "a", "--out", base / "a-updated.yaml",
    )  # fmt: skip
    sha1 = ["policy", "capture", "--event-log", event_log_path(SHA1), "--id", "sha1"]
    captures["sha1"] = run_stockade(*sha1, "--out", base / "sha1.yaml")
    (base / "garbage.yaml").write_text("kind: [unclosed\n")
    (base / "existing.yaml").write_text("keep me\n")
    merge = ["policy", "merge"]
    merges = _run_all(
        {
            "fleet": [*merge, base / "a.yaml", base / "b.yaml", "--id", "fleet",
                      "--out", base / "fleet.yaml"],
            "exclude": [*merge, base / "a.yaml", base / "b.yaml", "--id", "fleet-x",
                        "--out", base / "exclude.yaml", "--per-machine", "exclude"],
            "firmware": [*merge, base / "a.yaml", base / "new-firmware.yaml", "--id", "fw",
                         "--out", base / "firmware.yaml"],
            "self": [*merge, base / "a.yaml", base / "a.yaml", "--id", "self",
                     "--out", base / "self.yaml"],
            "banks": [*merge, base / "a.yaml", base / "sha1.yaml", "--id", "x",
                      "--out", base / "banks.yaml"],
            "garbage": [*merge, base / "a.yaml", base / "garbage.yaml", "--id", "x",
                        "--out", base / "never.yaml"],
            "overwrite": [*merge, base / "a.yaml", "--id", "x", "--out", base / "existing.yaml"],
            "bad-mode": [*merge, base / "a.yaml", "--id", "x", "--out", base / "never.yaml",
                         "--per-machine", "sometimes"],
        }
    )  # fmt: skip
    # The canary (a) updated, captured again and merged with the fleet's policy.
    merges["rollout"] = run_stockade(
        *merge, base / "fleet.yaml", base / "a-updated.yaml", "--id", "fleet",
        "--out", base / "rollout.yaml",
    )  # fmt: skip
    appraise = ["appraise", "--format", "json", "--policy"]
    rollout = base / "rollout.yaml"
    appraisals = _run_all(
        {
            ("fleet", "b"): [*appraise, base / "fleet.yaml", "--event-log", logs["b"]],
            ("exclude", "a"): [*appraise, base / "exclude.yaml", "--event-log", logs["a"]],
            ("exclude", "b"): [*appraise, base / "exclude.yaml", "--event-log", logs["b"]],
            ("firmware", "a"): [*appraise, base / "firmware.yaml", "--event-log", logs["a"]],
            ("firmware", "new"): [
                *appraise, base / "firmware.yaml", "--event-log", logs["new-firmware"]
            ],
            ("firmware", "third"): [
                *appraise, base / "firmware.yaml", "--event-log", logs["third-firmware"]
            ],
            ("self", "a"): [*appraise, base / "self.yaml", "--event-log", logs["a"]],
            ("rollout", "a"): [*appraise, rollout, "--event-log", logs["a"], "--node", "a"],
            ("rollout", "a-updated"): [
                *appraise, rollout, "--event-log", logs["a-updated"], "--node", "a"
            ],
            ("rollout", "b"): [*appraise, rollout, "--event-log", logs["b"], "--node", "b"],
            ("rollout", "a-updated as b"): [
                *appraise, rollout, "--event-log", logs["a-updated"], "--node", "b"
            ],
        }
    )  # fmt: skip
    return {
        "base": base,
        "boot": boot.number,
        "version": version.number,
        "table": table.number,
        "captures": captures,
        **merges,
        **appraisals,
    }


def test_capture_records_the_machine(runs):
    for name, done in runs["captures"].items():
        assert done.returncode == 0, (name, done.stderr)
    document = yaml.safe_load((runs["base"] / "b.yaml").read_text())
    assert document["machines"] == ["b"] and document["id"] == "golden-b"
    assert yaml.safe_load((runs["base"] / "sha1.yaml").read_text())["machines"] == ["sha1"]


def test_merge_writes_per_node_events_and_says_which_and_why(runs):
    done = runs["fleet"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("policy fleet: 2 machines (a, b)")
    [line] = [line for line in done.stdout.splitlines() if "PCR 1:" in line]
    assert f"event {runs['boot']} EV_EFI_VARIABLE_BOOT" in line
    assert "per machine on a, b" in line and "boot option" in line
    document = yaml.safe_load((runs["base"] / "fleet.yaml").read_text())
    assert document["machines"] == ["a", "b"]
    pcr1 = document["pcrs"][1]
    assert set(pcr1) == {"values", "events"} and set(pcr1["values"]) == {"a", "b"}
    [event] = [e for e in pcr1["events"] if "per_node" in e]
    assert event["index"] == runs["boot"] and set(event["per_node"]) == {"a", "b"}
    assert "boot option" in event["reason"]


def test_without_a_node_name_a_per_node_event_is_named_with_the_machines(runs):
    done = runs["fleet", "b"]
    assert done.returncode == 1, done.stderr
    [reason] = json.loads(done.stdout)["reasons"]
    assert reason["pcr"] == 1 and reason["event"]["index"] == runs["boot"]
    assert "for a, b, and no machine was named" in reason["reason"]


def test_under_exclude_both_machines_affirm(runs):
    assert runs["exclude"].returncode == 0, runs["exclude"].stderr
    assert "excluded on a, b" in runs["exclude"].stdout
    document = yaml.safe_load((runs["base"] / "exclude.yaml").read_text())
    [event] = [e for e in document["pcrs"][1]["events"] if "excluded" in e]
    assert "not compared" in event["excluded"] and "value" not in document["pcrs"][1]
    for machine in ("a", "b"):
        done = runs["exclude", machine]
        assert done.returncode == 0, done.stdout + done.stderr
        assert json.loads(done.stdout)["status"] == "affirming"


def test_two_firmware_versions_are_two_variants_and_a_third_is_named(runs):
    done = runs["firmware"]
    assert done.returncode == 0, done.stderr
    assert "PCR 0: 2 variants (code PCR" in done.stdout
    document = yaml.safe_load((runs["base"] / "firmware.yaml").read_text())
    assert [v["machines"] for v in document["pcrs"][0]["variants"]] == [["a"], ["new-firmware"]]
    for which in ("a", "new"):
        appraised = runs["firmware", which]
        assert appraised.returncode == 0, appraised.stdout + appraised.stderr
    third = runs["firmware", "third"]
    assert third.returncode == 1, third.stderr
    [reason] = json.loads(third.stdout)["reasons"]
    assert reason["pcr"] == 0 and reason["event"]["index"] == runs["version"]
    assert "none of the 2 accepted variants matches" in reason["reason"]


def test_a_policy_merged_with_itself_affirms_its_log(runs):
    assert runs["self"].returncode == 0, runs["self"].stderr
    assert "every PCR is the same on a" in runs["self"].stdout
    assert runs["self", "a"].returncode == 0, runs["self", "a"].stdout


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("banks", "policies of different banks cannot be merged"),
        ("garbage", "garbage.yaml"),
        ("overwrite", "--force"),
        ("bad-mode", "sometimes"),
    ],
)
def test_bad_input_exits_2_with_one_line(runs, kind, says):
    done = runs[kind]
    assert done.returncode == 2, done.stdout
    assert says in done.stderr and "Traceback" not in done.stderr
    assert not (runs["base"] / "never.yaml").exists()
    assert not (runs["base"] / "banks.yaml").exists()
    assert (runs["base"] / "existing.yaml").read_text() == "keep me\n"


def test_an_updated_canary_merged_into_the_fleet_policy_affirms_with_the_old_firmware(runs):
    """The rollout: the canary's new capture (new firmware, new SMBIOS tables) merged with
    the fleet's policy file; its old and new logs and the other machine's all affirm."""
    assert runs["captures"]["a-updated"].returncode == 0, runs["captures"]["a-updated"].stderr
    done = runs["rollout"]
    assert done.returncode == 0, done.stderr
    assert done.stdout.startswith("policy fleet: 2 machines (a, b)")
    assert (
        "machine a has 2 captures differing in PCR 0, 1: both accepted (drop the old one by "
        "merging new captures only)" in done.stdout
    )
    document = yaml.safe_load((runs["base"] / "rollout.yaml").read_text())
    assert [v["machines"] for v in document["pcrs"][0]["variants"]] == [["a", "b"], ["a"]]
    [table] = [e for e in document["pcrs"][1]["events"] if e["index"] == runs["table"]]
    assert len(table["per_node"]["a"]) == 2 and isinstance(table["per_node"]["b"], str)
    assert len(document["pcrs"][1]["values"]["a"]) == 2
    for which in ("a", "a-updated", "b"):
        appraised = runs["rollout", which]
        assert appraised.returncode == 0, (which, appraised.stdout + appraised.stderr)
        assert json.loads(appraised.stdout)["status"] == "affirming"
    stolen = runs["rollout", "a-updated as b"]
    assert stolen.returncode == 1, stolen.stderr
    reasons = json.loads(stolen.stdout)["reasons"]
    assert {r["event"]["index"] for r in reasons} == {runs["boot"], runs["table"]}
    assert all(r["pcr"] == 1 and "machine 'b''s differs" in r["reason"] for r in reasons)
