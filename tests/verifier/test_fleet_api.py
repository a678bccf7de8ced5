"""The fleet API (``stockade.verifier.fleet``): ``GET /v1/fleet/summary``,
``GET /v1/fleet/nodes`` (filters, keyset paging) and ``GET /v1/fleet/nodes/{id}/membership``.

Nodes, results, certificates and secrets are stored straight into the database (the read
doors are under test here, not enrollment). Runs on SQLite, and on PostgreSQL when
``STOCKADE_TEST_DATABASE_URL`` is set."""

from __future__ import annotations

import base64
import json
import re
import uuid
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any, Protocol

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, select
from sqlalchemy.orm import Session
from verifier_support import operator_headers, reader_headers

from stockade.verifier.fleet import encode_cursor
from stockade.verifier.models import (
    Node,
    NodeCertificate,
    Result,
    Secret,
    SecretGrant,
    SecretRelease,
)
from stockade.verifier.operator_auth import SESSION_COOKIE
from stockade.verifier.releases import effective_state_is, effective_state_sql
from stockade.verifier.service import Service
from stockade.verifier.states import NodeState, effective_state
from support.nodes import placeholder_node

OS_1 = ("stockade-os", "1.0.0", 3, "11" * 32)
OS_2 = ("stockade-os", "1.1.0", 4, "22" * 32)
EDGE = ("edge@lab", "2", 1, "33" * 32)  # a release name that holds '@'
SEALED = b"SEALED-BLOB-NEVER-SHOWN"

ROUTES = ["/v1/fleet/summary", "/v1/fleet/nodes", "/v1/fleet/nodes/{node}/membership"]


class ManualClock(Protocol):
    """The verifier's clock in these tests (conftest.py ``clock``)."""

    def advance(self, seconds: float) -> None: ...


@dataclass
class Spec:
    """One stored node: its stored state, trust deadline (minutes from now), release,
    labels and latest result."""

    state: str
    until: float | None = None
    release: tuple[str, str, int, str] | None = None
    labels: dict[str, str] = field(default_factory=dict)
    status: str | None = "affirming"  # None: no result at all
    reasons: list[str] = field(default_factory=list)
    age: float = 0.0  # minutes before now the latest result was made


def service_of(client: TestClient) -> Service:
    service: Service = client.app.state.service  # type: ignore[attr-defined]
    return service


def add_nodes(client: TestClient, specs: dict[str, Spec]) -> dict[str, str]:
    """Store the nodes; their ids by name."""
    service = service_of(client)
    now = service.now()
    ids: dict[str, str] = {}
    with Session(service.engine) as session, session.begin():
        for name, spec in specs.items():
            node_id = str(uuid.uuid4())
            ids[name] = node_id
            until = None if spec.until is None else now + timedelta(minutes=spec.until)
            session.add(
                placeholder_node(
                    node_id, name, now, state=spec.state, trusted_until=until, labels=spec.labels
                )
            )
            session.flush()
            if spec.status is None:
                continue
            release = spec.release or (None, None, None, None)
            result = Result(
                id=str(uuid.uuid4()),
                node_id=node_id,
                status=spec.status,
                ear="not-an-ear",
                reasons=spec.reasons,
                policy_ref="test@1",
                not_after=now + timedelta(minutes=5),
                created_at=now - timedelta(minutes=spec.age),
                release_name=release[0],
                release_version=release[1],
                release_security_version=release[2],
                release_digest=release[3],
            )
            session.add(result)
            session.flush()
            session.get_one(Node, node_id).latest_result_id = result.id
    return ids


