"""Rollout inventory: how many nodes run each release, and in which state
(``GET /v1/releases/status``, a reader or operator credential).

A node runs the release its latest result records (``results.release_*``, migration 0012):
what its quoted boot matched. One query groups the nodes by that release and by their state
as of now (a trusted node whose deadline passed counts as untrusted, as everywhere else). A
node without a result, whose boot matched no release, or whose latest result predates 0012
counts under ``release`` null.
"""

from __future__ import annotations

from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import String, case, func, literal, or_, select

from stockade.verifier.models import Node, Result
from stockade.verifier.nodes import release_json
from stockade.verifier.operator_auth import ReaderActor
from stockade.verifier.service import service_of
from stockade.verifier.states import NodeState
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["operator"])


@router.get("/v1/releases/status")
def release_status(request: Request, _actor: ReaderActor) -> dict[str, Any]:
    """``{"as_of", "nodes": total, "releases": [{"release": {name, version,
    security_version, digest} | null, "nodes": count, "states": {state: count}}]}``, the
    releases by name, version and security version, nodes without a release last."""
    service = service_of(request)
    now = service.now()
    stale = Node.state == NodeState.TRUSTED.value
    state = case(
        (
            stale & or_(Node.trusted_until.is_(None), Node.trusted_until <= now),
            literal(NodeState.UNTRUSTED.value, String),
        ),
        else_=Node.state,
    ).label("state")
    # The state is computed in a subquery and grouped outside: PostgreSQL does not see two
    # copies of an expression with bound parameters (SELECT and GROUP BY) as one.
    latest = (
        select(
            Result.release_name,
            Result.release_version,
            Result.release_security_version,
            Result.release_digest,
            state,
        )
        .select_from(Node)
        .outerjoin(Result, Result.id == Node.latest_result_id)
        .subquery()
    )
    keys = (
        latest.c.release_name,
        latest.c.release_version,
        latest.c.release_security_version,
        latest.c.release_digest,
    )
    query = select(*keys, latest.c.state, func.count()).group_by(*keys, latest.c.state)
    with service.sessions() as session:
        rows = session.execute(query).all()
    groups: dict[tuple[Any, ...], dict[str, int]] = {}
    for name, version, security_version, digest, node_state, count in rows:
        release = (name, version, security_version, digest) if name is not None else (None,) * 4
        states = groups.setdefault(release, {})
        states[str(node_state)] = states.get(str(node_state), 0) + int(count)
    releases = [
        {
            "release": release_json(*release),
            "nodes": sum(states.values()),
            "states": dict(sorted(states.items())),
        }
        for release, states in sorted(groups.items(), key=lambda item: _order(item[0]))
    ]
    return {
        "as_of": rfc3339(now),
        "nodes": sum(entry["nodes"] for entry in releases),
        "releases": releases,
    }


def _order(release: tuple[Any, ...]) -> tuple[Any, ...]:
    name, version, security_version, digest = release
    if name is None:
        return (1, "", "", 0, "")
    return (0, name, version or "", security_version or 0, digest or "")
