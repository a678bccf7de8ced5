"""``cli/_params.py`` converts option values as Typer does, without Pydantic: for every
parameter of every command, on its default and on values of each kind, the same value or
the same error as Typer's own converter."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Any

import pytest
from typer import _click as click
from typer._coercion import build_runtime_param

from stockade.cli import COMMANDS, _params, load_command


def _parameters() -> list[tuple[str, click.Command, Any]]:
    found = []

    def walk(path: str, command: click.Command) -> None:
        for param in command.params:
            if isinstance(getattr(param, "_runtime_param", None), _params._PlainConverter):
                found.append((f"{path} {param.name}", command, param))
        for name, sub in (getattr(command, "commands", None) or {}).items():
            walk(f"{path} {name}", sub)

    for name in COMMANDS:
        walk(name, load_command(name))
    return found


PARAMETERS = _parameters()


def _samples(param: Any, tmp_path: Path) -> list[Any]:
    annotation = param.type_descriptor.annotation
    values: list[Any] = [param.default]
    element = getattr(annotation, "__args__", (annotation,))[0]
    if isinstance(element, type) and issubclass(element, Enum):
        candidates = [str(m.value) for m in element] + [str(m.value).upper() for m in element]
        candidates += ["no-such-choice", next(iter(element))]
    elif element is int:
        candidates = ["0", "1", "-3", "+7", " 5", "5.0", "x", "1_000", "99999999999"]
    elif element is float:
        candidates = ["0", "0.5", "1e3", ".5", "-2.5", "x", "inf", "1_0"]
    elif isinstance(element, type) and issubclass(element, Path):
        (tmp_path / "file").write_text("")
        candidates = [str(tmp_path / "file"), str(tmp_path), str(tmp_path / "absent"), "-", ""]
    else:
        candidates = ["", "text", "-", "a=b"]
    if param.multiple or param.nargs == -1:
        values += [(c,) for c in candidates] + [tuple(candidates[:2]), ()]
    else:
        values += candidates
    return values


def _outcome(converter: Any, value: Any, param: Any, ctx: click.Context) -> Any:
    try:
        return ("value", converter.coerce(value, param=param, ctx=ctx))
    except click.ClickException as error:
        return ("error", type(error).__name__, error.format_message())


def test_every_plain_parameter_is_covered():
    names = {name for name, _, _ in PARAMETERS}
    assert "nodes list verifier" in names and "nodes list output" in names
    assert "results show limit" in names and "log monitor interval" in names
    assert len(PARAMETERS) > 100


@pytest.mark.parametrize(("name", "command", "param"), PARAMETERS, ids=[p[0] for p in PARAMETERS])
def test_the_plain_converter_agrees_with_typers(
    name: str, command: click.Command, param: Any, tmp_path: Path
):
    ctx = click.Context(command)
    typers = build_runtime_param(param.type_descriptor)
    for value in _samples(param, tmp_path):
        ours = _outcome(param._runtime_param, value, param, ctx)
        theirs = _outcome(typers, value, param, ctx)
        assert ours == theirs, (name, value)
        if ours[0] == "value":
            assert type(ours[1]) is type(theirs[1]), (name, value)
