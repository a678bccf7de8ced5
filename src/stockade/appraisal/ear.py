"""The claim set of an EAR (draft-fv-rats-ear), as docs/verifier-protocol.md defines it.

Only the claims: the verifier signs them (a JWT with its key). Times are given,
never read: ``iat`` and ``exp`` are whole seconds since the epoch.
"""

from __future__ import annotations

import base64
import datetime as dt
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stockade.appraisal.appraise import CLAIMS, Appraisal, NodeView
from stockade.statements import EAR_PROFILE, evidence_claims

VERIFIER_DEVELOPER = "stockade"


@dataclass(frozen=True)
class SignedEvidence:
    """What the node's TPM signed, as received: the AK (TPM2B_PUBLIC, as enrolled) and the
    quote (TPMS_ATTEST)."""

    ak_public: bytes
    quote: bytes


def _seconds(moment: dt.datetime, what: str) -> int:
    if moment.tzinfo is None:
        raise ValueError(f"{what} must be timezone-aware")
    return int(moment.timestamp())


def ear_claims(
    appraisal: Appraisal,
    node: NodeView,
    result_id: str,
    nonce: bytes,
    issued_at: dt.datetime,
    not_after: dt.datetime,
    verifier_build: str,
    signed_evidence: SignedEvidence | None = None,
    release: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """The EAR claims of one result, built once from the final ``Appraisal``
    (``decision.conclude``) and never edited. ``stockade.boot`` counters are null when the
    quote did not verify (no clock is known); ``stockade.evidence`` names the AK and quote
    only when it did; ``stockade.release`` names the release the boot matched, when one
    did."""
    clock = appraisal.clock
    submod: dict[str, Any] = {
        "ear.status": appraisal.status.value,
        "ear.trustworthiness-vector": {
            claim: appraisal.trust_vector.get(claim, 0) for claim in CLAIMS
        },
        "ear.appraisal-policy-id": appraisal.policy_ref,
        "stockade.node-id": node.node_id,
        "stockade.result-id": result_id,
        "stockade.reasons": list(appraisal.reasons),
        "stockade.boot": {
            "reset_count": clock.reset_count if clock is not None else None,
            "restart_count": clock.restart_count if clock is not None else None,
            "new_boot": appraisal.new_boot,
        },
    }
    if appraisal.findings:
        # A captured-platform appraisal's findings, each naming its PCR and event (index,
        # type, what it measured, expected and found digest).
        submod["stockade.findings"] = [dict(finding) for finding in appraisal.findings]
    if release is not None:
        # The release the quoted boot matched (rollout inventory): name, version, security
        # version, manifest digest; an auditor reads it from the signed result itself.
        submod["stockade.release"] = dict(release)
    if clock is not None and signed_evidence is not None:
        # The quote verified: an auditor holding the AK and quote (GET /v1/executions) can
        # tie them to this node with the pinned verifier key.
        submod["stockade.evidence"] = evidence_claims(
            signed_evidence.ak_public, signed_evidence.quote
        )
    return {
        "eat_profile": EAR_PROFILE,
        "iat": _seconds(issued_at, "issued_at"),
        "exp": _seconds(not_after, "not_after"),
        "ear.verifier-id": {"developer": VERIFIER_DEVELOPER, "build": verifier_build},
        "eat_nonce": base64.urlsafe_b64encode(nonce).rstrip(b"=").decode("ascii"),
        "submods": {node.name: submod},
    }
