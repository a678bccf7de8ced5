"""The EAR claim set of docs/verifier-protocol.md."""

from __future__ import annotations

import base64
import datetime as dt
import json

import pytest

from stockade.appraisal.appraise import appraise
from stockade.appraisal.ear import ear_claims

pytestmark = pytest.mark.swtpm

ISSUED = dt.datetime(2026, 11, 2, 12, 0, tzinfo=dt.UTC)


def test_ear_claims_have_the_documented_shape(policy, references, node, boots):
    evidence = boots.good.evidence
    result = appraise(policy, references, node, evidence, evidence.nonce)
    claims = ear_claims(
        result, node, "r-1", evidence.nonce, ISSUED, ISSUED + dt.timedelta(seconds=120), "0.1.0"
    )
    assert json.loads(json.dumps(claims)) == claims  # JSON as it stands
    assert claims == {
        "eat_profile": "tag:github.com,2023:veraison/ear",
        "iat": int(ISSUED.timestamp()),
        "exp": int(ISSUED.timestamp()) + 120,
        "ear.verifier-id": {"developer": "stockade", "build": "0.1.0"},
        "eat_nonce": base64.urlsafe_b64encode(evidence.nonce).rstrip(b"=").decode(),
        "submods": {
            "node-1.example": {
                "ear.status": "affirming",
                "ear.trustworthiness-vector": {
                    "instance-identity": 2,
                    "configuration": 2,
                    "executables": 2,
                    "hardware": 2,
                    "file-system": 2,
                },
                "ear.appraisal-policy-id": "production@1",
                "stockade.node-id": "node-1",
                "stockade.result-id": "r-1",
                "stockade.reasons": [],
                "stockade.boot": {
                    "reset_count": boots.good.clock.reset_count,
                    "restart_count": boots.good.clock.restart_count,
                    "new_boot": True,
                },
            }
        },
    }


def test_ear_names_the_booted_release_when_given(policy, references, node, boots):
    evidence = boots.good.evidence
    result = appraise(policy, references, node, evidence, evidence.nonce)
    release = {"name": "stockade-os", "version": "1.0.0", "security_version": 3, "digest": "cd"}
    claims = ear_claims(
        result, node, "r-1", evidence.nonce, ISSUED, ISSUED, "0.1.0", release=release
    )
    assert claims["submods"]["node-1.example"]["stockade.release"] == release
    plain = ear_claims(result, node, "r-1", evidence.nonce, ISSUED, ISSUED, "0.1.0")
    assert "stockade.release" not in plain["submods"]["node-1.example"]


def test_ear_of_a_failed_quote_has_no_boot_counters(policy, references, node, boots):
    result = appraise(
        policy, references, node, boots.other_tpm.evidence, boots.other_tpm.evidence.nonce
    )
    claims = ear_claims(result, node, "r-2", b"n", ISSUED, ISSUED, "0.1.0")
    submod = claims["submods"]["node-1.example"]
    assert submod["ear.status"] == "contraindicated"
    assert submod["ear.trustworthiness-vector"]["instance-identity"] == 96
    assert submod["stockade.boot"] == {
        "reset_count": None,
        "restart_count": None,
        "new_boot": False,
    }


def test_naive_times_are_a_programming_error(policy, references, node, boots):
    evidence = boots.good.evidence
    result = appraise(policy, references, node, evidence, evidence.nonce)
    with pytest.raises(ValueError, match="timezone-aware"):
        ear_claims(result, node, "r", b"n", dt.datetime(2026, 1, 1), ISSUED, "0.1.0")
