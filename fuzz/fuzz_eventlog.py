"""Fuzz target: TCG PC Client event logs, legacy and crypto-agile (``parse_event_log``).

    pip install atheris
    python fuzz/fuzz_eventlog.py [libFuzzer options] [corpus directory]

A good corpus is the fixture logs (../shared/fixtures/eventlogs/*.bin) or a machine's
/sys/kernel/security/tpm0/binary_bios_measurements.

Parsing must succeed or raise ``EvidenceError``; any other exception is a bug, and so is
a parsed log that does not marshal back to the same bytes. For a log that parses,
decoding every event (which must keep its bytes), its JSON and the digest checks must
not raise at all. The replay, ``verify_log`` against that replay (what an honest TPM
would quote) and ``secure_boot_state`` may only raise ``EvidenceError``, and every event
``verify_log`` trusts must have been extended: not EV_NO_ACTION, and carrying a digest
for every bank the replay was checked in. Importable without atheris:
tests/eventlog/test_eventlog_fuzz_target.py drives ``test_one_input`` directly.
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
    from stockade.evidence.eventlog import EventType, parse_event_log
    from stockade.evidence.pcr_values import PcrValues
    from stockade.evidence.replay import replay, verify_log
    from stockade.evidence.secureboot import secure_boot_state


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
    for mismatch in digest_mismatches(log):
        str(mismatch)
    try:
        values = replay(log).values
        values.to_json()
        # what an honest TPM behind the log quotes: every bank the log extends
        quoted = PcrValues({alg: pcrs for alg, pcrs in values.banks.items() if pcrs})
        verified = verify_log(log, quoted)
    except EvidenceError:
        return
    for event in verified.trusted_events():
        if event.type == EventType.EV_NO_ACTION or any(
            event.digest(alg) is None for alg in verified.banks
        ):
            raise AssertionError(
                f"event {event.number} (PCR {event.pcr}) is trusted but was not extended "
                "into every verified bank"
            )
    try:
        secure_boot_state(verified)
    except EvidenceError:
        return


if __name__ == "__main__":
    fuzz(test_one_input)
