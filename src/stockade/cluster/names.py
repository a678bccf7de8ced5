"""Node names that can be certified: one name, the same object everywhere it is used.

A Stockade node name is also its Kubernetes Node name and the name in its cluster-CA
certificate (``CN=system:node:<name>``), so a valid name is all of these at once:

- a Kubernetes node name: an RFC 1123 DNS subdomain, lowercase ``a-z``, ``0-9``, ``-`` and
  ``.``, each dot-separated label 1 to 63 characters starting and ending with a letter or digit
  (no Unicode: a lookalike is another name that reads the same);
- certifiable: ``system:node:<name>`` fits X.520's ub-common-name of 64 characters, so the name
  is at most :data:`MAX_NODE_NAME` (52) characters;
- never an id: node ids are UUIDs, and grants select ``node:<name or id>``, so a name that
  parses as a UUID in any form :class:`uuid.UUID` accepts (hyphens anywhere or none, braces,
  ``urn:uuid:``, any case) is refused: it could capture grants written for another node's id;
- never an address: neither an IP address (:func:`ipaddress.ip_address`) nor a name whose last
  label is a number (all digits, or ``0x`` and hex digits), which ``inet_aton`` and WHATWG URL
  parsers read as an IPv4 address (``10.1``, ``0x7f.1``, ``2130706433``).

Names are refused, never normalised: ``Worker-1`` is not silently ``worker-1``.
"""

from __future__ import annotations

import ipaddress
import re
import uuid
from typing import Final

from stockade.errors import InputError

KUBE_NODE_PREFIX: Final = "system:node:"
UB_COMMON_NAME: Final = 64  # X.520 / RFC 5280 ub-common-name
# UB_COMMON_NAME - len(KUBE_NODE_PREFIX); below RFC 1123's 63 per label, so every label fits.
MAX_NODE_NAME: Final = 52

_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]*[a-z0-9])?")
_NUMERIC_LABEL = re.compile(r"[0-9]+|0x[0-9a-f]*")
_SHOWN = 60


class InvalidNodeName(InputError):
    """A node name that cannot be enrolled or certified; ``reason`` says which rule it breaks."""

    def __init__(self, name: object, reason: str) -> None:
        if not isinstance(name, str):
            shown = f"of type {type(name).__name__}"
        elif len(name) > _SHOWN:
            shown = f"{name[:_SHOWN]!r}... ({len(name)} characters)"
        else:
            shown = repr(name)
        super().__init__(f"node name {shown} is not valid: {reason}")
        self.name = name if isinstance(name, str) else ""
        self.reason = reason


def _is_uuid(name: str) -> bool:
    try:
        uuid.UUID(name)
    except ValueError:
        return False
    return True


def _is_ip_address(name: str) -> bool:
    try:
        ipaddress.ip_address(name)
    except ValueError:
        return False
    return True


def validate_node_name(name: str) -> str:
    """Return ``name`` unchanged if it is a node name that can be certified; otherwise raise
    :class:`InvalidNodeName` naming the rule it breaks. Pure: no I/O, no normalisation."""
    if not isinstance(name, str):
        raise InvalidNodeName(name, "a node name is a string")
    if not name:
        raise InvalidNodeName(name, "a node name cannot be empty")
    if _is_uuid(name):
        raise InvalidNodeName(name, "it is a UUID; node ids are UUIDs, and an id is never a name")
    if _is_ip_address(name):
        raise InvalidNodeName(name, "it is an IP address, not a name")
    if len(name) > MAX_NODE_NAME:
        raise InvalidNodeName(
            name,
            f"{len(name)} characters; at most {MAX_NODE_NAME}, so that "
            f"CN={KUBE_NODE_PREFIX}<name> fits the {UB_COMMON_NAME}-character limit of a "
            "certificate's common name",
        )
    if not name.isascii():
        raise InvalidNodeName(
            name, "only lowercase ASCII letters, digits, '-' and '.' (no Unicode lookalikes)"
        )
    if name != name.lower():
        raise InvalidNodeName(name, "uppercase letters; a node name is lowercase")
    labels = name.split(".")
    for label in labels:
        if not label:
            raise InvalidNodeName(name, "an empty label: no leading, trailing or doubled '.'")
        if not _LABEL.fullmatch(label):
            raise InvalidNodeName(
                name,
                f"label {label!r}: only a-z, 0-9 and '-', starting and ending with a letter "
                "or digit (RFC 1123)",
            )
    if _NUMERIC_LABEL.fullmatch(labels[-1]):
        raise InvalidNodeName(
            name,
            f"it ends in the number {labels[-1]!r}, which IPv4 parsers read as an address",
        )
    return name
