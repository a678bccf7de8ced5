"""End-to-end fixtures: a real ``stockade verifier serve`` process over TLS, and development
nodes (swtpm + verified boot + ``stockade agent run``), on SQLite or on the PostgreSQL in
``STOCKADE_TEST_DATABASE_URL``."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import create_engine, text

from stockade.demo.cluster import (
    KERNEL_STUB,
    OrgMaterial,
    ek_ca_bundle,
    make_org_material,
)
from stockade.tpm.ekca import EkCa
from support.cli import run_stockade
from support.rollout_fixtures import RolloutKit

DATABASE_ENV = "STOCKADE_TEST_DATABASE_URL"


@pytest.fixture(scope="session")
def _require_cluster_tools() -> None:
    from stockade.boot.platform import DEBIAN_GRUB, DEBIAN_SHIM

    missing = [tool for tool in ("swtpm", "swtpm_setup", "sbsign") if not shutil.which(tool)]
    missing += [str(p) for p in (DEBIAN_SHIM, DEBIAN_GRUB, KERNEL_STUB) if not p.exists()]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/bootstrap.sh)")
    serve = run_stockade("verifier", "serve", "--help")
    if serve.returncode != 0:
        pytest.skip("`stockade verifier serve` is not available yet")


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory, _require_cluster_tools: None) -> OrgMaterial:
    return make_org_material(tmp_path_factory.mktemp("org"))


@pytest.fixture(scope="module")
def database_url() -> str | None:
    url = os.environ.get(DATABASE_ENV)
    if url:
        engine = create_engine(url)
        with engine.begin() as connection:
            # Every table the verifier ever made (a list of names would miss the next one).
            connection.execute(text("DROP SCHEMA public CASCADE"))
            connection.execute(text("CREATE SCHEMA public"))
        engine.dispose()
    return url or None


@pytest.fixture(scope="module")
def ek_ca_file(tmp_path_factory: pytest.TempPathFactory, stockade_home: Path) -> Path:
    ek_ca = EkCa.load_or_create(stockade_home / "ek-ca")
    return ek_ca_bundle(ek_ca, tmp_path_factory.mktemp("ekca") / "ek-ca.pem")


@pytest.fixture(scope="module")
def rollout(
    org: OrgMaterial,
    make_module_tpm: Any,
    tmp_path_factory: pytest.TempPathFactory,
    ek_ca_file: Path,
    database_url: str | None,
    stockade_home: Path,
) -> RolloutKit:
    """The organization, the module's swtpms, the EK CA, the database and the Stockade home in
    one (tests/support/rollout_fixtures.py), for the tests that roll releases out."""
    return RolloutKit(
        org, make_module_tpm, ek_ca_file, database_url, stockade_home, tmp_path_factory.mktemp
    )


@pytest.fixture(scope="module")
def make_module_tpm(request: pytest.FixtureRequest, stockade_home: Path, ek_ca: EkCa) -> Any:
    """Freshly provisioned swtpms (each its own EK) that live for the module."""
    from stockade.tpm.swtpm import start_swtpm

    started: list[Any] = []
    module = request.module.__name__.rsplit(".", 1)[-1].removeprefix("test_e2e_")

    def make() -> Any:
        tpm = start_swtpm(f"e2e-{module}-{len(started)}", stockade_home, ek_ca)
        started.append(tpm)
        return tpm

    yield make
    for tpm in started:
        tpm.stop()
