"""Captured policies for fleets (``stockade.appraisal.captured_fleet``, and the variants,
per-machine events, dbx and SbatLevel rules of ``stockade.appraisal.captured``), in
process, on real event logs and copies of them rewritten with the log's own writer
(``EventLog.marshal``) with the digests recomputed, so each copy replays consistently:

- two machines whose boot options or handoff tables differ (PCR 1) merge into one variant
  whose differing events are per machine: each affirms under its own name, an unknown
  machine (or none) is contraindicated naming the event and the machines listed; under
  ``exclude`` the event is not compared;
- two firmware versions (PCR 0 differs) merge into two variants, both affirming; a third
  firmware is contraindicated naming the closest variant's event;
- a dbx with one more revocation, or a newer SbatLevel, is affirming; one revocation
  removed, an older SbatLevel, or data its digest does not measure is contraindicated
  naming what is missing;
- a firmware rollout: machines A and B merged, then A updated (a firmware volume in PCR 0,
  its SMBIOS handoff tables in PCR 1) captured again as A and merged with the fleet's
  policy: A's old and new logs and B's affirm under their own names; B presenting A's
  new tables, a third firmware, and a log mixing two of A's captures are contraindicated;
  merging only the new captures drops the old firmware;
- every fixture log, captured and merged with itself, affirms itself.

The logs live outside the repository (../shared/fixtures relative to the project root);
tests that need them skip with the reason when the folder is absent.
"""

from __future__ import annotations

import functools
import json
import uuid
from pathlib import Path

import pytest
import yaml

from stockade.appraisal.captured import (
    CapturedPolicy,
    CapturedPolicyInvalid,
    CapturedStatus,
    appraise_captured,
    capture_policy,
    parse_captured_policy,
    self_replayed,
)
from stockade.appraisal.captured_fleet import PerMachine, merge_captured
from stockade.appraisal.captured_revocations import dbx_revocations, parse_sbat_level
from stockade.evidence.algorithms import HASHES, Alg
from stockade.evidence.efi_signatures import SignatureEntry, parse_signature_lists
from stockade.evidence.event_data import UefiVariableData, decode
from stockade.evidence.eventlog import Event, EventLog, EventType, parse_event_log
from stockade.evidence.replay import VerifiedEventLog, verify_log
from support.eventlogs import rewritten
from support.fixtures import EVENT_LOGS, SHARED

NAMES = list(EVENT_LOGS)
SECUREBOOT = "keylime-shim-grub-secureboot"  # dbx (event 8), SbatLevel (event 32)
HANDOFF = "keylime-shim-grub"  # handoff tables (event 49) and boot options in PCR 1


def log_path(name: str) -> Path:
    folder = SHARED / EVENT_LOGS[name]
    if not folder.is_dir():
        pytest.skip(f"event log fixtures not found at {folder} (they live outside the repo)")
    return folder / f"{name}.bin"


@functools.cache
def log_bytes(name: str) -> bytes:
    return log_path(name).read_bytes()


def parsed(name: str) -> EventLog:
    return parse_event_log(log_bytes(name))


def verified(data: bytes) -> VerifiedEventLog:
    log = parse_event_log(data)
    return verify_log(log, self_replayed(log))


def first(log: EventLog, pcr: int, event_type: EventType, name: str | None = None) -> Event:
    for event in log.events:
        if event.pcr == pcr and event.type == event_type:
            variable = decode(event)
            if name is None or (
                isinstance(variable, UefiVariableData) and variable.unicode_name == name
            ):
                return event
    raise AssertionError(f"no {event_type.name} {name or ''} in PCR {pcr}")


def captured(log: EventLog | bytes, machine: str) -> CapturedPolicy:
    data = log if isinstance(log, bytes) else log.marshal()
    return capture_policy(verified(data), f"golden-{machine}", machine=machine)


def appraise(policy: CapturedPolicy, log: EventLog, node: str | None = None):
    return appraise_captured(policy, verified(log.marshal()), node=node)


def round_tripped(policy: CapturedPolicy) -> CapturedPolicy:
    """The policy as its YAML document reads back (what an operator reviews)."""
    document = yaml.safe_load(yaml.safe_dump(policy.to_document()))
    again = parse_captured_policy(document)
    assert again == policy
    assert parse_captured_policy(json.loads(json.dumps(policy.to_document()))) == policy
    return again


# -- per-machine events ------------------------------------------------------------------


