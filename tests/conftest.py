"""Shared fixtures: a session Stockade home with one EK CA, and software TPMs.

``software_tpm`` and ``shared_software_tpm`` clone a TPM provisioned once per
session (about 0.05 s instead of about 0.8 s), so all of them share one EK and
its certificates. ``make_software_tpm`` provisions each TPM afresh, for tests
that need TPMs with distinct identities.
"""

from __future__ import annotations

import itertools
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import SoftwareTpm, provision_state, running_swtpms, start_swtpm

_instance_numbers = itertools.count()

TESTS = Path(__file__).resolve().parent
# Markers applied here, from what a test uses, so no file has to remember them:
# - swtpm: it uses a software TPM (or the EK CA swtpm's tools make);
# - tools: it runs other programs (tpm2-tools, runc, podman, umoci, PostgreSQL, sbsign,
#   veritysetup, a real verifier process...).
# `make test-core` runs what carries neither: the pure code, in-process, in under a minute.
_SWTPM_FIXTURES = frozenset(
    {"software_tpm", "shared_software_tpm", "make_software_tpm", "swtpm_template", "ek_ca"}
)
_TOOL_DIRECTORIES = frozenset({"e2e", "runtime", "crosscheck", "boot", "tpm", "cli", "agent"})


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _SWTPM_FIXTURES:
            item.add_marker(pytest.mark.swtpm)
        try:
            top = Path(str(item.path)).resolve().relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if top in _TOOL_DIRECTORIES:
            item.add_marker(pytest.mark.tools)


def _require_swtpm() -> None:
    missing = [tool for tool in ("swtpm", "swtpm_setup") if shutil.which(tool) is None]
    if missing:
        pytest.skip(
            f"{', '.join(missing)} not installed (Debian swtpm, swtpm-tools; scripts/bootstrap.sh)"
        )


def _instance_name(test_name: str) -> str:
    tail = re.sub(r"[^A-Za-z0-9_.-]+", "-", test_name).strip("-.")[:40]
    return f"t{next(_instance_numbers)}-{tail}"


@pytest.fixture(scope="session")
def stockade_home(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """A Stockade home for the session, also exported as ``STOCKADE_HOME``.

    Any swtpm still running under it at the end (a CLI test that failed before
    its ``stop``) is stopped.
    """
    home = tmp_path_factory.mktemp("stockade-home")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("STOCKADE_HOME", str(home))
        yield home
    for tpm in running_swtpms(home):
        tpm.stop()


@pytest.fixture(scope="session")
def ek_ca(stockade_home: Path) -> EkCa:
    """The session's EK CA (``<stockade_home>/ek-ca``), created once."""
    return EkCa.load_or_create(stockade_home / "ek-ca")


@pytest.fixture(scope="session")
def swtpm_template(stockade_home: Path, ek_ca: EkCa) -> Path:
    """A TPM state directory provisioned once per session; fixtures clone it."""
    _require_swtpm()
    state_dir = stockade_home / "templates" / "default" / "state"
    provision_state(state_dir, ek_ca)
    return state_dir


@pytest.fixture
def software_tpm(
    request: pytest.FixtureRequest, stockade_home: Path, ek_ca: EkCa, swtpm_template: Path
) -> Iterator[SoftwareTpm]:
    """A fresh, running swtpm for one test (a clone of the session template)."""
    name = _instance_name(request.node.name)
    with start_swtpm(name, stockade_home, ek_ca, template=swtpm_template) as tpm:
        yield tpm


@pytest.fixture(scope="module")
def shared_software_tpm(
    request: pytest.FixtureRequest, stockade_home: Path, ek_ca: EkCa, swtpm_template: Path
) -> Iterator[SoftwareTpm]:
    """One running swtpm for a whole test module; tests must not rely on its PCRs."""
    name = _instance_name(request.module.__name__.rsplit(".", 1)[-1])
    with start_swtpm(name, stockade_home, ek_ca, template=swtpm_template) as tpm:
        yield tpm


@pytest.fixture
def make_software_tpm(
    request: pytest.FixtureRequest, stockade_home: Path, ek_ca: EkCa
) -> Iterator[Callable[[], SoftwareTpm]]:
    """A factory of freshly provisioned swtpms, each with its own EKs; all stopped after."""
    _require_swtpm()
    started: list[SoftwareTpm] = []

    def make() -> SoftwareTpm:
        tpm = start_swtpm(_instance_name(request.node.name), stockade_home, ek_ca)
        started.append(tpm)
        return tpm

    yield make
    for tpm in started:
        tpm.stop()