FLEET = {
    "web-1": Spec("trusted", 5, OS_1, {"role": "web", "example.com/zone": "a"}),
    "web-2": Spec("trusted", 2, OS_2, {"role": "web", "example.com/zone": "b"}),
    # Trusted in the table, its deadline passed: it reads as untrusted everywhere.
    "web-3": Spec("trusted", -1, OS_2, {"role": "web"}, age=3),
    "db-1": Spec(
        "failed",
        None,
        None,
        {"role": "db"},
        "contraindicated",
        ["pcr 7 differs", "secure boot off"],
        age=1,
    ),
    "db-2": Spec("untrusted", None, OS_1, {"role": "db"}, "contraindicated", ["stale"], age=2),
    "edge-1": Spec("trusted", 9, EDGE, {"role": "edge"}),
    "new-1": Spec("enrolled", status=None),
    "gone-1": Spec("revoked", None, OS_1),
    "wait-1": Spec("pending", status=None),
    # Names the name filter must match literally ('_' and '%' are LIKE wildcards).
    "odd_name": Spec("enrolled", status=None),
    "oddxname": Spec("enrolled", status=None),
    "pct%sign": Spec("enrolled", status=None),
}


def get(client: TestClient, path: str, **params: str) -> httpx.Response:
    return client.get(path, params=params, headers=reader_headers(client))


def ok(client: TestClient, path: str, **params: str) -> Any:
    answer = get(client, path, **params)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    return answer.json()


def names(client: TestClient, **params: str) -> list[str]:
    page = ok(client, "/v1/fleet/nodes", **params)
    assert page["total"] == len(page["nodes"]) and page["next"] is None
    return [node["name"] for node in page["nodes"]]


def refused(answer: httpx.Response, status: int, code: str) -> None:
    assert answer.status_code == status, answer.text
    assert answer.json()["error"] == code, answer.text
    assert "Traceback" not in answer.text


@pytest.fixture
def fleet(client: TestClient) -> dict[str, str]:
    return add_nodes(client, FLEET)


def test_every_node_in_name_order_with_its_latest_result(
    client: TestClient, fleet: dict[str, str]
) -> None:
    page = ok(client, "/v1/fleet/nodes")
    assert page["total"] == len(FLEET) and page["next"] is None
    assert [node["name"] for node in page["nodes"]] == sorted(FLEET)
    rows = {node["name"]: node for node in page["nodes"]}
    db = rows["db-1"]
    assert db["node_id"] == fleet["db-1"]
    assert db["state"] == "failed" and db["labels"] == {"role": "db"}
    assert db["release"] is None and db["trusted_until"] is None
    assert db["last_result"]["status"] == "contraindicated"
    assert db["last_result"]["reason"] == "pcr 7 differs"  # the first reason only
    assert set(db["last_result"]) == {"result_id", "status", "created_at", "reason"}
    web = rows["web-1"]
    assert web["state"] == "trusted" and web["trusted_until"].endswith("Z")
    assert web["release"] == {"name": "stockade-os", "version": "1.0.0",
                              "security_version": 3, "digest": "11" * 32}  # fmt: skip
    assert web["last_result"]["reason"] is None
    assert rows["new-1"]["last_result"] is None and rows["new-1"]["release"] is None
    assert set(web) == {"node_id", "name", "state", "labels", "trusted_until", "release",
                        "last_result"}  # fmt: skip


def test_state_filter_reads_the_effective_state(
    client: TestClient, fleet: dict[str, str], clock: ManualClock
) -> None:
    assert names(client, state="trusted") == ["edge-1", "web-1", "web-2"]
    # web-3 is stored trusted, but its trust ran out: untrusted, not trusted.
    assert names(client, state="untrusted") == ["db-2", "web-3"]
    untrusted = {
        row["name"]: row for row in ok(client, "/v1/fleet/nodes", state="untrusted")["nodes"]
    }
    assert untrusted["web-3"]["state"] == "untrusted"
    assert names(client, state="failed") == ["db-1"]
    assert names(client, state="revoked") == ["gone-1"]
    assert names(client, state="pending") == ["wait-1"]
    assert names(client, state="enrolled") == ["new-1", "odd_name", "oddxname", "pct%sign"]
    # Time passes: web-2's trust (two minutes) runs out without any write.
    clock.advance(150)
    assert names(client, state="trusted") == ["edge-1", "web-1"]
    assert names(client, state="untrusted") == ["db-2", "web-2", "web-3"]


