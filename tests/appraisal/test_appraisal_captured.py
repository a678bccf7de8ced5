"""Golden-machine policies (``stockade.appraisal.captured``), in process, on real event logs:
a policy captured from a log affirms that log, and each tampered copy (rewritten with the
log's own writer, ``EventLog.marshal``, with the digests recomputed in every bank it carries)
is contraindicated with a finding naming the PCR and the event.

The logs live outside the repository (../shared/fixtures relative to the project root);
tests that need them skip with the reason when the folder is absent.
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from stockade.appraisal.captured import (
    CapturedPolicyInvalid,
    CapturedStatus,
    appraise_captured,
    capture_policy,
    parse_captured_policy,
    replay_failure,
    self_replayed,
)
from stockade.evidence.efi_signatures import parse_signature_lists
from stockade.evidence.errors import EventLogMismatch
from stockade.evidence.event_data import (
    SeparatorData,
    StartupLocalityData,
    UefiVariableData,
    decode,
)
from stockade.evidence.eventlog import (
    AlgorithmSize,
    Event,
    EventLog,
    EventType,
    SpecIdEvent,
    parse_event_log,
)
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.replay import VerifiedEventLog, verify_log
from support.eventlogs import rewritten
from support.fixtures import EVENT_LOGS, SHARED

LOGS = EVENT_LOGS
NAMES = list(LOGS)


def log_path(name: str) -> Path:
    folder = SHARED / LOGS[name]
    if not folder.is_dir():
        pytest.skip(f"event log fixtures not found at {folder} (they live outside the repo)")
    return folder / f"{name}.bin"


@functools.cache
def log_bytes(name: str) -> bytes:
    return log_path(name).read_bytes()


def verified(data: bytes) -> VerifiedEventLog:
    log = parse_event_log(data)
    return verify_log(log, self_replayed(log))


# -- tampering with a log, through its own writer ------------------------------------------


def _variable(event: Event, name: str) -> UefiVariableData | None:
    if event.pcr != 7 or event.type != EventType.EV_EFI_VARIABLE_DRIVER_CONFIG:
        return None
    decoded = decode(event)
    if isinstance(decoded, UefiVariableData) and decoded.unicode_name == name:
        return decoded
    return None


def _boot_application(log: EventLog) -> tuple[int, bytes] | None:
    for event in log.events:
        if event.pcr == 4 and event.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION:
            return event.number, rewritten(log, event.number).marshal()
    return None


def _firmware(log: EventLog) -> tuple[int, bytes] | None:
    for event in log.events:
        if event.pcr == 0 and event.type not in (EventType.EV_NO_ACTION, EventType.EV_SEPARATOR):
            return event.number, rewritten(log, event.number).marshal()
    return None


def _secure_boot_off(log: EventLog) -> tuple[int, bytes] | None:
    """SecureBoot's data set to 0 (to 1 where the firmware already measured 0)."""
    for event in log.events:
        variable = _variable(event, "SecureBoot")
        if variable is not None:
            value = b"\x01" if variable.variable_data == b"\x00" else b"\x00"
            changed = UefiVariableData(variable.variable_name, "SecureBoot", value)
            return event.number, rewritten(log, event.number, changed.encode()).marshal()
    return None


def _dbx_entry_removed(log: EventLog) -> tuple[int, bytes] | None:
    for event in log.events:
        variable = _variable(event, "dbx")
        if variable is None or not variable.variable_data:
            continue
        lists = list(parse_signature_lists(variable.variable_data))
        last = lists[-1]
        if len(last.entries) > 1:
            lists[-1] = type(last)(
                last.signature_type, last.header, last.signature_size, last.entries[:-1]
            )
        else:
            lists.pop()
        data = b"".join(signature_list.marshal() for signature_list in lists)
        changed = UefiVariableData(variable.variable_name, "dbx", data, variable.trailing)
        return event.number, rewritten(log, event.number, changed.encode()).marshal()
    return None


