"""appraise() on real evidence: quotes from software TPMs after real boots of signed
releases on a development platform, each attack its own test."""

from __future__ import annotations

import dataclasses
import timeit

import pytest
from appraisal_support import Boots, World, nonce

from stockade.appraisal.appraise import (
    CLAIMS,
    Appraisal,
    NodeView,
    ReferenceSet,
    Status,
    appraise,
    build_references,
)
from stockade.appraisal.policy import Policy, parse_policy
from stockade.evidence.attest import ClockInfo
from stockade.evidence.eventlog import EventLog, EventType
from stockade.evidence.pcr_values import PcrValues

pytestmark = pytest.mark.swtpm


def run(policy: Policy, references: ReferenceSet, node: NodeView, captured) -> Appraisal:
    return appraise(policy, references, node, captured.evidence, captured.evidence.nonce)


def test_good_boot_is_affirming_with_every_claim_affirmed(policy, references, node, boots):
    result = run(policy, references, node, boots.good)
    assert result.status is Status.AFFIRMING, result.reasons
    assert dict(result.trust_vector) == dict.fromkeys(CLAIMS, 2)
    assert result.matched_release == "stockade-os 1.0.0"
    assert result.reasons == ()
    assert result.policy_ref == "production@1"
    assert result.clock == boots.good.clock


def test_secure_boot_off_and_modified_kernel_names_pcr_4_7_and_the_kernel_event(
    policy, references, node, boots
):
    result = run(policy, references, node, boots.tampered)
    assert result.status is Status.CONTRAINDICATED
    assert result.matched_release is None
    assert result.trust_vector["executables"] == 96
    assert result.trust_vector["configuration"] == 96
    assert result.trust_vector["hardware"] == 2  # the firmware is the reference's
    assert result.trust_vector["file-system"] == 2  # the release and /usr are
    reasons = "\n".join(result.reasons)
    assert reasons.startswith("no accepted release matches")
    kernel = next(r for r in result.reasons if r.startswith("PCR 4: "))
    assert "EV_EFI_BOOT_SERVICES_APPLICATION" in kernel
    assert kernel.endswith("differs from the reference (kernel of stockade-os 1.0.0)")
    log = EventLog.parse(boots.tampered.evidence.event_log)
    kernel_event = [e for e in log.events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION][
        -1
    ]
    assert kernel.startswith(f"PCR 4: event {kernel_event.number} ")
    assert any(r.startswith("PCR 7: ") and "UEFI variable SecureBoot" in r for r in result.reasons)
    assert "Secure Boot is disabled (the SecureBoot variable in PCR 7 is 0)" in result.reasons


def test_replayed_quote_with_an_old_nonce_is_contraindicated(policy, references, node, boots):
    result = appraise(policy, references, node, boots.good.evidence, nonce("a fresh nonce"))
    assert result.status is Status.CONTRAINDICATED
    assert result.trust_vector["instance-identity"] == 96
    assert result.reasons[0].startswith("quote nonce: ")
    # The agent claiming the fresh nonce does not help: the TPM signed the old one.
    forged = dataclasses.replace(boots.good.evidence, nonce=nonce("a fresh nonce"))
    result = appraise(policy, references, node, forged, nonce("a fresh nonce"))
    assert result.trust_vector["instance-identity"] == 96
    assert "quote carries nonce" in result.reasons[0]


def test_quote_signed_by_another_tpms_ak_is_contraindicated(policy, references, node, boots):
    result = run(policy, references, node, boots.other_tpm)
    assert result.status is Status.CONTRAINDICATED
    assert result.trust_vector["instance-identity"] == 96
    assert result.reasons == ("quote signature: the signature does not verify with the AK",)
    assert result.clock is None


