"""Drive fuzz/fuzz_eventlog.py without atheris (tests/evidence/test_fuzz_targets.py keeps a
fixed list of its own targets): the fixture logs, their truncations and mutations, and
random inputs through ``test_one_input``; and the target fails on what it must."""

from __future__ import annotations

import importlib.util
import random
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from eventlog_support import LOG_NAMES, log_bytes, require_fixtures

import stockade.evidence.replay as replay_module
from stockade.evidence import EvidenceError
from stockade.evidence.eventlog import EventLog, EventType

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"


@pytest.fixture(scope="module")
def target():
    spec = importlib.util.spec_from_file_location("fuzz_eventlog", FUZZ_DIR / "fuzz_eventlog.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_target_imports_without_atheris(target):
    if importlib.util.find_spec("atheris") is None:
        assert sys.modules["_harness"].atheris is None
    assert callable(target.test_one_input)
    assert target.instrumented is sys.modules["_harness"].instrumented


def test_fixture_logs_pass_through_the_target(target):
    require_fixtures()
    for name in LOG_NAMES:
        assert target.test_one_input(log_bytes(name)) is None


def test_truncations_and_mutations_of_the_small_logs(target):
    require_fixtures()
    rng = random.Random("fuzz_eventlog mutations")
    for name in (
        "event-uefiaction",
        "event-uefiservices",
        "event-uefivar",
        "event-sd-boot-fedora37",
    ):
        seed = log_bytes(name)
        for length in range(0, len(seed), 1 if len(seed) < 1000 else 7):
            target.test_one_input(seed[:length])
        for _ in range(300):
            mutated = bytearray(seed)
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            target.test_one_input(bytes(mutated))


def test_random_inputs(target):
    require_fixtures()
    rng = random.Random("fuzz_eventlog random")
    heads = [log_bytes(name)[:80] for name in LOG_NAMES]
    for number in range(2000):
        body = rng.randbytes(rng.randrange(0, 300))
        target.test_one_input(rng.choice(heads) + body if number % 2 else body)


def test_target_lets_evidence_errors_pass_and_crashes_on_anything_else(target, monkeypatch):
    def raising(error):
        def parser(data):
            raise error

        return parser

    monkeypatch.setattr(target, "parse_event_log", raising(EvidenceError("typed")))
    assert target.test_one_input(b"\x00" * 40) is None
    monkeypatch.setattr(target, "parse_event_log", raising(KeyError("not typed")))
    with pytest.raises(KeyError, match="not typed"):
        target.test_one_input(b"\x00" * 40)


def test_target_catches_a_broken_round_trip_and_a_failing_decoder(target, monkeypatch):
    require_fixtures()
    raw = log_bytes("event-uefivar")
    parsed = target.parse_event_log(raw)
    monkeypatch.setattr(target, "parse_event_log", lambda data: parsed)
    with pytest.raises(AssertionError, match="does not marshal back"):
        target.test_one_input(raw + b"\x00")
    monkeypatch.setattr(target, "decode", lambda event: 1 / 0)
    with pytest.raises(ZeroDivisionError):
        target.test_one_input(raw)


def test_target_catches_a_trusted_event_that_was_never_extended(target, monkeypatch):
    """A verify_log that trusts an event without a digest for a verified bank is a crash.

    event-uefivar's SecureBoot event (sha1 + sha256), then a copy carrying only its
    sha1 digest: the sha256 replay, and so the honest quote, never saw the copy."""
    require_fixtures()
    log = target.parse_event_log(log_bytes("event-uefivar"))
    header, secure_boot = log.events
    copy = secure_boot._replace(number=2, digests=secure_boot.digests[:1])
    forged = EventLog(True, log.spec_id, (header, secure_boot, copy)).marshal()
    assert target.test_one_input(forged) is None  # the real verify_log refuses it
    monkeypatch.setattr(replay_module, "_banks_missing", lambda event, banks: [])
    with pytest.raises(AssertionError, match=r"event 2 \(PCR 7\) is trusted but was not"):
        target.test_one_input(forged)


def test_target_on_a_short_spec_id_header(target):
    data = b"Spec ID Event03\x00" + bytes(10)
    target.test_one_input(
        struct.pack("<II20sI", 0, EventType.EV_NO_ACTION, bytes(20), len(data)) + data
    )


@pytest.mark.tools
@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is not None, reason="atheris is installed: it would fuzz"
)
def test_running_the_target_without_atheris_says_what_is_missing():
    result = subprocess.run(
        [sys.executable, str(FUZZ_DIR / "fuzz_eventlog.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "needs atheris" in result.stderr