def test_release_filter(client: TestClient, fleet: dict[str, str]) -> None:
    assert names(client, release="stockade-os") == ["db-2", "gone-1", "web-1", "web-2", "web-3"]
    assert names(client, release="stockade-os@1.1.0") == ["web-2", "web-3"]
    assert names(client, release="stockade-os@9") == []
    # No release: no result, or a boot that matched none.
    assert names(client, release="none") == [
        "db-1", "new-1", "odd_name", "oddxname", "pct%sign", "wait-1"
    ]  # fmt: skip
    # A name holding '@' is found by its name, and by name@version.
    assert names(client, release="edge@lab") == ["edge-1"]
    assert names(client, release="edge@lab@2") == ["edge-1"]
    assert names(client, release="edge") == []


def test_label_filter(client: TestClient, fleet: dict[str, str]) -> None:
    assert names(client, label="role=web") == ["web-1", "web-2", "web-3"]
    assert names(client, label="example.com/zone=b") == ["web-2"]
    assert names(client, label="role=nope") == []
    assert names(client, label="missing=web") == []


def test_name_filter_is_a_literal_substring_in_any_case(
    client: TestClient, fleet: dict[str, str]
) -> None:
    assert names(client, name="WEB") == ["web-1", "web-2", "web-3"]
    assert names(client, name="eB-") == ["web-1", "web-2", "web-3"]
    # LIKE wildcards are matched as themselves.
    assert names(client, name="d_n") == ["odd_name"]
    assert names(client, name="_") == ["odd_name"]
    assert names(client, name="%") == ["pct%sign"]
    assert names(client, name="t%s") == ["pct%sign"]
    assert names(client, name="%%") == []
    assert names(client, name="\\") == []


def test_filters_combine(client: TestClient, fleet: dict[str, str]) -> None:
    assert names(client, state="untrusted", label="role=web") == ["web-3"]
    assert names(client, state="untrusted", release="stockade-os@1.0.0") == ["db-2"]
    assert names(client, label="role=web", release="stockade-os@1.1.0", name="3") == ["web-3"]
    assert names(client, state="trusted", label="role=db") == []
    # Empty parameters (a form's blank fields) filter nothing.
    assert len(names(client, state="", release="", label="", name="")) == len(FLEET)


def test_pages_have_no_duplicates_or_gaps_while_nodes_are_added(client: TestClient) -> None:
    add_nodes(client, {f"n-{number:02d}": Spec("enrolled", status=None) for number in range(11)})
    seen: list[str] = []
    page = ok(client, "/v1/fleet/nodes", limit="4")
    assert page["total"] == 11 and len(page["nodes"]) == 4
    seen += [node["name"] for node in page["nodes"]]
    # Between pages: one node lands before the cursor, one after it.
    add_nodes(client, {"n-00a": Spec("enrolled", status=None),
                       "n-07a": Spec("trusted", 5, OS_1)})  # fmt: skip
    totals = []
    while page["next"] is not None:
        assert re.fullmatch(r"[A-Za-z0-9_-]+", page["next"])
        page = ok(client, "/v1/fleet/nodes", limit="4", after=page["next"])
        totals.append(page["total"])
        seen += [node["name"] for node in page["nodes"]]
    assert totals == [13] * len(totals)
    assert len(seen) == len(set(seen))
    expected = sorted([f"n-{number:02d}" for number in range(11)] + ["n-07a"])
    assert seen == expected  # the later node after the cursor is read, the earlier is not
    # Paging with a filter: the cursor is a position, the filter applies on every page.
    first = ok(client, "/v1/fleet/nodes", limit="1", state="trusted")
    assert [node["name"] for node in first["nodes"]] == ["n-07a"] and first["next"] is None
    # An exact multiple of the page: the last full page says there is no next.
    assert ok(client, "/v1/fleet/nodes", limit="13")["next"] is None
    assert ok(client, "/v1/fleet/nodes", limit="12")["next"] is not None