@pytest.fixture(scope="module")
def boot_option_fleet():
    """Two machines whose Boot0000 differs (it names another disk): machine a, machine b."""
    log = parsed(HANDOFF)
    boot = first(log, 1, EventType.EV_EFI_VARIABLE_BOOT, "Boot0000")
    variable = decode(boot)
    assert isinstance(variable, UefiVariableData)
    other = UefiVariableData(
        variable.variable_name,
        variable.unicode_name,
        variable.variable_data[:-1] + bytes([variable.variable_data[-1] ^ 1]),
        variable.trailing,
    )
    machine_b = rewritten(log, boot.number, other.encode())
    return log, machine_b, boot.number


def test_a_boot_option_that_differs_becomes_per_node_and_each_machine_affirms(boot_option_fleet):
    machine_a, machine_b, number = boot_option_fleet
    result = merge_captured(
        [("a.yaml", captured(machine_a, "a")), ("b.yaml", captured(machine_b, "b"))], "fleet"
    )
    policy = round_tripped(result.policy)
    assert policy.machines == ("a", "b")
    [variant] = policy.pcrs[1].variants
    [per_node] = [e for e in variant.events if e.per_node]
    assert per_node.index == number and per_node.type == "EV_EFI_VARIABLE_BOOT"
    assert "boot option" in per_node.reason
    assert dict(per_node.per_node) == {
        "a": machine_a.events[number].digest(policy.bank),
        "b": machine_b.events[number].digest(policy.bank),
    }
    assert variant.value is None and {m for m, _ in variant.values} == {"a", "b"}
    assert all(len(pcr.variants) == 1 for pcr in policy.pcrs.values())
    [line] = [line for line in result.summary if line.startswith("PCR 1:")]
    assert f"event {number} EV_EFI_VARIABLE_BOOT" in line and "per machine" in line
    assert "boot option" in line
    assert appraise(policy, machine_a, "a").status is CapturedStatus.AFFIRMING
    assert appraise(policy, machine_b, "b").status is CapturedStatus.AFFIRMING
    # Each machine's own digest: a's log is not b's.
    wrong = appraise(policy, machine_a, "b")
    [finding] = wrong.findings
    assert finding.pcr == 1 and finding.event is not None and finding.event.index == number
    assert "machine 'b'" in finding.reason


@pytest.mark.parametrize("node", ["c", None])
def test_an_unknown_machine_is_contraindicated_naming_the_event_and_the_machines(
    boot_option_fleet, node
):
    machine_a, machine_b, number = boot_option_fleet
    policy = merge_captured(
        [("a", captured(machine_a, "a")), ("b", captured(machine_b, "b"))], "fleet"
    ).policy
    result = appraise(policy, machine_a, node)
    assert result.status is CapturedStatus.CONTRAINDICATED
    [finding] = result.findings
    assert finding.pcr == 1 and finding.event is not None
    assert finding.event.index == number and finding.event.type == "EV_EFI_VARIABLE_BOOT"
    assert f"PCR 1: event {number} " in finding.reason
    assert "for a, b" in finding.reason
    said = "machine 'c' is not one of them" if node else "no machine was named"
    assert said in finding.reason


def test_handoff_tables_that_differ_become_per_node():
    log = parsed(HANDOFF)
    table = first(log, 1, EventType.EV_EFI_HANDOFF_TABLES)
    other = rewritten(log, table.number)  # another SMBIOS table: another digest
    result = merge_captured([("a", captured(log, "a")), ("b", captured(other, "b"))], "fleet")
    policy = round_tripped(result.policy)
    [event] = [e for e in policy.pcrs[1].variants[0].events if e.per_node]
    assert event.index == table.number and "SMBIOS" in event.reason
    assert appraise(policy, log, "a").status is CapturedStatus.AFFIRMING
    assert appraise(policy, other, "b").status is CapturedStatus.AFFIRMING
    assert appraise(policy, other, "a").status is CapturedStatus.CONTRAINDICATED


def test_under_exclude_the_event_is_not_compared_but_its_type_and_place_are(boot_option_fleet):
    machine_a, machine_b, number = boot_option_fleet
    result = merge_captured(
        [("a", captured(machine_a, "a")), ("b", captured(machine_b, "b"))],
        "fleet",
        per_machine=PerMachine.EXCLUDE,
    )
    policy = round_tripped(result.policy)
    [variant] = policy.pcrs[1].variants
    [excluded] = [e for e in variant.events if e.excluded is not None]
    assert excluded.index == number and "not compared" in excluded.excluded
    assert variant.value is None and variant.values == ()
    assert "value" not in policy.to_document()["pcrs"][1]
    third = rewritten(machine_a, number)  # a third machine's boot option
    for log in (machine_a, machine_b, third):
        assert appraise(policy, log).status is CapturedStatus.AFFIRMING
        assert appraise(policy, log, "anyone").status is CapturedStatus.AFFIRMING
    # Another event of PCR 1 still counts.
    other = next(e for e in machine_a.events if e.pcr == 1 and e.number != number)
    changed = appraise(policy, rewritten(machine_a, other.number))
    assert [f.event.index for f in changed.findings if f.event] == [other.number]


