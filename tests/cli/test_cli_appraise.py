"""`stockade policy capture` and `stockade appraise` as subprocesses, on real event logs:
capture writes reviewable YAML and never replaces a file without --force; appraise exits 0
affirming (the same log), 1 contraindicated (a tampered copy, another machine's log, a log
that does not replay to --pcrs) with JSON reasons naming the PCR and the event, and 2 with a
one-line error naming the field for input it cannot read. The comparison itself is tested
in process in tests/appraisal/test_appraisal_captured.py, for every tampering of every log.

Every command runs at once (each is a Python start-up of about half a second).
"""

from __future__ import annotations

import json
import subprocess
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.evidence.event_data import UefiVariableData, decode
from stockade.evidence.eventlog import EventLog, EventType, parse_event_log
from support.cli import run_stockade
from support.eventlogs import rewritten
from support.fixtures import EVENT_LOGS, SHARED

pytestmark = pytest.mark.tools

LOGS = EVENT_LOGS
NAMES = list(LOGS)
REAL = "keylime-shim-grub-secureboot"


def _path(name: str) -> Path:
    return SHARED / LOGS[name] / f"{name}.bin"


def _first(log: EventLog, test: Callable[[Any], bool]) -> int:
    return next(e.number for e in log.events if test(e))


def _tampered(log: EventLog) -> dict[str, tuple[int, int, bytes]]:
    """Tampering -> (PCR, event number, the tampered log)."""
    application = _first(
        log, lambda e: e.pcr == 4 and e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION
    )
    firmware = _first(log, lambda e: e.pcr == 0 and e.type == EventType.EV_S_CRTM_VERSION)
    secure_boot = _first(
        log,
        lambda e: (
            e.pcr == 7
            and isinstance(decode(e), UefiVariableData)
            and decode(e).unicode_name == "SecureBoot"
        ),
    )
    variable = decode(log.events[secure_boot])
    assert isinstance(variable, UefiVariableData)
    off = UefiVariableData(variable.variable_name, "SecureBoot", b"\x00").encode()
    moklist = _first(log, lambda e: e.pcr == 14 and e.data == b"MokList\x00")
    return {
        "boot-application": (4, application, rewritten(log, application).marshal()),
        "firmware": (0, firmware, rewritten(log, firmware).marshal()),
        "secure-boot-off": (7, secure_boot, rewritten(log, secure_boot, off).marshal()),
        "moklist": (14, moklist, rewritten(log, moklist).marshal()),
    }


def _run_all(commands: dict[Any, list[object]]) -> dict[Any, subprocess.CompletedProcess[str]]:
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {key: pool.submit(run_stockade, *args) for key, args in commands.items()}
        return {key: future.result() for key, future in futures.items()}


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    for folder in {SHARED / f for f in LOGS.values()}:
        if not folder.is_dir():
            pytest.skip(f"event log fixtures not found at {folder} (they live outside the repo)")
    base = tmp_path_factory.mktemp("appraise-cli")
    policies = {name: base / f"{name}.yaml" for name in NAMES}
    captures = _run_all(
        {
            ("capture", name): ["policy", "capture", "--event-log", _path(name), "--id",
                                f"golden-{name}", "--out", policies[name]]
            for name in NAMES
        }
    )  # fmt: skip
    real = policies[REAL]
    log = parse_event_log(_path(REAL).read_bytes())
    tampered = _tampered(log)
    commands: dict[Any, list[object]] = {}
    for name in NAMES:
        other = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
        appraise = ["appraise", "--policy", policies[name], "--event-log"]
        commands["same", name] = [*appraise, _path(name)]
        commands["other", name] = [*appraise, _path(other)]
    for kind, (_, _, data) in tampered.items():
        (base / kind).write_bytes(data)
        commands["tampered", kind] = ["appraise", "--policy", real, "--event-log", base / kind]
    # --pcrs: the JSON `stockade eventlog replay --format json` prints, as is and with PCR 4 wrong.
    replayed = run_stockade("eventlog", "replay", _path(REAL), "--format", "json")
    assert replayed.returncode == 0, replayed.stderr
    (base / "pcrs.json").write_text(replayed.stdout)
    wrong = json.loads(replayed.stdout)
    wrong["sha256"]["4"] = "00" * 32
    (base / "wrong-pcrs.json").write_text(json.dumps(wrong))
    (base / "bad-pcrs.json").write_text('{"sha256": ["not", "a", "map"]}')
    appraise_real = ["appraise", "--policy", real, "--event-log", _path(REAL)]
    commands["pcrs"] = [*appraise_real, "--pcrs", base / "pcrs.json"]
    commands["wrong-pcrs"] = [*appraise_real, "--pcrs", base / "wrong-pcrs.json"]
    commands["bad-pcrs"] = [*appraise_real, "--pcrs", base / "bad-pcrs.json"]
    commands["text"] = [
        "appraise", "--policy", real, "--event-log", base / "boot-application",
        "--format", "text",
    ]  # fmt: skip
    # A policy with a digest that is not hex, one with a key twice, one that is not YAML.
    document = yaml.safe_load(real.read_text())
    document["pcrs"][4]["events"][1]["sha256"] = "not hex"
    (base / "bad-digest.yaml").write_text(yaml.safe_dump(document))
    (base / "twice.yaml").write_text("kind: captured\nid: a\nid: b\nbanks: [sha256]\npcrs: {}\n")
    (base / "garbage.yaml").write_text("kind: [unclosed\n")
    (base / "garbage.bin").write_bytes(b"\xff" * 64)
    for kind in ("bad-digest", "twice", "garbage"):
        commands["bad-policy", kind] = [
            "appraise", "--policy", base / f"{kind}.yaml", "--event-log", _path(REAL),
        ]  # fmt: skip
    commands["bad-log"] = ["appraise", "--policy", real, "--event-log", base / "garbage.bin"]
    commands["no-log"] = ["appraise", "--policy", real, "--event-log", base / "missing.bin"]
    capture_again = ["policy", "capture", "--event-log", _path(REAL), "--id", "x", "--out"]
    (base / "existing.yaml").write_text("keep me\n")
    (base / "forced.yaml").write_text("replace me\n")
    commands["overwrite"] = [*capture_again, base / "existing.yaml"]
    commands["force"] = [*capture_again, base / "forced.yaml", "--force"]
    results = _run_all(commands)
    return {
        "base": base,
        "policies": policies,
        "captures": captures,
        "tampered": tampered,
        **results,
    }


