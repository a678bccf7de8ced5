"""``compare_boot`` (the dashboard's boot view) on real evidence: the development boot chain's
logs from software TPMs (tests/appraisal/conftest.py ``boots``) against references predicted
from signed releases, a signer-only policy with the node's envelope, and a captured golden
machine; and real machines' logs (../shared/fixtures, skipped when absent).

A matching boot is all ``same`` beside the release it booted, every quoted PCR included; a
tampered one (Secure Boot off, a modified kernel) has ``differs`` rows naming the PCR and
the event; a rollback to 0.9.0 differs in the release's PCRs beside 1.0.0."""

from __future__ import annotations

from typing import Any

import pytest
from appraisal_support import Boots, World

from stockade.appraisal.appraise import (
    CapturedCandidate,
    CapturedReferences,
    ReferenceSet,
    build_references,
)
from stockade.appraisal.boot_comparison import (
    ROWS_PER_PCR,
    BootComparison,
    RowStatus,
    compare_boot,
    printable,
    summary,
)
from stockade.appraisal.captured import capture_policy, self_replayed
from stockade.appraisal.policy import Policy, parse_policy
from stockade.evidence.eventlog import EventType, parse_event_log
from stockade.evidence.replay import verify_log
from support.eventlogs import rewritten
from support.fixtures import EVENT_LOGS, SHARED, event_log_path

QUOTED = (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12)


def _rows(comparison: BootComparison, pcr: int) -> list[Any]:
    found = comparison.pcr(pcr)
    assert found is not None
    return list(found.events)


def _all_printable(comparison: BootComparison) -> None:
    for pcr in comparison.pcrs:
        for row in pcr.events:
            for side in (row.found, row.expected):
                if side is not None:
                    assert all(32 <= ord(c) < 127 for c in side.description), side


# -- the development boot chain -------------------------------------------------------------


@pytest.mark.swtpm
def test_a_good_boot_is_all_same_beside_its_release(boots: Boots, references: ReferenceSet):
    evidence = boots.good.evidence
    comparison = compare_boot(evidence.event_log, references, evidence.pcrs)
    assert comparison.problem is None
    assert comparison.reference is not None and comparison.reference.startswith(
        "stockade-os 1.0.0 on platform 0"
    )
    assert tuple(pcr.pcr for pcr in comparison.pcrs) == QUOTED
    assert all(pcr.matches and pcr.quoted == pcr.expected for pcr in comparison.pcrs)
    counts = summary(comparison)
    assert counts["same"] > 20 and counts["differs"] == counts["missing"] == counts["extra"] == 0
    # Every measured event of the log is there (EV_NO_ACTION is never extended).
    log = parse_event_log(evidence.event_log)
    measured = [e for e in log.events if e.type != EventType.EV_NO_ACTION and e.pcr in QUOTED]
    assert counts["same"] == len(measured)
    kernel = _rows(comparison, 4)[-1]
    assert kernel.expected.description == "kernel of stockade-os 1.0.0"
    assert kernel.found.type == "EV_EFI_BOOT_SERVICES_APPLICATION"
    # The same without the quoted values (a contraindicated result stores none).
    assert summary(compare_boot(evidence.event_log, references, None)) == counts


@pytest.mark.swtpm
def test_a_tampered_boot_differs_by_pcr_and_event(boots: Boots, references: ReferenceSet):
    evidence = boots.tampered.evidence
    comparison = compare_boot(evidence.event_log, references, evidence.pcrs)
    assert comparison.reference is not None
    by_pcr = {pcr.pcr: pcr for pcr in comparison.pcrs}
    assert not by_pcr[4].matches and not by_pcr[7].matches
    assert by_pcr[0].matches and by_pcr[12].matches
    log = parse_event_log(evidence.event_log)
    kernel = [e for e in log.events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION][-1]
    (row,) = [r for r in _rows(comparison, 4) if r.found and r.found.number == kernel.number]
    assert row.status is RowStatus.DIFFERS
    assert row.expected.description == "kernel of stockade-os 1.0.0"
    assert row.found.digest == kernel.digest(0x000B) != row.expected.digest
    secure_boot = [r for r in _rows(comparison, 7) if r.status is RowStatus.DIFFERS]
    assert any("SecureBoot" in r.found.description for r in secure_boot)
    # Unchanged events of the same PCRs stay "same" beside them.
    assert RowStatus.SAME in {r.status for r in _rows(comparison, 7)}
    _all_printable(comparison)


