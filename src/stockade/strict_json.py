"""The one JSON encoding Stockade signs, and the one strict way it reads JSON.

**Canonical form** (every signed or hashed JSON document: release manifests, image trust
policies, execution records, transparency-log entries): keys sorted by code point, no
whitespace, UTF-8 without escaping non-ASCII, no NaN or infinity. One document, one byte
string, so one digest and one signature.

**Strict reading** (every document whose bytes were signed, and every answer a relying party
acts on): a duplicated key is refused, never "last wins" (RFC 8259 section 4 leaves
duplicates to the parser, and two parsers that disagree are a signature bypass);
NaN/Infinity, invalid UTF-8, a byte-order mark, nesting deeper than ``MAX_DEPTH`` and
documents larger than the caller's bound are refused.

:class:`Fields` reads typed fields with the JSON path in every error. Callers pass the
error class they raise (``ImageError``, ``ManifestMalformed``...), so a reader's failures
stay typed in the caller's own family.

Pure: no I/O.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
from collections.abc import Mapping
from typing import Any

MAX_DEPTH = 64

_LOWER_HEX = re.compile(r"(?:[0-9a-f]{2})*")
_ANY_HEX = re.compile(r"(?:[0-9a-fA-F]{2})*")


class StrictJsonError(ValueError):
    """JSON that is not acceptable; the default error class of this module."""


def canonical_json(document: Any) -> bytes:
    """``document`` in Stockade's canonical form (see the module docstring)."""
    return json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False
    ).encode("utf-8")


def _depth(value: Any) -> int:
    deepest = 0
    stack: list[tuple[Any, int]] = [(value, 1)]
    while stack:
        item, level = stack.pop()
        if isinstance(item, dict):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item.values())
        elif isinstance(item, list):
            deepest = max(deepest, level)
            stack.extend((child, level + 1) for child in item)
    return deepest


def loads_strict(
    data: bytes | str,
    what: str,
    *,
    max_size: int,
    error: type[Exception] = StrictJsonError,
) -> Any:
    """The JSON value in ``data``; ``error`` naming ``what`` and the problem otherwise."""
    if len(data) > max_size:
        raise error(f"{what} is {len(data)} bytes, at most {max_size}")
    if isinstance(data, bytes):
        if data.startswith(b"\xef\xbb\xbf"):
            raise error(f"{what} starts with a byte-order mark")
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as problem:
            raise error(f"{what} is not UTF-8 (byte offset {problem.start})") from None
    else:
        text = data

    def pairs(items: list[tuple[str, Any]]) -> dict[str, Any]:
        document: dict[str, Any] = {}
        for key, value in items:
            if key in document:
                raise error(f"{what} has the key {key!r} twice")
            document[key] = value
        return document

    def constant(name: str) -> Any:
        raise error(f"{what} contains {name}, which is not JSON")

    try:
        document = json.loads(text, object_pairs_hook=pairs, parse_constant=constant)
    except RecursionError:
        raise error(f"{what} is nested too deeply") from None
    except ValueError as problem:
        if isinstance(problem, error):
            raise
        raise error(f"{what} is not JSON: {problem}") from None
    if _depth(document) > MAX_DEPTH:
        raise error(f"{what} is nested deeper than {MAX_DEPTH} levels")
    return document


def loads_canonical(
    data: bytes,
    what: str,
    *,
    max_size: int,
    error: type[Exception] = StrictJsonError,
) -> Any:
    """Like :func:`loads_strict`, and ``data`` must be the value's canonical form."""
    document = loads_strict(data, what, max_size=max_size, error=error)
    if canonical_json(document) != data:
        raise error(f"{what} is not canonical JSON (sorted keys, no whitespace, UTF-8)")
    return document


def read_object(
    value: Any,
    where: str,
    keys: set[str] | frozenset[str] | None = None,
    *,
    error: type[Exception] = StrictJsonError,
    optional: set[str] | frozenset[str] = frozenset(),
) -> dict[str, Any]:
    """A JSON object; with ``keys``, having each of them and nothing outside ``keys`` and
    ``optional``."""
    return Fields(value, where, error=error, required=keys, optional=optional).value


def read_array(value: Any, where: str, *, error: type[Exception] = StrictJsonError) -> list[Any]:
    if not isinstance(value, list):
        raise error(f"{where} is not a JSON array")
    return value