def _moklist_changed(log: EventLog) -> tuple[int, bytes] | None:
    for event in log.events:
        if event.pcr == 14 and event.type == EventType.EV_IPL and event.data == b"MokList\x00":
            return event.number, rewritten(log, event.number).marshal()
    return None


# name -> (PCR, the event's type, what its description names, the tampering)
MUTATIONS: dict[str, tuple[int, str, str, Callable[[EventLog], tuple[int, bytes] | None]]] = {
    "boot-application": (4, "EV_EFI_BOOT_SERVICES_APPLICATION", "", _boot_application),
    "firmware": (0, "", "", _firmware),
    "secure-boot-off": (7, "EV_EFI_VARIABLE_DRIVER_CONFIG", "SecureBoot", _secure_boot_off),
    "dbx-entry-removed": (7, "EV_EFI_VARIABLE_DRIVER_CONFIG", "dbx", _dbx_entry_removed),
    "moklist-changed": (14, "EV_IPL", "MokList", _moklist_changed),
}
_NO_FIRMWARE = {"event-uefiaction", "event-uefiservices", "event-uefivar"}
# Which logs have what each tampering changes; a log that lost it fails, not skips.
APPLIES: dict[str, set[str]] = {
    "boot-application": set(NAMES) - _NO_FIRMWARE - {"event-sd-boot-fedora37"},
    "firmware": set(NAMES) - _NO_FIRMWARE,
    "secure-boot-off": set(NAMES) - {"event-uefiaction", "event-uefiservices"},
    "dbx-entry-removed": {
        "event-arch-linux",
        "event-moklisttrusted",
        "event-postcode",
        "event-uefi-sha1-log",
        "keylime-shim-grub",
        "keylime-shim-grub-secureboot",
    },
    "moklist-changed": {
        "event-gce-ubuntu-2104-log",
        "event-moklisttrusted",
        "keylime-shim-grub",
        "keylime-shim-grub-secureboot",
    },
}
CASES = [(name, mutation) for mutation in MUTATIONS for name in NAMES if name in APPLIES[mutation]]


# -- tests ---------------------------------------------------------------------------------


@pytest.mark.parametrize("name", NAMES)
def test_a_log_appraised_against_its_own_capture_is_affirming(name):
    log = verified(log_bytes(name))
    policy = capture_policy(log, f"golden-{name}")
    assert policy.pcrs, "every fixture log measures something"
    assert 10 not in policy.pcrs
    result = appraise_captured(policy, log)
    assert result.status is CapturedStatus.AFFIRMING, result.to_json()
    assert result.to_json() == {"status": "affirming", "policy": f"golden-{name}", "reasons": []}


@pytest.mark.parametrize("name", NAMES)
def test_the_document_reads_back_from_yaml_and_json(name):
    policy = capture_policy(verified(log_bytes(name)), "golden")
    document = policy.to_document()
    assert document["kind"] == "captured"
    assert parse_captured_policy(yaml.safe_load(yaml.safe_dump(document))) == policy
    assert parse_captured_policy(json.loads(json.dumps(document))) == policy


def test_the_document_says_what_each_event_measured():
    document = capture_policy(verified(log_bytes("keylime-shim-grub-secureboot")), "g")
    pcrs = document.to_document()["pcrs"]
    assert document.bank == 0x000B and list(pcrs[4]["events"][0]) == [
        "index",
        "type",
        "measured",
        "sha256",
    ]
    measured = {e["measured"] for pcr in pcrs.values() for e in pcr["events"]}
    assert "separator" in measured
    assert "SecureBoot (8be4df61-93ca-11d2-aa0d-00e098032b8c)" in measured
    assert "MokList" in measured
    assert any(m.endswith(r"File(\EFI\redhat\shimx64.efi)") for m in measured)


def test_a_sha1_log_is_captured_in_sha1():
    policy = capture_policy(verified(log_bytes("event-uefi-sha1-log")), "g")
    assert policy.to_document()["banks"] == ["sha1"]
    assert "sha1" in policy.to_document()["pcrs"][0]["events"][0]