@pytest.mark.swtpm
def test_a_rollback_differs_in_the_release_pcrs(boots: Boots, references: ReferenceSet):
    evidence = boots.rollback.evidence
    comparison = compare_boot(evidence.event_log, references, evidence.pcrs)
    assert comparison.reference is not None and "stockade-os 1.0.0" in comparison.reference
    by_pcr = {pcr.pcr: pcr for pcr in comparison.pcrs}
    assert not by_pcr[12].matches
    assert all(by_pcr[index].matches for index in (0, 1, 2, 3, 5, 6, 7))
    release = [r for r in _rows(comparison, 12) if r.status is RowStatus.DIFFERS]
    assert any("0.9.0" in r.found.description for r in release), _rows(comparison, 12)
    assert any(r.expected.description.startswith("release manifest") for r in release)


@pytest.mark.swtpm
def test_a_signer_only_policy_compares_with_the_envelope(world: World, boots: Boots):
    releases = {"signer": world.keys.paths.org_pub.read_text(), "min_security_version": 2}
    policy = parse_policy(world.document(releases=releases), 1)
    references = build_references(policy)
    assert isinstance(references, ReferenceSet) and not references.entries
    evidence = boots.rollback.evidence
    envelope = world.old.envelope.to_bytes()
    comparison = compare_boot(
        evidence.event_log, references, evidence.pcrs, policy=policy, release_envelope=envelope
    )
    assert comparison.reference is not None and "stockade-os 0.9.0" in comparison.reference
    assert {str(s) for s in (r.status for p in comparison.pcrs for r in p.events)} == {"same"}
    # Another release's envelope is refused as appraisal refuses it: nothing to compare with.
    refused = compare_boot(
        evidence.event_log,
        references,
        evidence.pcrs,
        policy=policy,
        release_envelope=world.current.envelope.to_bytes(),
    )
    assert refused.reference is None
    assert any("measured into PCR 12" in note for note in refused.notes), refused.notes
    assert summary(refused)["extra"] > 0 and summary(refused)["same"] == 0
    # No envelope at all.
    bare = compare_boot(evidence.event_log, references, evidence.pcrs, policy=policy)
    assert bare.reference is None and any("envelope" in note for note in bare.notes)


@pytest.mark.swtpm
def test_a_captured_platform_marks_the_findings_events(boots: Boots, policy: Policy):
    log = parse_event_log(boots.good.evidence.event_log)
    golden = capture_policy(verify_log(log, self_replayed(log)), "golden")
    references = CapturedReferences("golden@1", QUOTED, (CapturedCandidate(None, golden),))
    good = compare_boot(boots.good.evidence.event_log, references, None, node="node-1")
    assert good.reference == "captured platform golden"
    assert set(summary(good)) and summary(good)["same"] > 20
    assert {r.status for p in good.pcrs for r in p.events} == {RowStatus.SAME}
    assert all(pcr.matches for pcr in good.pcrs)

    tampered = compare_boot(
        boots.tampered.evidence.event_log, references, boots.tampered.evidence.pcrs, node="n"
    )
    by_pcr = {pcr.pcr: pcr for pcr in tampered.pcrs}
    assert not by_pcr[4].matches and not by_pcr[7].matches and by_pcr[0].matches
    bad = parse_event_log(boots.tampered.evidence.event_log)
    kernel = [e for e in bad.events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION][-1]
    (row,) = [r for r in _rows(tampered, 4) if r.found and r.found.number == kernel.number]
    assert row.status is RowStatus.DIFFERS
    assert row.expected is not None and row.expected.digest != row.found.digest
    assert any(r.status is RowStatus.DIFFERS for r in _rows(tampered, 7))
    _all_printable(tampered)


# -- real machines' logs ---------------------------------------------------------------------


def _real(name: str) -> bytes:
    path = event_log_path(name)
    if not path.exists():
        pytest.skip(f"event log fixtures not found at {SHARED} (they live outside the repo)")
    return path.read_bytes()


