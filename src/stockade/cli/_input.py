"""Reading the files and values CLI commands are given, with one-line errors."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from stockade.errors import InputError


def read_file(path: Path, what: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as error:
        raise InputError(f"cannot read {what} '{path}': {error.strerror or error}") from None


def parse_hex(text: str, what: str) -> bytes:
    cleaned = text.strip().removeprefix("0x")
    try:
        return bytes.fromhex(cleaned)
    except ValueError:
        raise InputError(f"{what} '{text}' is not hexadecimal") from None


def emit_json(document: Any) -> None:
    print(json.dumps(document, indent=2, sort_keys=True))


def read_document(path: Path, what: str, *, named_by: str | None = None) -> dict[str, Any]:
    """A YAML (or JSON) mapping from ``path``, as the JSON the verifier stores
    (``strict_yaml.load_yaml``: a key given twice, aliases and values JSON cannot carry
    refused), with a string under ``named_by`` when given; ``InputError`` naming the file."""
    from stockade.strict_yaml import load_yaml

    document = load_yaml(read_file(path, what), f"{what} '{path}'")
    if named_by is not None and not (
        isinstance(document, dict) and isinstance(document.get(named_by), str)
    ):
        raise InputError(f"{what} '{path}' must be a mapping with a string '{named_by}'")
    if not isinstance(document, dict):
        raise InputError(f"{what} '{path}' is not a mapping")
    return document
