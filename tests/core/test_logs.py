"""``--log-format``: one line per record, JSON a collector parses or text a person reads, the
caller's fields (node, result) on the line, and a traceback only for the unexpected."""

from __future__ import annotations

import io
import json
import logging
from collections.abc import Iterator

import pytest

from stockade.logs import LogFormat, LogLevel, configure_logging, fields


@pytest.fixture
def stream() -> Iterator[io.StringIO]:
    out = io.StringIO()
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    yield out
    for handler in list(root.handlers):
        if handler.get_name() == "stockade":
            root.removeHandler(handler)
    root.handlers[:] = saved[0]
    root.setLevel(saved[1])


def test_json_lines_carry_time_level_event_and_the_callers_fields(stream):
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream)
    log = logging.getLogger("stockade.test")
    log.info("attestation result", extra=fields(node="n-1", result="r-9", status="affirming"))
    log.warning("retrying in %s s", 5, extra=fields(node="n-1", reason=None))
    log.debug("not shown at info")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 2
    first, second = (json.loads(line) for line in lines)
    assert first["event"] == "attestation result"
    assert (first["node"], first["result"], first["status"]) == ("n-1", "r-9", "affirming")
    assert first["level"] == "info" and first["logger"] == "stockade.test"
    assert first["time"].endswith("Z") and "T" in first["time"]
    assert second["event"] == "retrying in 5 s" and "reason" not in second


def test_an_unexpected_exception_stays_on_one_json_line(stream):
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream)
    try:
        raise RuntimeError("boom\nsecond line")
    except RuntimeError:
        logging.getLogger("stockade.test").exception("request failed")
    lines = stream.getvalue().splitlines()
    assert len(lines) == 1, lines
    record = json.loads(lines[0])
    assert record["error"].startswith("RuntimeError: boom")
    assert "Traceback" in record["traceback"]


def test_text_lines_have_a_timestamp_and_readable_fields(stream):
    configure_logging(LogFormat.TEXT, LogLevel.INFO, stream)
    logging.getLogger("stockade.test").info(
        "attested", extra=fields(node="n 1", pcrs=[7, 14], ok=True, where={"a": None})
    )
    (line,) = stream.getvalue().splitlines()
    stamp, level, rest = line.split(" ", 2)
    assert stamp.endswith("Z") and level == "info"
    assert 'node="n 1"' in rest and "pcrs=[7,14]" in rest and "ok=true" in rest
    assert 'where={"a":null}' in rest
    assert "None" not in line and "True" not in line  # no Python reprs


def test_expected_failures_have_no_traceback(stream):
    configure_logging(LogFormat.TEXT, LogLevel.INFO, stream)
    logging.getLogger("stockade.test").warning("verifier unreachable: connection refused")
    assert "Traceback" not in stream.getvalue()
    assert len(stream.getvalue().splitlines()) == 1


def test_library_loggers_are_routed_and_quietened(stream):
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream)
    logging.getLogger("uvicorn.error").warning("port in use")
    logging.getLogger("httpx").info("HTTP Request: GET ...")  # below warning: dropped
    logging.getLogger("alembic.runtime.migration").info("Context impl SQLiteImpl.")
    records = [json.loads(line) for line in stream.getvalue().splitlines()]
    assert [record["event"] for record in records] == ["port in use"]


def test_configuring_twice_keeps_one_handler(stream):
    configure_logging(LogFormat.TEXT, LogLevel.INFO, stream)
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream)
    logging.getLogger("stockade.test").info("once")
    assert len(stream.getvalue().splitlines()) == 1
    json.loads(stream.getvalue())


def test_a_field_named_like_a_record_attribute_is_kept(stream):
    configure_logging(LogFormat.JSON, LogLevel.INFO, stream)
    logging.getLogger("stockade.test").info("enrolled", extra=fields(name="web-1", message="x"))
    record = json.loads(stream.getvalue())
    assert (record["name"], record["message"], record["event"]) == ("web-1", "x", "enrolled")


def test_the_default_handler_follows_sys_stderr(monkeypatch):
    root = logging.getLogger()
    saved = (list(root.handlers), root.level)
    try:
        first = io.StringIO()
        monkeypatch.setattr("sys.stderr", first)
        configure_logging(LogFormat.JSON, LogLevel.INFO)
        first.close()  # a test runner's capture, a redirected output: gone
        second = io.StringIO()
        monkeypatch.setattr("sys.stderr", second)
        logging.getLogger("stockade.test").info("still written")
        assert json.loads(second.getvalue())["event"] == "still written"
    finally:
        for handler in list(root.handlers):
            if handler.get_name() == "stockade":
                root.removeHandler(handler)
        root.handlers[:] = saved[0]
        root.setLevel(saved[1])
