"""Text output is for people: no Python repr of any value (``{'a': 1}``, ``['x']``, ``None``,
``True``, ``datetime(...)``, ``b'..'``, ``<Kind.X: 1>``) in what the read commands print.

Each command's text renderer runs on representative answers, awkward ones included (nested
mappings, lists, nulls, booleans, markup-like brackets); ``eventlog show`` runs on every
fixture log."""

from __future__ import annotations

import io
import re
from datetime import UTC, datetime
from enum import Enum
from types import SimpleNamespace
from typing import Any

import pytest
from rich.console import Console

from stockade.cli import _text
from stockade.cli.audit import execution_table
from stockade.cli.eventlog import _event_json, event_lines
from stockade.cli.log import verified_text
from stockade.cli.nodes import node_detail_table, node_table, security_event_table
from stockade.cli.policy import policy_table, policy_text
from stockade.cli.results import result_table
from stockade.cli.secrets import secret_table

REPR = re.compile(
    r"\{'|\['|'\]|'\}|\bNone\b|\bTrue\b|\bFalse\b|datetime\.?\w*\(|\bb'|\bb\"|<\w+\.\w+: |"
    r"\bPosixPath\(|\bmappingproxy\("
)


def rendered(renderable: Any) -> str:
    buffer = io.StringIO()
    Console(file=buffer, width=300, color_system=None, soft_wrap=True).print(renderable)
    return buffer.getvalue()


def assert_readable(text: str) -> None:
    found = REPR.search(text)
    assert found is None, f"a Python repr ({found.group()!r}) in:\n{text}"


class Kind(Enum):
    PCR = 1


NODE: dict[str, Any] = {
    "node_id": "3f2a7c1e-0000-4000-8000-000000000001",
    "name": "node-[a]",
    "state": "trusted",
    "trusted_until": None,
    "latest_result_id": None,
    "updated_at": "2026-12-06T10:00:00Z",
    "labels": {"zone": "eu-1", "role": "worker"},
    "ek": {"fingerprint": "ab" * 32, "serial": None, "chain": ["leaf", "root"]},
    "approved": True,
    "revoked": False,
    "pcrs": [0, 2, 4, 7],
    "history": [{"state": "enrolled", "at": "t1"}, {"state": "trusted", "at": "t2"}],
}


def test_nodes_list_and_show():
    assert_readable(rendered(node_table([NODE, {"name": None, "state": None}])))
    shown = rendered(node_detail_table(NODE))
    assert_readable(shown)
    assert "zone: eu-1" in shown and "node-[a]" in shown  # brackets are data, not markup
    assert "fingerprint: " in shown and "chain: leaf, root" in shown and "yes" in shown


def test_nodes_security_events():
    events = [
        {"id": 1, "time": "t", "kind": "bad-signature", "node_id": None, "source": None,
         "count": 3, "detail": {"reason": "digest", "expected": ["a", "b"]}},
        {"id": 2, "time": "t", "kind": "replay", "name": "n", "source": "10.0.0.1",
         "count": None, "detail": None},
    ]  # fmt: skip
    assert_readable(rendered(security_event_table(events)))


def test_results_show():
    verified = {
        "result_id": "r-1",
        "node_id": "id",
        "node": "node-a",
        "status": "affirming",
        "policy": "default@3",
        "issued_at": datetime(2026, 12, 6, tzinfo=UTC).isoformat(),
        "not_after": "2026-12-06T01:00:00+00:00",
        "trust_vector": {"executables": 2, "configuration": 32},
        "reasons": ["pcr 7 matches", "secure boot on"],
        "boot": {"reset_count": None, "restart_count": 0},
        "ear_signature": "verified",
    }
    text = rendered(result_table(verified))
    assert_readable(text)
    assert "reset count -, restart count 0" in text
    assert_readable(rendered(result_table({**verified, "reasons": [], "policy": ""})))
    refused = rendered(result_table({"result_id": None, "ear_signature": "NOT VERIFIED: x"}))
    assert_readable(refused)
    assert "(no id)" in refused