class Fields:
    """Typed reading of one JSON object, naming ``where`` (a JSON path) in each error."""

    def __init__(
        self,
        value: Any,
        where: str,
        *,
        error: type[Exception] = StrictJsonError,
        required: set[str] | frozenset[str] | None = None,
        optional: set[str] | frozenset[str] = frozenset(),
    ) -> None:
        if not isinstance(value, dict):
            raise error(f"{where} is not a JSON object")
        self.value: dict[str, Any] = value
        self.where = where
        self.error = error
        if required is not None:
            missing = sorted(required - value.keys())
            if missing:
                raise error(f"{where} lacks {', '.join(missing)}")
            unknown = sorted(value.keys() - required - optional)
            if unknown:
                raise error(f"{where} has unknown field(s) {', '.join(unknown)}")

    def path(self, name: str) -> str:
        return f"{self.where}.{name}"

    def has(self, name: str) -> bool:
        return name in self.value and self.value[name] is not None

    def _get(self, name: str) -> Any:
        if name not in self.value:
            raise self.error(f"{self.path(name)} is missing")
        return self.value[name]

    def object(self, name: str, **kwargs: Any) -> Fields:
        return Fields(self._get(name), self.path(name), error=self.error, **kwargs)

    def array(self, name: str) -> list[Any]:
        return read_array(self._get(name), self.path(name), error=self.error)

    def string(self, name: str, *, empty: bool = False) -> str:
        return read_string(self._get(name), self.path(name), error=self.error, empty=empty)

    def optional_string(self, name: str) -> str | None:
        value = self.value.get(name)
        return None if value is None else self.string(name, empty=True)

    def integer(self, name: str, *, minimum: int = 0, maximum: int | None = None) -> int:
        return read_integer(
            self._get(name), self.path(name), error=self.error, minimum=minimum, maximum=maximum
        )

    def boolean(self, name: str) -> bool:
        value = self._get(name)
        if not isinstance(value, bool):
            raise self.error(f"{self.path(name)} is not true or false")
        return value

    def hex(self, name: str, *, length: int | None = None, lowercase: bool = True) -> bytes:
        return read_hex(
            self._get(name), self.path(name), error=self.error, length=length, lowercase=lowercase
        )

    def base64(self, name: str, *, urlsafe: bool = False) -> bytes:
        return read_base64(self._get(name), self.path(name), error=self.error, urlsafe=urlsafe)


def read_string(
    value: Any, where: str, *, error: type[Exception] = StrictJsonError, empty: bool = False
) -> str:
    if not isinstance(value, str):
        raise error(f"{where} is not a string")
    if not empty and not value:
        raise error(f"{where} is empty")
    return value


def read_integer(
    value: Any,
    where: str,
    *,
    error: type[Exception] = StrictJsonError,
    minimum: int = 0,
    maximum: int | None = None,
) -> int:
    if not isinstance(value, int) or isinstance(value, bool):
        raise error(f"{where} is not an integer")
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"{minimum}..{maximum}" if maximum is not None else f">= {minimum}"
        raise error(f"{where} is {value}, outside {bound}")
    return value


def read_hex(
    value: Any,
    where: str,
    *,
    error: type[Exception] = StrictJsonError,
    length: int | None = None,
    lowercase: bool = True,
) -> bytes:
    """Hex digits of whole bytes; lowercase only unless ``lowercase=False`` (a signed
    document then has one spelling per value). ``length`` is in bytes."""
    text = read_string(value, where, error=error, empty=True)
    pattern = _LOWER_HEX if lowercase else _ANY_HEX
    if not pattern.fullmatch(text):
        raise error(f"{where} is not {'lowercase ' if lowercase else ''}hexadecimal")
    data = bytes.fromhex(text)
    if length is not None and len(data) != length:
        raise error(f"{where} is {len(data)} bytes, expected {length}")
    return data


def read_base64(
    value: Any, where: str, *, error: type[Exception] = StrictJsonError, urlsafe: bool = False
) -> bytes:
    """Padded base64 (RFC 4648 section 4, or section 5 with ``urlsafe``); no whitespace,
    no stray characters, and only the canonical encoding of the bytes (zero pad bits)."""
    text = read_string(value, where, error=error, empty=True)
    try:
        raw = text.encode("ascii")
        data = base64.urlsafe_b64decode(raw) if urlsafe else base64.b64decode(raw, validate=True)
    except (binascii.Error, UnicodeEncodeError, ValueError):
        raise error(f"{where} is not base64") from None
    encoded = base64.urlsafe_b64encode(data) if urlsafe else base64.b64encode(data)
    if encoded != raw:
        raise error(f"{where} is not canonical base64")
    return data


def require_keys(
    value: Mapping[str, Any],
    where: str,
    keys: set[str] | frozenset[str],
    *,
    error: type[Exception] = StrictJsonError,
) -> None:
    """``value`` has exactly ``keys``."""
    if set(value) != set(keys):
        raise error(f"{where} has fields {sorted(value)}, expected exactly {sorted(keys)}")
