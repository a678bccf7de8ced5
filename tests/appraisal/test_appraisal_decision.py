"""The one trust decision: ``conclude`` joins the boot appraisal and the execution log,
``failed_appraisal`` fails closed, and the EAR is built once from the result."""

from __future__ import annotations

import datetime as dt
import hashlib

from stockade.appraisal.appraise import (
    AFFIRMING,
    CLAIMS,
    CONTRAINDICATED,
    NO_CLAIM,
    WARNING,
    Appraisal,
    NodeView,
    Status,
)
from stockade.appraisal.decision import conclude, failed_appraisal
from stockade.appraisal.ear import SignedEvidence, ear_claims
from stockade.appraisal.node_executions import ExecutionOutcome
from stockade.evidence.attest import ClockInfo
from stockade.evidence.templates import KeyKind, ak_template

ISSUED = dt.datetime(2026, 12, 6, 8, 0, tzinfo=dt.UTC)
CLOCK = ClockInfo(clock=5000, reset_count=3, restart_count=1, safe=True)


def boot_appraisal(status: Status = Status.AFFIRMING, vector: dict[str, int] | None = None):
    return Appraisal(
        status=status,
        trust_vector=vector or dict.fromkeys(CLAIMS, AFFIRMING),
        reasons=() if status is Status.AFFIRMING else ("PCR 7: Secure Boot is off (warn)",),
        clock=CLOCK,
        new_boot=True,
        policy_ref="production@4",
        matched_release="os 1.2",
    )


def outcome(*reasons: str) -> ExecutionOutcome:
    return ExecutionOutcome(tuple(reasons), None, (), 7, (3, 1))


def node() -> NodeView:
    return NodeView("node-id-1", "node-1.example", ak_template(KeyKind.ECC), None)


def test_a_clean_execution_log_changes_nothing():
    appraisal = boot_appraisal()
    assert conclude(appraisal, None) is appraisal
    assert conclude(appraisal, outcome()) is appraisal


def test_a_finding_in_the_execution_log_contraindicates_executables_only():
    appraisal = boot_appraisal(
        Status.WARNING, {**dict.fromkeys(CLAIMS, AFFIRMING), "configuration": WARNING}
    )
    final = conclude(appraisal, outcome("execution log: record 4 runs a forbidden image"))
    assert final.status is Status.CONTRAINDICATED
    assert final.trust_vector["executables"] == CONTRAINDICATED
    assert final.trust_vector["configuration"] == WARNING  # other claims stay as found
    assert final.reasons == (
        "PCR 7: Secure Boot is off (warn)",
        "execution log: record 4 runs a forbidden image",
    )
    assert final.clock == CLOCK and final.matched_release == "os 1.2"
    assert appraisal.status is Status.WARNING  # the boot finding itself is not edited


def test_an_appraisal_that_could_not_complete_is_contraindicated():
    failed = failed_appraisal("internal: appraisal failed; see the verifier log", "p@2")
    assert failed.status is Status.CONTRAINDICATED
    assert failed.trust_vector == {
        claim: CONTRAINDICATED if claim == "instance-identity" else NO_CLAIM for claim in CLAIMS
    }
    assert failed.clock is None and failed.policy_ref == "p@2"


def test_the_ear_is_the_final_result_and_names_the_signed_evidence():
    final = conclude(boot_appraisal(), outcome("execution log: records 2 to 3 were not sent"))
    signed = SignedEvidence(b"\x00\x10ak-public-area", b"\xff\x54\x43\x47quote")
    claims = ear_claims(final, node(), "r-9", b"nonce", ISSUED, ISSUED, "1.0", signed)
    submod = claims["submods"]["node-1.example"]
    assert submod["ear.status"] == "contraindicated"
    assert submod["ear.trustworthiness-vector"]["executables"] == CONTRAINDICATED
    assert submod["stockade.reasons"] == ["execution log: records 2 to 3 were not sent"]
    assert submod["stockade.evidence"] == {
        "ak-sha256": hashlib.sha256(signed.ak_public).hexdigest(),
        "quote-sha256": hashlib.sha256(signed.quote).hexdigest(),
    }


def test_an_unverified_quote_names_no_evidence():
    failed = failed_appraisal("evidence: truncated TPMS_ATTEST", "p@2")
    signed = SignedEvidence(b"ak", b"quote")
    claims = ear_claims(failed, node(), "r-1", b"n", ISSUED, ISSUED, "1.0", signed)
    submod = claims["submods"]["node-1.example"]
    assert "stockade.evidence" not in submod
    assert submod["stockade.boot"]["reset_count"] is None
