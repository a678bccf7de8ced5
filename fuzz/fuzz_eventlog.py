"""Fuzz target: TCG PC Client event logs, legacy and crypto-agile (``parse_event_log``).

    pip install atheris
    python fuzz/fuzz_eventlog.py [libFuzzer options] [corpus directory]

A good corpus is the fixture logs (../shared/fixtures/eventlogs/*.bin) or a machine's
/sys/kernel/security/tpm0/binary_bios_measurements.

Parsing must succeed or raise ``EvidenceError``; any other exception is a bug, and so is
a parsed log that does not marshal back to the same bytes. For a log that parses,
everything a verifier does with it must not raise at all: decoding every event (which
must keep its bytes), its JSON, the replay and the digest checks. Importable without
atheris: tests/eventlog/test_eventlog_fuzz_target.py drives ``test_one_input`` directly.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.evidence.errors import EvidenceError
    from stockade.evidence.event_data import decode
    from stockade.evidence.event_digests import digest_mismatches
    from stockade.evidence.eventlog import parse_event_log
    from stockade.evidence.replay import replay


def test_one_input(data: bytes) -> None:
    try:
        log = parse_event_log(data)
    except EvidenceError:
        return
    if log.marshal() != data:
        raise AssertionError(f"event log does not marshal back to {data.hex()}")
    for event in log.events:
        decoded = decode(event)
        if decoded.encode() != event.data:
            raise AssertionError(f"event {event.number} does not decode losslessly")
        json.dumps(decoded.to_json())
    replay(log).values.to_json()
    for mismatch in digest_mismatches(log):
        str(mismatch)


if __name__ == "__main__":
    fuzz(test_one_input)