def test_policy_list_and_show():
    policies = [
        {"id": "p", "version": 2, "created_at": "t", "document": {"pcrs": {"0": "ab", "7": "cd"}}},
        {"id": "q", "version": 1, "created_at": None, "document": {"pcrs": [0, 7]}},
        {"id": "r", "version": None, "document": None},
    ]
    listed = rendered(policy_table(policies))
    assert_readable(listed)
    assert "0, 7" in listed
    shown = policy_text({"id": "p", "enabled": True, "bank": None, "pcrs": {"7": ["ab"]}})
    assert_readable(shown.replace("true", "").replace("null", ""))  # YAML, not Python


def test_secrets_list():
    secrets = [
        {"name": "db", "version": 3, "grants": ["node:a", "label:zone=eu"], "kek_id": "k1",
         "updated_at": "t"},
        {"name": "none", "version": 1, "grants": None, "kek_id": None, "updated_at": None},
    ]  # fmt: skip
    assert_readable(rendered(secret_table(secrets)))


def test_audit_executions():
    entries = [
        {
            "kind": "container-start",
            "recorded_at": "t",
            "node_name": "node-a",
            "boot": {"reset_count": 1, "restart_count": None},
            "recnum": 4,
            "record": {"container_id": "c1", "image_reference": None, "manifest_digest": None},
            "proof": {"result_id": "0123456789"},
        },
        {"kind": "trust-policy", "record": None, "proof": None},
    ]
    text = rendered(execution_table(entries, {0: None, 1: "quote [signature] does not verify"}))
    assert_readable(text)
    assert "[signature]" in text


def test_log_verify():
    verified = SimpleNamespace(
        entry={"type": "result", "result_id": "r", "node_name": None, "status": "affirming"},
        log_index=3,
        checkpoint=SimpleNamespace(origin="log.example", size=9),
    )
    assert_readable(verified_text(verified, "log.example"))
    verified.entry = {}
    assert verified_text(verified, "k").startswith("verified: entry is entry 3")


def test_eventlog_show_on_synthetic_data():
    events = [
        {"number": 1, "pcr": 7, "type": "EV_EFI_VARIABLE_DRIVER_CONFIG",
         "digests": {"sha256": "ab" * 32},
         "data": {"variable": "SecureBoot", "guid": "8be4df61", "value": [1], "ok": True,
                  "nested": {"a": None}}},
        {"number": 2, "pcr": 4, "type": "EV_EFI_ACTION", "digests": {}, "data": "Calling EFI"},
        {"number": 3, "pcr": 0, "type": "EV_NO_ACTION", "digests": {}, "data": None,
         "undecoded": "truncated"},
    ]  # fmt: skip
    lines = event_lines(events)
    assert len(lines) == 6
    for line in lines:
        assert_readable(line)
    assert "variable=SecureBoot" in lines[1] and "ok=yes" in lines[1]


def test_eventlog_show_on_every_fixture_log():
    from stockade.evidence.eventlog import parse_event_log
    from support.fixtures import SHARED

    logs = sorted((SHARED / "eventlogs").glob("*.bin"))
    if not logs:
        pytest.skip("event log fixtures not found (they live outside the repo)")
    for path in logs:
        for line in event_lines(_event_json(parse_event_log(path.read_bytes()))):
            assert_readable(line)


@pytest.mark.parametrize(
    "value",
    [None, True, False, b"\x00\x01", Kind.PCR, datetime(2026, 1, 1, tzinfo=UTC),
     {"a": {"b": [None, True]}}, [["x"], {"k": "v"}], ("t",), {"s"}],
)  # fmt: skip
def test_the_text_helpers_never_print_a_repr(value: object):
    for render in (_text.plain, _text.inline, _text.cell):
        assert_readable(render(value))


def test_the_pattern_catches_reprs():
    for text in (str({"a": 1}), str(["x"]), "None", str(Kind.PCR) + " " + repr(Kind.PCR),
                 repr(b"x"), repr(datetime(2026, 1, 1))):  # fmt: skip
        assert REPR.search(text), text