def test_a_merged_policy_merges_again_with_a_third_machine(boot_option_fleet):
    machine_a, machine_b, number = boot_option_fleet
    two = merge_captured([("a", captured(machine_a, "a")), ("b", captured(machine_b, "b"))], "f")
    machine_c = rewritten(machine_a, number)
    three = merge_captured([("f", two.policy), ("c", captured(machine_c, "c"))], "f3").policy
    three = round_tripped(three)
    assert three.machines == ("a", "b", "c")
    for name, log in (("a", machine_a), ("b", machine_b), ("c", machine_c)):
        assert appraise(three, log, name).status is CapturedStatus.AFFIRMING


# -- variants ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def firmware_fleet():
    """Two firmware versions: the real log, and a copy whose S-CRTM version differs."""
    log = parsed(SECUREBOOT)
    version = first(log, 0, EventType.EV_S_CRTM_VERSION)
    newer = rewritten(log, version.number, "edk2-20250101-1.el9\x00".encode("utf-16-le"))
    return log, newer, version.number


def test_two_firmware_versions_become_two_variants_both_affirming(firmware_fleet):
    old, new, _ = firmware_fleet
    result = merge_captured([("old", captured(old, "old")), ("new", captured(new, "new"))], "f")
    policy = round_tripped(result.policy)
    assert len(policy.pcrs[0].variants) == 2
    assert [v.machines for v in policy.pcrs[0].variants] == [("old",), ("new",)]
    assert all(len(pcr.variants) == 1 for i, pcr in policy.pcrs.items() if i != 0)
    assert not any(e.per_node for v in policy.pcrs[0].variants for e in v.events)
    assert any(line.startswith("PCR 0: 2 variants (code PCR") for line in result.summary)
    for log in (old, new):
        for node in ("old", "new", None):
            assert appraise(policy, log, node).status is CapturedStatus.AFFIRMING


def test_a_third_firmware_is_contraindicated_naming_the_closest_variants_event(firmware_fleet):
    old, new, _ = firmware_fleet
    policy = merge_captured(
        [("old", captured(old, "old")), ("new", captured(new, "new"))], "f"
    ).policy
    blob = first(old, 0, EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB)
    third = rewritten(new, blob.number)  # the new version, with another firmware volume
    result = appraise(policy, third)
    assert result.status is CapturedStatus.CONTRAINDICATED
    [finding] = result.findings
    assert finding.pcr == 0 and finding.event is not None
    assert finding.event.index == blob.number
    assert finding.event.expected == old.events[blob.number].digest(policy.bank)
    assert "none of the 2 accepted variants matches" in finding.reason
    assert "captured on new" in finding.reason  # the closest: one event differs, not two


def test_a_machine_without_a_pcr_gets_an_empty_variant():
    log = parsed(SECUREBOOT)
    without = EventLog(log.crypto_agile, log.spec_id, tuple(e for e in log.events if e.pcr != 14))
    policy = merge_captured(
        [("with", captured(log, "with")), ("without", captured(without, "without"))], "f"
    ).policy
    policy = round_tripped(policy)
    assert [len(v.events) for v in policy.pcrs[14].variants] == [3, 0]
    assert appraise(policy, without).status is CapturedStatus.AFFIRMING
    assert appraise(policy, log).status is CapturedStatus.AFFIRMING


def test_policies_of_different_banks_are_not_merged():
    sha1 = captured(log_bytes("event-uefi-sha1-log"), "sha1")
    sha256 = captured(log_bytes("event-arch-linux"), "sha256")
    with pytest.raises(CapturedPolicyInvalid) as raised:
        merge_captured([("a.yaml", sha256), ("b.yaml", sha1)], "f")
    assert "different banks" in str(raised.value) and "b.yaml" in str(raised.value)
    assert raised.value.exit_code == 2


def test_one_machine_with_two_different_captures_keeps_both(firmware_fleet):
    old, new, _ = firmware_fleet
    result = merge_captured([("x.yaml", captured(old, "m")), ("y.yaml", captured(new, "m"))], "f")
    policy = round_tripped(result.policy)
    assert policy.machines == ("m",)
    assert [v.machines for v in policy.pcrs[0].variants] == [("m",), ("m",)]
    assert result.summary[-1] == (
        "machine m has 2 captures differing in PCR 0: both accepted (drop the old one by "
        "merging new captures only)"
    )
    for log in (old, new):
        assert appraise(policy, log, "m").status is CapturedStatus.AFFIRMING
    # Merged again with either capture: nothing changes.
    again = merge_captured([("f", policy), ("y.yaml", captured(new, "m"))], "f").policy
    assert again == policy


