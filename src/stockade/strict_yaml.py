"""The one strict YAML reader, for documents that end up as JSON (policies): ``load_yaml``.

PyYAML's safe loader keeps the last of a key given twice, silently, and expands anchors and
aliases, so a few hundred bytes can stand for gigabytes once the document is serialized
(the "billion laughs"). Here a key given twice and any alias are refused, the document must
be of a bounded size and depth, and it is returned as JSON makes it (keys as strings, no
dates, no binary, no NaN): the same document whether it came as YAML or JSON.
"""

from __future__ import annotations

import json
from typing import Any

import yaml

from stockade.errors import InputError

MAX_YAML_BYTES = 4 * 1024 * 1024
MAX_DEPTH = 64


class _UniqueKeyLoader(yaml.CSafeLoader):
    """libyaml's safe loader refusing a key given twice."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise InputError(f"the key {key!r} appears twice ({key_node.start_mark})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def _check_events(text: str) -> None:
    """Refuse aliases and deep nesting before anything is built (libyaml's event stream)."""
    depth = 0
    for event in yaml.parse(text, Loader=yaml.CSafeLoader):
        if isinstance(event, yaml.AliasEvent):
            raise InputError(f"an alias (*{event.anchor}) is not accepted ({event.start_mark})")
        if isinstance(event, yaml.MappingStartEvent | yaml.SequenceStartEvent):
            depth += 1
            if depth > MAX_DEPTH:
                raise InputError(f"nested more than {MAX_DEPTH} levels deep ({event.start_mark})")
        elif isinstance(event, yaml.MappingEndEvent | yaml.SequenceEndEvent):
            depth -= 1


def load_yaml(data: bytes | str, what: str) -> Any:
    """``data`` (YAML, or JSON, which is YAML) as JSON would carry it; ``InputError`` naming
    ``what`` for anything else."""
    size = len(data.encode() if isinstance(data, str) else data)
    if size > MAX_YAML_BYTES:
        raise InputError(f"{what} is {size} bytes, more than {MAX_YAML_BYTES}")
    text = data if isinstance(data, str) else data.decode("utf-8", errors="replace")
    try:
        _check_events(text)
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a safe loader, stricter
        return json.loads(json.dumps(document, allow_nan=False))
    except (yaml.YAMLError, InputError, TypeError, ValueError, RecursionError) as error:
        raise InputError(f"{what} is not a YAML or JSON document: {error}") from None
