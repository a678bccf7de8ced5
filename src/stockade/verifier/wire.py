"""Wire encodings shared by the endpoints: base64 fields and RFC 3339 times."""

from __future__ import annotations

import base64
import binascii
from datetime import datetime

from stockade.verifier.errors import BadRequest


def decode_b64(value: str, field: str) -> bytes:
    """Standard base64 (padding required); a bad value names its field."""
    try:
        return base64.b64decode(value, validate=True)
    except (binascii.Error, ValueError):
        raise BadRequest(f"{field}: not valid standard base64", code="base64") from None


def encode_b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def rfc3339(moment: datetime) -> str:
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")