@pytest.mark.parametrize("mutation", list(MUTATIONS))
def test_the_tampering_table_matches_the_logs(mutation):
    found = {name for name in NAMES if MUTATIONS[mutation][3](parse_event_log(log_bytes(name)))}
    assert found == APPLIES[mutation]


@pytest.mark.parametrize(("name", "mutation"), CASES)
def test_a_tampered_copy_is_contraindicated_naming_the_pcr_and_the_event(name, mutation):
    pcr, event_type, what, tamper = MUTATIONS[mutation]
    original = parse_event_log(log_bytes(name))
    policy = capture_policy(verified(log_bytes(name)), "golden")
    tampered = tamper(original)
    assert tampered is not None
    number, data = tampered
    result = appraise_captured(policy, verified(data))  # the tampered log's own replay
    assert result.status is CapturedStatus.CONTRAINDICATED
    named = [f for f in result.findings if f.pcr == pcr and f.event and f.event.index == number]
    assert named, result.to_json()
    event = named[0].event
    assert event is not None
    assert event.type == (event_type or original.events[number].type_name)
    assert what in event.measured
    assert event.expected == original.events[number].digest(policy.bank)
    assert event.found is not None and event.found != event.expected
    assert f"PCR {pcr}: event {number} " in named[0].reason
    assert {f.pcr for f in result.findings} == {pcr}, "only the tampered PCR differs"


@pytest.mark.parametrize("name", NAMES)
def test_another_machines_log_is_contraindicated(name):
    other = NAMES[(NAMES.index(name) + 1) % len(NAMES)]
    policy = capture_policy(verified(log_bytes(name)), "golden")
    result = appraise_captured(policy, verified(log_bytes(other)))
    assert result.status is CapturedStatus.CONTRAINDICATED
    assert all(f.reason.startswith(f"PCR {f.pcr}") or f.pcr is None for f in result.findings)


def test_an_extra_and_a_missing_event_are_named():
    log = parse_event_log(log_bytes("keylime-shim-grub-secureboot"))
    policy = capture_policy(verified(log.marshal()), "golden")
    pcr8 = [e for e in log.events if e.pcr == 8]
    dropped = pcr8[10]
    events = tuple(e for e in log.events if e is not dropped)
    result = appraise_captured(policy, verified(EventLog(True, log.spec_id, events).marshal()))
    [finding] = result.findings
    assert finding.pcr == 8 and finding.event is not None
    assert (finding.event.index, finding.event.found) == (dropped.number, None)
    assert "lacks the captured event" in finding.reason
    doubled = (*log.events[: dropped.number + 1], dropped, *log.events[dropped.number + 1 :])
    result = appraise_captured(policy, verified(EventLog(True, log.spec_id, doubled).marshal()))
    [finding] = result.findings
    assert finding.pcr == 8 and finding.event is not None and finding.event.expected is None
    assert "is not in the policy" in finding.reason


def _locality_log(locality: int) -> bytes:
    """sha256: StartupLocality, then a separator in PCR 0."""
    spec = SpecIdEvent(b"Spec ID Event03\x00", 0, 0, 2, 0, 2, (AlgorithmSize(0x000B, 32),), b"")
    separator = SeparatorData(0).encode()
    events = (
        Event(0, 0, EventType.EV_NO_ACTION, ((0x0004, bytes(20)),), spec.marshal()),
        Event(1, 0, EventType.EV_NO_ACTION, ((0x000B, bytes(32)),),
              StartupLocalityData(locality).encode()),
        Event(2, 0, EventType.EV_SEPARATOR, ((0x000B, hashlib.sha256(separator).digest()),),
              separator),
    )  # fmt: skip
    return EventLog(True, spec, events).marshal()


def test_a_pcr_whose_events_match_but_value_differs_is_named_without_an_event():
    policy = capture_policy(verified(_locality_log(3)), "golden")
    result = appraise_captured(policy, verified(_locality_log(0)))
    [finding] = result.findings
    assert (finding.pcr, finding.event) == (0, None)
    assert "StartupLocality" in finding.reason


