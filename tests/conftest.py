"""Shared fixtures: a session Stockade home with one EK CA, and software TPMs.

``software_tpm`` and ``shared_software_tpm`` clone a TPM provisioned once per
session (about 0.05 s instead of about 0.8 s), so all of them share one EK and
its certificates. ``make_software_tpm`` provisions each TPM afresh, for tests
that need TPMs with distinct identities.
"""

from __future__ import annotations

import fnmatch
import itertools
import re
import shutil
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import ClassVar

import pytest

from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import SoftwareTpm, provision_state, running_swtpms, start_swtpm

_instance_numbers = itertools.count()

TESTS = Path(__file__).resolve().parent
# Markers applied here, from what a test uses, so no file has to remember them:
# - swtpm: it uses a software TPM (or the EK CA swtpm's tools make);
# - tools: it runs other programs (tpm2-tools, runc, podman, umoci, PostgreSQL, sbsign,
#   veritysetup, the `stockade` CLI or a verifier as a process...): every test in a directory
#   of such tests, every `test_*_cli.py` (the command line as a process, tests/support/cli.py)
#   and every test using a fixture that runs a program. Elsewhere a test that runs one says
#   so itself (`@pytest.mark.tools`).
# `make test-core` runs what carries neither: the pure code, in-process, in under a minute.
# It stays so: a test without these marks that starts a program fails, naming the program.
_SWTPM_FIXTURES = frozenset(
    {"software_tpm", "shared_software_tpm", "make_software_tpm", "swtpm_template", "ek_ca"}
)
_TOOL_DIRECTORIES = frozenset({"e2e", "runtime", "crosscheck", "boot", "tpm", "cli", "agent"})
_TOOL_FIXTURES = frozenset(
    {
        "cli",  # tests/eventlog: the `stockade eventlog` commands, run once for the session
        "umoci_layout",  # tests/images: the session's OCI layout, built by umoci
        "world",  # tests/appraisal: the session's releases, kernels signed by sbsign
    }
)
_TIER_MARKERS = ("swtpm", "crosscheck", "tools")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    for item in items:
        fixtures = set(getattr(item, "fixturenames", ()))
        if fixtures & _SWTPM_FIXTURES:
            item.add_marker(pytest.mark.swtpm)
        path = Path(str(item.path)).resolve()
        if fixtures & _TOOL_FIXTURES or fnmatch.fnmatch(path.name, "test_*_cli.py"):
            item.add_marker(pytest.mark.tools)
        try:
            top = path.relative_to(TESTS).parts[0]
        except ValueError:
            continue
        if top in _TOOL_DIRECTORIES:
            item.add_marker(pytest.mark.tools)


def pytest_ignore_collect(collection_path: Path, config: pytest.Config) -> bool | None:
    """``-m "... and not tools"`` (``make test-core``) would deselect every test of a tool
    directory: they are not even imported, which saves seconds of collection."""
    if collection_path.name not in _TOOL_DIRECTORIES or collection_path.parent.resolve() != TESTS:
        return None
    return _leaves_out_tools(config.getoption("markexpr") or "") or None


def _leaves_out_tools(markexpr: str) -> bool:
    """Whether ``markexpr`` is a plain conjunction (no ``or``, no parentheses) with the term
    ``not tools``: then no test marked ``tools`` is selected, whatever else it carries."""
    if "(" in markexpr or re.search(r"\bor\b", markexpr):
        return False
    return "not tools" in (" ".join(term.split()) for term in re.split(r"\band\b", markexpr))


# -- no programs in the tool-free tier -------------------------------------------------------

# Audit events (PEP 578) of starting a program; a fork of this interpreter (multiprocessing)
# runs the code under test and is not one.
_PROGRAM_EVENTS = frozenset(
    {"subprocess.Popen", "os.system", "os.posix_spawn", "os.exec", "os.spawn"}
)


class ProgramInToolFreeTest(Exception):
    """An unmarked test started a program."""


class _Running:
    """The test running now if it carries none of ``_TIER_MARKERS``, and what it started."""

    unmarked: str | None = None
    started: ClassVar[list[str]] = []


def _program(event: str, args: tuple[object, ...]) -> str:
    if event == "subprocess.Popen":  # (executable, args, cwd, env)
        argv = args[1]
        first = argv[0] if isinstance(argv, list | tuple) and argv else argv
        return str(args[0] or first)
    return str(args[1] if event == "os.spawn" else args[0])


def _refuse_programs(event: str, args: tuple[object, ...]) -> None:
    if _Running.unmarked is None or event not in _PROGRAM_EVENTS:
        return
    program = _program(event, args)
    _Running.started.append(program)
    raise ProgramInToolFreeTest(
        f"{_Running.unmarked} runs {program}: a test that runs a program is marked "
        "`tools` (or `swtpm`, `crosscheck`), so `make test-core` leaves it out; "
        "see tests/conftest.py"
    )


sys.addaudithook(_refuse_programs)


@pytest.hookimpl(wrapper=True)
def pytest_runtest_protocol(item: pytest.Item, nextitem: pytest.Item | None) -> object:
    marked = any(item.get_closest_marker(name) for name in _TIER_MARKERS)
    _Running.unmarked = None if marked else item.nodeid
    try:
        return (yield)
    finally:
        _Running.unmarked = None
        _Running.started.clear()


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]) -> pytest.TestReport:
    report: pytest.TestReport = yield
    if _Running.started and report.passed:  # the refusal was caught and the test went on
        report.outcome = "failed"
        report.longrepr = (
            f"{item.nodeid} runs {', '.join(_Running.started)} without the `tools` mark "
            "(see tests/conftest.py)"
        )
    _Running.started.clear()
    return report


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
