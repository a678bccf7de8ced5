"""The fleet API: the dashboard's door onto the whole fleet, read-only.

- ``GET /v1/fleet/summary``: counts per state and per release, the nodes failing now, the
  trusted nodes whose trust runs out soonest, the latest transitions and the log's head;
- ``GET /v1/fleet/nodes``: the nodes a filter selects (``state``, ``release``, ``label``,
  ``name``), a page at a time, in name order, with keyset paging (``after``: the previous
  page's ``next``);
- ``GET /v1/fleet/nodes/{node_id}/membership``: a node's cluster certificate and the
  *names* of the secrets granted or released to it (never a value or a sealed blob).

Who may knock: a reader or operator credential, as a bearer token or as the browser's
session cookie (``ReaderActor``); nothing here changes state. Every answer is
``Cache-Control: no-store``.

Every query parameter is checked before the database sees it, each refusal a 400 naming the
parameter (``state``, ``release``, ``label``, ``name``, ``after``, ``limit``; ``query`` for a
parameter that is unknown or given twice). Filters, counts and ordering are SQL, bound
parameters only (SQLite and PostgreSQL), so a page costs one count and one indexed range read
whatever the fleet's size. States are effective: a trusted node whose deadline passed reads
as untrusted (``releases.effective_state_sql``, the SQL twin of ``states.effective_state``).

The cursor is ``base64url(JSON [name, node id])`` of the last node of a page: the next page
starts strictly after it, so nodes added or removed between pages neither repeat nor push
others out. It carries only a position in a list every reader may read, so it is not signed;
it is validated (canonical encoding only) and compared as bound values.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any

from fastapi import APIRouter, Query, Request, Response
from sqlalchemy import JSON, ColumnElement, Row, Select, and_, func, or_, select, type_coerce
from sqlalchemy.orm import QueryableAttribute, Session

from stockade.cluster.grants import Selector, granted, parse_labels
from stockade.errors import InputError
from stockade.verifier.errors import BadRequest, NotFound, VerifierError
from stockade.verifier.events import event_json, sequence_events
from stockade.verifier.models import (
    Event,
    Node,
    NodeCertificate,
    Result,
    SecretGrant,
    SecretRelease,
)
from stockade.verifier.nodes import RELEASE_COLUMNS, NodeId, release_json
from stockade.verifier.operator_auth import ReaderActor
from stockade.verifier.releases import effective_state_is, effective_state_sql, release_inventory
from stockade.verifier.service import Service, service_of
from stockade.verifier.states import NodeState
from stockade.verifier.wire import rfc3339

router = APIRouter(tags=["fleet"])

Order = tuple[ColumnElement[Any] | QueryableAttribute[Any], ...]

DEFAULT_PAGE = 50
MAX_PAGE = 200
SUMMARY_NODES = 10  # failing, stale_soonest
SUMMARY_TRANSITIONS = 50
MAX_NAME = 255  # a node name's column
MAX_NODE_ID = 64
MAX_RELEASE = 128 + 1 + 128  # NAME@VERSION, each printable ASCII up to 128 characters
MAX_RELEASE_AT = 8  # each '@' is a place NAME@VERSION may split
MAX_LABEL = 255 + 1 + 63  # key=value, Kubernetes label syntax
# base64url of the JSON [name, id], every character escaped (a \uXXXX pair) at worst.
MAX_CURSOR = 4 * ((MAX_NAME * 12 + MAX_NODE_ID * 12 + 16) // 3 + 1)
NO_RELEASE = "none"
NO_STORE = "no-store"

STATES = tuple(state.value for state in NodeState)
FAILING = (NodeState.UNTRUSTED.value, NodeState.FAILED.value)
# Names are unique (ix_nodes_name): name order is name-then-id order, and an index walk.
BY_NAME: Order = (Node.name,)
FAILING_ORDER: Order = (
    Result.created_at.desc().nulls_last(),
    Node.name,
)
STALE_ORDER: Order = (Node.trusted_until, Node.name)
NODE_FILTERS = frozenset({"state", "release", "label", "name", "after", "limit"})

_LIMIT = re.compile(r"^[0-9]{1,3}$")
_CURSOR = re.compile(r"^[A-Za-z0-9_-]+$")
_RELEASE = re.compile(r"^[\x20-\x7e]+$")


# -- parameters --------------------------------------------------------------------------


def _only(request: Request, allowed: frozenset[str]) -> None:
    """400 ``query`` for a parameter the route does not take, or one given twice (which of
    the two would apply is a guess this API does not make)."""
    seen: set[str] = set()
    for key, _value in request.query_params.multi_items():
        if key not in allowed:
            known = ", ".join(sorted(allowed)) or "none"
            raise BadRequest(f"unknown query parameter {key[:40]!r} (known: {known})", code="query")
        if key in seen:
            raise BadRequest(f"query parameter {key!r} is given twice", code="query")
        seen.add(key)


def _given(text: str | None) -> str | None:
    """An empty parameter (a form's blank field) filters nothing."""
    return text if text else None


def parse_limit(text: str | None) -> int:
    """``limit``: 1 to ``MAX_PAGE`` (default ``DEFAULT_PAGE``); 400 ``limit`` otherwise."""
    if text is None or text == "":
        return DEFAULT_PAGE
    if not _LIMIT.match(text) or not 1 <= int(text) <= MAX_PAGE:
        raise BadRequest(
            f"limit: {text[:20]!r} is not a whole number from 1 to {MAX_PAGE}", code="limit"
        )
    return int(text)


def _safe_text(text: str) -> bool:
    """Text a database can compare: no NUL (PostgreSQL refuses it) and no lone surrogate
    (not encodable as UTF-8)."""
    if "\x00" in text:
        return False
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def encode_cursor(name: str, node_id: str) -> str:
    """The position after the node ``(name, node_id)``: url-safe, no padding."""
    raw = json.dumps([name, node_id], ensure_ascii=True, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


def decode_cursor(text: str) -> tuple[str, str]:
    """``(name, node_id)`` from a cursor :func:`encode_cursor` made; 400 ``after`` for
    anything else (another encoding of the same position included)."""
    refused = BadRequest(
        "after: not a cursor of this API (pass the previous page's next unchanged)",
        code="after",
    )
    if len(text) > MAX_CURSOR or not _CURSOR.match(text):
        raise refused
    try:
        raw = base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
        value = json.loads(raw)
    except (binascii.Error, ValueError, RecursionError):
        raise refused from None
    if not (
        isinstance(value, list)
        and len(value) == 2
        and all(isinstance(part, str) and _safe_text(part) for part in value)
    ):
        raise refused
    name, node_id = value
    if not (0 < len(name) <= MAX_NAME and 0 < len(node_id) <= MAX_NODE_ID):
        raise refused
    if encode_cursor(name, node_id) != text:
        raise refused
    return name, node_id


@dataclass(frozen=True)
class NodeFilter:
    """What ``GET /v1/fleet/nodes`` selects; each field None when not filtered."""

    state: str | None = None
    release: str | None = None
    label: tuple[str, str] | None = None
    name: str | None = None

    @classmethod
    def parse(
        cls, state: str | None, release: str | None, label: str | None, name: str | None
    ) -> NodeFilter:
        """From the query parameters; a 400 naming the first that is not valid."""
        if state is not None and state not in STATES:
            raise BadRequest(
                f"state: {state[:40]!r} is not one of {', '.join(STATES)}", code="state"
            )
        if release is not None and (
            len(release) > MAX_RELEASE
            or not _RELEASE.match(release)
            or release.count("@") > MAX_RELEASE_AT
        ):
            raise BadRequest(
                f"release: give NAME, NAME@VERSION or {NO_RELEASE} (printable ASCII, at most "
                f"{MAX_RELEASE} characters, at most {MAX_RELEASE_AT} '@')",
                code="release",
            )
        pair = None
        if label is not None:
            if len(label) > MAX_LABEL:
                raise BadRequest(f"label: at most {MAX_LABEL} characters", code="label")
            try:
                ((key, value),) = parse_labels([label]).items()
            except InputError as error:
                raise BadRequest(str(error), code="label") from None
            pair = (key, value)
        if name is not None and (len(name) > MAX_NAME or not name.isprintable()):
            raise BadRequest(f"name: printable text, at most {MAX_NAME} characters", code="name")
        return cls(state, release, pair, name)

    @property
    def reads_results(self) -> bool:
        """Whether the filter needs the latest result joined (the release filter)."""
        return self.release is not None

    def conditions(self, now: datetime) -> list[ColumnElement[bool]]:
        """The WHERE clauses, over ``nodes`` outer-joined to their latest result."""
        where: list[ColumnElement[bool]] = []
        if self.state is not None:
            where.append(effective_state_is([self.state], now))
        if self.release == NO_RELEASE:
            where.append(Result.release_name.is_(None))
        elif self.release is not None:
            where.append(release_is(self.release))
        if self.label is not None:
            key, value = self.label
            where.append(Node.labels[key].as_string() == value)
        if self.name is not None:
            # LIKE with '%', '_' and the escape character escaped: matched literally.
            where.append(Node.name.icontains(self.name, autoescape=True))
        return where


def release_is(text: str) -> ColumnElement[bool]:
    """The latest result's release is ``text``: a release of that name, or ``NAME@VERSION``
    at any '@' (a release name may itself hold '@', so no split is guessed: each is tried)."""
    either: list[ColumnElement[bool]] = [Result.release_name == text]
    for at in (index for index, character in enumerate(text) if character == "@"):
        either.append(
            and_(Result.release_name == text[:at], Result.release_version == text[at + 1 :])
        )
    return or_(*either)


# -- rows ----------------------------------------------------------------------------------


def node_rows(now: datetime) -> Select[Any]:
    """NodeRow columns: nodes outer-joined to their latest result (one row per node)."""
    first_reason = type_coerce(Result.reasons, JSON)[0].as_string()
    return (
        select(
            Node.id.label("node_id"),
            Node.name,
            effective_state_sql(now).label("state"),
            Node.labels,
            Node.trusted_until,
            Result.id.label("result_id"),
            Result.status,
            Result.created_at,
            first_reason.label("reason"),
            *RELEASE_COLUMNS,
        )
        .select_from(Node)
        .outerjoin(Result, Result.id == Node.latest_result_id)
    )


def _matching(where: list[ColumnElement[bool]], reads_results: bool) -> Select[Any]:
    """The ids of the nodes ``where`` selects; joined to their latest result only when the
    conditions or the order read it."""
    query = select(Node.id).select_from(Node)
    if reads_results:
        query = query.outerjoin(Result, Result.id == Node.latest_result_id)
    return query.where(*where)


def _rows(session: Session, now: datetime, keys: Select[Any], order: Order) -> list[Row[Any]]:
    """The NodeRows of the nodes ``keys`` (a limited :func:`_matching`) selects, in
    ``order``: the database filters, orders and limits on the nodes' own columns and
    indexes first, and reads each row's result and labels for the page only."""
    return list(session.execute(node_rows(now).where(Node.id.in_(keys)).order_by(*order)).all())


def node_row_json(row: Row[Any]) -> dict[str, Any]:
    """``{"node_id", "name", "state" (effective), "labels", "trusted_until", "release",
    "last_result": {"result_id", "status", "created_at", "reason"} | null}``."""
    return {
        "node_id": row.node_id,
        "name": row.name,
        "state": row.state,
        "labels": dict(row.labels or {}),
        "trusted_until": rfc3339(row.trusted_until) if row.trusted_until else None,
        "release": release_json(
            row.release_name,
            row.release_version,
            row.release_security_version,
            row.release_digest,
        ),
        "last_result": None
        if row.result_id is None
        else {
            "result_id": row.result_id,
            "status": row.status,
            "created_at": rfc3339(row.created_at),
            "reason": row.reason,
        },
    }


def _no_store(response: Response) -> None:
    response.headers["Cache-Control"] = NO_STORE


# -- routes --------------------------------------------------------------------------------


@router.get("/v1/fleet/nodes")
def fleet_nodes(
    request: Request,
    response: Response,
    _actor: ReaderActor,
    state: Annotated[str | None, Query(description="effective state")] = None,
    release: Annotated[str | None, Query(description=f"NAME, NAME@VERSION or {NO_RELEASE}")] = None,
    label: Annotated[str | None, Query(description="key=value")] = None,
    name: Annotated[str | None, Query(description="substring of the name, any case")] = None,
    after: Annotated[str | None, Query(description="the previous page's next")] = None,
    limit: Annotated[str | None, Query(description=f"1 to {MAX_PAGE}")] = None,
) -> dict[str, Any]:
    """``{"nodes": [NodeRow], "total": nodes matching the filters, "next": cursor | null}``,
    by name then node id; ``next`` is null on the last page."""
    _only(request, NODE_FILTERS)
    selected = NodeFilter.parse(_given(state), _given(release), _given(label), _given(name))
    page = parse_limit(limit)
    position = decode_cursor(after) if after else None
    service = service_of(request)
    now = service.now()
    where = selected.conditions(now)
    count = _matching(where, selected.reads_results).with_only_columns(func.count())
    keys = _matching(where, selected.reads_results)
    if position is not None:
        after_name, after_id = position
        # ``name >= n`` bounds the range read from the name index; the id breaks a tie.
        keys = keys.where(Node.name >= after_name, or_(Node.name > after_name, Node.id > after_id))
    with service.sessions() as session:
        total = session.execute(count).scalar_one()
        rows = _rows(session, now, keys.order_by(*BY_NAME).limit(page + 1), BY_NAME)
    _no_store(response)
    last = rows[page - 1] if len(rows) > page else None
    return {
        "nodes": [node_row_json(row) for row in rows[:page]],
        "total": int(total),
        "next": None if last is None else encode_cursor(last.name, last.node_id),
    }


@router.get("/v1/fleet/summary")
def fleet_summary(request: Request, response: Response, _actor: ReaderActor) -> dict[str, Any]:
    """``{"as_of", "nodes", "states": {every state: count}, "releases": [as GET
    /v1/releases/status], "failing": [NodeRow] (untrusted or failed, newest latest result
    first), "stale_soonest": [NodeRow] (trusted, trust ending soonest first), "transitions":
    [the newest events], "log": {"origin", "size"} | null}``."""
    _only(request, frozenset())
    service = service_of(request)
    now = service.now()
    # As the event stream does: committed events get their position (the public id) first.
    sequence_events(service.engine)
    with service.sessions() as session:
        releases = release_inventory(session, now)
        failing = _rows(
            session,
            now,
            _matching([effective_state_is(FAILING, now)], reads_results=True)
            .order_by(*FAILING_ORDER)
            .limit(SUMMARY_NODES),
            FAILING_ORDER,
        )
        stale_soonest = _rows(
            session,
            now,
            _matching([effective_state_is([NodeState.TRUSTED.value], now)], reads_results=False)
            .order_by(*STALE_ORDER)
            .limit(SUMMARY_NODES),
            STALE_ORDER,
        )
        transitions = [
            event_json(event)
            for event in session.scalars(
                select(Event)
                .where(Event.position.is_not(None))
                .order_by(Event.position.desc())
                .limit(SUMMARY_TRANSITIONS)
            )
        ]
    states = dict.fromkeys(STATES, 0)
    for entry in releases:
        for state, count in entry["states"].items():
            states[state] = states.get(state, 0) + count
    _no_store(response)
    return {
        "as_of": rfc3339(now),
        "nodes": sum(entry["nodes"] for entry in releases),
        "states": states,
        "releases": releases,
        "failing": [node_row_json(row) for row in failing],
        "stale_soonest": [node_row_json(row) for row in stale_soonest],
        "transitions": transitions,
        "log": _log_head(service),
    }


def _log_head(service: Service) -> dict[str, Any] | None:
    """The transparency log's current signed head, or None when the log refuses to sign
    (``log-corrupted``, ``log-state``): the rest of the summary still answers."""
    try:
        head = service.translog.signed_head()
    except VerifierError:
        return None
    return {"origin": service.translog.origin, "size": head.size}


@router.get("/v1/fleet/nodes/{node_id}/membership")
def fleet_membership(
    node_id: NodeId, request: Request, response: Response, _actor: ReaderActor
) -> dict[str, Any]:
    """``{"certificate": the newest cluster certificate issued to the node | null,
    "secrets": [{"name", "granted", "released_at"}]}``: the secrets a grant selects for the
    node now or that were released to it, by name; names only. 404 ``node``."""
    _only(request, frozenset())
    service = service_of(request)
    with service.sessions() as session:
        node = session.execute(select(Node.id, Node.labels).where(Node.id == node_id)).first()
        if node is None:
            raise NotFound(f"no node {node_id}", code="node")
        labels: dict[str, str] = dict(node.labels or {})
        certificate = session.execute(
            select(
                NodeCertificate.serial,
                NodeCertificate.not_before,
                NodeCertificate.not_after,
                NodeCertificate.key_name,
                NodeCertificate.result_id,
                NodeCertificate.created_at,
            )
            .where(NodeCertificate.node_id == node.id)
            .order_by(NodeCertificate.created_at.desc(), NodeCertificate.serial)
            .limit(1)
        ).first()
        # Only the selectors that could name this node: ``node:<id>`` and its labels.
        candidates = [str(Selector("node", node.id))] + [
            str(Selector("label", key, value)) for key, value in labels.items()
        ]
        selectors: dict[str, list[str]] = {}
        for secret_name, selector in session.execute(
            select(SecretGrant.secret_name, SecretGrant.selector).where(
                SecretGrant.selector.in_(candidates)
            )
        ):
            selectors.setdefault(secret_name, []).append(selector)
        released: dict[str, datetime] = {
            secret_name: time
            for secret_name, time in session.execute(
                select(SecretRelease.secret_name, func.max(SecretRelease.time))
                .where(SecretRelease.node_id == node.id)
                .group_by(SecretRelease.secret_name)
            )
        }
    secrets = [
        {
            "name": secret_name,
            "granted": granted(selectors.get(secret_name, []), node.id, labels) is not None,
            "released_at": rfc3339(released[secret_name]) if secret_name in released else None,
        }
        for secret_name in sorted(set(selectors) | set(released))
    ]
    _no_store(response)
    return {
        "certificate": None if certificate is None else _certificate_json(certificate),
        "secrets": secrets,
    }


def _certificate_json(row: Row[str, datetime, datetime, str, str, datetime]) -> dict[str, Any]:
    """What the verifier keeps of a certificate it issued (``node_certificates``): its serial,
    validity, when it was issued, ``key_name`` (the TPM name, hex, of the certified key) and
    ``result_id`` (the result it was issued under). The certificate itself is not kept."""
    return {
        "serial": row.serial,
        "not_before": rfc3339(row.not_before),
        "not_after": rfc3339(row.not_after),
        "issued_at": rfc3339(row.created_at),
        "key_name": row.key_name,
        "result_id": row.result_id,
    }
