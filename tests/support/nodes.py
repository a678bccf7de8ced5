"""Node rows written straight into a verifier's database, for tests that need nodes but not
the enrollment protocol (tested on its own)."""

from __future__ import annotations

import hashlib
from datetime import datetime
from typing import Any

from stockade.verifier.models import Node


def placeholder_node(node_id: str, name: str, now: datetime, **columns: Any) -> Node:
    """An enrolled node with stand-in key material; ``columns`` override any column."""
    values: dict[str, Any] = {
        "id": node_id,
        "name": name,
        "ek_fingerprint": hashlib.sha256(node_id.encode()).hexdigest(),
        "ek_public": b"ek",
        "ek_certificate": b"cert",
        "ak_public": b"ak",
        "state": "enrolled",
        "revoked": False,
        "allowed": True,
        "created_at": now,
        "updated_at": now,
    }
    values.update(columns)
    return Node(**values)
