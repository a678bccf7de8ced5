"""Fuzz target: Canonical Event Log records and Stockade execution records
(``stockade.evidence.cel``, ``stockade.evidence.execution``) and their appraisal.

    pip install atheris
    python fuzz/fuzz_cel.py [libFuzzer options] [corpus directory]

A good corpus is a node's execution log, or ``seed_logs()`` below.

Parsing must succeed or raise ``EvidenceError``; any other exception is a bug, and so is
a parsed log that does not marshal back to the same bytes, or a record whose content
decodes but does not encode back to the same bytes. Appraising the bytes as a node's new
execution log must never raise, whatever they are. Importable without atheris:
tests/evidence/test_cel_codec.py drives ``test_one_input`` directly.
"""

from __future__ import annotations

import hashlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.appraisal.executions import ExecutionState, Forbidden, appraise_executions
    from stockade.evidence.cel import marshal_log, marshal_record, parse_cel
    from stockade.evidence.errors import EvidenceError
    from stockade.evidence.execution import (
        ContainerStart,
        Mount,
        TrustPolicyLoaded,
        decode_record,
        encode_record,
    )

SHA1, SHA256 = 0x0004, 0x000B
QUOTED = {SHA1: bytes(20), SHA256: bytes(32)}
FORBIDDEN = Forbidden(frozenset({"sha256:" + "ab" * 32}), frozenset({"registry.example/bad"}))
PREVIOUS = ExecutionState(1, 0, 1, {SHA1: bytes(20), SHA256: bytes(32)}, None)


def seed_logs() -> list[bytes]:
    """Well-formed execution logs, for a starting corpus."""
    records = [
        TrustPolicyLoaded("sha256:" + "11" * 32, "2025-01-01T00:00:00Z"),
        ContainerStart(
            "c0ffee",
            "registry.example/app:1.0",
            "sha256:" + "ab" * 32,
            "sha256:" + "cd" * 32,
            ("/bin/app", "--flag"),
            ("PATH", "HOME"),
            (Mount("/data", "/var/lib/app", "bind", ("rbind", "ro")),),
            "2025-01-01T00:00:01.5Z",
            "sha256:" + "11" * 32,
        ),
    ]
    log = b""
    for recnum, record in enumerate(records):
        content = encode_record(record)
        digests = {SHA1: hashlib.sha1(content).digest(), SHA256: hashlib.sha256(content).digest()}
        log += marshal_record(recnum, 13, digests, content)
    return [log, log[: len(log) // 2]]


def test_one_input(data: bytes) -> None:
    for previous in (None, PREVIOUS):
        appraisal = appraise_executions(previous, 1, 0, data, QUOTED, FORBIDDEN)
        if appraisal.ok != (not appraisal.reasons):
            raise AssertionError(f"appraisal ok={appraisal.ok} with reasons {appraisal.reasons}")
    try:
        records = parse_cel(data)
    except EvidenceError:
        return
    if marshal_log(records) != data:
        raise AssertionError(f"CEL log does not marshal back to {data.hex()}")
    for record in records:
        if record.size != len(record.marshal()):
            raise AssertionError(f"record {record.recnum} size is not its marshalled length")
        try:
            decoded = decode_record(record.content)
        except EvidenceError:
            continue
        if encode_record(decoded) != record.content:
            raise AssertionError(f"record {record.recnum} does not encode back to its content")


if __name__ == "__main__":
    fuzz(test_one_input)