def test_a_cursor_is_a_position_even_after_its_node_is_gone(client: TestClient) -> None:
    add_nodes(client, {name: Spec("enrolled", status=None) for name in ("a-1", "b-1", "c-1")})
    cursor = encode_cursor("b-0", str(uuid.uuid4()))  # no such node: the page starts after it
    assert [n["name"] for n in ok(client, "/v1/fleet/nodes", after=cursor)["nodes"]] == [
        "b-1",
        "c-1",
    ]


def _b64(raw: bytes, pad: bool = False) -> str:
    text = base64.urlsafe_b64encode(raw).decode()
    return text if pad else text.rstrip("=")


@pytest.mark.parametrize(
    "cursor",
    [
        "!!!",
        "a b",
        "Zm9v",  # "foo": not JSON
        _b64(b'{"name": "a", "id": "b"}'),
        _b64(b'["a"]'),
        _b64(b'["a", "b", "c"]'),
        _b64(b"[1, 2]"),
        _b64(b'["", "id"]'),
        _b64(b'["ab","c"]', pad=True),  # padding: not the canonical form
        _b64(b'["a", "b"]'),  # a space: not the canonical form
        _b64(b'["\\u0000", "x"]'),  # NUL: PostgreSQL would refuse it
        _b64(b'["\\ud800", "x"]'),  # a lone surrogate: not UTF-8
        _b64(b'["a", "' + b"x" * 65 + b'"]'),
        _b64(b"\xff\xfe\x00"),
        _b64(b"[" * 5000),
        "A" * 5000,
        encode_cursor("a", "b") + "A",
    ],
)
def test_a_forged_or_malformed_cursor_is_a_400(client: TestClient, cursor: str) -> None:
    refused(get(client, "/v1/fleet/nodes", after=cursor), 400, "after")


def test_a_forged_cursor_is_only_a_position(client: TestClient, fleet: dict[str, str]) -> None:
    """A well-formed cursor someone wrote is compared as a value, never run as SQL."""
    for name in ("' OR 1=1 --", "web-2'; DROP TABLE nodes; --", "%", "\\"):
        page = ok(client, "/v1/fleet/nodes", after=encode_cursor(name, "x"))
        assert all(node["name"] > name for node in page["nodes"])
    assert ok(client, "/v1/fleet/nodes")["total"] == len(FLEET)


@pytest.mark.parametrize(
    "label",
    ["role", "=web", "-role=web", "role-=web", "ro le=web", "role=w b", "role=-web",
     "a" * 300 + "=x", "role=" + "v" * 64, "röle=web", "role=web\x00"],
)  # fmt: skip
def test_a_bad_label_is_a_400(client: TestClient, label: str) -> None:
    refused(get(client, "/v1/fleet/nodes", label=label), 400, "label")


@pytest.mark.parametrize(
    ("params", "code"),
    [
        ({"state": "TRUSTED"}, "state"),
        ({"state": "stale"}, "state"),
        ({"release": "os\x01"}, "release"),
        ({"release": "x" * 300}, "release"),
        ({"release": "système"}, "release"),
        ({"release": "a@" * 9 + "b"}, "release"),
        ({"name": "a\x00b"}, "name"),
        ({"name": "a\nb"}, "name"),
        ({"name": "n" * 256}, "name"),
        ({"limit": "0"}, "limit"),
        ({"limit": "201"}, "limit"),
        ({"limit": "-1"}, "limit"),
        ({"limit": "1.5"}, "limit"),
        ({"limit": "ten"}, "limit"),
        ({"limit": "0000050"}, "limit"),
        ({"sort": "name"}, "query"),
    ],
)
def test_bad_parameters_are_typed_400s(
    client: TestClient, params: dict[str, str], code: str
) -> None:
    refused(get(client, "/v1/fleet/nodes", **params), 400, code)


