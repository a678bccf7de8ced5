"""pyproject.toml declares ranges, constraints.txt pins: every dependency the project declares
(core and extras) is pinned exactly once in constraints.txt, inside its declared range, so the
bootstrap installs what CI ran and the wheel still installs beside other software."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

ROOT = Path(__file__).resolve().parents[2]


def _declared() -> list[Requirement]:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    texts = list(project["dependencies"])
    for extra in project.get("optional-dependencies", {}).values():
        texts.extend(extra)
    return [Requirement(text) for text in texts]


def _pins() -> dict[str, Version]:
    pins: dict[str, Version] = {}
    for raw in (ROOT / "constraints.txt").read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        name, sep, version = line.partition("==")
        assert sep, f"constraints.txt: {line!r} is not an exact pin (name==version)"
        key = canonicalize_name(name)
        assert key not in pins, f"constraints.txt pins {name} twice"
        pins[key] = Version(version)
    return pins


def test_declared_dependencies_are_ranges_not_pins():
    for requirement in _declared():
        assert not any(spec.operator == "==" for spec in requirement.specifier), (
            f"pyproject.toml pins {requirement}: declare a range, pin in constraints.txt"
        )
        assert requirement.specifier, f"pyproject.toml: {requirement.name} has no range"


def test_every_dependency_is_pinned_inside_its_range():
    pins = _pins()
    for requirement in _declared():
        key = canonicalize_name(requirement.name)
        assert key in pins, f"{requirement.name} is declared but not pinned in constraints.txt"
        assert pins[key] in requirement.specifier, (
            f"constraints.txt pins {requirement.name}=={pins[key]}, outside {requirement.specifier}"
        )