def _own_references(data: bytes) -> tuple[ReferenceSet, CapturedReferences]:
    from stockade.appraisal.appraise import ReferenceEntry
    from stockade.evidence.algorithms import Alg
    from stockade.evidence.pcr_values import PcrValues

    log = parse_event_log(data)
    values = self_replayed(log)
    sha256 = values.banks.get(Alg.SHA256, {})
    pcrs = tuple(sorted(index for index in sha256 if index < 10))
    entry = ReferenceEntry(
        0, "platform 0 (golden)", "golden", "1", 1, bytes(32),
        PcrValues({Alg.SHA256: {i: sha256[i] for i in pcrs}}), log,
        tuple(f"golden event {e.number}" for e in log.events), (),
    )  # fmt: skip
    captured = capture_policy(verify_log(log, values), "golden")
    return ReferenceSet("golden@1", pcrs, (entry,)), CapturedReferences(
        "golden@1", pcrs, (CapturedCandidate(None, captured),)
    )


@pytest.mark.parametrize("name", ["keylime-shim-grub", "keylime-shim-grub-secureboot"])
def test_a_real_machine_beside_itself_and_edited(name: str):
    data = _real(name)
    references, captured = _own_references(data)
    for against in (references, captured):
        same = compare_boot(data, against, None, node="golden")
        assert same.problem is None
        assert {r.status for p in same.pcrs for r in p.events} == {RowStatus.SAME}
        assert all(pcr.matches for pcr in same.pcrs)
    # One event measured something else (its digests replaced, the log replays).
    log = parse_event_log(data)
    target = next(e for e in log.events if e.pcr == 4 and e.type != EventType.EV_NO_ACTION)
    edited = rewritten(log, target.number).marshal()
    for against in (references, captured):
        comparison = compare_boot(edited, against, None, node="golden")
        (row,) = [r for r in _rows(comparison, 4) if r.found and r.found.number == target.number]
        assert row.status is RowStatus.DIFFERS, _rows(comparison, 4)
        assert not comparison.pcr(4).matches
        assert all(p.matches for p in comparison.pcrs if p.pcr != 4)
        _all_printable(comparison)


@pytest.mark.parametrize("name", sorted(EVENT_LOGS))
def test_every_real_log_compares_against_another_machine(name: str):
    """Another machine's log beside a shim + GRUB machine's references: never an exception,
    rows bounded, descriptions printable; or a problem saying why (a SHA-1-only log)."""
    references, captured = _own_references(_real("keylime-shim-grub"))
    data = _real(name)
    for against in (references, captured):
        comparison = compare_boot(data, against, None, node="other")
        if comparison.problem is not None:
            assert comparison.pcrs == ()
            assert printable(comparison.problem) == comparison.problem
            continue
        assert all(len(pcr.events) <= ROWS_PER_PCR for pcr in comparison.pcrs)
        _all_printable(comparison)


def test_unreadable_logs_say_why():
    references = ReferenceSet("p@1", (0,), ())
    for data in (b"", b"\x00" * 7, b"garbage" * 10):
        comparison = compare_boot(data, references, None)
        assert comparison.problem is not None and comparison.pcrs == ()
        assert comparison.problem.startswith("the event log cannot be read")


def test_descriptions_are_printable_and_bounded():
    assert printable("caf\u00e9\x1b[31m\n\tx\\y") == "caf\\xe9\\x1b[31m x\\\\y"
    long = printable("a" * 1000)
    assert len(long) == 160 and long.endswith("...")
    assert printable("\U0001f600") == "\\U0001f600"


def test_events_past_the_findings_a_captured_appraisal_names_are_not_called_same():
    """A captured appraisal names at most 8 differing events a PCR and counts the rest:
    those unnamed events are ``same`` only when the capture holds their digest."""
    from stockade.evidence.algorithms import HASHES
    from stockade.evidence.eventlog import EventLog

    data = _real("keylime-shim-grub")
    _, captured = _own_references(data)
    log = parse_event_log(data)
    template = next(e for e in log.events if e.pcr == 4 and e.type != EventType.EV_NO_ACTION)
    added = tuple(
        template._replace(
            number=len(log.events) + i,
            data=f"added {i}".encode(),
            digests=tuple(
                (a, HASHES[a].digest(f"added {i}".encode())) for a, _ in template.digests
            ),
        )
        for i in range(20)
    )
    grown = EventLog(log.crypto_agile, log.spec_id, (*log.events, *added)).marshal()
    comparison = compare_boot(grown, captured, None, node="golden")
    rows = _rows(comparison, 4)
    new = [r for r in rows if r.found and r.found.number >= len(log.events)]
    assert len(new) == 20 and {r.status for r in new} == {RowStatus.EXTRA}
    assert all(r.status is RowStatus.SAME for r in rows if r not in new)
    assert any("more events differ" in note for note in comparison.pcr(4).notes)
