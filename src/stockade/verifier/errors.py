"""Typed verifier errors: each becomes ``{"error": code, "detail": one line}`` and a status."""

from __future__ import annotations

import logging
import sqlite3
import threading
import time

from stockade.errors import StockadeError

log = logging.getLogger(__name__)


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


class DatabaseUnavailable(Unavailable):
    """The database did not answer (stopped, unreachable, disk full): retry later."""

    code = "database-unavailable"
    retry_after = 5

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ClockBehind(Unavailable):
    """This verifier's clock is behind the newest time stored: issuing a result, nonce or
    status now would date it before one already issued (a clock stepped back, or a replica
    skewed). Refused until the clock catches up."""

    code = "clock-behind"

    def __init__(self, detail: str, *, retry_after: int) -> None:
        super().__init__(detail)
        self.retry_after = max(1, retry_after)

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class ConfigurationError(StockadeError):
    """The verifier cannot start with this configuration (unreadable CA file, bad policy)."""

    exit_code = 2


def is_database_unavailable(error: BaseException) -> bool:
    """Whether ``error`` says the database cannot be reached or written now (stopped,
    restarting, connection lost, pool exhausted, disk full), not that a statement is wrong."""
    from sqlalchemy import exc as sa_exc  # here, so that `stockade --help` never loads it

    if isinstance(
        error,
        sa_exc.OperationalError
        | sa_exc.InterfaceError
        | sa_exc.DisconnectionError
        | sa_exc.TimeoutError
        | sqlite3.OperationalError
        | sqlite3.InterfaceError,
    ):
        return True
    if isinstance(error, sa_exc.DBAPIError):
        return bool(error.connection_invalidated) or isinstance(
            error.orig, sqlite3.OperationalError
        )
    return False


def _first_line(error: BaseException) -> str:
    text = str(getattr(error, "orig", None) or error).strip().splitlines()
    return f"{type(error).__name__}: {text[0] if text else ''}"[:300]


class OutageLog:
    """One log line per database outage, not one traceback per request: the first failure
    is logged, later ones are counted and summarized at most every ``interval`` seconds. The
    outage ends at a success ``quiet`` seconds after the last failure (a full disk fails
    writes while reads succeed: that is one outage, not one per write), which is logged."""

    def __init__(self, interval: float = 60.0, quiet: float = 5.0) -> None:
        self.interval = interval
        self.quiet = quiet
        self._lock = threading.Lock()
        self._since: float | None = None
        self._last_failure = 0.0
        self._logged = -interval
        self._count = 0
        self._unreported = 0

    @property
    def failing(self) -> bool:
        return self._since is not None

    def failed(self, error: BaseException, where: str) -> None:
        from stockade.verifier.metrics import metrics_of  # not at import: config.py is light

        metrics_of(self).database_error()
        now = time.monotonic()
        with self._lock:
            self._count += 1
            self._last_failure = now
            if self._since is None:
                self._since = now
            if now - self._logged < self.interval:
                self._unreported += 1
                return
            self._logged = now
            suppressed, self._unreported = self._unreported, 0
        more = f" ({suppressed} more failures since the last line)" if suppressed else ""
        log.error("database unavailable (%s): %s%s", where, _first_line(error), more)

    def succeeded(self) -> None:
        if self._since is None:
            return
        with self._lock:
            if self._since is None or time.monotonic() - self._last_failure < self.quiet:
                return
            lasted = self._last_failure - self._since
            count = self._count
            self._since, self._count, self._unreported = None, 0, 0
        log.warning(
            "database available again; failures for %.1f s (%d operations failed)", lasted, count
        )