@pytest.mark.parametrize("name", NAMES)
def test_every_log_captured_and_merged_with_itself_affirms_itself(name):
    log = verified(log_bytes(name))
    policy = capture_policy(log, f"golden-{name}")
    result = merge_captured([("a", policy), ("b", policy)], f"fleet-{name}")
    merged = round_tripped(result.policy)
    assert merged.machines == (f"golden-{name}",)
    assert all(len(pcr.variants) == 1 for pcr in merged.pcrs.values())
    assert appraise_captured(merged, log).status is CapturedStatus.AFFIRMING
    assert appraise_captured(merged, log, node="anyone").status is CapturedStatus.AFFIRMING
    assert result.summary == (f"every PCR is the same on golden-{name}",)


# -- rolling out a firmware update ---------------------------------------------------------


@pytest.fixture(scope="module")
def rollout(boot_option_fleet):
    """A fleet of A (the real log) and B (another Boot0000), merged; then A updated: a new
    firmware volume (PCR 0) and new SMBIOS handoff tables (PCR 1, the BIOS version)."""
    machine_a, machine_b, boot = boot_option_fleet
    blob = first(machine_a, 0, EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB).number
    table = first(machine_a, 1, EventType.EV_EFI_HANDOFF_TABLES).number
    updated = rewritten(rewritten(machine_a, blob), table)
    fleet = merge_captured(
        [("a.yaml", captured(machine_a, "A")), ("b.yaml", captured(machine_b, "B"))], "rack7"
    )
    result = merge_captured(
        [("rack7.yaml", fleet.policy), ("a-new.yaml", captured(updated, "A"))], "rack7"
    )
    return {
        "A-old": machine_a,
        "B": machine_b,
        "A-new": updated,
        "blob": blob,
        "table": table,
        "boot": boot,
        "result": result,
    }


def test_a_canary_updated_and_merged_keeps_the_old_and_the_new_firmware(rollout):
    result = rollout["result"]
    policy = round_tripped(result.policy)
    assert policy.machines == ("A", "B")
    assert [v.machines for v in policy.pcrs[0].variants] == [("A", "B"), ("A",)]
    [pcr1] = policy.pcrs[1].variants
    table = next(e for e in pcr1.events if e.index == rollout["table"])
    bank = policy.bank
    assert table.digests_for("A") == tuple(
        sorted(rollout[log].events[rollout["table"]].digest(bank) for log in ("A-old", "A-new"))
    )
    assert table.digests_for("B") == (rollout["B"].events[rollout["table"]].digest(bank),)
    assert len(pcr1.values_for("A")) == 2 and len(pcr1.values_for("B")) == 1
    assert result.summary[-1] == (
        "machine A has 2 captures differing in PCR 0, 1: both accepted (drop the old one by "
        "merging new captures only)"
    )
    for log, node in (("A-old", "A"), ("A-new", "A"), ("B", "B")):
        appraised = appraise(policy, rollout[log], node)
        assert appraised.status is CapturedStatus.AFFIRMING, (log, appraised.to_json())
    # Lists only where a machine has several: B's digest and value stay one hex string.
    document = policy.to_document()["pcrs"][1]
    written = next(e for e in document["events"] if e["index"] == rollout["table"])
    assert isinstance(written["per_node"]["A"], list) and len(written["per_node"]["A"]) == 2
    assert isinstance(written["per_node"]["B"], str)
    assert isinstance(document["values"]["A"], list) and isinstance(document["values"]["B"], str)
    boot = next(e for e in document["events"] if e["index"] == rollout["boot"])
    assert all(isinstance(digest, str) for digest in boot["per_node"].values())


