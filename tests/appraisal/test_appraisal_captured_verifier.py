"""The verifier's appraisal under policies with a captured platform: a golden machine's
boot (``policy capture``) applied as it is, and combined with signed releases. Real
evidence: quotes from a software TPM after real boots (conftest ``boots``)."""

from __future__ import annotations

import dataclasses
import datetime as dt
import json
from typing import Any

import pytest
from appraisal_support import Boots, World

from stockade.appraisal.appraise import (
    CLAIMS,
    Appraisal,
    CapturedReferences,
    NodeView,
    Status,
    appraise,
    build_references,
)
from stockade.appraisal.captured import CapturedPolicy, capture_policy, self_replayed
from stockade.appraisal.captured_fleet import merge_captured
from stockade.appraisal.captured_release import captured_with_release
from stockade.appraisal.ear import ear_claims
from stockade.appraisal.policy import (
    CAPTURED_RESULT_VALIDITY_SECONDS,
    Policy,
    PolicyInvalid,
    parse_policy,
)
from stockade.evidence.eventlog import EventType, parse_event_log
from stockade.evidence.replay import verify_log
from support.eventlogs import rewritten

pytestmark = pytest.mark.swtpm


def _captured_document(log: bytes, policy_id: str = "golden") -> dict[str, Any]:
    parsed = parse_event_log(log)
    document = capture_policy(verify_log(parsed, self_replayed(parsed)), policy_id).to_document()
    document["pcrs"] = {str(index): body for index, body in document["pcrs"].items()}
    return document


@pytest.fixture(scope="module")
def golden(boots: Boots) -> dict[str, Any]:
    return _captured_document(boots.good.evidence.event_log)


def _run(policy: Policy, node: NodeView, captured: Any) -> Appraisal:
    references = build_references(policy)
    assert isinstance(references, CapturedReferences)
    return appraise(policy, references, node, captured.evidence, captured.evidence.nonce)


def _combined(world: World, golden: dict[str, Any], *releases: Any, **changes: Any) -> Policy:
    document = world.document(
        captured=golden,
        releases={
            "signers": [world.keys.paths.org_pub.read_text()],
            "min_security_version": 2,
            "manifests": [release.envelope.to_json() for release in releases],
        },
        **changes,
    )
    del document["platforms"]
    del document["pcrs"]
    return parse_policy(document, 1)


def test_a_captured_document_applied_as_it_is_affirms_the_golden_boot(golden, node, boots):
    policy = parse_policy(golden, 1)
    assert policy.captured is not None
    assert policy.ref == "golden@1"
    assert policy.result_validity_seconds == CAPTURED_RESULT_VALIDITY_SECONDS
    assert str(policy.pcrs) == "sha256:0,1,2,3,4,5,6,7,8,9,12"
    result = _run(policy, node, boots.good)
    assert result.status is Status.AFFIRMING, result.reasons
    assert dict(result.trust_vector) == dict.fromkeys(CLAIMS, 2)
    assert result.findings == ()
    # The same boot after a reboot measures the same events.
    assert _run(policy, node, boots.reboot).status is Status.AFFIRMING


