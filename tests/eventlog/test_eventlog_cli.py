"""``stockade eventlog show|replay``: one JSON document with the per-event fields, one-line
errors with exit 2 for unreadable logs, digest warnings on stderr without failing."""

from __future__ import annotations

import hashlib
import json
import subprocess

import pytest
from eventlog_support import BAD_KINDS, LOG_NAMES, VERBS, log_bytes, require_fixtures

from stockade.evidence.event_data import RawData, decode
from stockade.evidence.eventlog import parse_event_log
from support.cli import one_error_line

BANK_NAMES = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}


@pytest.fixture
def shown(cli):
    require_fixtures()
    return {
        name: (cli["show", name].returncode, cli["show", name].stdout, cli["show", name].stderr)
        for name in LOG_NAMES
    }


def test_show_json_is_one_document_with_every_event(log_name, shown):
    code, stdout, stderr = shown[log_name]
    assert code == 0, stderr
    document = json.loads(stdout)  # the whole of stdout is one JSON document
    log = parse_event_log(log_bytes(log_name))
    assert document["format"] == ("crypto-agile" if log.crypto_agile else "legacy")
    assert document["banks"] == [BANK_NAMES[a] for a in log.banks]
    assert len(document["events"]) == len(log.events)
    for entry, event in zip(document["events"], log.events, strict=True):
        assert {"number", "pcr", "type", "digests", "data"} <= set(entry)
        assert entry["number"] == event.number
        assert entry["pcr"] == event.pcr
        assert entry["type"] == event.type_name
        assert entry["digests"] == {BANK_NAMES[a]: d.hex() for a, d in event.digests}
        decoded = decode(event)
        assert entry["data"] == json.loads(json.dumps(decoded.to_json()))
        if isinstance(decoded, RawData) and decoded.reason:
            assert entry["undecoded"] == decoded.reason


def test_show_warns_about_the_arch_logs_digest_mismatch_and_still_succeeds(shown):
    code, stdout, stderr = shown["event-arch-linux"]
    assert code == 0
    lines = stderr.splitlines()
    what = "digest is not the hash of the event data"
    assert lines == [
        f"stockade: warning: event 24 (EV_IPL, PCR 8): {bank} {what}" for bank in ("sha1", "sha256")
    ]
    assert json.loads(stdout)["digest_mismatches"] == [
        line.removeprefix("stockade: warning: ") for line in lines
    ]


def test_show_is_quiet_on_stderr_for_the_other_logs(shown):
    for name in LOG_NAMES:
        if name != "event-arch-linux":
            assert shown[name][2] == "", name


def test_show_and_replay_as_text_succeed(cli):
    require_fixtures()
    shown_text = cli["show-text", "sd-boot"]
    assert shown_text.returncode == 0, shown_text.stderr
    assert "EV_EFI_VARIABLE_BOOT" in shown_text.stdout
    replayed = cli["replay-text", "sd-boot"]
    assert replayed.returncode == 0, replayed.stderr
    assert replayed.stdout.startswith("sha256:\n   0 : 0x")  # a sha256-only log


def assert_clean_failure(result: subprocess.CompletedProcess[str]) -> None:
    one_error_line(result, 2)
    assert result.stdout == ""


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("kind", BAD_KINDS)
def test_unreadable_logs_exit_2_with_one_line(cli, verb, kind):
    result = cli[verb, kind]
    assert_clean_failure(result)
    if kind == "truncated":
        assert "byte offset" in result.stderr  # the error says where


def test_a_short_spec_id_header_exits_2_with_one_line(cli):
    assert_clean_failure(cli["show", "short-spec-id"])


def test_replay_json_includes_pcr0_from_startup_locality(cli):
    """The log: StartupLocality 3, then a separator in PCR 7; PCR 0 is never extended."""
    result = cli["replay", "locality"]
    assert result.returncode == 0, result.stderr
    separator = b"\x00\x00\x00\x00"
    assert json.loads(result.stdout) == {
        "sha1": {
            "0": (bytes(19) + b"\x03").hex(),
            "7": hashlib.sha1(bytes(20) + hashlib.sha1(separator).digest()).hexdigest(),
        },
        "sha256": {
            "0": (bytes(31) + b"\x03").hex(),
            "7": hashlib.sha256(bytes(32) + hashlib.sha256(separator).digest()).hexdigest(),
        },
    }
