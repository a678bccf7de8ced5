"""Migration 0006 carries an existing verifier over: canonical EK identities, unique names,
grants bound to node ids, history kept; a TPM enrolled twice by re-encoding its EK is caught.

Runs on SQLite, and on PostgreSQL when ``STOCKADE_TEST_DATABASE_URL`` is set."""

from __future__ import annotations

import hashlib
import uuid
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from alembic import command
from alembic.config import Config as AlembicConfig
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from sqlalchemy import Engine, text

from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.ek_identity import ek_identity
from stockade.evidence.public import (
    EccParameters,
    EccPoint,
    RsaParameters,
    Scheme,
    SymmetricDefinition,
    TpmPublic,
)
from stockade.verifier.db import MIGRATIONS, make_engine, migrate

LOW = 0x000300B2  # fixedTPM fixedParent sensitiveDataOrigin adminWithPolicy restricted decrypt
POLICY_A = bytes.fromhex("837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa")
AES128_CFB = SymmetricDefinition(Alg.AES, 128, Alg.CFB)


def rsa_ek(key: rsa.RSAPrivateKey) -> TpmPublic:
    template = TpmPublic(
        Alg.RSA, Alg.SHA256, LOW, POLICY_A, RsaParameters(AES128_CFB, Scheme(), 2048, 0), b""
    )
    return template.with_public_key(key.public_key())


def ecc_ek(key: ec.EllipticCurvePrivateKey) -> TpmPublic:
    template = TpmPublic(
        Alg.ECC,
        Alg.SHA256,
        LOW,
        POLICY_A,
        EccParameters(AES128_CFB, Scheme(), EccCurve.NIST_P256, Scheme()),
        EccPoint(b"", b""),
    )
    return template.with_public_key(key.public_key())


def _upgrade(engine: Engine, revision: str) -> None:
    config = AlembicConfig()
    config.set_main_option("script_location", str(MIGRATIONS))
    with engine.begin() as connection:
        config.attributes["connection"] = connection
        command.upgrade(config, revision)


def _node(connection, name: str, ek: TpmPublic, created: str, **extra) -> str:
    node_id = str(uuid.uuid4())

    connection.execute(
        text(
            "INSERT INTO nodes (id, name, ek_fingerprint, ek_public, ek_certificate, ak_public, "
            "state, revoked, allowed, created_at, updated_at) VALUES (:id, :name, :fp, :ek, "
            ":cert, :ak, :state, :revoked, true, :created, :created)"
        ),
        {
            "id": node_id,
            "name": name,
            "fp": hashlib.sha256(ek.marshal_tpm2b()).hexdigest(),  # the old identity
            "ek": ek.marshal_tpm2b(),
            "cert": b"cert",
            "ak": b"ak",
            "state": extra.get("state", "trusted"),
            "revoked": extra.get("revoked", False),
            "created": datetime.fromisoformat(created),
        },
    )
    connection.execute(
        text(
            "INSERT INTO events (node_id, name, from_state, to_state, reason, time) "
            "VALUES (:id, :name, NULL, 'enrolled', 'enrolled', :created)"
        ),
        {"id": node_id, "name": name, "created": datetime.fromisoformat(created)},
    )
    return node_id


def _grant(connection, secret: str, selector: str) -> None:
    connection.execute(
        text(
            "INSERT INTO secret_grants (secret_name, selector, created_at) "
            "VALUES (:secret, :selector, :now)"
        ),
        {"secret": secret, "selector": selector, "now": datetime.now(UTC).replace(tzinfo=None)},
    )


def test_migration_0006_carries_nodes_names_grants_and_history(
    tmp_path: Path, database_url: str | None
) -> None:
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'old.db'}")
    _upgrade(engine, "0005")
    rsa_key = rsa.generate_private_key(65537, 2048)
    web1 = rsa_ek(rsa_key)
    # The same TPM, enrolled again with its public area re-encoded (the revocation bypass).
    reencoded = replace(web1, parameters=replace(web1.parameters, exponent=65537))
    other = ecc_ek(ec.generate_private_key(ec.SECP256R1()))
    third = ecc_ek(ec.generate_private_key(ec.SECP256R1()))
    with engine.begin() as connection:
        connection.execute(
            text(
                "INSERT INTO secrets (name, version, kek_id, ciphertext, created_at, updated_at) "
                "VALUES ('db', 1, 'k', :ct, :now, :now)"
            ),
            {"ct": b"x", "now": datetime.now(UTC).replace(tzinfo=None)},
        )
        first = _node(connection, "web-1", web1, "2026-01-01T00:00:00", state="revoked")
        connection.execute(text("UPDATE nodes SET revoked = true WHERE id = :id"), {"id": first})
        twin = _node(connection, "web-1-again", reencoded, "2026-02-01T00:00:00")
        clash = _node(connection, "web-1", other, "2026-03-01T00:00:00")  # names were not unique
        kept = _node(connection, "db-1", third, "2026-01-05T00:00:00")
        _grant(connection, "db", "node:web-1")
        _grant(connection, "db", "node:ghost")
        _grant(connection, "db", f"node:{kept}")
        _grant(connection, "db", "label:role=db")

    migrate(engine)
    with engine.connect() as connection:
        nodes = {
            row.id: row
            for row in connection.execute(
                text(
                    "SELECT id, name, ek_fingerprint, state, revoked, channel_key_public FROM nodes"
                )
            )
        }
        grants = sorted(
            row.selector for row in connection.execute(text("SELECT selector FROM secret_grants"))
        )
        events = connection.execute(
            text("SELECT node_id, to_state, reason, actor FROM events ORDER BY id")
        ).all()
    engine.dispose()

    # Identity is the key: the original node holds it, still revoked.
    assert nodes[first].ek_fingerprint == ek_identity(web1) == ek_identity(reencoded)
    assert nodes[first].revoked and nodes[first].name == "web-1"
    # The re-encoded twin does not escape the revocation: it is revoked too, with a reason.
    assert nodes[twin].revoked and nodes[twin].state == "revoked"
    assert nodes[twin].ek_fingerprint != ek_identity(web1)
    assert any(
        e.node_id == twin and "re-encoded" in e.reason and e.actor == "migration" for e in events
    )
    # Names are unique: the older node keeps the name, the newer one is renamed, valid.
    assert nodes[clash].name.startswith("web-1-") and nodes[clash].name != "web-1"
    assert len(nodes[clash].name) <= 52
    assert nodes[clash].ek_fingerprint == ek_identity(other)
    # Grants name ids now; a grant to a name nobody holds is gone (it could be captured).
    assert grants == sorted([f"node:{first}", f"node:{kept}", "label:role=db"])
    # History is kept, and nobody has a channel key yet: agents enroll again.
    assert sum(1 for e in events if e.to_state == "enrolled") == 4
    assert all(node.channel_key_public is None for node in nodes.values())