def test_a_node_is_never_accepted_with_another_machines_per_node_digest(rollout):
    policy = rollout["result"].policy
    table, boot = rollout["table"], rollout["boot"]
    # B presents A-updated's handoff tables (one of A's two digests, never B's).
    log = rollout["B"]
    events = (*log.events[:table], rollout["A-new"].events[table], *log.events[table + 1 :])
    stolen = EventLog(log.crypto_agile, log.spec_id, events)
    result = appraise(policy, stolen, "B")
    assert result.status is CapturedStatus.CONTRAINDICATED
    [finding] = result.findings
    assert finding.pcr == 1 and finding.event is not None and finding.event.index == table
    assert finding.event.type == "EV_EFI_HANDOFF_TABLES"
    assert finding.event.expected == log.events[table].digest(policy.bank)
    assert "per machine (handoff tables" in finding.reason
    assert "machine 'B''s differs" in finding.reason
    # Each machine's logs under the other's name: the per_node events are named.
    for name, node, named in (("A-new", "B", [boot, table]), ("A-old", "B", [boot]),
                              ("B", "A", [boot])):  # fmt: skip
        result = appraise(policy, rollout[name], node)
        assert result.status is CapturedStatus.CONTRAINDICATED, (name, node)
        assert [f.event.index for f in result.findings if f.event] == named, (name, node)
    # A presenting B's Boot0000 with its new tables: A's tables match, B's Boot0000 does not.
    log = rollout["A-new"]
    events = (*log.events[:boot], rollout["B"].events[boot], *log.events[boot + 1 :])
    [finding] = appraise(policy, EventLog(log.crypto_agile, log.spec_id, events), "A").findings
    assert finding.event is not None and finding.event.index == boot
    assert "machine 'A''s differs" in finding.reason


def test_a_third_firmware_is_contraindicated_after_the_rollout(rollout):
    policy = rollout["result"].policy
    third = rewritten(rollout["A-new"], rollout["blob"])
    result = appraise(policy, third, "A")
    assert result.status is CapturedStatus.CONTRAINDICATED
    [finding] = result.findings
    assert finding.pcr == 0 and finding.event is not None
    assert finding.event.index == rollout["blob"]
    assert "none of the 2 accepted variants matches" in finding.reason


def test_merging_only_the_new_captures_drops_the_old_firmware(rollout):
    blob, table = rollout["blob"], rollout["table"]
    b_new = rewritten(rewritten(rollout["B"], blob), table)
    result = merge_captured(
        [("a-new.yaml", captured(rollout["A-new"], "A")), ("b-new.yaml", captured(b_new, "B"))],
        "rack7",
    )
    policy = round_tripped(result.policy)
    assert not any(line.startswith("machine ") for line in result.summary)
    assert all(len(pcr.variants) == 1 for pcr in policy.pcrs.values())
    assert appraise(policy, rollout["A-new"], "A").status is CapturedStatus.AFFIRMING
    assert appraise(policy, b_new, "B").status is CapturedStatus.AFFIRMING
    old = appraise(policy, rollout["A-old"], "A")
    assert old.status is CapturedStatus.CONTRAINDICATED
    assert {(f.pcr, f.event.index) for f in old.findings if f.event} == {(0, blob), (1, table)}


def test_a_mix_of_two_captures_of_one_machine_is_contraindicated(rollout):
    """A's two captures differ in two per_node events (handoff tables and Boot0000): each
    digest is one of A's, but a log with the new tables and the old Boot0000 is no capture."""
    machine_a, boot = rollout["A-old"], rollout["boot"]
    both = rewritten(rollout["A-new"], boot)  # the new tables and another Boot0000
    result = merge_captured(
        [("rack7.yaml", rollout["result"].policy), ("a-2.yaml", captured(both, "A"))], "rack7"
    )
    assert result.summary[-1] == (
        "machine A has 3 captures differing in PCR 0, 1: all accepted (drop the old ones by "
        "merging new captures only)"
    )
    policy = round_tripped(result.policy)
    [pcr1] = policy.pcrs[1].variants
    assert len(next(e for e in pcr1.events if e.index == boot).digests_for("A")) == 2
    assert len(pcr1.values_for("A")) == 3
    for log in (machine_a, rollout["A-new"], both):
        assert appraise(policy, log, "A").status is CapturedStatus.AFFIRMING
    mixed = rewritten(machine_a, boot)  # the old tables with the newest Boot0000
    assert mixed.events[boot].digests == both.events[boot].digests
    result = appraise(policy, mixed, "A")
    assert result.status is CapturedStatus.CONTRAINDICATED
    [finding] = result.findings
    assert finding.pcr == 1 and finding.event is None
    assert "the policy captured 3 values for machine 'A'" in finding.reason
    assert "the log mixes the machine's captures" in finding.reason
    # A third Boot0000: none of A's two digests.
    [finding] = appraise(policy, rewritten(both, boot), "A").findings
    assert finding.event is not None and finding.event.index == boot
    assert "none of machine 'A''s 2 digests matches" in finding.reason


