"""Who may receive a secret: grants name one node, or nodes by an operator-set label.

Selectors are ``node:<name or id>`` and ``label:<key>=<value>``. A ``node:`` selector is bound
to the node's immutable id when the grant is made (the verifier resolves a name to the id of
the node holding that name then, and stores ``node:<id>``), and at release time it matches by
id only: a node that takes the name later (after a rename, or after the node it named was
deleted) captures nothing. Labels are set by the operator on the verifier, never by the node
itself, so a node cannot grant itself a secret.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass

from stockade.errors import InputError

_LABEL_KEY = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._/-]{0,253}[A-Za-z0-9])?$")
_LABEL_VALUE = re.compile(r"^([A-Za-z0-9]([A-Za-z0-9._-]{0,61}[A-Za-z0-9])?)?$")
_NODE = re.compile(r"^[A-Za-z0-9]([A-Za-z0-9._-]{0,253}[A-Za-z0-9])?$")


@dataclass(frozen=True)
class Selector:
    kind: str  # "node" or "label"
    key: str  # the node id (a name as typed, until the verifier binds it), or the label key
    value: str = ""  # the label value

    def __str__(self) -> str:
        return f"node:{self.key}" if self.kind == "node" else f"label:{self.key}={self.value}"

    def matches(self, node_id: str, labels: Mapping[str, str]) -> bool:
        """Does the grant select the node with this id and these labels? A ``node:``
        selector compares the id only, never a name."""
        if self.kind == "node":
            return self.key == node_id
        return labels.get(self.key) == self.value


def parse_selector(text: str) -> Selector:
    """``node:web-1`` or ``label:role=web``; anything else is an ``InputError``."""
    kind, sep, rest = text.partition(":")
    if not sep:
        raise InputError(f"grant {text!r}: write node:<name> or label:<key>=<value>")
    if kind == "node":
        if not _NODE.match(rest):
            raise InputError(f"grant {text!r}: {rest!r} is not a node name or id")
        return Selector("node", rest)
    if kind == "label":
        key, eq, value = rest.partition("=")
        if not eq or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise InputError(f"grant {text!r}: write label:<key>=<value> (Kubernetes label syntax)")
        return Selector("label", key, value)
    raise InputError(f"grant {text!r}: the kind is node or label, not {kind!r}")


def parse_labels(pairs: list[str]) -> dict[str, str]:
    """``["role=web", "zone=a"]`` -> ``{"role": "web", "zone": "a"}``, validated."""
    labels: dict[str, str] = {}
    for pair in pairs:
        key, eq, value = pair.partition("=")
        if not eq or not _LABEL_KEY.match(key) or not _LABEL_VALUE.match(value):
            raise InputError(f"label {pair!r}: write <key>=<value> (Kubernetes label syntax)")
        labels[key] = value
    return labels


def granted(selectors: list[str], node_id: str, labels: Mapping[str, str]) -> str | None:
    """The first stored selector that grants the node with ``node_id`` and ``labels`` the
    secret, or None. Stored ``node:`` selectors hold node ids (bound when granted); one that
    holds a name matches no node."""
    for text in selectors:
        try:
            selector = parse_selector(text)
        except InputError:
            continue  # a stored selector that no longer parses grants nothing
        if selector.matches(node_id, labels):
            return str(selector)
    return None