@pytest.mark.parametrize("name", NAMES)
def test_capture_writes_a_policy_that_affirms_the_same_log(runs, name):
    capture = runs["captures"]["capture", name]
    assert capture.returncode == 0, capture.stderr
    document = yaml.safe_load(runs["policies"][name].read_text())
    assert document["kind"] == "captured" and document["id"] == f"golden-{name}"
    same = runs["same", name]
    assert same.returncode == 0, same.stdout + same.stderr
    assert json.loads(same.stdout) == {
        "status": "affirming",
        "policy": f"golden-{name}",
        "reasons": [],
    }


@pytest.mark.parametrize("name", NAMES)
def test_another_machines_log_is_contraindicated(runs, name):
    other = runs["other", name]
    assert other.returncode == 1, other.stderr
    answer = json.loads(other.stdout)
    assert answer["status"] == "contraindicated" and answer["reasons"]
    assert "Traceback" not in other.stderr


@pytest.mark.parametrize("kind", ["boot-application", "firmware", "secure-boot-off", "moklist"])
def test_a_tampered_log_is_contraindicated_naming_the_pcr_and_the_event(runs, kind):
    pcr, number, _ = runs["tampered"][kind]
    done = runs["tampered", kind]
    assert done.returncode == 1, done.stderr
    answer = json.loads(done.stdout)
    assert answer["status"] == "contraindicated"
    [reason] = answer["reasons"]
    assert reason["pcr"] == pcr
    assert reason["event"]["index"] == number
    assert set(reason["event"]) == {"index", "type", "measured", "expected", "found"}
    assert reason["event"]["expected"] != reason["event"]["found"]


def test_the_pcrs_given_are_what_the_log_must_replay_to(runs):
    assert runs["pcrs"].returncode == 0, runs["pcrs"].stderr
    assert json.loads(runs["pcrs"].stdout)["status"] == "affirming"
    wrong = runs["wrong-pcrs"]
    assert wrong.returncode == 1, wrong.stderr
    [reason] = json.loads(wrong.stdout)["reasons"]
    assert reason["pcr"] == 4 and reason["event"]["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"
    bad = runs["bad-pcrs"]
    assert bad.returncode == 2 and "bad-pcrs.json" in bad.stderr
    assert "Traceback" not in bad.stderr


def test_the_text_format_gives_one_line_per_reason(runs):
    done = runs["text"]
    assert done.returncode == 1
    lines = done.stdout.splitlines()
    assert lines[0] == f"contraindicated: policy golden-{REAL}"
    assert lines[1].startswith("  - PCR 4: event ")


@pytest.mark.parametrize(
    ("kind", "says"),
    [
        ("bad-digest", "policy.pcrs.4.events[1].sha256 is not lowercase hexadecimal"),
        ("twice", "the key 'id' appears twice"),
        ("garbage", "is not a YAML or JSON document"),
    ],
)
def test_a_malformed_policy_exits_2_naming_the_field(runs, kind, says):
    done = runs["bad-policy", kind]
    assert done.returncode == 2, done.stdout
    assert says in done.stderr and f"{kind}.yaml" in done.stderr
    assert "Traceback" not in done.stderr and done.stdout == ""


@pytest.mark.parametrize("kind", ["bad-log", "no-log"])
def test_an_unreadable_log_exits_2(runs, kind):
    done = runs[kind]
    assert done.returncode == 2
    assert done.stderr.startswith("stockade: ") and "Traceback" not in done.stderr


def test_capture_never_replaces_a_file_without_force(runs):
    refused = runs["overwrite"]
    assert refused.returncode == 2 and "--force" in refused.stderr
    assert (runs["base"] / "existing.yaml").read_text() == "keep me\n"
    forced = runs["force"]
    assert forced.returncode == 0, forced.stderr
    assert yaml.safe_load((runs["base"] / "forced.yaml").read_text())["id"] == "x"
