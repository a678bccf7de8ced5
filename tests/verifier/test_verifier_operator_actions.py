"""Who acted (issue 18): every operator action is one ``operator_actions`` row and one
``operator-action`` entry of the transparency log, naming the named operator credential,
written in the action's own transaction.

- each of the thirteen actions (node revoke/allow/approve/replace/labels, policy
  store/activate/delete, secret put/grant/revoke/delete/rekey) makes exactly one row and one
  entry, the entry's index in the row, and the entry's receipt verifies under the log key;
- a refused action (a reader's token, an unknown node, a refused change) and a transaction
  that rolls back after recording make none;
- no secret value is in the table, the API's answer or the log;
- ``GET /v1/operator-actions`` pages by log index, filters, and needs a credential;
- results' receipts still verify with operator actions between them;
- migration 0013 upgrades a 0012 database.

Runs on SQLite, and on PostgreSQL when ``STOCKADE_TEST_DATABASE_URL`` is set."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
import json
import uuid
from datetime import timedelta
from pathlib import Path
from typing import Any

import pytest
from alembic import command
from alembic.config import Config as AlembicConfig
from fastapi.testclient import TestClient
from sqlalchemy import Engine, inspect, select, text
from verifier_support import operator_headers, policy_document, reader_headers

from stockade.cluster.secret_store import KeyEncryptionKey, KeyRing
from stockade.translog.checkpoint import NoteVerifier
from stockade.translog.entries import OPERATOR_ACTION, parse_entry
from stockade.translog.receipt import Receipt, verify_receipt
from stockade.verifier.db import MIGRATIONS, make_engine
from stockade.verifier.events import record_event
from stockade.verifier.models import Node, OperatorActionRow
from stockade.verifier.operator_actions import MAX_DETAIL, record_action

ALICE = "alice-operator-token-0123456789abcdef"
BOB = "bob-reader-token-0123456789abcdef"
SECRET_VALUE = b"the-database-password-Zq8w1x"
SECRET_TEXT = SECRET_VALUE.decode()
SECRET_B64 = base64.b64encode(SECRET_VALUE).decode()


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture
def named(make_client, verifier_config, tmp_path: Path) -> TestClient:
    """A verifier with a secret store and two named credentials: alice (operator) and bob
    (reader)."""
    credentials = tmp_path / "credentials"
    credentials.write_text(f"alice operator {_digest(ALICE)}\nbob reader {_digest(BOB)}\n")
    credentials.chmod(0o600)
    config = dataclasses.replace(
        verifier_config,
        credentials_file=credentials,
        key_ring=KeyRing(KeyEncryptionKey.generate()),
    )
    client: TestClient = make_client(config)
    return client


def _add_node(client: TestClient, name: str, state: str = "enrolled") -> str:
    service = client.app.state.service
    now = service.now()
    node_id = str(uuid.uuid4())
    with service.transaction() as session:
        node = Node(
            id=node_id, name=name, ek_fingerprint=hashlib.sha256(name.encode()).hexdigest(),
            ek_public=b"ek", ek_certificate=b"cert", ak_public=b"ak", state=state,
            revoked=False, allowed=state != "pending", labels={}, created_at=now,
            updated_at=now,
            pending_until=now + timedelta(hours=1) if state == "pending" else None,
        )  # fmt: skip
        session.add(node)
        session.flush()
        record_event(session, node, None, state, state, now)
    return node_id


def _rows(client: TestClient) -> list[OperatorActionRow]:
    with client.app.state.service.sessions() as session:
        return list(session.scalars(select(OperatorActionRow).order_by(OperatorActionRow.id)))


def _log_size(client: TestClient) -> int:
    size: int = client.app.state.service.translog.store.size()
    return size


def _logged_actions(client: TestClient) -> dict[int, dict[str, Any]]:
    """Every operator-action entry of the log, by index."""
    store = client.app.state.service.translog.store
    found = {}
    for index, entry in enumerate(store.entries(0, store.size())):
        document = parse_entry(entry)
        if document["type"] == OPERATOR_ACTION:
            found[index] = document
    return found


def _all_actions(client: TestClient, headers: dict[str, str], **query: Any) -> list[dict]:
    actions: list[dict] = []
    after = None
    while True:
        params = {**query, **({"after": after} if after is not None else {})}
        page = client.get("/v1/operator-actions", params=params, headers=headers)
        assert page.status_code == 200, page.text
        actions += page.json()["actions"]
        after = page.json()["next"]
        if after is None:
            return actions


def _perform_every_action(client: TestClient) -> list[tuple[str, str]]:
    """Each operator action once, as alice; ``(action, subject)`` in order."""
    alice = _bearer(ALICE)
    node_id = _add_node(client, "node-a")
    pending = _add_node(client, "node-p", state="pending")
    calls: list[tuple[str, str, Any]] = [
        ("policy.store", "p1@1", lambda: client.put(
            "/v1/policies/p1", json=policy_document("p1"), headers=alice)),
        ("policy.activate", "p1@1", lambda: client.put(
            "/v1/active-policy", json={"id": "p1"}, headers=alice)),
        ("policy.store", "p2@1", lambda: client.put(
            "/v1/policies/p2", json=policy_document("p2"), headers=alice)),
        ("policy.delete", "p2", lambda: client.delete("/v1/policies/p2", headers=alice)),
        ("node.revoke", node_id, lambda: client.post(
            f"/v1/nodes/{node_id}/revoke", json={"reason": "disk stolen"}, headers=alice)),
        ("node.allow", node_id, lambda: client.post(
            f"/v1/nodes/{node_id}/allow", headers=alice)),
        ("node.approve", pending, lambda: client.post(
            f"/v1/nodes/{pending}/approve", headers=alice)),
        ("node.replace", node_id, lambda: client.post(
            f"/v1/nodes/{node_id}/replace", json={"reason": "board swap"}, headers=alice)),
        ("node.labels", node_id, lambda: client.put(
            f"/v1/nodes/{node_id}/labels", json={"labels": {"role": "db"}}, headers=alice)),
        ("secret.put", "db-password", lambda: client.put(
            "/v1/secrets/db-password", json={"value": SECRET_B64}, headers=alice)),
        ("secret.grant", "db-password", lambda: client.post(
            "/v1/secrets/db-password/grants", json={"selector": "label:role=db"},
            headers=alice)),
        ("secret.revoke", "db-password", lambda: client.delete(
            "/v1/secrets/db-password/grants", params={"selector": "label:role=db"},
            headers=alice)),
        ("secret.rekey", "", lambda: client.post("/v1/secrets/rekey", headers=alice)),
        ("secret.delete", "db-password", lambda: client.delete(
            "/v1/secrets/db-password", headers=alice)),
    ]  # fmt: skip
    done = []
    for action, subject, call in calls:
        before = _log_size(client)
        answer = call()
        assert answer.status_code in (200, 204), (action, answer.text)
        assert SECRET_B64 not in answer.text and SECRET_TEXT not in answer.text
        assert _log_size(client) == before + 1, action
        done.append((action, subject))
    return done


def test_every_operator_action_is_one_row_and_one_entry_naming_the_operator(named):
    start_rows = len(_rows(named))
    done = _perform_every_action(named)
    rows = _rows(named)[start_rows:]
    assert [row.action for row in rows] == [action for action, _ in done]
    assert {action for action, _ in done} == {
        "node.revoke", "node.allow", "node.approve", "node.replace", "node.labels",
        "policy.store", "policy.activate", "policy.delete", "secret.put", "secret.grant",
        "secret.revoke", "secret.delete", "secret.rekey",
    }  # fmt: skip
    kek_id = named.app.state.service.key_ring.current.kek_id
    for row, (_, subject) in zip(rows, done, strict=True):
        assert row.actor == "alice"
        assert row.subject == (subject or kek_id)
    assert "disk stolen" in rows[4].detail and "selector label:role=db" in rows[10].detail
    logged = _logged_actions(named)
    # One entry per row, at the row's index, saying what the row says.
    assert sorted(logged) == sorted(row.log_index for row in _rows(named))
    for row in rows:
        entry = logged[row.log_index]
        assert entry["actor"] == "alice"
        assert (entry["action"], entry["subject"], entry["detail"]) == (
            row.action, row.subject, row.detail,
        )  # fmt: skip
        assert entry["time"] == row.time.isoformat(timespec="milliseconds").replace("+00:00", "Z")
    # Through the API, each with a receipt that verifies under the log's key.
    listed = _all_actions(named, _bearer(BOB), actor="alice", limit=3)
    assert [a["id"] for a in listed] == [row.id for row in rows]
    key = NoteVerifier.from_key_string(named.app.state.service.translog.key_string)
    for action in listed:
        verified = verify_receipt(
            Receipt.from_json(action["inclusion_proof"]), [key], required=[key.name]
        )
        assert verified.log_index == action["log_index"]
        assert verified.entry["actor"] == "alice"
        assert verified.entry["action"] == action["action"]


def test_no_secret_value_is_recorded_anywhere(named):
    _perform_every_action(named)
    engine = named.app.state.service.engine
    with engine.connect() as connection:
        stored = [tuple(row) for row in connection.execute(text("SELECT * FROM operator_actions"))]
    store = named.app.state.service.translog.store
    entries = b"".join(store.entries(0, store.size()))
    api = named.get("/v1/operator-actions", headers=_bearer(BOB)).text
    for blob in (repr(stored), entries.decode(), api):
        assert SECRET_TEXT not in blob and SECRET_B64 not in blob


def test_refused_actions_record_nothing(named):
    node_id = _add_node(named, "node-r")
    named.put("/v1/policies/active", json=policy_document("active"), headers=_bearer(ALICE))
    named.put("/v1/active-policy", json={"id": "active"}, headers=_bearer(ALICE))
    rows, size = len(_rows(named)), _log_size(named)
    unknown = str(uuid.uuid4())
    refusals = [
        (named.post(f"/v1/nodes/{node_id}/revoke", headers=_bearer(BOB)), 403),
        (named.put("/v1/secrets/s", json={"value": SECRET_B64}, headers=_bearer(BOB)), 403),
        (named.post(f"/v1/nodes/{unknown}/revoke", headers=_bearer(ALICE)), 404),
        (named.post(f"/v1/nodes/{unknown}/allow", headers=_bearer(ALICE)), 404),
        (named.put(f"/v1/nodes/{unknown}/labels", json={"labels": {}}, headers=_bearer(ALICE)),
         404),
        (named.post(f"/v1/nodes/{node_id}/approve", headers=_bearer(ALICE)), 409),
        (named.delete("/v1/policies/active", headers=_bearer(ALICE)), 409),
        (named.delete("/v1/policies/none", headers=_bearer(ALICE)), 404),
        (named.delete("/v1/secrets/none", headers=_bearer(ALICE)), 404),
        (named.post("/v1/secrets/none/grants", json={"selector": "label:a=b"},
                    headers=_bearer(ALICE)), 404),
        (named.delete("/v1/secrets/none/grants", params={"selector": "label:a=b"},
                      headers=_bearer(ALICE)), 404),
    ]  # fmt: skip
    for answer, status in refusals:
        assert answer.status_code == status, answer.text
    assert len(_rows(named)) == rows
    assert _log_size(named) == size


def test_an_action_whose_transaction_rolls_back_leaves_neither_row_nor_entry(named):
    service = named.app.state.service
    node_id = _add_node(named, "node-x")
    rows, size = len(_rows(named)), _log_size(named)

    class Failed(Exception):
        pass

    with pytest.raises(Failed), service.transaction() as session:
        node = session.get(Node, node_id)
        node.labels = {"half": "done"}
        recorded = record_action(session, service, "alice", "node.labels", node_id, "x")
        assert recorded.log_index == size
        raise Failed
    assert len(_rows(named)) == rows
    assert _log_size(named) == size
    with service.sessions() as session:
        assert session.get(Node, node_id).labels == {}
    # The log goes on from where it was: the next action takes the same index.
    answer = named.put(
        f"/v1/nodes/{node_id}/labels", json={"labels": {"a": "b"}}, headers=_bearer(ALICE)
    )
    assert answer.status_code == 200, answer.text
    assert _rows(named)[-1].log_index == size
    assert named.get("/v1/log/checkpoint").status_code == 200


def test_details_are_bounded_and_unknown_actions_refused(named):
    service = named.app.state.service
    with service.transaction() as session:
        recorded = record_action(session, service, "alice", "node.labels", "n", "x" * 5000)
    assert len(_rows(named)[-1].detail) == MAX_DETAIL
    assert json.loads(recorded.entry)["detail"].endswith("...")
    with pytest.raises(ValueError), service.transaction() as session:
        record_action(session, service, "alice", "node.explode", "n")


def test_the_audit_filters_and_needs_a_credential(named):
    _perform_every_action(named)
    operator = operator_headers(named.app.state.service.config.data_dir)
    named.post("/v1/secrets/rekey", headers=operator)  # the built-in operator credential
    reader = reader_headers(named)
    assert named.get("/v1/operator-actions").status_code == 401
    everything = _all_actions(named, reader, limit=1)
    assert len({a["log_index"] for a in everything}) == len(everything) == len(_rows(named))
    by_operator = _all_actions(named, reader, actor="operator")
    assert [a["action"] for a in by_operator] == ["secret.rekey"]
    revokes = _all_actions(named, _bearer(BOB), action="node.revoke")
    assert [(a["actor"], a["detail"]) for a in revokes] == [("alice", "disk stolen")]
    first = everything[0]["time"]
    assert _all_actions(named, reader, until=first) == []
    assert len(_all_actions(named, reader, since=first)) == len(everything)
    bad = named.get("/v1/operator-actions?since=yesterday", headers=reader)
    assert bad.status_code == 400, bad.text


def test_result_receipts_still_verify_around_operator_actions(named):
    """Entries appended by operator actions and by the committer's batches make one log:
    a checkpoint signed after both is proven to extend the one before."""
    service = named.app.state.service
    key = NoteVerifier.from_key_string(service.translog.key_string)
    first = named.get("/v1/log/checkpoint?format=json").json()
    _perform_every_action(named)
    second = named.get("/v1/log/checkpoint?format=json").json()
    assert second["size"] == first["size"] + 14
    proof = named.get(f"/v1/log/proof/consistency?old={first['size']}&new={second['size']}").json()
    from stockade.translog.merkle import verify_consistency

    verify_consistency(
        first["size"], second["size"], base64.b64decode(first["root"]),
        base64.b64decode(second["root"]), [base64.b64decode(p) for p in proof["proof"]],
    )  # fmt: skip
    entry = service.translog.store.entry(second["size"] - 1)
    receipt = named.get(f"/v1/log/proof/inclusion?index={second['size'] - 1}").json()
    verified = verify_receipt(Receipt.from_json(receipt), [key], required=[key.name])
    assert verified.entry == json.loads(entry)
    # The remembered checkpoint is the newest signed.
    remembered = (service.config.data_dir / "state" / "latest-checkpoint").read_bytes()
    assert remembered == second["checkpoint"].encode()


def _upgrade(engine: Engine, revision: str) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def test_migration_0013_upgrades_a_0012_database(tmp_path, database_url):
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'old.db'}")
    try:
        _upgrade(engine, "0012")
        assert "operator_actions" not in inspect(engine).get_table_names()
        with engine.begin() as connection:
            connection.execute(
                text(
                    "INSERT INTO policies (id, version, document, created_at) "
                    "VALUES ('kept', 1, '{}', '2026-01-01 00:00:00')"
                )
            )
        _upgrade(engine, "head")
        inspector = inspect(engine)
        columns = {column["name"] for column in inspector.get_columns("operator_actions")}
        assert columns == {"id", "time", "actor", "action", "subject", "detail", "log_index"}
        with engine.begin() as connection:
            assert connection.execute(text("SELECT count(*) FROM policies")).scalar_one() == 1
            version = connection.execute(text("SELECT version_num FROM alembic_version"))
            assert version.scalar_one() >= "0013"
    finally:
        engine.dispose()


def test_results_are_indexed_by_log_index_and_0014_downgrades(tmp_path, database_url):
    """Auditors page results by log index (GET /v1/results): an index, not a sort of the
    whole table per page."""
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'old.db'}")
    try:
        _upgrade(engine, "head")
        indexes = {
            index["name"]: index["column_names"] for index in inspect(engine).get_indexes("results")
        }
        assert indexes["ix_results_log_index"] == ["log_index"]
        config = AlembicConfig()
        config.set_main_option("script_location", str(MIGRATIONS))
        with engine.begin() as connection:
            config.attributes["connection"] = connection
            command.downgrade(config, "0013")
        assert "ix_results_log_index" not in {
            index["name"] for index in inspect(engine).get_indexes("results")
        }
    finally:
        engine.dispose()