def test_a_machine_whose_captures_allow_too_many_sequences_is_refused(rollout):
    """Each of a machine's sequences is replayed when the document is read: at most
    SEQUENCES_LIMIT (4096) per variant; 13 events with two digests each are 8192."""
    machine_a = rollout["A-old"]
    numbers = [
        e.number for e in machine_a.events if e.pcr == 1 and e.type != EventType.EV_NO_ACTION
    ]
    assert len(numbers) >= 13
    other = machine_a
    for number in numbers[:13]:
        other = rewritten(other, number)
    with pytest.raises(CapturedPolicyInvalid) as raised:
        merge_captured([("a", captured(machine_a, "A")), ("a2", captured(other, "A"))], "f")
    assert "machine A's digests in 13 per_node events allow 8192 sequences, more than 4096" in str(
        raised.value
    )
    document = yaml.safe_load(yaml.safe_dump(rollout["result"].policy.to_document()))
    events = document["pcrs"][1]["events"]
    for event, number in zip(events, numbers[:13], strict=False):
        digest = event.pop("sha256", None) or event["per_node"]["A"]
        real = digest if isinstance(digest, str) else digest[0]
        if "per_node" not in event:
            event["per_node"] = {"B": real}
            event["reason"] = "test"
        event["per_node"]["A"] = [real, HASHES[Alg.SHA256].digest(bytes([number])).hex()]
    with pytest.raises(CapturedPolicyInvalid) as raised:
        parse_captured_policy(document)
    assert str(raised.value).startswith(
        "policy.pcrs.1.values.A: machine A's digests in 14 per_node events allow 16384"
    )  # 13, and the handoff tables


def test_a_merged_policy_merged_with_itself_is_unchanged_after_the_rollout(rollout):
    policy = rollout["result"].policy
    again = merge_captured([("x", policy), ("y", policy)], "rack7")
    assert again.policy == policy
    assert again.summary == rollout["result"].summary


# -- dbx and SbatLevel: at least as strict ---------------------------------------------------


def _dbx(log: EventLog) -> tuple[Event, UefiVariableData]:
    event = first(log, 7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, "dbx")
    variable = decode(event)
    assert isinstance(variable, UefiVariableData)
    return event, variable


def _with_dbx(log: EventLog, change, *, digests: bool = True) -> EventLog:
    event, variable = _dbx(log)
    lists = list(parse_signature_lists(variable.variable_data))
    lists = change(lists)
    data = b"".join(signature_list.marshal() for signature_list in lists)
    changed = UefiVariableData(variable.variable_name, "dbx", data, variable.trailing)
    return rewritten(log, event.number, changed.encode(), digests=digests)


def _one_more(lists):
    last = lists[-1]
    extra = SignatureEntry(uuid.UUID(int=7), bytes(range(32)))
    return [*lists[:-1], type(last)(last.signature_type, last.header, last.signature_size,
                                    (*last.entries, extra))]  # fmt: skip


def _one_fewer(lists):
    head = lists[0]
    return [type(head)(head.signature_type, head.header, head.signature_size, head.entries[1:]),
            *lists[1:]]  # fmt: skip


def test_the_capture_records_what_the_dbx_revokes_and_the_sbat_level():
    policy = captured(parsed(SECUREBOOT), "m")
    events = {e.index: e for e in policy.pcrs[7].variants[0].events}
    _, variable = _dbx(parsed(SECUREBOOT))
    assert events[8].revocations == dbx_revocations(variable.variable_data)
    assert len(events[8].revocations.sha256) == 371 and events[8].revocations.x509 == ()
    assert events[32].sbat_level == parse_sbat_level(
        b"sbat,1,2023012900\nshim,2\ngrub,3\ngrub.debian,4\n"
    )
    document = policy.to_document()["pcrs"][7]["events"]
    dbx = next(e for e in document if e["index"] == 8)
    assert len(dbx["revocations"]["sha256"]) == 371
    sbat = next(e for e in document if e["index"] == 32)
    assert sbat["sbat_level"] == {
        "date": "2023012900",
        "components": {"grub": 3, "grub.debian": 4, "sbat": 1, "shim": 2},
    }
    grub = captured(parsed(HANDOFF), "m").pcrs[7].variants[0].events
    x509 = next(e for e in grub if e.revocations is not None)
    assert len(x509.revocations.x509) == 2  # certificates, by their sha256


def test_a_dbx_with_one_more_revocation_is_affirming():
    log = parsed(SECUREBOOT)
    policy = captured(log, "m")
    stricter = _with_dbx(log, _one_more)
    assert stricter.events[8].digests != log.events[8].digests
    result = appraise(policy, stricter)
    assert result.status is CapturedStatus.AFFIRMING, result.to_json()


