"""Rollout inventory: how many nodes run each release, and in which state
(``GET /v1/releases/status``, a reader or operator credential).

A node runs the release its latest result records (``results.release_*``, migration 0012):
what its quoted boot matched. One query groups the nodes by that release and by their state
as of now (a trusted node whose deadline passed counts as untrusted, as everywhere else). A
node without a result, whose boot matched no release, or whose latest result predates 0012
counts under ``release`` null.

:func:`effective_state_sql` is that state as SQL, shared with the fleet API (fleet.py).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Any

from fastapi import APIRouter, Request
from sqlalchemy import ColumnElement, String, case, false, func, literal, or_, select
from sqlalchemy.orm import Session

from stockade.verifier.models import Node, Result
from stockade.verifier.nodes import release_json
from stockade.verifier.operator_auth import ReaderActor
from stockade.verifier.service import service_of
from stockade.verifier.states import NodeState
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["operator"])


def effective_state_sql(now: datetime) -> ColumnElement[str]:
    """:func:`stockade.verifier.states.effective_state` in SQL, for counts and filters: a
    trusted node whose ``trusted_until`` passed (or is null) as of ``now`` reads as
    ``untrusted``; every other node as its stored state."""
    stale = (Node.state == NodeState.TRUSTED.value) & or_(
        Node.trusted_until.is_(None), Node.trusted_until <= now
    )
    return case((stale, literal(NodeState.UNTRUSTED.value, String)), else_=Node.state)


def effective_state_is(states: Iterable[str], now: datetime) -> ColumnElement[bool]:
    """``effective_state_sql(now)`` is one of ``states``. Only a stored ``trusted`` reads
    otherwise, so every other state is a condition on the stored (indexed) ``state``: a
    filter on failed or revoked nodes reads those only. Trusted and untrusted (stored trusted
    or untrusted: most of a fleet, where that index selects nearly every node) go through
    :func:`effective_state_sql`, so the database walks the nodes in the page's order and
    stops when the page is full."""
    wanted = set(states)
    computed = sorted(wanted & {NodeState.TRUSTED.value, NodeState.UNTRUSTED.value})
    stored = sorted(wanted - set(computed))
    either: list[ColumnElement[bool]] = []
    if stored:
        either.append(Node.state.in_(stored))
    if computed:
        either.append(effective_state_sql(now).in_(computed))
    return or_(false(), *either)


def release_inventory(session: Session, now: datetime) -> list[dict[str, Any]]:
    """``[{"release": {name, version, security_version, digest} | null, "nodes": count,
    "states": {state: count}}]``, the releases by name, version and security version, nodes
    without a release last; one GROUP BY."""
    # The state is computed in a subquery and grouped outside: PostgreSQL does not see two
    # copies of an expression with bound parameters (SELECT and GROUP BY) as one.
    latest = (
        select(
            Result.release_name,
            Result.release_version,
            Result.release_security_version,
            Result.release_digest,
            effective_state_sql(now).label("state"),
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
    rows = session.execute(query).all()
    groups: dict[tuple[Any, ...], dict[str, int]] = {}
    for name, version, security_version, digest, node_state, count in rows:
        release = (name, version, security_version, digest) if name is not None else (None,) * 4
        states = groups.setdefault(release, {})
        states[str(node_state)] = states.get(str(node_state), 0) + int(count)
    return [
        {
            "release": release_json(*release),
            "nodes": sum(states.values()),
            "states": dict(sorted(states.items())),
        }
        for release, states in sorted(groups.items(), key=lambda item: _order(item[0]))
    ]


@router.get("/v1/releases/status")
def release_status(request: Request, _actor: ReaderActor) -> dict[str, Any]:
    """``{"as_of", "nodes": total, "releases": [{"release": {name, version,
    security_version, digest} | null, "nodes": count, "states": {state: count}}]}``, the
    releases by name, version and security version, nodes without a release last."""
    service = service_of(request)
    now = service.now()
    with service.sessions() as session:
        releases = release_inventory(session, now)
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
