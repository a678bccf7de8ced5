"""A node's standing: its state and latest result as of ``now``, the one check behind every
relying-party decision (node certificates, secret release, signed status).

Only a node whose latest result is affirming, unexpired, not revoked, and whose quote verified
is in good standing; anything else is refused with the result's reasons (fail closed).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from datetime import datetime

from sqlalchemy import Connection, select

from stockade.verifier.appraiser import Status
from stockade.verifier.errors import Forbidden, NotFound
from stockade.verifier.models import Node, Result
from stockade.verifier.states import NodeState, effective_state


@dataclass(frozen=True)
class Standing:
    node_id: str
    name: str
    labels: dict[str, str]
    ek_public: bytes
    ak_public: bytes
    state: str  # as of ``now`` (expired trust reads untrusted)
    revoked: bool
    result_id: str | None = None
    status: str | None = None
    not_after: datetime | None = None
    reasons: list[str] = field(default_factory=list)
    pcrs: dict[str, dict[str, str]] | None = None
    # The boot the latest verified quote came from (TPM resetCount, restartCount).
    boot: tuple[int, int] | None = None
    # TPM2B_PUBLIC of the node's channel key (secrets are sealed to it); None for a node
    # enrolled before the channel existed.
    channel_key_public: bytes | None = None

    def problem(self, now: datetime) -> str | None:
        """Why this node is not in good standing at ``now``; None when it is."""
        if self.revoked or self.state == NodeState.REVOKED:
            return "the node is revoked"
        if self.result_id is None or self.not_after is None:
            return "the node has no attestation result yet"
        if self.status != Status.AFFIRMING:
            return f"its latest result is {self.status}"
        if self.not_after <= now:
            return "its latest result expired (stale)"
        if self.state != NodeState.TRUSTED:
            return f"the node is {self.state}"
        if not self.pcrs:
            return "its latest result records no attested PCR values"
        return None

    def require_good(self, now: datetime, purpose: str) -> None:
        """Raise 403 ``untrusted`` naming the problem and the result's reasons."""
        problem = self.problem(now)
        if problem is None:
            return
        reasons = list(self.reasons) if self.status != Status.AFFIRMING else []
        detail = f"node {self.name} ({self.node_id}) gets no {purpose}: {problem}"
        if reasons:
            detail += f": {'; '.join(reasons)}"
        raise Forbidden(detail, code="untrusted", reasons=[problem, *reasons])


def node_standing(connection: Connection, node_id: str, now: datetime) -> Standing:
    node = connection.execute(
        select(
            Node.id,
            Node.name,
            Node.labels,
            Node.ek_public,
            Node.ak_public,
            Node.state,
            Node.trusted_until,
            Node.revoked,
            Node.latest_result_id,
            Node.last_reset_count,
            Node.last_restart_count,
            Node.channel_key_public,
        ).where(Node.id == node_id)
    ).first()
    if node is None:
        raise NotFound(f"no node {node_id}", code="node")
    state = effective_state(node, now)
    standing = Standing(
        node_id=node.id,
        name=node.name,
        labels=dict(node.labels or {}),
        ek_public=node.ek_public,
        ak_public=node.ak_public,
        state=state,
        revoked=node.revoked,
        boot=None
        if node.last_reset_count is None or node.last_restart_count is None
        else (node.last_reset_count, node.last_restart_count),
        channel_key_public=node.channel_key_public,
    )
    if node.latest_result_id is None:
        return standing
    result = connection.execute(
        select(Result.status, Result.not_after, Result.reasons, Result.pcrs).where(
            Result.id == node.latest_result_id
        )
    ).first()
    if result is None:
        return standing
    return replace(
        standing,
        result_id=node.latest_result_id,
        status=result.status,
        not_after=result.not_after,
        reasons=list(result.reasons or []),
        pcrs=result.pcrs,
    )
