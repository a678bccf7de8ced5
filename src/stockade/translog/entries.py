"""What the verifier logs: one canonical JSON document per entry.

Every entry is a JSON object with a ``"type"``, encoded canonically (keys sorted, no
whitespace, UTF-8, no NaN), so one record has exactly one byte string and hence one leaf
hash: anyone holding the record can recompute it. Each type names its required fields;
a later type (``"execution-record"``, from the container execution log) is another row
in ``ENTRY_FIELDS``. Readers accept types they do not know (checking only that the
document is canonical and typed), so an old monitor keeps verifying a newer log.

Entries hold identifiers, verdicts and digests, never evidence or secrets: an attestation
result is logged by its id, node, status, policy, validity and the SHA-256 of its EAR, so
anyone holding the EAR can show it is the logged one.

Pure: no I/O.
"""

from __future__ import annotations

import hashlib
from collections.abc import Mapping
from typing import Any

from stockade.strict_json import canonical_json, loads_strict
from stockade.translog.errors import EntryMismatch, MalformedEntry

ATTESTATION_RESULT = "attestation-result"
EXECUTION_RECORD = "execution-record"
OPERATOR_ACTION = "operator-action"

# type -> the fields (besides "type") an entry of that type must carry, each a string.
ENTRY_FIELDS: Mapping[str, tuple[str, ...]] = {
    ATTESTATION_RESULT: (
        "result_id",
        "node_id",
        "node_name",
        "status",
        "policy",
        "not_after",
        "issued_at",
        "ear_sha256",
    ),
    EXECUTION_RECORD: (
        "node_id",
        "node_name",
        "boot",
        "recnum",
        "kind",
        "record_sha256",
        "result_id",
    ),
    OPERATOR_ACTION: ("actor", "action", "subject", "time", "detail"),
}

MAX_ENTRY_SIZE = 64 * 1024


def ear_digest(ear: str) -> str:
    """The ``ear_sha256`` of an EAR: SHA-256 of the JWT's bytes (compact form), hex."""
    return hashlib.sha256(ear.encode("utf-8")).hexdigest()


def attestation_result_entry(
    *,
    result_id: str,
    node_id: str,
    node_name: str,
    status: str,
    policy: str,
    not_after: str,
    issued_at: str,
    ear: str,
) -> bytes:
    """The log entry of one stored attestation result (times as RFC 3339 strings)."""
    return canonical_json(
        {
            "type": ATTESTATION_RESULT,
            "result_id": result_id,
            "node_id": node_id,
            "node_name": node_name,
            "status": status,
            "policy": policy,
            "not_after": not_after,
            "issued_at": issued_at,
            "ear_sha256": ear_digest(ear),
        }
    )


def execution_record_entry(
    *,
    node_id: str,
    node_name: str,
    reset_count: int,
    restart_count: int,
    recnum: int,
    kind: str,
    cel_record: bytes,
    result_id: str,
) -> bytes:
    """The log entry of one appraised execution-log record: which node, boot and record
    number, what kind, the SHA-256 of the record's CEL bytes (anyone holding the node's log
    can show it is this one), and the result whose quote proved it."""
    return canonical_json(
        {
            "type": EXECUTION_RECORD,
            "node_id": node_id,
            "node_name": node_name,
            "boot": f"{reset_count}/{restart_count}",
            "recnum": str(recnum),
            "kind": kind,
            "record_sha256": hashlib.sha256(cel_record).hexdigest(),
            "result_id": result_id,
        }
    )


def operator_action_entry(
    *, actor: str, action: str, subject: str, time: str, detail: str
) -> bytes:
    """The log entry of one operator action: the operator credential's name, the action
    (``node.revoke``, ``secret.put``, ...), its subject (a node id, ``policy@version``, a
    secret's name: never a value), when (RFC 3339) and its bounded detail."""
    return canonical_json(
        {
            "type": OPERATOR_ACTION,
            "actor": actor,
            "action": action,
            "subject": subject,
            "time": time,
            "detail": detail,
        }
    )


def check_operator_action_entry(entry: Mapping[str, Any], action: Mapping[str, Any]) -> None:
    """Check that a logged entry is the ``operator-action`` of ``action`` (a row of
    ``GET /v1/operator-actions``: ``actor``, ``action``, ``subject``, ``time``, ``detail``);
    ``EntryMismatch`` naming the first field that differs."""
    if entry.get("type") != OPERATOR_ACTION:
        raise EntryMismatch(f"the logged entry is a {entry.get('type')!r}, not an operator action")
    for name in ENTRY_FIELDS[OPERATOR_ACTION]:
        if entry.get(name) != action.get(name):
            raise EntryMismatch(
                f"the logged entry's {name} is {entry.get(name)!r}, "
                f"the action's is {action.get(name)!r}"
            )


def parse_entry(data: bytes) -> dict[str, Any]:
    """The document in entry bytes ``data``: a canonical JSON object with a string
    ``"type"``; for a known type, every field of ``ENTRY_FIELDS`` present as a string.
    ``MalformedEntry`` saying what is wrong."""
    document = loads_strict(data, "log entry", max_size=MAX_ENTRY_SIZE, error=MalformedEntry)
    if not isinstance(document, dict):
        raise MalformedEntry(f"log entry is a JSON {type(document).__name__}, not an object")
    kind = document.get("type")
    if not isinstance(kind, str) or not kind:
        raise MalformedEntry("log entry has no string 'type'")
    if canonical_json(document) != data:
        raise MalformedEntry("log entry is not canonical JSON (sorted keys, no whitespace, UTF-8)")
    for name in ENTRY_FIELDS.get(kind, ()):
        if not isinstance(document.get(name), str):
            raise MalformedEntry(f"{kind} entry has no string {name!r}")
    return document