def test_a_dbx_missing_a_required_revocation_is_contraindicated_naming_it():
    log = parsed(SECUREBOOT)
    policy = captured(log, "m")
    _, variable = _dbx(log)
    removed = parse_signature_lists(variable.variable_data)[0].entries[0].data.hex()
    result = appraise(policy, _with_dbx(log, _one_fewer))
    [finding] = result.findings
    assert finding.pcr == 7 and finding.event is not None and finding.event.index == 8
    assert "lacks required revocations: 1 (sha256 " + removed in finding.reason
    # With one more as well (same count): still the missing one.
    both = appraise(policy, _with_dbx(log, lambda lists: _one_more(_one_fewer(lists))))
    assert removed in both.findings[0].reason


@pytest.mark.parametrize("kind", ["digest-kept", "digest-of-an-older-dbx"])
def test_dbx_data_its_digest_does_not_measure_is_contraindicated(kind):
    log = parsed(SECUREBOOT)
    policy = captured(log, "m")
    if kind == "digest-kept":  # the golden digest, and data claiming more revocations
        tampered = _with_dbx(log, _one_more, digests=False)
    else:  # the firmware measured a dbx lacking one; the log shows one with one more
        older = _with_dbx(log, _one_fewer)
        _, stricter = _dbx(_with_dbx(log, _one_more))
        tampered = rewritten(older, 8, stricter.encode(), digests=False)
    result = appraise(policy, tampered)
    [finding] = result.findings
    assert finding.pcr == 7 and finding.event is not None and finding.event.index == 8
    assert "is not the hash of the data the log shows" in finding.reason


def _with_sbat(log: EventLog, text: bytes, *, digests: bool = True) -> EventLog:
    event = first(log, 7, EventType.EV_EFI_VARIABLE_AUTHORITY, "SbatLevel")
    variable = decode(event)
    assert isinstance(variable, UefiVariableData)
    changed = UefiVariableData(variable.variable_name, "SbatLevel", text, variable.trailing)
    return rewritten(log, event.number, changed.encode(), digests=digests)


@pytest.mark.parametrize(
    "text",
    [
        b"sbat,1,2024010900\nshim,4\ngrub,4\ngrub.debian,4\n",
        b"sbat,1,2023012900\nshim,2\ngrub,3\ngrub.debian,4\ngrub.rh,2\n",
    ],
)
def test_a_newer_sbat_level_is_affirming(text):
    log = parsed(SECUREBOOT)
    result = appraise(captured(log, "m"), _with_sbat(log, text))
    assert result.status is CapturedStatus.AFFIRMING, result.to_json()


@pytest.mark.parametrize(
    ("text", "named"),
    [
        (
            b"sbat,1,2023012900\nshim,2\ngrub,2\ngrub.debian,4\n",
            "component grub is at generation 2",
        ),
        (b"sbat,1,2023012900\nshim,2\ngrub,3\n", "component grub.debian is absent"),
        (b"sbat,1,2022111500\nshim,2\ngrub,3\ngrub.debian,4\n", "sbat date 2022111500"),
        (b"not sbat at all", "not sbat CSV"),
    ],
)
def test_an_older_sbat_level_is_contraindicated_naming_the_component(text, named):
    log = parsed(SECUREBOOT)
    result = appraise(captured(log, "m"), _with_sbat(log, text))
    [finding] = result.findings
    assert finding.pcr == 7 and finding.event is not None and finding.event.index == 32
    assert named in finding.reason


def test_sbat_level_data_its_digest_does_not_measure_is_contraindicated():
    log = parsed(SECUREBOOT)
    tampered = _with_sbat(log, b"sbat,1,2024010900\nshim,4\ngrub,4\ngrub.debian,4\n", digests=False)
    [finding] = appraise(captured(log, "m"), tampered).findings
    assert finding.event is not None and finding.event.index == 32
    assert "is not the hash" in finding.reason


def test_another_pcr7_event_must_still_match():
    log = parsed(SECUREBOOT)
    policy = captured(_with_dbx(log, _one_more), "m")  # golden: a stricter dbx
    kek = first(log, 7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, "KEK")
    result = appraise(policy, rewritten(_with_dbx(log, _one_more), kek.number))
    assert [f.event.index for f in result.findings if f.event] == [kek.number]


# -- the document ----------------------------------------------------------------------------


def _fleet_document(boot_option_fleet) -> dict:
    machine_a, machine_b, _ = boot_option_fleet
    policy = merge_captured(
        [("a", captured(machine_a, "a")), ("b", captured(machine_b, "b"))], "fleet"
    ).policy
    return yaml.safe_load(yaml.safe_dump(policy.to_document()))


def _per_node_event(document: dict) -> dict:
    return next(e for e in document["pcrs"][1]["events"] if "per_node" in e)