def test_supplied_pcr_values_that_differ_from_the_quoted_digest_are_contraindicated(
    policy, references, node, boots
):
    good = boots.good.evidence
    values = {i: bytes(32) if i == 4 else v for i, v in good.pcrs.banks[0x000B].items()}
    forged = dataclasses.replace(good, pcrs=PcrValues({0x000B: values}))
    result = appraise(policy, references, node, forged, good.nonce)
    assert result.trust_vector["instance-identity"] == 96
    assert result.reasons[0].startswith("quote pcr-digest: ")


def _edited_log(captured, edit) -> bytes:
    log = EventLog.parse(captured.evidence.event_log)
    return dataclasses.replace(log, events=tuple(edit(list(log.events)))).marshal()


def test_event_log_with_a_hidden_event_is_contraindicated_naming_the_pcr(
    policy, references, node, boots
):
    def hide_kernel(events):
        kernel = [e for e in events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION][-1]
        return [e for e in events if e is not kernel]

    edited = _edited_log(boots.good, hide_kernel)
    evidence = dataclasses.replace(boots.good.evidence, event_log=edited)
    result = appraise(policy, references, node, evidence, evidence.nonce)
    assert result.status is Status.CONTRAINDICATED
    assert result.trust_vector["instance-identity"] == 2
    assert result.trust_vector["executables"] == 96
    assert result.reasons[0].startswith("event log replay: PCR 4 sha256: log replays to ")


def test_event_log_with_an_altered_event_is_contraindicated_naming_the_pcr(
    policy, references, node, boots
):
    def alter_cmdline(events):
        return [
            e._replace(data=e.data.replace(b"quiet", b"debug"))
            if e.pcr == 8 and b"quiet" in e.data
            else e
            for e in events
        ]

    edited = _edited_log(boots.good, alter_cmdline)
    assert edited != boots.good.evidence.event_log
    evidence = dataclasses.replace(boots.good.evidence, event_log=edited)
    result = appraise(policy, references, node, evidence, evidence.nonce)
    # The digests are unchanged, so the log still replays; but the node's PCRs still
    # equal the reference, so the altered text claims nothing the quote does not bind.
    assert result.status is Status.AFFIRMING
    # Altering a digest instead breaks the replay of that PCR.

    def alter_digest(events):
        return [
            e._replace(digests=tuple((alg, bytes(len(d))) for alg, d in e.digests))
            if e.pcr == 8
            else e
            for e in events
        ]

    evidence = dataclasses.replace(
        boots.good.evidence, event_log=_edited_log(boots.good, alter_digest)
    )
    result = appraise(policy, references, node, evidence, evidence.nonce)
    assert result.status is Status.CONTRAINDICATED
    assert "PCR 8 sha256" in result.reasons[0]


def test_malformed_event_log_is_contraindicated(policy, references, node, boots):
    evidence = dataclasses.replace(boots.good.evidence, event_log=b"\x00" * 7)
    result = appraise(policy, references, node, evidence, evidence.nonce)
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons[0].startswith("event log ")


def test_older_signed_release_is_refused_by_policy_and_a_node_booting_it_matches_nothing(
    world: World, policy, references, node, boots
):
    from stockade.appraisal.policy import PolicyInvalid

    releases = {
        "signers": [world.keys.paths.org_pub.read_text()],
        "min_security_version": 3,
        "manifests": [world.current.envelope.to_json(), world.old.envelope.to_json()],
    }
    with pytest.raises(PolicyInvalid, match=r"releases\.manifests\[1\]: .*below the minimum 3"):
        parse_policy(world.document(releases=releases), 2)

    result = run(policy, references, node, boots.rollback)
    assert result.status is Status.CONTRAINDICATED
    assert result.matched_release is None
    assert result.reasons[0].startswith("no accepted release matches; closest reference: ")
    assert "the node booted stockade-os 0.9.0 sha256:" in result.reasons[0]
    assert any(
        r.startswith("PCR 12: ") and "(release manifest of stockade-os 1.0.0)" in r
        for r in result.reasons
    )
    assert result.trust_vector["executables"] == 96
    assert result.trust_vector["file-system"] == 96  # 0.9.0 has another /usr


