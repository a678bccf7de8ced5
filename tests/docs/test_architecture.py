"""ARCHITECTURE.md is the map of the code as it is: every file it names exists, and every
function, class or constant it names right after a module exists in that module."""

from __future__ import annotations

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SOURCE = ROOT / "src" / "stockade"
MAP = (ROOT / "ARCHITECTURE.md").read_text()

# `verifier/attestation.py` or `tests/cli/test_cli_startup.py` or `docs/operations.md`
PATH = re.compile(r"`([\w./-]+\.(?:py|md|c|toml|sh))`")
# `module.py` `name` or `module.py` `Class.method`: the name must be defined in that module
NAMED = re.compile(r"`([\w/]+\.py)` `([A-Za-z_][\w.]*)`")


def _where(path: str) -> Path | None:
    for base in (SOURCE, ROOT, ROOT / "tests", ROOT / "docs"):
        if (base / path).exists():
            return base / path
    if "/" not in path:  # a bare file name, in its package's row of the table
        found = sorted(SOURCE.rglob(path))
        return found[0] if found else None
    return None


def test_every_file_the_map_names_exists():
    missing = sorted(
        {p for p in PATH.findall(MAP) if not p.startswith("../") and _where(p) is None}
    )
    assert missing == [], f"ARCHITECTURE.md names files that do not exist: {missing}"


def test_every_name_the_map_puts_in_a_module_is_defined_there():
    missing = []
    for module, name in NAMED.findall(MAP):
        found = _where(module)
        if found is None or found.suffix != ".py":
            continue  # the file test reports it
        text = found.read_text()
        for part in name.split("."):
            word = re.escape(part)
            pattern = (
                rf"(?m)^\s*(?:async\s+)?(?:def|class)\s+{word}\b"  # a def or class
                rf"|^\s*{word}\s*[:=]|\b{word}\s*="  # an assignment or a field
            )
            if not re.search(pattern, text):
                missing.append(f"{module} {name}")
                break
    assert missing == [], f"ARCHITECTURE.md names what these modules do not define: {missing}"