def test_migration_0007_keeps_event_ids_and_webhook_cursors(
    tmp_path: Path, database_url: str | None
) -> None:
    """Existing events keep their id as their stream position, so stored webhook cursors and
    clients' ``Last-Event-ID`` keep their meaning; new events are placed after them."""
    from stockade.verifier.events import sequence_events

    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'old.db'}")
    _upgrade(engine, "0006")
    now = datetime.now(UTC).replace(tzinfo=None)
    with engine.begin() as connection:
        node = _node(
            connection, "web-1", rsa_ek(rsa.generate_private_key(65537, 2048)), "2026-01-01"
        )
        for state in ("trusted", "revoked"):
            connection.execute(
                text(
                    "INSERT INTO events (node_id, name, from_state, to_state, reason, time) "
                    "VALUES (:id, 'web-1', NULL, :state, 'x', :now)"
                ),
                {"id": node, "state": state, "now": now},
            )
        connection.execute(
            text("INSERT INTO webhook_cursors (url, last_event_id) VALUES ('https://r/', 2)")
        )
        ids = connection.execute(text("SELECT id FROM events ORDER BY id")).scalars().all()

    migrate(engine)
    with engine.begin() as connection:
        placed = connection.execute(text("SELECT id, position FROM events ORDER BY id")).all()
        cursor = connection.execute(
            text("SELECT last_event_id, claimed_by, lease_until FROM webhook_cursors")
        ).one()
        connection.execute(
            text(
                "INSERT INTO events (node_id, name, from_state, to_state, reason, time) "
                "VALUES (:id, 'web-1', 'revoked', 'enrolled', 'allowed', :now)"
            ),
            {"id": node, "now": now},
        )
    assert sequence_events(engine) == 1
    with engine.connect() as connection:
        newest = connection.execute(text("SELECT max(position) FROM events")).scalar_one()
    engine.dispose()

    assert [(row.id, row.position) for row in placed] == [(i, i) for i in ids]
    assert tuple(cursor) == (2, None, None)
    assert newest == max(ids) + 1


def test_replicas_starting_together_migrate_one_at_a_time(database_url):
    """Two replicas on one empty PostgreSQL used to race in `alembic upgrade` (duplicate
    type/table errors); the advisory lock makes the second wait and find nothing to do."""
    import threading

    import pytest

    if database_url is None:
        pytest.skip("PostgreSQL only (set STOCKADE_TEST_DATABASE_URL): SQLite has one writer")
    # Without the lock the race deadlocks in PostgreSQL's catalog: bound every statement so
    # that shows up as an error here rather than as a hung test.
    bounded = database_url + ("&" if "?" in database_url else "?")
    bounded += "options=-c%20statement_timeout%3D20000%20-c%20lock_timeout%3D20000"
    engines = [make_engine(bounded) for _ in range(3)]
    errors: list[BaseException] = []
    start = threading.Barrier(len(engines))

    def run(engine: Engine) -> None:
        start.wait()
        try:
            migrate(engine)
        except BaseException as error:  # collected and asserted below
            errors.append(error)

    threads = [threading.Thread(target=run, args=(engine,)) for engine in engines]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(60)
    for engine in engines:
        engine.dispose()
    assert errors == []
    engine = make_engine(database_url)
    with engine.connect() as connection:
        heads = connection.execute(text("SELECT version_num FROM alembic_version")).scalars().all()
    engine.dispose()
    assert len(heads) == 1


def test_migration_0008_marks_existing_nodes_and_enrollments_as_ek(
    tmp_path: Path, database_url: str | None
) -> None:
    """Every node and enrollment before AK-certificate enrollment existed is an EK's."""
    engine = make_engine(database_url or f"sqlite:///{tmp_path / 'old.db'}")
    _upgrade(engine, "0007")
    with engine.begin() as connection:
        _node(connection, "web-1", rsa_ek(rsa.generate_private_key(65537, 2048)), "2026-01-01")
    migrate(engine)
    with engine.connect() as connection:
        node = connection.execute(
            text("SELECT identity_kind, ak_certificate, instance FROM nodes")
        ).one()
    engine.dispose()
    assert tuple(node) == ("ek", None, None)