def test_clock_rollback_against_the_last_clock_is_contraindicated(policy, references, boots):
    node = NodeView("node-1", "node-1.example", boots.ak, boots.good_later.clock)
    result = run(policy, references, node, boots.good)
    assert result.status is Status.CONTRAINDICATED
    assert result.trust_vector["instance-identity"] == 96
    assert result.reasons[0].startswith("TPM clock clock: did not advance within one boot")
    # A resetCount that went back is a rollback too.
    later = boots.good.clock
    ahead = ClockInfo(later.clock, later.reset_count + 1, later.restart_count, later.safe)
    node = NodeView("node-1", "node-1.example", boots.ak, ahead)
    assert (
        run(policy, references, node, boots.good)
        .reasons[0]
        .startswith("TPM clock resetCount: went back")
    )


def test_clock_rollback_under_warn_is_a_warning(world, boots):
    policy = parse_policy(world.document(enforce={"clock": "warn"}), 3)
    node = NodeView("node-1", "node-1.example", boots.ak, boots.good_later.clock)
    result = run(policy, build_references(policy), node, boots.good)
    assert result.status is Status.WARNING
    assert result.trust_vector["instance-identity"] == 32


def test_a_reboot_is_a_new_boot_and_the_same_boot_is_not(policy, references, boots):
    node = NodeView("node-1", "node-1.example", boots.ak, boots.good_later.clock)
    result = run(policy, references, node, boots.reboot)
    assert result.new_boot is True
    assert result.status is Status.AFFIRMING
    assert result.clock.reset_count > boots.good_later.clock.reset_count
    node = NodeView("node-1", "node-1.example", boots.ak, boots.good.clock)
    assert run(policy, references, node, boots.good_later).new_boot is False


def test_enforce_warn_turns_a_secure_boot_failure_into_a_warning(world, boots, node):
    policy = parse_policy(world.document(enforce={"secure_boot": "warn"}), 4)
    references = build_references(policy)
    result = run(policy, references, node, boots.secure_boot_off)
    assert result.status is Status.WARNING, result.reasons
    assert result.trust_vector["configuration"] == 32
    assert result.trust_vector["executables"] == 2  # the kernel is the signed one
    assert any(r.startswith("PCR 7: ") for r in result.reasons)
    strict = run(
        parse_policy(world.document(), 5),
        build_references(parse_policy(world.document(), 5)),
        node,
        boots.secure_boot_off,
    )
    assert strict.status is Status.CONTRAINDICATED
    assert strict.trust_vector["configuration"] == 96


def test_db_requirement_is_checked_on_the_fast_path(world, boots, node):
    missing = "ab" * 32
    secure_boot = {"required": True, "db_must_contain": [missing]}
    policy = parse_policy(world.document(secure_boot=secure_boot), 6)
    result = run(policy, build_references(policy), node, boots.good)
    assert result.status is Status.CONTRAINDICATED
    assert result.matched_release == "stockade-os 1.0.0"
    assert result.reasons == (f"db lacks the required certificate sha256:{missing}",)
    warn = parse_policy(world.document(secure_boot=secure_boot, enforce={"secure_boot": "warn"}), 7)
    result = run(warn, build_references(warn), node, boots.good)
    assert result.status is Status.WARNING
    assert result.trust_vector["configuration"] == 32


def test_references_of_another_policy_version_are_a_programming_error(
    world, references, node, boots
):
    other = parse_policy(world.document(), 9)
    with pytest.raises(ValueError, match="production@1"):
        run(other, references, node, boots.good)


def test_appraise_is_fast(policy, references, node, boots: Boots):
    evidence = boots.good.evidence
    runs = 300
    seconds = min(
        timeit.repeat(
            lambda: appraise(policy, references, node, evidence, evidence.nonce),
            number=runs,
            repeat=3,
        )
    )
    per_call = seconds / runs
    print(f"appraise(): {per_call * 1e6:.0f} us per call")
    assert per_call < 0.002  # target well under 1 ms; loose here for slow CI machines