def test_a_parameter_given_twice_or_unknown_is_refused(client: TestClient) -> None:
    headers = reader_headers(client)
    refused(client.get("/v1/fleet/nodes?state=trusted&state=failed", headers=headers), 400,
            "query")  # fmt: skip
    refused(client.get("/v1/fleet/summary?x=1", headers=headers), 400, "query")
    refused(client.get(f"/v1/fleet/nodes/{uuid.uuid4()}/membership?x=1", headers=headers), 400,
            "query")  # fmt: skip


def test_limits(client: TestClient) -> None:
    add_nodes(client, {f"m-{number:03d}": Spec("enrolled", status=None) for number in range(205)})
    assert len(ok(client, "/v1/fleet/nodes")["nodes"]) == 50
    assert len(ok(client, "/v1/fleet/nodes", limit="200")["nodes"]) == 200
    assert len(ok(client, "/v1/fleet/nodes", limit="1")["nodes"]) == 1


def test_summary(client: TestClient, fleet: dict[str, str]) -> None:
    # One transition by an operator, so the summary has an event with an actor.
    revoked = client.post(
        f"/v1/nodes/{fleet['db-1']}/revoke",
        json={"reason": "disk swap"},
        headers=operator_headers(service_of(client).config.data_dir),
    )
    assert revoked.status_code == 200, revoked.text
    summary = ok(client, "/v1/fleet/summary")
    assert summary["nodes"] == len(FLEET)
    assert summary["states"] == {"pending": 1, "enrolled": 4, "trusted": 3, "untrusted": 2,
                                 "failed": 0, "revoked": 2}  # fmt: skip
    status = get(client, "/v1/releases/status").json()
    assert summary["releases"] == status["releases"]
    # Failing: untrusted or failed, newest latest result first (web-3's is 3 minutes old).
    assert [row["name"] for row in summary["failing"]] == ["db-2", "web-3"]
    assert summary["failing"][1]["state"] == "untrusted"
    # Trusted, the soonest end of trust first; web-3's trust already ended.
    assert [row["name"] for row in summary["stale_soonest"]] == ["web-2", "web-1", "edge-1"]
    # Newest first; the stale sweeper may have marked web-3 meanwhile (its own event).
    ids = [event["id"] for event in summary["transitions"]]
    assert ids == sorted(ids, reverse=True) and all(isinstance(i, int) for i in ids)
    (transition,) = [event for event in summary["transitions"] if event["to"] == "revoked"]
    assert {event["name"] for event in summary["transitions"]} <= {"db-1", "web-3"}
    assert transition == {
        "id": transition["id"], "node_id": fleet["db-1"], "name": "db-1", "from": "failed",
        "to": "revoked", "reason": "disk swap", "time": transition["time"],
        "actor": "operator", "result_id": None,
    }  # fmt: skip
    assert summary["log"]["origin"] and isinstance(summary["log"]["size"], int)
    assert summary["as_of"].endswith("Z")


def test_summary_lists_are_bounded_and_ordered(client: TestClient) -> None:
    specs = {f"f-{number:02d}": Spec("failed", status="contraindicated", age=number)
             for number in range(12)}  # fmt: skip
    specs |= {f"t-{number:02d}": Spec("trusted", 30 - number) for number in range(12)}
    add_nodes(client, specs)
    summary = ok(client, "/v1/fleet/summary")
    assert [row["name"] for row in summary["failing"]] == [f"f-{n:02d}" for n in range(10)]
    assert [row["name"] for row in summary["stale_soonest"]] == [
        f"t-{n:02d}" for n in range(11, 1, -1)
    ]


def test_summary_of_an_empty_fleet(client: TestClient) -> None:
    summary = ok(client, "/v1/fleet/summary")
    assert summary["nodes"] == 0 and summary["releases"] == []
    assert summary["states"] == dict.fromkeys(
        ["pending", "enrolled", "trusted", "untrusted", "failed", "revoked"], 0
    )
    assert summary["failing"] == summary["stale_soonest"] == summary["transitions"] == []


