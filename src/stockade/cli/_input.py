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


def _unique_key_loader() -> type:
    import yaml

    class UniqueKeyLoader(yaml.CSafeLoader):
        """libyaml's SafeLoader refusing a key mapped twice (PyYAML keeps the last silently)."""

        def construct_mapping(self, node: Any, deep: bool = False) -> Any:
            seen = set()
            for key_node, _ in node.value:
                key = self.construct_object(key_node, deep=True)
                if key in seen:
                    raise InputError(f"the key {key!r} appears twice ({key_node.start_mark})")
                seen.add(key)
            return super().construct_mapping(node, deep=deep)

    return UniqueKeyLoader


def read_document(path: Path, what: str) -> dict[str, Any]:
    """A YAML (or JSON) mapping from ``path``, as the JSON the verifier stores: a key given
    twice is refused, keys become strings, and values JSON cannot carry (dates, binary) are
    refused; ``InputError`` naming the file."""
    import yaml

    text = read_file(path, what).decode("utf-8", errors="replace")
    try:
        document = yaml.load(text, Loader=_unique_key_loader())  # a safe loader
        normal = json.loads(json.dumps(document, allow_nan=False))
    except (yaml.YAMLError, InputError, TypeError, ValueError) as error:
        raise InputError(f"{what} '{path}' is not a YAML or JSON document: {error}") from None
    if not isinstance(normal, dict):
        raise InputError(f"{what} '{path}' is not a mapping")
    return normal
