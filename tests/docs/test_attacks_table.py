"""Every row of ATTACKS.md names tests that exist: a row whose test was renamed or never
written claims a defence nobody checks.

A row's last column names test files under ``tests/`` (``dir/test_x.py``), optionally with a
test function (``::test_name``); ``::test_other`` right after names another function in the
same file. Each file must exist and each function must be defined in it."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
ATTACKS = ROOT / "ATTACKS.md"
TESTS = ROOT / "tests"

_REFERENCE = re.compile(r"`([A-Za-z0-9_./]*test_[A-Za-z0-9_]+\.py)?(?:::([A-Za-z0-9_]+))?[^`]*`")


def _rows() -> list[tuple[str, str]]:
    rows = []
    for line in ATTACKS.read_text().splitlines():
        match = re.match(r"^\| (\d+) \|", line)
        if match:
            rows.append((match.group(1), line.rstrip().rstrip("|").rsplit("|", 1)[-1]))
    return rows


def _references(cell: str) -> list[tuple[str, str | None]]:
    """(file, function or None) for each test a cell names, carrying the file of a bare
    ``::function`` over from the reference before it."""
    found: list[tuple[str, str | None]] = []
    current: str | None = None
    for match in _REFERENCE.finditer(cell):
        path, function = match.group(1), match.group(2)
        if path is None and function is None:
            continue
        if path is not None:
            current = path
        if current is None:
            continue
        found.append((current, function))
    return found


def _defined(path: Path, function: str) -> bool:
    text = path.read_text()
    return re.search(rf"^(?:async )?def {re.escape(function)}\(", text, re.M) is not None or (
        re.search(rf"^class {re.escape(function)}\b", text, re.M) is not None
    )


def test_the_table_is_found():
    rows = _rows()
    assert len(rows) >= 80
    assert sum(len(_references(cell)) for _, cell in rows) >= len(rows)


@pytest.mark.parametrize(("row", "cell"), _rows(), ids=[number for number, _ in _rows()])
def test_every_row_names_tests_that_exist(row: str, cell: str):
    references = _references(cell)
    missing = []
    for path, function in references:
        file = TESTS / path
        if not file.is_file():
            missing.append(f"{path} (no such file)")
        elif function is not None and not _defined(file, function):
            missing.append(f"{path}::{function} (not defined there)")
    assert not missing, f"ATTACKS.md row {row} names {', '.join(missing)}"