def test_membership_names_secrets_and_never_their_values(
    client: TestClient, fleet: dict[str, str]
) -> None:
    service = service_of(client)
    now = service.now()
    node_id, other = fleet["web-1"], fleet["db-1"]
    with Session(service.engine) as session, session.begin():
        for name in ("db-password", "tls-key", "db-only", "rotated"):
            session.add(Secret(name=name, version=2, kek_id="k1", ciphertext=SEALED,
                               created_at=now, updated_at=now))  # fmt: skip
        session.flush()
        session.add_all(
            [
                SecretGrant(secret_name="db-password", selector=f"node:{node_id}", created_at=now),
                SecretGrant(secret_name="tls-key", selector="label:role=web", created_at=now),
                SecretGrant(secret_name="db-only", selector="label:role=db", created_at=now),
                SecretGrant(secret_name="db-only", selector=f"node:{other}", created_at=now),
                SecretRelease(secret_name="tls-key", secret_version=1, node_id=node_id,
                              result_id="r1", time=now - timedelta(hours=2)),
                SecretRelease(secret_name="tls-key", secret_version=2, node_id=node_id,
                              result_id="r2", time=now - timedelta(hours=1)),
                # Released once, its grant since revoked.
                SecretRelease(secret_name="rotated", secret_version=1, node_id=node_id,
                              result_id="r0", time=now - timedelta(days=1)),
                SecretRelease(secret_name="db-only", secret_version=2, node_id=other,
                              result_id="r3", time=now),
            ]
        )  # fmt: skip
        for serial, age in (("0abc", 2), ("0def", 1)):
            session.add(
                NodeCertificate(serial=serial, node_id=node_id, result_id=f"result-{serial}",
                                key_name="000b" + "ab" * 32,
                                not_before=now - timedelta(hours=age),
                                not_after=now + timedelta(minutes=5),
                                created_at=now - timedelta(hours=age))
            )  # fmt: skip
    answer = get(client, f"/v1/fleet/nodes/{node_id}/membership")
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    membership = answer.json()
    assert membership["secrets"] == [
        {"name": "db-password", "granted": True, "released_at": None},
        {"name": "rotated", "granted": False,
         "released_at": (now - timedelta(days=1)).isoformat(timespec="milliseconds")
         .replace("+00:00", "Z")},
        {"name": "tls-key", "granted": True,
         "released_at": (now - timedelta(hours=1)).isoformat(timespec="milliseconds")
         .replace("+00:00", "Z")},
    ]  # fmt: skip
    certificate = membership["certificate"]
    assert certificate["serial"] == "0def"  # the newest
    assert certificate["result_id"] == "result-0def"
    assert set(certificate) == {
        "serial",
        "not_before",
        "not_after",
        "issued_at",
        "key_name",
        "result_id",
    }
    # Names only: no value, no ciphertext, no sealed blob, no KEK.
    text = answer.text
    assert SEALED.decode() not in text and base64.b64encode(SEALED).decode() not in text
    assert "kek" not in text and "ciphertext" not in text and "sealed" not in text
    # Another node sees only its own.
    theirs = ok(client, f"/v1/fleet/nodes/{other}/membership")
    assert [(s["name"], s["granted"]) for s in theirs["secrets"]] == [("db-only", True)]
    assert theirs["certificate"] is None


def test_membership_of_an_unknown_node_is_a_404(client: TestClient) -> None:
    refused(get(client, f"/v1/fleet/nodes/{uuid.uuid4()}/membership"), 404, "node")
    refused(get(client, "/v1/fleet/nodes/'%20OR%201=1/membership"), 404, "node")


