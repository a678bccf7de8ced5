"""``compare_boot`` never raises, whatever log it is given: arbitrary bytes, and real logs
truncated, bit-flipped and with events rewritten, against a predicted-style reference set
and against a captured platform. Every description it gives is printable ASCII and bounded,
whatever bytes the log holds (the dashboard shows them)."""

from __future__ import annotations

import functools

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.appraisal.appraise import (
    CapturedCandidate,
    CapturedReferences,
    ReferenceEntry,
    ReferenceSet,
)
from stockade.appraisal.boot_comparison import (
    DESCRIPTION_LIMIT,
    BootComparison,
    compare_boot,
    printable,
)
from stockade.appraisal.captured import capture_policy, self_replayed
from stockade.evidence.algorithms import Alg
from stockade.evidence.eventlog import parse_event_log
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.replay import verify_log
from support.eventlogs import rewritten
from support.fixtures import SHARED, event_log_path

# A crypto-agile log with sha256 (and a captured platform's bank), and small logs.
BASE = "event-sd-boot-fedora37"
SMALL = ("event-uefivar", "event-uefiaction", "event-bootorder", "keylime-shim-grub")
PCRS = (0, 1, 2, 3, 4, 5, 6, 7)


def _require(name: str) -> bytes:
    path = event_log_path(name)
    if not path.exists():
        pytest.skip(f"event log fixtures not found at {SHARED} (they live outside the repo)")
    return path.read_bytes()


@functools.cache
def _references(name: str) -> tuple[ReferenceSet, CapturedReferences]:
    """A reference set whose one entry is the log itself (as a prediction would be), and a
    captured platform captured from it."""
    log = parse_event_log(_require(name))
    values = self_replayed(log)
    sha256 = {i: v for i, v in values.banks.get(Alg.SHA256, {}).items() if i in PCRS}
    entry = ReferenceEntry(
        platform_index=0,
        platform_description="platform 0 (fixture)",
        release_name="fixture",
        release_version="1",
        security_version=1,
        manifest_digest=bytes(32),
        values=PcrValues({Alg.SHA256: sha256}),
        log=log,
        labels=tuple(f"label \x00\x1b[31m {event.number}" for event in log.events),
        secure_boot_failures=(),
    )
    references = ReferenceSet("fixture@1", PCRS, (entry,))
    captured = capture_policy(verify_log(log, values), "golden")
    return references, CapturedReferences("fixture@1", PCRS, (CapturedCandidate(None, captured),))


def _check(comparison: BootComparison) -> None:
    document = comparison.to_json()
    for pcr in document["pcrs"]:
        for row in pcr["events"]:
            assert row["status"] in ("same", "differs", "missing", "extra")
            for side in (row["found"], row["expected"]):
                if side is None:
                    continue
                text = side["description"]
                assert len(text) <= DESCRIPTION_LIMIT
                assert all(32 <= ord(c) < 127 for c in text), text
                int(side["digest"] or "0", 16)
    for note in document["notes"]:
        assert all(32 <= ord(c) < 127 for c in note), note
    if comparison.problem is not None:
        assert all(32 <= ord(c) < 127 for c in comparison.problem)


def _both(log: bytes, quoted: PcrValues | None = None) -> None:
    references, captured = _references(BASE)
    _check(compare_boot(log, references, quoted))
    _check(compare_boot(log, captured, quoted, node="node-1"))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=4096))
def test_arbitrary_bytes_never_raise(data: bytes) -> None:
    _both(data)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_truncated_and_flipped_real_logs_never_raise(data: st.DataObject) -> None:
    name = data.draw(st.sampled_from((BASE, *SMALL)))
    log = bytearray(_require(name))
    cut = data.draw(st.integers(0, len(log)))
    flips = data.draw(st.lists(st.integers(0, max(0, len(log) - 1)), max_size=8))
    for at in flips:
        if at < len(log):
            log[at] ^= 0xFF
    _both(bytes(log[: max(cut, len(log) // 2)]))


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_rewritten_events_compare_without_raising(data: st.DataObject) -> None:
    """Events given other data (the digests recomputed, so the log replays) or other
    digests: a consistent log that differs from the reference, with hostile text."""
    log = parse_event_log(_require(BASE))
    number = data.draw(st.integers(1, len(log.events) - 1))
    payload = data.draw(
        st.one_of(
            st.none(),
            st.binary(max_size=300),
            st.text(max_size=300).map(lambda text: text.encode("utf-8", "surrogatepass")),
        )
    )
    changed = rewritten(log, number, payload)
    quoted = data.draw(st.booleans())
    values = self_replayed(changed) if quoted else None
    _both(changed.marshal(), values)


@settings(max_examples=300, deadline=None)
@given(st.text(max_size=2000), st.integers(0, 400))
def test_printable_is_ascii_and_bounded(text: str, limit: int) -> None:
    shown = printable(text, limit)
    assert len(shown) <= limit
    assert all(32 <= ord(c) < 127 for c in shown)
