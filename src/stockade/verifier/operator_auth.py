"""The operator's bearer token: required by the secrets and labels API.

Made once (32 random bytes, base64url) in ``<data_dir>/operator-token`` with mode 0600 unless
the configuration supplies one; operators pass it as ``$STOCKADE_OPERATOR_TOKEN`` or
``--token-file``. Compared in constant time.
"""

from __future__ import annotations

import hmac
import os
import secrets
from pathlib import Path

from fastapi import Request

from stockade.verifier.errors import ConfigurationError, Unauthorized
from stockade.verifier.service import service_of

TOKEN_FILE = "operator-token"


def load_or_create_operator_token(data_dir: Path) -> str:
    path = data_dir / TOKEN_FILE
    if not path.exists():
        token = secrets.token_urlsafe(32)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        else:
            with os.fdopen(fd, "w") as handle:
                handle.write(token + "\n")
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigurationError(f"{path} is readable by group or others; chmod 600 it")
        token = path.read_text().strip()
    except OSError as error:
        raise ConfigurationError(f"cannot read the operator token {path}: {error}") from None
    if len(token) < 16:
        raise ConfigurationError(f"the operator token in {path} is too short (16+ characters)")
    return token


def require_operator(request: Request) -> None:
    """FastAPI dependency: 401 unless ``Authorization: Bearer <operator token>``."""
    expected = service_of(request).operator_token
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer" or not hmac.compare_digest(
        presented.strip().encode(), expected.encode()
    ):
        raise Unauthorized(
            "this call needs the operator token (Authorization: Bearer ...; "
            "stockade reads $STOCKADE_OPERATOR_TOKEN or --token-file)",
            code="operator-token",
        )
