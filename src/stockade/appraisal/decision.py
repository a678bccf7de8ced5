"""The verifier's whole decision on one attestation, in one place.

``appraise`` (boot and quote) and ``appraise_node_executions`` (the execution log) each
find what they find; ``conclude`` is the only rule that joins them into the one ``Appraisal``
the verifier stores, signs as an EAR (``ear.ear_claims``, built once from it, never edited)
and logs. ``failed_appraisal`` is the same result type for an appraisal that could not
complete: contraindicated, fail closed. Pure: no I/O, no clock.
"""

from __future__ import annotations

from dataclasses import replace

from stockade.appraisal.appraise import (
    CLAIMS,
    CONTRAINDICATED,
    EXECUTABLES,
    INSTANCE_IDENTITY,
    NO_CLAIM,
    Appraisal,
    Status,
)
from stockade.appraisal.node_executions import ExecutionOutcome


def conclude(appraisal: Appraisal, executions: ExecutionOutcome | None) -> Appraisal:
    """The final result: ``appraisal`` as it is, unless the execution log showed something,
    then contraindicated with ``executables`` contraindicated and the log's reasons added."""
    if executions is None or executions.ok:
        return appraisal
    vector = dict(appraisal.trust_vector)
    vector[EXECUTABLES] = CONTRAINDICATED
    return replace(
        appraisal,
        status=Status.CONTRAINDICATED,
        trust_vector=vector,
        reasons=(*appraisal.reasons, *executions.reasons),
    )


def failed_appraisal(reason: str, policy_ref: str) -> Appraisal:
    """An appraisal that could not complete: nothing about the node is known, so its
    identity is contraindicated and no other claim is made (draft-ietf-rats-ar4si 2.3)."""
    vector = {claim: NO_CLAIM for claim in CLAIMS}
    vector[INSTANCE_IDENTITY] = CONTRAINDICATED
    return Appraisal(
        status=Status.CONTRAINDICATED,
        trust_vector=vector,
        reasons=(reason,),
        clock=None,
        new_boot=False,
        policy_ref=policy_ref,
        matched_release=None,
    )
