"""Reads of trust state need a credential; operator calls need an operator's; a browser session
cookie reads and never changes state; named credentials record who acted.

Nodes are stored directly in the database (the read doors are what is under test here, not
enrollment), except in the real-process test at the end.
"""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import logging
import re
import threading
import uuid
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient
from verifier_support import QuoteOnlyAppraiser, operator_headers, policy_document, reader_headers

from stockade.verifier import create_app
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.events import record_event
from stockade.verifier.models import Event, Node
from stockade.verifier.operator_auth import SESSION_COOKIE, load_credentials
from support.verifier_serve import ServedVerifier

SECRET_NODE = "node-inventory-secret-7"

# Every read of trust state; {node} is a stored node's id.
READS = [
    "/v1/nodes",
    "/v1/nodes/{node}",
    "/v1/nodes/{node}/results",
    "/v1/events?follow=false",
    "/v1/executions",
    "/v1/policies",
    "/v1/policies/test",
    "/v1/log/entries?start=0",
    "/v1/openapi.json",
    "/metrics",
]


def add_node(client: TestClient, name: str = SECRET_NODE) -> str:
    """A node as enrollment leaves it (state enrolled, one event)."""
    service = client.app.state.service
    now = service.now()
    node_id = str(uuid.uuid4())
    with service.transaction() as session:
        node = Node(
            id=node_id,
            name=name,
            ek_fingerprint=hashlib.sha256(name.encode()).hexdigest(),
            ek_public=b"ek",
            ek_certificate=b"cert",
            ak_public=b"ak",
            state="enrolled",
            revoked=False,
            allowed=True,
            labels={},
            created_at=now,
            updated_at=now,
        )
        session.add(node)
        session.flush()
        record_event(session, node, None, "enrolled", "enrolled", now)
    return node_id


def bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


def anonymous(client: TestClient) -> TestClient:
    """A client of the same app that sends no credential of its own."""
    fresh = TestClient(client.app, raise_server_exceptions=True)
    assert "authorization" not in fresh.headers
    return fresh


