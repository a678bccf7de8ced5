"""How every Stockade daemon logs: one line per record, as text for people or as one JSON
object for collectors (``--log-format json|text``).

A record's fields are the logger's message (``event``), the time (RFC 3339, UTC, millisecond),
the level and the logger, plus whatever the caller passed in ``extra=`` — by convention
``node`` (node id), ``result`` (result id), ``status``, ``reason`` — see :func:`fields`.
Expected failures are logged without ``exc_info`` and so without a traceback; a traceback is
written only for an unexpected exception, and in JSON it stays inside the one line
(``"traceback"``), so a log collector never splits it into records.
"""

from __future__ import annotations

import json
import logging
import sys
from datetime import UTC, datetime
from enum import StrEnum
from typing import IO, Any


class LogFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


class LogLevel(StrEnum):
    DEBUG = "debug"
    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


# The attributes every LogRecord has; anything else on a record came from ``extra=``.
_STANDARD = frozenset(
    vars(logging.LogRecord("", 0, "", 0, "", None, None)).keys() | {"message", "asctime"}
)


def fields(**values: object) -> dict[str, object]:
    """``extra=`` for a log call, without the ``None`` values: ``log.info("attested",
    extra=fields(node=node_id, result=result_id, status="affirming"))``. A field named like
    a ``LogRecord`` attribute (``name``, ``message``, ...), which ``logging`` refuses in
    ``extra``, is carried as ``name_`` and written as ``name``."""
    return {
        (f"{key}_" if key in _STANDARD else key): value
        for key, value in values.items()
        if value is not None
    }


def _timestamp(record: logging.LogRecord) -> str:
    moment = datetime.fromtimestamp(record.created, UTC)
    return moment.strftime("%Y-%m-%dT%H:%M:%S.") + f"{moment.microsecond // 1000:03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {
        (key[:-1] if key.endswith("_") and key[:-1] in _STANDARD else key): value
        for key, value in vars(record).items()
        if key not in _STANDARD
    }


def _plain(value: object) -> object:
    """A JSON-friendly rendering of an extra field (no Python reprs in either format)."""
    if value is None or isinstance(value, str | int | float | bool):
        return value
    if isinstance(value, list | tuple):
        return [_plain(item) for item in value]
    if isinstance(value, dict):
        return {str(key): _plain(item) for key, item in value.items()}
    return str(value)


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``event`` and the extras."""

    def format(self, record: logging.LogRecord) -> str:
        document: dict[str, object] = {
            "time": _timestamp(record),
            "level": record.levelname.lower(),
            "logger": record.name,
            "event": record.getMessage(),
        }
        for key, value in _extras(record).items():
            document.setdefault(key, _plain(value))
        if record.exc_info and record.exc_info[1] is not None:
            error = record.exc_info[1]
            document["error"] = f"{type(error).__name__}: {error}"
            document["traceback"] = self.formatException(record.exc_info)
        return json.dumps(document, separators=(",", ":"), ensure_ascii=False)


def _text_value(value: object) -> str:
    plain = _plain(value)
    if isinstance(plain, str):
        return json.dumps(plain) if (not plain or any(c in plain for c in ' ="')) else plain
    return json.dumps(plain, separators=(",", ":"))


class TextFormatter(logging.Formatter):
    """``TIME LEVEL LOGGER EVENT key=value ...`` on one line (a traceback follows only for an
    unexpected exception)."""

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{_timestamp(record)} {record.levelname.lower():<7} {record.name}: "
            f"{record.getMessage()}"
        )
        extras = " ".join(f"{key}={_text_value(value)}" for key, value in _extras(record).items())
        if extras:
            line = f"{line} {extras}"
        if record.exc_info and record.exc_info[1] is not None:
            line = f"{line}\n{self.formatException(record.exc_info)}"
        return line


_HANDLER_NAME = "stockade"


class _StderrHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """Writes to whatever ``sys.stderr`` is when a record is emitted, not the stream it was
    when logging was configured (which a test runner, or a daemon redirecting its output, may
    have closed since)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self) -> IO[str]:
        return sys.stderr

    @stream.setter
    def stream(self, value: IO[str]) -> None:
        """``StreamHandler.__init__`` sets it; the current ``sys.stderr`` is always used."""


def configure_logging(
    log_format: LogFormat = LogFormat.TEXT,
    level: LogLevel = LogLevel.INFO,
    stream: IO[str] | None = None,
) -> None:
    """Route every logger (uvicorn's too: serve with ``log_config=None``) to one handler on
    ``stream`` (stderr) in ``log_format``. Calling it again replaces the handler."""
    root = logging.getLogger()
    for handler in list(root.handlers):
        if handler.get_name() == _HANDLER_NAME:
            root.removeHandler(handler)
    handler = logging.StreamHandler(stream) if stream is not None else _StderrHandler()
    handler.set_name(_HANDLER_NAME)
    handler.setFormatter(JsonFormatter() if log_format is LogFormat.JSON else TextFormatter())
    root.addHandler(handler)
    root.setLevel(level.upper())
    for name in ("uvicorn", "uvicorn.error", "uvicorn.access", "httpx", "httpcore"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    # Per-request lines of the HTTP clients and uvicorn's access log say nothing a metric
    # does not; they stay at warning unless debugging.
    quiet = logging.DEBUG if level is LogLevel.DEBUG else logging.WARNING
    for name in ("httpx", "httpcore", "uvicorn.access", "alembic"):
        logging.getLogger(name).setLevel(quiet)
