"""The seam between the service and the pure appraisal core (``stockade.appraisal``).

The service needs three calls; :class:`CoreAppraiser` makes them on the core. Tests may
pass another :class:`Appraiser` to ``create_app`` (one that, say, appraises only the quote),
but it returns the core's ``Appraisal``: the final decision and the EAR are built by the core
(``stockade.appraisal.decision``, ``stockade.appraisal.ear``) whatever the appraiser.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Protocol

from stockade.appraisal import appraise as core_appraise
from stockade.appraisal import policy as core_policy
from stockade.appraisal.appraise import Appraisal, Evidence, NodeView, Status
from stockade.appraisal.executions import Forbidden

__all__ = [
    "Appraisal",
    "Appraiser",
    "CoreAppraiser",
    "Evidence",
    "NodeView",
    "PolicyLike",
    "Status",
]


class PolicyLike(Protocol):
    """What the service reads of an appraisal policy."""

    @property
    def ref(self) -> str: ...

    @property
    def pcrs(self) -> Any: ...

    @property
    def result_validity_seconds(self) -> float: ...

    @property
    def executions_quoted(self) -> bool: ...

    @property
    def forbidden(self) -> Forbidden: ...


class Appraiser(Protocol):
    """Parses policies, predicts references and appraises boot evidence into the core's
    ``Appraisal``; everything after that (the execution log, the final status, the EAR) is
    ``stockade.appraisal.decision`` and ``stockade.appraisal.ear``, whatever the appraiser."""

    def parse_policy(self, document: Mapping[str, Any], version: int) -> PolicyLike: ...

    def build_references(self, policy: PolicyLike) -> Any: ...

    def appraise(
        self,
        policy: PolicyLike,
        references: Any,
        node: NodeView,
        evidence: Evidence,
        expected_nonce: bytes,
    ) -> Appraisal: ...


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
        self,
        policy: PolicyLike,
        references: Any,
        node: NodeView,
        evidence: Evidence,
        expected_nonce: bytes,
    ) -> Appraisal:
        return core_appraise.appraise(
            _core_policy(policy), references, node, evidence, expected_nonce
        )


def default_appraiser() -> Appraiser:
    return CoreAppraiser()
