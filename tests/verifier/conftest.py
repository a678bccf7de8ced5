"""Verifier fixtures: an in-process verifier on SQLite in tmp, or on the database in
``STOCKADE_TEST_DATABASE_URL`` (e.g. ``postgresql+psycopg://...``), reset per test."""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, create_engine, text
from verifier_support import QuoteOnlyAppraiser, operator_headers, policy_document

from stockade.tpm.ekca import EkCa
from stockade.verifier import VerifierConfig, create_app
from stockade.verifier.config import EnrollmentMode
from stockade.verifier.db import make_engine, migrate
from support.webhook_receiver import Receiver

DATABASE_ENV = "STOCKADE_TEST_DATABASE_URL"


class ManualClock:
    """Real time plus an offset tests can advance."""

    def __init__(self) -> None:
        self.offset = timedelta()

    def __call__(self) -> datetime:
        return datetime.now(UTC) + self.offset

    def advance(self, seconds: float) -> None:
        self.offset += timedelta(seconds=seconds)


def _reset_external_database(url: str) -> None:
    """Every table the verifier ever made goes (a list of names would miss the next one)."""
    engine = create_engine(url)
    with engine.begin() as connection:
        connection.execute(text("DROP SCHEMA public CASCADE"))
        connection.execute(text("CREATE SCHEMA public"))
    engine.dispose()


@pytest.fixture
def database_url(tmp_path: Path) -> str | None:
    url = os.environ.get(DATABASE_ENV)
    if url:
        _reset_external_database(url)
    return url or None


@pytest.fixture
def clock() -> ManualClock:
    return ManualClock()


@pytest.fixture
def verifier_config(
    tmp_path: Path, ek_ca: EkCa, database_url: str | None, clock: ManualClock
) -> VerifierConfig:
    return VerifierConfig(
        data_dir=tmp_path / "verifier",
        database_url=database_url,
        ek_roots=ek_ca.trusted_roots(),
        ek_intermediates=ek_ca.intermediates(),
        sweep_interval_seconds=0.05,
        clock=clock,
        enrollment_mode=EnrollmentMode.OPEN,
        # Every in-process client shares one address; tests enrolling many nodes stay under it.
        enrollment_rate_per_minute=1200.0,
    )


@pytest.fixture
def make_client(verifier_config: VerifierConfig) -> Iterator[Callable[..., TestClient]]:
    """Start (or restart) the verifier on the same data dir and database."""
    clients: list[TestClient] = []

    def make(config: VerifierConfig | None = None, policy: dict | None = None) -> TestClient:
        app = create_app(config or verifier_config, appraiser=QuoteOnlyAppraiser())
        client = TestClient(app, raise_server_exceptions=False)
        client.__enter__()
        clients.append(client)
        if policy is not None:
            response = client.put(
                f"/v1/policies/{policy['id']}",
                json=policy,
                headers=operator_headers((config or verifier_config).data_dir),
            )
            assert response.status_code == 200, response.text
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_client: Callable[..., TestClient]) -> TestClient:
    return make_client(policy=policy_document())


@pytest.fixture
def engine(tmp_path: Path, database_url: str | None) -> Iterator[Engine]:
    """A migrated database of the verifier's schema: the test database, else SQLite here."""
    made = make_engine(database_url or f"sqlite:///{tmp_path / 'verifier.db'}")
    migrate(made)
    yield made
    made.dispose()


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    """A webhook receiver on 127.0.0.1 that records every delivery."""
    running = Receiver()
    yield running
    running.close()
