"""Values as an operator reads them in text output: never a Python repr (``{'a': 1}``,
``None``, ``True``, ``b'..'``, ``<Kind.X: 1>``), whatever JSON the verifier answered with.

``plain`` is for a cell or a line of its own (lists and mappings one item a line);
``inline`` keeps everything on one line. ``cell`` is ``plain`` made safe for a Rich table
(square brackets in data are not markup). JSON output (``--format json``) never comes here.
"""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import date, datetime
from enum import Enum

EMPTY = "-"


def _scalar(value: object) -> str | None:
    if value is None:
        return ""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, Enum):
        return _scalar(value.value)
    if isinstance(value, datetime | date):
        return value.isoformat()
    if isinstance(value, bytes | bytearray):
        return bytes(value).hex() if len(value) <= 64 else base64.b64encode(value).decode()
    if isinstance(value, str | int | float):
        return str(value)
    return None


def inline(value: object) -> str:
    """``value`` on one line: ``key=value, ...`` for a mapping, ``a, b`` for a list, a nested
    one in parentheses."""
    text = _scalar(value)
    if text is not None:
        return text
    if isinstance(value, Mapping):
        return ", ".join(f"{key}={_nested(item)}" for key, item in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return ", ".join(_nested(item) for item in value)
    return str(value)


def _nested(value: object) -> str:
    text = inline(value)
    if isinstance(value, Mapping | list | tuple) and len(value) > 1:
        return f"({text})"
    return text


def plain(value: object) -> str:
    """``value`` for a cell of its own: one list item or ``key: value`` a line."""
    text = _scalar(value)
    if text is not None:
        return text
    if isinstance(value, Mapping):
        return "\n".join(f"{key}: {inline(item)}" for key, item in value.items())
    if isinstance(value, list | tuple | set | frozenset):
        return "\n".join(inline(item) for item in value)
    return str(value)


def cell(value: object, empty: str = "") -> str:
    """``plain(value)`` for a Rich table cell or line: its square brackets printed as they
    are, ``empty`` for nothing."""
    from rich.markup import escape

    text = plain(value)
    return escape(text) if text else empty


def shorten(text: str, width: int) -> str:
    return text if len(text) <= width else text[: width - 3] + "..."