def test_every_route_needs_a_reader_credential(client: TestClient, fleet: dict[str, str]) -> None:
    anonymous = TestClient(client.app)
    for route in ROUTES:
        path = route.format(node=fleet["web-1"])
        refused(anonymous.get(path), 401, "read-token")
        assert anonymous.get(path).headers["www-authenticate"].startswith("Bearer")
        refused(anonymous.get(path, headers={"Authorization": "Bearer " + "x" * 40}), 401,
                "read-token")  # fmt: skip
        refused(anonymous.get(path, headers={"Cookie": f"{SESSION_COOKIE}=v1.e30.x"}), 401,
                "read-token")  # fmt: skip
        # Authentication comes before parameters: an anonymous caller learns nothing of them.
        refused(anonymous.get(path + "?state=bogus"), 401, "read-token")


def test_the_session_cookie_and_the_operator_token_read(
    client: TestClient, fleet: dict[str, str]
) -> None:
    anonymous = TestClient(client.app)
    opened = anonymous.post("/v1/session", headers=reader_headers(client))
    assert opened.status_code == 204, opened.text
    match = re.match(rf"^{SESSION_COOKIE}=([^;]+);", opened.headers["set-cookie"])
    assert match is not None
    cookie = {"Cookie": f"{SESSION_COOKIE}={match.group(1)}"}
    operator = operator_headers(service_of(client).config.data_dir)
    for headers in (cookie, operator):
        for route in ROUTES:
            answer = anonymous.get(route.format(node=fleet["web-1"]), headers=headers)
            assert answer.status_code == 200, answer.text
    page = anonymous.get("/v1/fleet/nodes", params={"state": "failed"}, headers=cookie).json()
    assert [node["name"] for node in page["nodes"]] == ["db-1"]


def test_the_routes_are_in_the_schema(client: TestClient) -> None:
    paths = get(client, "/v1/openapi.json").json()["paths"]
    for route in ROUTES:
        assert route.replace("{node}", "{node_id}") in paths
    assert json.dumps(paths["/v1/fleet/nodes"]).count('"in": "query"') == 6


def test_state_expression_is_shared_with_the_release_inventory() -> None:
    from stockade.verifier import fleet, releases

    assert fleet.effective_state_sql is releases.effective_state_sql
    assert fleet.release_inventory is releases.release_inventory


def test_trusted_until_is_compared_as_of_now(client: TestClient, clock: ManualClock) -> None:
    """A trust deadline exactly now is over (``<=``), as ``states.effective_state`` says."""
    service = service_of(client)
    now = service.now()
    with Session(service.engine) as session, session.begin():
        session.add(placeholder_node(str(uuid.uuid4()), "edge-now", now, state="trusted",
                                     trusted_until=now + timedelta(seconds=30)))  # fmt: skip
    assert names(client, state="trusted") == ["edge-now"]
    clock.advance(31)
    assert names(client, state="untrusted") == ["edge-now"]
    assert datetime.fromisoformat(ok(client, "/v1/fleet/summary")["as_of"]) > now


def test_the_state_filter_agrees_with_effective_state_on_every_node(engine: Engine) -> None:
    """``effective_state_is`` (the filter), ``effective_state_sql`` (counts, rows) and
    ``states.effective_state`` (everywhere else) agree on every stored state and deadline,
    a deadline exactly now included."""
    now = datetime.now(UTC).replace(microsecond=0)
    deadlines = [None, now - timedelta(seconds=1), now, now + timedelta(seconds=1)]
    with Session(engine) as session, session.begin():
        for state in NodeState:
            for number, deadline in enumerate(deadlines):
                node = placeholder_node(
                    str(uuid.uuid4()), f"{state}-{number}", now, trusted_until=deadline
                )
                node.state = state.value
                session.add(node)
    with Session(engine) as session:
        nodes = session.scalars(select(Node)).all()
        expected = {node.id: str(effective_state(node, now)) for node in nodes}
        computed = {
            node_id: state
            for node_id, state in session.execute(select(Node.id, effective_state_sql(now)))
        }
        assert computed == expected
        choices = [[state.value] for state in NodeState] + [["untrusted", "failed"], []]
        for states in choices:
            selected = set(session.scalars(select(Node.id).where(effective_state_is(states, now))))
            assert selected == {node for node, state in expected.items() if state in states}