@pytest.mark.parametrize(
    ("change", "path"),
    [
        (lambda d: _per_node_event(d)["per_node"].pop("b"), "per_node names machines a, the"),
        (lambda d: _per_node_event(d).pop("reason"), "lacks reason"),
        (lambda d: _per_node_event(d).update(sha256="00" * 32), "unknown field(s) sha256"),
        (lambda d: _per_node_event(d).update(excluded="x"), "is both per_node and excluded"),
        (lambda d: _per_node_event(d)["per_node"].update(a="zz"), "per_node.a is not"),
        (lambda d: d["pcrs"][1]["values"].update(a="11" * 32), "values.a is not what"),
        (lambda d: d["pcrs"][1].pop("values"), "has values (per machine), not value"),
        (
            lambda d: d["pcrs"].update({4: {"variants": [dict(d["pcrs"][4], machines=["z"])]}}),
            "policy.pcrs.4 names machines not in policy.machines (a, b): z",
        ),
        (lambda d: d.update(machines=["a", "a"]), "policy.machines names a machine twice"),
        (lambda d: d["pcrs"].update({4: {"variants": []}}), "policy.pcrs.4.variants lists no"),
        (
            lambda d: d["pcrs"].update(
                {
                    4: {
                        "variants": [
                            dict(d["pcrs"][4], machines=["a"]),
                            dict(d["pcrs"][4], machines=["a"]),
                        ]
                    }
                }
            ),
            "policy.pcrs.4.variants[1].machines: a is also in variants[0], with the same events",
        ),
        (
            lambda d: _per_node_event(d)["per_node"].update(a=[]),
            "policy.pcrs.1.events[4].per_node.a lists no digest",
        ),
        (
            lambda d: _per_node_event(d)["per_node"].update(a=[d["pcrs"][1]["values"]["a"]] * 2),
            "policy.pcrs.1.events[4].per_node.a lists a digest twice",
        ),
        (
            lambda d: _per_node_event(d)["per_node"].update(a=["00" * 32, "zz"]),
            "policy.pcrs.1.events[4].per_node.a[1] is not lowercase hexadecimal",
        ),
        (
            lambda d: _per_node_event(d)["per_node"].update(a=["00" * 32, 7]),
            "policy.pcrs.1.events[4].per_node.a[1] is not",
        ),
        (
            lambda d: d["pcrs"][1]["values"].update(a=[d["pcrs"][1]["values"]["a"], "11" * 32]),
            "policy.pcrs.1.values.a lists 1111111111111111..., which is not what the events "
            "listed extend PCR 1 to with any of the machine's digests",
        ),
        (
            lambda d: d["pcrs"][1]["values"].update(a=[d["pcrs"][1]["values"]["a"]] * 2),
            "policy.pcrs.1.values.a lists a value twice",
        ),
        (
            lambda d: d["pcrs"].update({4: {"variants": [d["pcrs"][4]]}}),
            "policy.pcrs.4.variants[0] lacks machines",
        ),
        (
            lambda d: d["pcrs"][7]["events"][4].update(revocations={"sha256": ["00"]}),
            "policy.pcrs.7.events[4].revocations lacks x509",
        ),
        (
            lambda d: d["pcrs"][7]["events"][4]["revocations"]["sha256"].__setitem__(0, "00"),
            "policy.pcrs.7.events[4].revocations.sha256[0] is 1 bytes",
        ),
        (
            lambda d: d["pcrs"][7]["events"][4].update(sbat_level={"date": "x", "components": {}}),
            "policy.pcrs.7.events[4].sbat_level.date 'x' is not digits",
        ),
    ],
)
def test_a_malformed_fleet_document_is_refused_naming_the_field(boot_option_fleet, change, path):
    document = _fleet_document(boot_option_fleet)
    change(document)
    with pytest.raises(CapturedPolicyInvalid) as raised:
        parse_captured_policy(document)
    assert path in str(raised.value)
    assert raised.value.exit_code == 2


def test_an_excluded_event_leaves_no_value_to_check(boot_option_fleet):
    machine_a, machine_b, _ = boot_option_fleet
    policy = merge_captured(
        [("a", captured(machine_a, "a")), ("b", captured(machine_b, "b"))],
        "fleet",
        per_machine=PerMachine.EXCLUDE,
    ).policy
    document = policy.to_document()
    document["pcrs"][1]["value"] = "00" * 32
    with pytest.raises(CapturedPolicyInvalid, match="excluded event has no value to check"):
        parse_captured_policy(document)


def test_a_document_without_machines_is_the_machine_its_id_names():
    document = captured(parsed(SECUREBOOT), "m").to_document()
    document.pop("machines")
    policy = parse_captured_policy(document)
    assert policy.machine_names == ("golden-m",)
    merged = merge_captured([("x", policy)], "f").policy
    assert merged.machines == ("golden-m",)