def test_secure_boot_off_and_a_modified_kernel_are_named_by_pcr_and_event(golden, node, boots):
    policy = parse_policy(golden, 1)
    result = _run(policy, node, boots.tampered)
    assert result.status is Status.CONTRAINDICATED
    assert result.trust_vector["executables"] == 96
    assert result.trust_vector["configuration"] == 96
    assert result.trust_vector["hardware"] == 2  # the firmware is the golden machine's
    log = parse_event_log(boots.tampered.evidence.event_log)
    kernel = [e for e in log.events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION][-1]
    by_pcr = {finding["pcr"]: finding for finding in result.findings}
    assert {4, 7} <= set(by_pcr)
    kernel_findings = [f for f in result.findings if f["event"]["index"] == kernel.number]
    assert kernel_findings, result.findings
    event = kernel_findings[0]["event"]
    assert event["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"
    assert event["found"] == kernel.digest(0x000B).hex()
    assert event["expected"] != event["found"]
    secure_boot = [f for f in result.findings if f["pcr"] == 7]
    assert any("SecureBoot" in f["event"]["measured"] for f in secure_boot if f["event"])
    assert any(f"event {kernel.number} " in reason for reason in result.reasons)


def test_the_findings_are_in_the_ear(golden, node, boots):
    policy = parse_policy(golden, 1)
    result = _run(policy, node, boots.tampered)
    now = dt.datetime(2026, 12, 6, tzinfo=dt.UTC)
    claims = ear_claims(result, node, "r-1", b"n" * 32, now, now, "test")
    submod = claims["submods"][node.name]
    assert submod["stockade.findings"] == [dict(f) for f in result.findings]
    assert submod["ear.status"] == "contraindicated"
    good = ear_claims(_run(policy, node, boots.good), node, "r-2", b"n" * 32, now, now, "t")
    assert "stockade.findings" not in good["submods"][node.name]


def test_a_quote_by_another_tpm_is_refused_before_any_comparison(golden, node, boots):
    result = _run(parse_policy(golden, 1), node, boots.other_tpm)
    assert result.status is Status.CONTRAINDICATED
    assert result.trust_vector["instance-identity"] == 96
    assert result.findings == ()


def test_a_captured_platform_with_a_signed_release_matches_that_release(world, golden, node, boots):
    policy = _combined(world, golden, world.current)
    assert str(policy.pcrs) == "sha256:0,1,2,3,4,5,6,7,8,9,12"
    result = _run(policy, node, boots.good)
    assert result.status is Status.AFFIRMING, result.reasons
    assert result.matched_release == "stockade-os 1.0.0"
    assert dict(result.trust_vector) == dict.fromkeys(CLAIMS, 2)


def test_a_release_the_policy_does_not_accept_is_named_in_pcr_12(world, golden, node, boots):
    # The golden machine booted 1.0.0; the policy accepts only 0.9.0 on its platform.
    policy = _combined(world, golden, world.old)
    result = _run(policy, node, boots.good)
    assert result.status is Status.CONTRAINDICATED
    assert result.matched_release is None
    release_findings = [f for f in result.findings if f["pcr"] == 12]
    assert release_findings
    assert any("stockade-os 1.0.0" in (f["event"] or {}).get("measured", "") for f in
               release_findings)  # fmt: skip
    # And the node that booted 0.9.0 matches it.
    rollback = _run(policy, node, boots.rollback)
    assert rollback.status is Status.AFFIRMING, rollback.reasons
    assert rollback.matched_release == "stockade-os 0.9.0"


def test_with_several_releases_the_closest_is_reported(world, golden, node, boots):
    policy = _combined(world, golden, world.current, world.old)
    tampered = _run(policy, node, boots.tampered)
    assert tampered.status is Status.CONTRAINDICATED
    assert tampered.reasons[0].startswith("no accepted release matches on the captured")
    assert _run(policy, node, boots.good).matched_release == "stockade-os 1.0.0"
    assert _run(policy, node, boots.rollback).matched_release == "stockade-os 0.9.0"


def test_a_policy_with_both_platform_kinds_is_refused(world, golden):
    with pytest.raises(PolicyInvalid, match="platforms"):
        parse_policy(world.document(captured=golden), 1)


def test_a_captured_pcr_13_is_refused(golden):
    document = dict(golden)
    pcrs = dict(document["pcrs"])
    pcrs["13"] = pcrs["12"]
    document["pcrs"] = pcrs
    with pytest.raises(PolicyInvalid, match="execution PCR"):
        parse_policy(document, 1)


@pytest.mark.parametrize(
    ("pcrs", "message"),
    [
        ("sha256:0,1,2,3,4,5,6,7,8,9", "held by the captured policy but not quoted"),
        ("sha256:0,1,2,3,4,5,6,7,8,9,12,14", "not held by the captured policy"),
        ("sha1:0,1,2,3,4,5,6,7,8,9,12", "sha256 bank"),
    ],
)
def test_a_selection_that_does_not_quote_exactly_the_captured_pcrs_is_refused(
    world, golden, pcrs, message
):
    document = {"id": "x", "result_validity_seconds": 60, "captured": golden, "pcrs": pcrs}
    with pytest.raises(PolicyInvalid, match=message):
        parse_policy(document, 1)


def test_the_execution_pcr_may_be_quoted_beside_a_captured_platform(golden):
    document = {
        "id": "x",
        "result_validity_seconds": 60,
        "captured": golden,
        "pcrs": "sha256:0,1,2,3,4,5,6,7,8,9,12,13",
    }
    policy = parse_policy(document, 1)
    assert policy.executions_quoted
    assert 13 not in policy.pcr_indices


# -- merged (fleet) policies at the verifier -------------------------------------------------


def _other_machine(log_bytes: bytes, pcr: int, event_type: EventType) -> CapturedPolicy:
    """The capture of another machine: ``log_bytes`` with the first ``event_type`` event of
    ``pcr`` measuring other bytes (digests recomputed, so the log replays consistently)."""
    log = parse_event_log(log_bytes)
    event = next(e for e in log.events if e.pcr == pcr and e.type == event_type)
    other = parse_event_log(rewritten(log, event.number).marshal())
    return capture_policy(verify_log(other, self_replayed(other)), "other", machine="other")


def _golden_on(boots: Boots, machine: str) -> CapturedPolicy:
    log = parse_event_log(boots.good.evidence.event_log)
    return capture_policy(verify_log(log, self_replayed(log)), "golden", machine=machine)


def test_per_machine_events_are_compared_with_the_enrolled_nodes_own(node, boots):
    golden = _golden_on(boots, node.name)
    other = _other_machine(boots.good.evidence.event_log, 1, EventType.EV_EFI_VARIABLE_BOOT)
    merged = merge_captured([("golden", golden), ("other", other)], "fleet").policy
    (variant,) = merged.pcrs[1].variants  # one sequence of types: one variant
    per_node = [e for e in variant.events if e.per_node]
    assert per_node, "the differing boot variable became per machine"
    policy = parse_policy(json.loads(json.dumps(merged.to_document())), 1)
    assert _run(policy, node, boots.good).status is Status.AFFIRMING
    # The same evidence from a node enrolled under a name the policy does not list.
    stranger = dataclasses.replace(node, name="stranger")
    result = _run(policy, stranger, boots.good)
    assert result.status is Status.CONTRAINDICATED
    (finding,) = result.findings
    assert finding["pcr"] == 1
    assert finding["event"]["index"] == per_node[0].index
    assert "stranger" in finding["reason"] and node.name in finding["reason"]
    # And the other machine's digest is not accepted for this node.
    impostor = dataclasses.replace(node, name="other")
    assert _run(policy, impostor, boots.good).status is Status.CONTRAINDICATED


def test_every_pcr_4_variant_of_a_merged_platform_gets_the_release_kernel(world, boots):
    golden = _golden_on(boots, "golden")
    other = _other_machine(
        boots.good.evidence.event_log, 4, EventType.EV_EFI_BOOT_SERVICES_APPLICATION
    )
    merged = merge_captured([("golden", golden), ("other", other)], "fleet").policy
    assert len(merged.pcrs[4].variants) == 2
    combined = captured_with_release(merged, world.current.manifest)
    kernel = world.current.manifest
    assert len(combined.pcrs[4].variants) == 2
    for variant in combined.pcrs[4].variants:
        applications = [e for e in variant.events if e.type == "EV_EFI_BOOT_SERVICES_APPLICATION"]
        assert (
            applications[-1].measured
            == f"the kernel of {kernel.name} {kernel.version} (Authenticode)"
        )
        assert variant.value is not None
    assert combined.pcrs[4].variants[0].events[:-1] != combined.pcrs[4].variants[1].events[:-1]
