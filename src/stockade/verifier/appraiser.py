"""The seam between the service and the pure appraisal core (``stockade.appraisal``).

The service only needs four calls; :class:`CoreAppraiser` makes them on the
core. Tests may pass another :class:`Appraiser` to ``create_app``.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from enum import StrEnum
from typing import Any, Protocol

from stockade.evidence.attest import ClockInfo
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic


class Status(StrEnum):
    AFFIRMING = "affirming"
    WARNING = "warning"
    CONTRAINDICATED = "contraindicated"


@dataclass(frozen=True)
class NodeView:
    """What appraisal may know about a node (mirrors ``stockade.appraisal.appraise.NodeView``)."""

    node_id: str
    name: str
    ak_public: TpmPublic
    last_clock: ClockInfo | None


@dataclass(frozen=True)
class Evidence:
    """One evidence submission, decoded (mirrors ``stockade.appraisal.appraise.Evidence``)."""

    nonce: bytes
    quote: bytes
    signature: bytes
    pcrs: PcrValues
    event_log: bytes


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

    def node_view(self, node: NodeView) -> Any: ...

    def evidence(self, evidence: Evidence) -> Any: ...

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


class CoreAppraiser:
    """Appraisal by ``stockade.appraisal`` (policy.py, appraise.py, ear.py)."""

    def __init__(self) -> None:
        from stockade.appraisal import appraise, ear, policy

        self._policy = policy
        self._appraise = appraise
        self._ear = ear

    def parse_policy(self, document: Mapping[str, Any], version: int) -> PolicyLike:
        result: PolicyLike = self._policy.parse_policy(document, version)
        return result

    def build_references(self, policy: PolicyLike) -> Any:
        return self._appraise.build_references(policy)

    def node_view(self, node: NodeView) -> Any:
        return self._appraise.NodeView(node.node_id, node.name, node.ak_public, node.last_clock)

    def evidence(self, evidence: Evidence) -> Any:
        return self._appraise.Evidence(
            evidence.nonce, evidence.quote, evidence.signature, evidence.pcrs, evidence.event_log
        )

    def appraise(
        self, policy: PolicyLike, references: Any, node: Any, evidence: Any, expected_nonce: bytes
    ) -> AppraisalLike:
        result: AppraisalLike = self._appraise.appraise(
            policy, references, node, evidence, expected_nonce
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
        claims: dict[str, Any] = self._ear.ear_claims(
            appraisal, node, result_id, nonce, issued_at, not_after, verifier_build
        )
        return claims


def default_appraiser() -> Appraiser | None:
    """The core appraiser, or None while ``stockade.appraisal`` lacks it (every appraisal then
    fails closed as contraindicated)."""
    try:
        return CoreAppraiser()
    except ImportError:
        return None
