"""Rollout inventory: each result records the release the node booted (migration 0012), the
node reads carry their latest result's release, and ``GET /v1/releases/status`` counts nodes
per release and state in one query.

Runs on SQLite, and on PostgreSQL when ``STOCKADE_TEST_DATABASE_URL`` is set."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from alembic import command
from alembic.config import Config as AlembicConfig
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session
from verifier_support import DevAgent, operator_headers, policy_document, read

from stockade.tpm.swtpm import SoftwareTpm
from stockade.verifier import VerifierConfig
from stockade.verifier.db import MIGRATIONS, make_engine
from stockade.verifier.models import Node, Result
from support.nodes import placeholder_node

DIGEST_OLD = "11" * 32
DIGEST_NEW = "22" * 32


def _upgrade(engine: Engine, revision: str) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _result(node_id: str, now: datetime, **release: Any) -> Result:
    return Result(
        id=str(uuid.uuid4()),
        node_id=node_id,
        status="affirming",
        ear="not-an-ear",
        reasons=[],
        policy_ref="test@1",
        not_after=now + timedelta(minutes=5),
        created_at=now,
        **release,
    )


def _add_node(
    session: Session,
    name: str,
    now: datetime,
    *,
    state: str,
    trusted_until: datetime | None = None,
    release: tuple[str, str, int, str] | None = None,
    results: bool = True,
) -> str:
    node_id = str(uuid.uuid4())
    session.add(placeholder_node(node_id, name, now, state=state, trusted_until=trusted_until))
    session.flush()
    if results:
        # An older result with another release first: only the latest one counts.
        older = _result(node_id, now - timedelta(hours=1), release_name="stockade-os",
                        release_version="0.9.0", release_security_version=2,
                        release_digest="00" * 32)  # fmt: skip
        columns = (
            {}
            if release is None
            else dict(
                release_name=release[0],
                release_version=release[1],
                release_security_version=release[2],
                release_digest=release[3],
            )
        )
        latest = _result(node_id, now, **columns)
        session.add_all([older, latest])
        session.flush()
        session.get_one(Node, node_id).latest_result_id = latest.id
    return node_id


def test_release_status_counts_nodes_per_release_and_state(client: TestClient) -> None:
    service = client.app.state.service  # type: ignore[attr-defined]
    now = service.now()
    old = ("stockade-os", "1.0.0", 3, DIGEST_OLD)
    new = ("stockade-os", "1.1.0", 4, DIGEST_NEW)
    with Session(service.engine) as session, session.begin():
        ids = {
            "a": _add_node(session, "a", now, state="trusted",
                           trusted_until=now + timedelta(minutes=5), release=old),
            "b": _add_node(session, "b", now, state="trusted",
                           trusted_until=now + timedelta(minutes=5), release=new),
            # Trusted in the table, but its deadline passed: it reads as untrusted.
            "c": _add_node(session, "c", now, state="trusted",
                           trusted_until=now - timedelta(seconds=1), release=new),
            "d": _add_node(session, "d", now, state="failed"),  # matched no release
            "e": _add_node(session, "e", now, state="enrolled", results=False),
        }  # fmt: skip

    answer = read(client, "/v1/releases/status")
    assert answer.status_code == 200, answer.text
    status = answer.json()
    assert status["nodes"] == 5
    assert status["releases"] == [
        {
            "release": {"name": "stockade-os", "version": "1.0.0", "security_version": 3,
                        "digest": DIGEST_OLD},
            "nodes": 1,
            "states": {"trusted": 1},
        },
        {
            "release": {"name": "stockade-os", "version": "1.1.0", "security_version": 4,
                        "digest": DIGEST_NEW},
            "nodes": 2,
            "states": {"trusted": 1, "untrusted": 1},
        },
        {"release": None, "nodes": 2, "states": {"enrolled": 1, "failed": 1}},
    ]  # fmt: skip

    nodes = {node["name"]: node for node in read(client, "/v1/nodes").json()["nodes"]}
    assert nodes["a"]["release"] == status["releases"][0]["release"]
    assert nodes["c"]["release"]["version"] == "1.1.0"
    assert nodes["d"]["release"] is None and nodes["e"]["release"] is None
    shown = read(client, f"/v1/nodes/{ids['b']}").json()
    assert shown["release"] == status["releases"][1]["release"]

    # Reads of the fleet need a credential.
    assert client.get("/v1/releases/status").status_code == 401


def test_release_status_of_an_empty_fleet(client: TestClient) -> None:
    answer = read(client, "/v1/releases/status")
    assert answer.status_code == 200, answer.text
    assert answer.json()["nodes"] == 0
    assert answer.json()["releases"] == []


def test_a_result_whose_boot_matched_no_release_records_none(
    client: TestClient, software_tpm: SoftwareTpm
) -> None:
    """The quote-only appraiser matches no release: the stored result says so (null), and the
    node counts under no release."""
    agent = DevAgent.create(software_tpm)
    agent.enroll(client, "plain-1")
    attested = agent.attest(client)
    assert attested.status_code == 200, attested.text
    node = read(client, f"/v1/nodes/{agent.node_id}").json()
    assert node["latest_result_id"] == attested.json()["result_id"]
    assert node["release"] is None
    (result,) = read(client, f"/v1/nodes/{agent.node_id}/results").json()["results"]
    assert result["release"] is None
    status = read(client, "/v1/releases/status").json()
    assert status["releases"] == [{"release": None, "nodes": 1, "states": {"trusted": 1}}]


def test_migration_0012_upgrades_a_database_with_results(
    verifier_config: VerifierConfig, make_client: Callable[..., TestClient]
) -> None:
    """Results stored before 0012 keep everything and record no release (NULL), shown as
    null; results stored after carry the columns."""
    verifier_config.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
    engine = make_engine(verifier_config.resolved_database_url)
    _upgrade(engine, "0011")
    now = datetime.now(UTC).replace(tzinfo=None, microsecond=0)
    node_id, result_id = str(uuid.uuid4()), str(uuid.uuid4())
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO nodes (id, name, ek_fingerprint, ek_public, ek_certificate, "
                "ak_public, state, revoked, allowed, trusted_until, latest_result_id, "
                "created_at, updated_at) VALUES (:id, 'old-1', :fp, :ek, :cert, :ak, "
                "'trusted', false, true, :until, :result, :now, :now)"
            ),
            {"id": node_id, "fp": "ab" * 32, "ek": b"ek", "cert": b"cert", "ak": b"ak",
             "until": now + timedelta(minutes=10), "result": result_id, "now": now},
        )  # fmt: skip
        connection.execute(
            text(
                "INSERT INTO results (id, node_id, status, ear, reasons, policy_ref, "
                "not_after, created_at, log_index) VALUES (:id, :node, 'affirming', 'ear', "
                "'[]', 'test@1', :until, :now, NULL)"
            ),
            {"id": result_id, "node": node_id, "until": now + timedelta(minutes=10), "now": now},
        )
    engine.dispose()

    client = make_client(policy=policy_document())  # migrates to the head on start
    with client.app.state.service.engine.connect() as connection:  # type: ignore[attr-defined]
        version = connection.execute(text("SELECT version_num FROM alembic_version")).scalar()
        row = connection.execute(
            text(
                "SELECT status, policy_ref, release_name, release_version, "
                "release_security_version, release_digest FROM results WHERE id = :id"
            ),
            {"id": result_id},
        ).one()
    assert version >= "0012"  # the head: 0012 or a later migration
    assert tuple(row) == ("affirming", "test@1", None, None, None, None)
    node = read(client, f"/v1/nodes/{node_id}").json()
    assert node["latest_result_id"] == result_id
    assert node["release"] is None
    status = read(client, "/v1/releases/status").json()
    assert status["releases"] == [{"release": None, "nodes": 1, "states": {"trusted": 1}}]

    # New results fill the columns.
    with Session(client.app.state.service.engine) as session, session.begin():  # type: ignore[attr-defined]
        session.add(
            _result(node_id, datetime.now(UTC), release_name="stockade-os",
                    release_version="2.0.0", release_security_version=9,
                    release_digest=DIGEST_NEW)
        )  # fmt: skip
    with client.app.state.service.engine.connect() as connection:  # type: ignore[attr-defined]
        versions = connection.execute(
            text("SELECT release_version FROM results WHERE node_id = :id"), {"id": node_id}
        ).scalars()
        assert sorted(versions, key=str) == sorted([None, "2.0.0"], key=str)
    assert operator_headers(verifier_config.data_dir)  # the verifier started on the old data


def test_migration_0012_downgrades_and_upgrades_again(engine: Engine) -> None:
    from sqlalchemy import inspect

    def columns() -> set[str]:
        return {column["name"] for column in inspect(engine).get_columns("results")}

    added = {"release_name", "release_version", "release_security_version", "release_digest"}
    assert added <= columns()
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.downgrade(config, "0011")
    assert not added & columns()
    assert "log_index" in columns()
    _upgrade(engine, "head")
    assert added <= columns()
