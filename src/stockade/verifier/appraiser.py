"""The seam between the service and the pure appraisal core (``stockade.appraisal``).

The service only needs four calls; :class:`CoreAppraiser` makes them on the
core. Tests may pass another :class:`Appraiser` to ``create_app``.
"""

from __future__ import annotations

from collections.abc import Mapping
from datetime import datetime
from typing import Any, Protocol

from stockade.appraisal import appraise as core_appraise
from stockade.appraisal import ear as core_ear
from stockade.appraisal import policy as core_policy
from stockade.appraisal.appraise import Evidence, NodeView, Status
from stockade.evidence.attest import ClockInfo

__all__ = ["Appraiser", "CoreAppraiser", "Evidence", "NodeView", "PolicyLike", "Status"]


class PolicyLike(Protocol):
    @property
    def ref(self) -> str: ...

    @property
    def pcrs(self) -> Any: ...

    @property
    def result_validity_seconds(self) -> float: ...


class AppraisalLike(Protocol):
    """The fields of ``stockade.appraisal.appraise.Appraisal`` the service reads."""

    @property
    def status(self) -> str: ...

    @property
    def reasons(self) -> Any: ...

    @property
    def clock(self) -> ClockInfo | None: ...  # set only when the quote verified


class Appraiser(Protocol):
    def parse_policy(self, document: Mapping[str, Any], version: int) -> PolicyLike: ...

    def build_references(self, policy: PolicyLike) -> Any: ...

    def appraise(
        self,
        policy: PolicyLike,
        references: Any,
        node: Any,
        evidence: Any,
        expected_nonce: bytes,
    ) -> AppraisalLike: ...

    def ear_claims(
        self,
        appraisal: AppraisalLike,
        node: Any,
        result_id: str,
        nonce: bytes,
        issued_at: datetime,
        not_after: datetime,
        verifier_build: str,
    ) -> dict[str, Any]: ...


def _core_policy(policy: PolicyLike) -> core_policy.Policy:
    """The core appraises only policies its own parser made (fail closed on anything else)."""
    if not isinstance(policy, core_policy.Policy):
        raise TypeError(f"the core appraises its own policies, not {type(policy).__name__}")
    return policy


class CoreAppraiser:
    """Appraisal by ``stockade.appraisal`` (policy.py, appraise.py, ear.py)."""

    def parse_policy(self, document: Mapping[str, Any], version: int) -> PolicyLike:
        result: PolicyLike = core_policy.parse_policy(document, version)
        return result

    def build_references(self, policy: PolicyLike) -> Any:
        return core_appraise.build_references(_core_policy(policy))

    def appraise(
        self, policy: PolicyLike, references: Any, node: Any, evidence: Any, expected_nonce: bytes
    ) -> AppraisalLike:
        result: AppraisalLike = core_appraise.appraise(
            _core_policy(policy), references, node, evidence, expected_nonce
        )
        return result

    def ear_claims(
        self,
        appraisal: AppraisalLike,
        node: Any,
        result_id: str,
        nonce: bytes,
        issued_at: datetime,
        not_after: datetime,
        verifier_build: str,
    ) -> dict[str, Any]:
        if not isinstance(appraisal, core_appraise.Appraisal):
            raise TypeError(f"the core signs its own appraisals, not {type(appraisal).__name__}")
        claims: dict[str, Any] = core_ear.ear_claims(
            appraisal, node, result_id, nonce, issued_at, not_after, verifier_build
        )
        return claims


def default_appraiser() -> Appraiser:
    return CoreAppraiser()
