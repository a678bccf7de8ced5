"""Typed verifier errors: each becomes ``{"error": code, "detail": one line}`` and a status."""

from __future__ import annotations

from stockade.errors import StockadeError


class VerifierError(StockadeError):
    """An error a client sees; ``code`` is stable, ``detail`` is for people."""

    status = 400
    code = "bad-request"

    def __init__(
        self, detail: str, *, code: str | None = None, reasons: list[str] | None = None
    ) -> None:
        super().__init__(detail)
        self.detail = detail
        self.reasons = reasons
        if code is not None:
            self.code = code


class BadRequest(VerifierError):
    status = 400
    code = "bad-request"


class Unauthorized(VerifierError):
    status = 401
    code = "unauthorized"


class Forbidden(VerifierError):
    status = 403
    code = "forbidden"


class NotFound(VerifierError):
    status = 404
    code = "not-found"


class Conflict(VerifierError):
    status = 409
    code = "conflict"


class PayloadTooLarge(VerifierError):
    status = 413
    code = "too-large"


class Unprocessable(VerifierError):
    status = 422
    code = "invalid-request"


class Unavailable(VerifierError):
    status = 503
    code = "unavailable"


class ConfigurationError(StockadeError):
    """The verifier cannot start with this configuration (unreadable CA file, bad policy)."""

    exit_code = 2
