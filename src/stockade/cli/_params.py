"""Parameter values without Pydantic: start-up time for every command.

Typer (0.29) converts each command-line value through a Pydantic ``TypeAdapter`` it builds
when the parameter is first processed, defaults included: every command with a string,
path or choice option imports Pydantic (about 60 ms, more than Typer itself) before it runs.
The CLI's options are plain: strings, paths, integers, choices (``StrEnum``), lists of
those. ``install`` gives each such parameter a converter of its own that does what Typer's
does for the values it knows, and hands anything else (an unusual value, a value Typer
would refuse, so that its error message stands) to Typer's own converter, built then.

It reaches into one private attribute of Typer's parameters (``_runtime_param``, the
converter Typer caches); when a Typer release changes that, ``install`` does nothing and
Typer converts as before. ``tests/cli/test_cli_params.py`` checks that both agree.
"""

from __future__ import annotations

import re
from enum import Enum
from pathlib import Path
from typing import Any, get_args, get_origin

from typer import _click as click

_INTEGER = re.compile(r"[+-]?[0-9]+")
_FLOAT = re.compile(r"[+-]?([0-9]+\.?[0-9]*|\.[0-9]+)([eE][+-]?[0-9]+)?")


class _Unhandled(Exception):
    """Not a value this module converts: Typer's converter decides."""


def _in_range(value: int | float, info: Any) -> int | float:
    if info.clamp:
        raise _Unhandled
    if (info.min is not None and value < info.min) or (info.max is not None and value > info.max):
        raise _Unhandled  # Typer's message says what the range is
    return value


def _leaf(annotation: Any, info: Any, value: Any, param: Any, ctx: click.Context) -> Any:
    """``value`` as Typer converts it to ``annotation``, or ``_Unhandled``."""
    if annotation is str and isinstance(value, str):
        return value
    if annotation is bool and isinstance(value, bool):
        return value
    if annotation is int and not isinstance(value, bool):
        if isinstance(value, int):
            return _in_range(value, info)
        if isinstance(value, str) and _INTEGER.fullmatch(value):
            return _in_range(int(value), info)
    if annotation is float and not isinstance(value, bool):
        if isinstance(value, int | float):
            return _in_range(float(value), info)
        if isinstance(value, str) and _FLOAT.fullmatch(value):
            return _in_range(float(value), info)
    if isinstance(annotation, type) and issubclass(annotation, Enum):
        from typer._param_types import coerce_cli_choice

        try:
            return coerce_cli_choice(
                value, choices=tuple(annotation), case_sensitive=info.case_sensitive, ctx=ctx
            )
        except ValueError:
            raise _Unhandled from None
    if isinstance(annotation, type) and issubclass(annotation, Path):
        from typer._param_types import coerce_cli_path

        path_type = info.path_type or annotation
        if not (isinstance(path_type, type) and issubclass(path_type, Path)):
            raise _Unhandled
        if isinstance(value, str):
            value = path_type(value)
        if not isinstance(value, path_type):
            raise _Unhandled
        # Typer's own path checks (exists, dir_okay...), on the Path it would have built.
        return coerce_cli_path(value, info, path_type=path_type, param=param, ctx=ctx)
    raise _Unhandled


class _PlainConverter:
    """Typer's ``RuntimeParam`` interface (``coerce``) for one parameter."""

    def __init__(self, param: Any) -> None:
        self.param = param
        self.descriptor = param.type_descriptor
        self._typer: Any = None

    def _fallback(self) -> Any:
        if self._typer is None:
            from typer._coercion import build_runtime_param

            self._typer = build_runtime_param(self.descriptor)
        return self._typer

    def coerce(self, value: Any, param: Any, ctx: click.Context) -> Any:
        multiple = param.multiple or param.nargs == -1
        if value is None:
            return () if multiple else None
        try:
            return self._convert(value, param, ctx, multiple)
        except _Unhandled:
            return self._fallback().coerce(value, param=param, ctx=ctx)

    def _convert(self, value: Any, param: Any, ctx: click.Context, multiple: bool) -> Any:
        annotation = self.descriptor.annotation
        info = self.descriptor.parameter_info
        if multiple:
            if get_origin(annotation) is not list or not isinstance(value, list | tuple):
                raise _Unhandled
            (element,) = get_args(annotation)
            return [_leaf(element, info, item, param, ctx) for item in value]
        return _leaf(annotation, info, value, param, ctx)


def install(command: click.Command) -> None:
    """Give every plain parameter of ``command`` (and of its loaded subcommands) a converter
    that needs no Pydantic."""
    # The --help option is made on first use and kept (``Command.get_help_option``).
    help_option = command.get_help_option(click.Context(command))
    for param in [*command.params, *([help_option] if help_option is not None else [])]:
        descriptor = getattr(param, "type_descriptor", None)
        if descriptor is None or getattr(param, "_runtime_param", False) is not None:
            continue  # not a Typer parameter, or its converter is built already
        if descriptor.file_annotation is not None or descriptor.parameter_info.parser:
            continue
        param._runtime_param = _PlainConverter(param)  # type: ignore[attr-defined]
    subcommands = getattr(command, "commands", None)  # a group's loaded commands
    if isinstance(subcommands, dict):
        for subcommand in subcommands.values():
            install(subcommand)