def test_a_pcr_the_quote_does_not_cover_is_a_finding():
    log = parse_event_log(log_bytes("keylime-shim-grub-secureboot"))
    policy = capture_policy(verified(log.marshal()), "golden")
    measured = {e.pcr for e in log.events if e.type != EventType.EV_NO_ACTION}
    partial = verify_log(log, self_replayed(log), pcrs=measured - {7})
    result = appraise_captured(policy, partial)
    [finding] = result.findings
    assert finding.pcr == 7 and "not verified" in finding.reason


def test_a_policy_in_a_bank_the_log_was_not_verified_in_is_contraindicated():
    policy = capture_policy(verified(log_bytes("event-arch-linux")), "golden")
    result = appraise_captured(policy, verified(log_bytes("event-uefi-sha1-log")))
    [finding] = result.findings
    assert finding.pcr is None and "sha256" in finding.reason


def test_a_log_that_does_not_replay_to_the_pcrs_names_the_pcr():
    log = parse_event_log(log_bytes("keylime-shim-grub-secureboot"))
    policy = capture_policy(verified(log.marshal()), "golden")
    document = self_replayed(log).to_json()
    document["sha256"]["4"] = "00" * 32
    with pytest.raises(EventLogMismatch) as raised:
        verify_log(log, PcrValues.from_json(document))
    result = replay_failure(policy, raised.value)
    assert result.status is CapturedStatus.CONTRAINDICATED
    [finding] = result.findings
    assert finding.pcr == 4 and finding.event is not None
    assert finding.event.type == "EV_EFI_BOOT_SERVICES_APPLICATION"


def _document() -> dict:
    return capture_policy(verified(log_bytes("keylime-shim-grub-secureboot")), "g").to_document()


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: d.pop("kind"), "policy lacks kind"),
        (lambda d: d.update(kind="reference"), "policy.kind"),
        (lambda d: d.update(extra=1), "policy has unknown field(s) extra"),
        (lambda d: d.update(banks=["md5"]), "policy.banks[0]"),
        (lambda d: d.update(banks=["sha256", "sha1"]), "policy.banks"),
        (lambda d: d["pcrs"].update({10: d["pcrs"][4]}), "policy.pcrs.10"),
        (lambda d: d["pcrs"].update({"4": d["pcrs"][4]}), "policy.pcrs names PCR 4 twice"),
        (lambda d: d["pcrs"][4].update(value="00"), "policy.pcrs.4.value"),
        (lambda d: d["pcrs"][4].update(value="11" * 32), "policy.pcrs.4.value is not what"),
        (lambda d: d["pcrs"][0].update(value="11" * 32), "policy.pcrs.0.value is not what"),
        (lambda d: d["pcrs"][4]["events"].pop(), "policy.pcrs.4.value is not what"),
        (lambda d: d["pcrs"][4]["events"][1].update(sha256="zz"), "policy.pcrs.4.events[1].sha256"),
        (lambda d: d["pcrs"][4]["events"][0].pop("index"), "policy.pcrs.4.events[0] lacks index"),
        (lambda d: d["pcrs"][7]["events"][0].update(type="x"), "policy.pcrs.7.events[0].type"),
        (lambda d: d["pcrs"][7].update(events={}), "policy.pcrs.7.events"),
    ],
)
def test_a_malformed_document_is_refused_naming_the_field(change, path):
    document = _document()
    change(document)
    with pytest.raises(CapturedPolicyInvalid) as raised:
        parse_captured_policy(document)
    assert path in str(raised.value)
    assert raised.value.exit_code == 2


def test_a_log_without_a_complete_bank_cannot_be_replayed_on_its_own():
    log = parse_event_log(log_bytes("event-uefiaction"))
    stripped = tuple(
        e if e.type == EventType.EV_NO_ACTION else e._replace(digests=()) for e in log.events
    )
    with pytest.raises(CapturedPolicyInvalid):
        self_replayed(EventLog(True, log.spec_id, stripped))