def assert_refused(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.json() == {"error": code, "detail": response.json()["detail"]}
    assert "Traceback" not in response.text


@pytest.fixture
def node_id(client) -> str:
    return add_node(client)


@pytest.mark.parametrize("path", READS)
def test_reads_of_trust_state_need_a_credential(client, node_id, path):
    url = path.format(node=node_id)
    intruder = anonymous(client)
    wrong_token = bearer("not-the-reader-token-" + "x" * 20)
    for headers in ({}, wrong_token, {"Authorization": "Basic cmVhZGVyOnJlYWRlcg=="}):
        refused = intruder.get(url, headers=headers)
        assert_refused(refused, 401, "read-token")
        assert refused.headers["www-authenticate"].startswith("Bearer")
        # The refusal tells nothing about the inventory.
        assert SECRET_NODE not in refused.text and node_id not in refused.text
    data_dir = client.app.state.service.config.data_dir
    for headers in (reader_headers(data_dir), operator_headers(data_dir)):
        served = intruder.get(url, headers=headers)
        assert served.status_code == 200, served.text
    listed = intruder.get("/v1/nodes", headers=reader_headers(data_dir)).json()["nodes"]
    assert [node["name"] for node in listed] == [SECRET_NODE]


def test_public_doors_stay_public(client, node_id):
    intruder = anonymous(client)
    for path in (
        "/v1/health",
        "/livez",
        "/v1/keys",
        "/v1/log/checkpoint",
        "/v1/log/key",
        "/v1/log/proof/consistency?old=0",
    ):
        assert intruder.get(path).status_code == 200, path
    # Relying parties use the signed status statement: never a credential error.
    assert intruder.get(f"/v1/nodes/{node_id}/status").status_code != 401


def test_no_documentation_page_and_no_public_schema(client):
    intruder = anonymous(client)
    for path in ("/docs", "/redoc", "/openapi.json", "/docs/oauth2-redirect"):
        answer = intruder.get(path)
        assert answer.status_code == 404, path
        assert "<script" not in answer.text and "cdn" not in answer.text.lower()
    assert_refused(intruder.get("/v1/openapi.json"), 401, "read-token")
    schema = intruder.get("/v1/openapi.json", headers=reader_headers(client))
    assert schema.headers["content-type"].startswith("application/json")
    paths = schema.json()["paths"]
    assert "/v1/events" in paths and "/v1/session" in paths
    assert "cdn" not in schema.text.lower()


def _events(client: TestClient) -> list[dict]:
    text = anonymous(client).get("/v1/events?follow=false", headers=reader_headers(client)).text
    return [json.loads(line[6:]) for line in text.splitlines() if line.startswith("data: ")]


def test_operator_calls_refuse_the_reader_token(client, node_id):
    intruder = anonymous(client)
    reader = reader_headers(client)
    calls = [
        ("POST", f"/v1/nodes/{node_id}/revoke", {"reason": "by a reader"}),
        ("POST", f"/v1/nodes/{node_id}/allow", None),
        ("PUT", "/v1/policies/permissive", {"id": "permissive"}),
        ("PUT", f"/v1/nodes/{node_id}/labels", {"labels": {"tier": "gold"}}),
        ("GET", "/v1/secrets", None),
        ("PUT", "/v1/secrets/db", {"value": "c2VjcmV0"}),
    ]
    before = _events(client)
    for method, path, body in calls:
        answer = intruder.request(method, path, json=body, headers=reader)
        assert_refused(answer, 403, "operator-role")
        assert "may only read" in answer.json()["detail"]
    node = intruder.get(f"/v1/nodes/{node_id}", headers=reader).json()
    assert node["state"] == "enrolled" and node["labels"] == {} and not node["revoked"]
    assert [p["id"] for p in intruder.get("/v1/policies", headers=reader).json()["policies"]] == [
        "test"
    ]
    assert _events(client) == before


def _session(client: TestClient, headers: dict[str, str]) -> str:
    opened = anonymous(client).post("/v1/session", headers=headers)
    assert opened.status_code == 204, opened.text
    cookie = opened.headers["set-cookie"]
    value = re.match(rf"^{SESSION_COOKIE}=([^;]+); ", cookie).group(1)
    assert cookie == (
        f"{SESSION_COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/v1; Max-Age=900"
    )
    return value


def test_session_cookie_reads_and_expires(client, node_id, clock):
    intruder = anonymous(client)
    assert_refused(intruder.post("/v1/session"), 401, "read-token")
    value = _session(client, reader_headers(client))
    cookie = {"Cookie": f"{SESSION_COOKIE}={value}"}
    # What an EventSource does: no Authorization header, the cookie only.
    assert intruder.get("/v1/events?follow=false", headers=cookie).status_code == 200
    assert intruder.get("/v1/nodes", headers=cookie).json()["nodes"][0]["node_id"] == node_id
    # A cookie cannot mint another session (it would live forever).
    assert_refused(intruder.post("/v1/session", headers=cookie), 401, "read-token")
    # Forged: the statement changed (another actor, the operator role), the MAC kept.
    version, statement, mac = value.split(".")
    claims = json.loads(base64.urlsafe_b64decode(statement + "=" * (-len(statement) % 4)))
    assert claims["n"] == "reader" and claims["r"] == "reader"
    assert 800 <= claims["exp"] - clock().timestamp() <= 900
    claims.update(n="operator", r="operator", exp=claims["exp"] + 10**6)
    forged = base64.urlsafe_b64encode(json.dumps(claims).encode()).rstrip(b"=").decode()
    flipped = ("B" if mac[0] == "A" else "A") + mac[1:]  # the first MAC byte changes
    for bad in (
        f"{version}.{forged}.{mac}",
        f"{version}.{statement}.{flipped}",
        "v1.e30.",
        value + "x",
    ):
        assert_refused(
            intruder.get("/v1/nodes", headers={"Cookie": f"{SESSION_COOKIE}={bad}"}),
            401,
            "read-token",
        )
    # Signed by another verifier (another session key): refused.
    config = client.app.state.service.config
    other = create_app(
        dataclasses.replace(config, data_dir=config.data_dir.parent / "other", database_url=None),
        appraiser=QuoteOnlyAppraiser(),
    )
    with TestClient(other) as elsewhere:
        theirs = _session(elsewhere, reader_headers(elsewhere))
    assert_refused(
        intruder.get("/v1/nodes", headers={"Cookie": f"{SESSION_COOKIE}={theirs}"}),
        401,
        "read-token",
    )
    # Fifteen minutes after it was made the cookie is worth nothing (measured from its own
    # expiry: the steps above take a while on a loaded machine).
    expires = json.loads(base64.urlsafe_b64decode(statement + "=" * (-len(statement) % 4)))["exp"]
    clock.advance(expires - clock().timestamp() - 5)
    assert intruder.get("/v1/nodes", headers=cookie).status_code == 200
    clock.advance(10)
    assert_refused(intruder.get("/v1/nodes", headers=cookie), 401, "read-token")
    closed = intruder.delete("/v1/session", headers=cookie)
    assert closed.status_code == 204
    assert closed.headers["set-cookie"].startswith(f"{SESSION_COOKIE}=; ")
    assert "Max-Age=0" in closed.headers["set-cookie"]


def test_an_event_stream_ends_with_the_session_that_opened_it(client, clock):
    """The cookie is checked once, when the stream opens: the stream must not outlive it
    (a browser whose session ended would otherwise keep following the fleet for an hour)."""
    value = _session(client, reader_headers(client))
    statement = value.split(".")[1]
    expires = json.loads(base64.urlsafe_b64decode(statement + "=" * (-len(statement) % 4)))["exp"]
    clock.advance(expires - clock().timestamp() - 1)  # one second of session left
    cookie = {"Cookie": f"{SESSION_COOKIE}={value}"}
    lines: list[str] = []

    def follow() -> None:
        with anonymous(client).stream("GET", "/v1/events", headers=cookie) as stream:
            assert stream.status_code == 200
            lines.extend(stream.iter_lines())

    reader = threading.Thread(target=follow, daemon=True)
    reader.start()
    reader.join(timeout=20)
    assert not reader.is_alive(), "the stream outlived its session"
    assert lines[0] == "retry: 1000"


def test_a_session_cookie_never_changes_state(client, node_id):
    """A page the operator visits could make their browser send the cookie (CSRF): even an
    operator's cookie authorises no state change."""
    intruder = anonymous(client)
    operator = operator_headers(client.app.state.service.config.data_dir)
    value = _session(client, operator)
    cookie = {"Cookie": f"{SESSION_COOKIE}={value}"}
    before = _events(client)
    for method, path, body in (
        ("POST", f"/v1/nodes/{node_id}/revoke", {"reason": "csrf"}),
        ("PUT", "/v1/policies/permissive", {"id": "permissive"}),
        ("PUT", f"/v1/nodes/{node_id}/labels", {"labels": {"tier": "gold"}}),
        ("PUT", "/v1/secrets/db", {"value": "c2VjcmV0"}),
        ("GET", "/v1/secrets", None),
    ):
        assert_refused(
            intruder.request(method, path, json=body, headers=cookie), 401, "operator-token"
        )
    assert intruder.get(f"/v1/nodes/{node_id}", headers=cookie).json()["state"] == "enrolled"
    assert _events(client) == before
    # The same operator with the bearer token acts.
    revoked = intruder.post(f"/v1/nodes/{node_id}/revoke", headers=operator)
    assert revoked.status_code == 200 and revoked.json()["state"] == "revoked"


def _credentials_file(path: Path, lines: list[str], mode: int = 0o644) -> Path:
    path.write_text("\n".join(lines) + "\n")
    path.chmod(mode)
    return path


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


ALICE = "alice-operator-token-0123456789"
BOB = "bob-reader-token-0123456789abcdef"


def test_named_credentials_record_who_acted(make_client, verifier_config, tmp_path):
    credentials = _credentials_file(
        tmp_path / "credentials",
        [
            "# name  role  token digest",
            f"alice operator {_digest(ALICE)}",
            f"bob   reader   {_digest(BOB).upper().replace('SHA256:', 'sha256:')}  # on call",
            "",
        ],
    )
    config = dataclasses.replace(verifier_config, credentials_file=credentials)
    client = make_client(config, policy=policy_document())
    node_id = add_node(client)
    intruder = anonymous(client)
    assert intruder.get("/v1/nodes", headers=bearer(BOB)).status_code == 200
    assert_refused(
        intruder.post(f"/v1/nodes/{node_id}/revoke", headers=bearer(BOB)), 403, "operator-role"
    )
    revoked = intruder.post(
        f"/v1/nodes/{node_id}/revoke", json={"reason": "disk stolen"}, headers=bearer(ALICE)
    )
    assert revoked.status_code == 200, revoked.text
    allowed = intruder.post(f"/v1/nodes/{node_id}/allow", headers=operator_headers(config.data_dir))
    assert allowed.status_code == 200, allowed.text
    events = _events(client)
    assert [(e["to"], e["reason"], e["actor"]) for e in events] == [
        ("enrolled", "enrolled", None),
        ("revoked", "disk stolen", "alice"),
        ("enrolled", "allowed", "operator"),
    ]
    with client.app.state.service.sessions() as session:
        stored = session.query(Event).order_by(Event.id).all()
        assert [row.actor for row in stored] == [None, "alice", "operator"]
    # A session remembers the credential's name.
    value = _session(client, bearer(BOB))
    assert (
        intruder.get("/v1/nodes", headers={"Cookie": f"{SESSION_COOKIE}={value}"}).status_code
        == 200
    )


@pytest.mark.parametrize(
    ("lines", "mode", "message"),
    [
        (["alice operator"], 0o644, "expected"),
        (["alice admin " + _digest(ALICE)], 0o644, "neither 'operator' nor 'reader'"),
        (["alice operator sha1:" + "00" * 20], 0o644, "sha256:<64 hex digits>"),
        (["alice operator sha256:" + "0" * 63], 0o644, "sha256:<64 hex digits>"),
        (["al ice operator " + _digest(ALICE)], 0o644, "expected"),
        (["al/ice operator " + _digest(ALICE)], 0o644, "credential name"),
        (["operator reader " + _digest(BOB)], 0o644, "built-in"),
        ([f"alice operator {_digest(ALICE)}", f"alice reader {_digest(BOB)}"], 0o644, "twice"),
        ([f"alice operator {_digest(ALICE)}", f"bob reader {_digest(ALICE)}"], 0o644, "already"),
        ([f"alice operator {_digest(ALICE)}"], 0o664, "writable by group or others"),
        ([f"alice operator {_digest(ALICE)}"], 0o646, "writable by group or others"),
    ],
)
def test_bad_credentials_files_are_refused_at_start(
    verifier_config, tmp_path, lines, mode, message
):
    path = _credentials_file(tmp_path / "credentials", lines, mode)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        load_credentials(path)
    with pytest.raises(ConfigurationError, match=re.escape(message)):
        create_app(dataclasses.replace(verifier_config, credentials_file=path))


def test_a_named_credential_may_not_be_a_built_in_token(make_client, verifier_config, tmp_path):
    make_client()  # first start: the built-in tokens exist
    reader = (verifier_config.data_dir / "reader-token").read_text().strip()
    path = _credentials_file(tmp_path / "credentials", [f"mallory operator {_digest(reader)}"])
    with pytest.raises(ConfigurationError, match="built-in operator or reader token"):
        create_app(dataclasses.replace(verifier_config, credentials_file=path))


def test_tokens_and_session_key_are_owner_only(make_client, verifier_config):
    make_client()
    data_dir = verifier_config.data_dir
    for name in ("operator-token", "reader-token", "keys/session-key"):
        assert (data_dir / name).stat().st_mode & 0o777 == 0o600, name
    assert len((data_dir / "keys" / "session-key").read_bytes()) == 32
    assert (data_dir / "reader-token").read_text() != (data_dir / "operator-token").read_text()
    (data_dir / "reader-token").chmod(0o640)
    with pytest.raises(ConfigurationError, match="reader-token is readable by group or others"):
        create_app(verifier_config)


# -- the real process ------------------------------------------------------------------------


def test_real_verifier_refuses_anonymous_reads_and_reader_writes(tmp_path, ek_ca):
    """``stockade verifier serve`` over TLS: the reads need a credential, the reader token and
    the session cookie change nothing, and the database files are owner-only."""
    data_dir = tmp_path / "data"
    verifier = ServedVerifier(data_dir, ek_ca=ek_ca.root_cert_path, enrollment_mode=None)
    with verifier:
        url, context = verifier.url, verifier.ssl_context()
        reader = reader_headers(data_dir)
        operator = operator_headers(data_dir)
        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
            for path in (
                "/v1/nodes",
                "/v1/executions",
                "/v1/events?follow=false",
                "/v1/policies",
                "/v1/log/entries?start=0",
                "/v1/openapi.json",
            ):
                assert_refused(client.get(path), 401, "read-token")
                assert client.get(path, headers=reader).status_code == 200, path
            for path in ("/docs", "/openapi.json", "/redoc"):
                assert client.get(path).status_code == 404, path
                assert client.get(path, headers=reader).status_code == 404, path
            with client.stream("GET", "/v1/events", headers=reader) as stream:
                assert stream.status_code == 200
                assert next(stream.iter_lines()) == "retry: 1000"

            opened = client.post("/v1/session", headers=operator)
            assert opened.status_code == 204
            value = re.match(rf"{SESSION_COOKIE}=([^;]+);", opened.headers["set-cookie"]).group(1)
            cookie = {"Cookie": f"{SESSION_COOKIE}={value}"}
            assert client.get("/v1/nodes", headers=cookie).status_code == 200
            document = policy_document("permissive")
            for method, path, body in (
                ("POST", "/v1/nodes/any/revoke", None),
                ("POST", "/v1/nodes/any/allow", None),
                ("PUT", "/v1/policies/permissive", document),
                ("GET", "/v1/secrets", None),
            ):
                assert_refused(
                    client.request(method, path, json=body, headers=reader), 403, "operator-role"
                )
                assert_refused(
                    client.request(method, path, json=body, headers=cookie), 401, "operator-token"
                )
            assert client.get("/v1/policies", headers=reader).json()["policies"] == []
            assert client.post("/v1/nodes/any/revoke", headers=operator).status_code == 404
        for name in ("verifier.db", "verifier.db-wal", "verifier.db-shm"):
            assert (data_dir / name).stat().st_mode & 0o077 == 0, name
        assert data_dir.stat().st_mode & 0o077 == 0
    assert "Traceback" not in "".join(verifier.stderr_lines())


def test_policy_changes_log_the_named_operator(make_client, verifier_config, tmp_path, caplog):
    credentials = _credentials_file(
        tmp_path / "credentials", [f"alice operator {_digest(ALICE)}", ""]
    )
    config = dataclasses.replace(verifier_config, credentials_file=credentials)
    client = make_client(config, policy=policy_document())
    document = policy_document()
    document["id"] = "canary"
    with caplog.at_level(logging.INFO, logger="stockade.verifier.policies"):
        stored = client.put("/v1/policies/canary", json=document, headers=bearer(ALICE))
        assert stored.status_code == 200, stored.text
        activated = client.put("/v1/active-policy", json={"id": "canary"}, headers=bearer(ALICE))
        assert activated.status_code == 200, activated.text
    acts = [
        (record.getMessage(), getattr(record, "actor", None), getattr(record, "policy", None))
        for record in caplog.records
        if record.name == "stockade.verifier.policies" and getattr(record, "policy", "") == "canary"
    ]
    assert acts == [("policy stored", "alice", "canary"), ("policy activated", "alice", "canary")]
