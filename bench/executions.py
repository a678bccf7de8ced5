"""Execution-log appraisal benchmarks (provable container execution, "Measure").

Logs of 10,000 and 100,000 ContainerStart records (about 700 bytes of content each),
built as a node builds them: two banks (sha1, sha256), PCR 13 = H(PCR || H(content)).
Records per second, median over rounds, on one core, of:

- ``replay_executions``: parse + recnum/PCR checks + digest checks + replay, the hot
  path. Target: >= 100,000 records/s;
- ``appraise_executions``: all of that, plus decoding every record's canonical JSON
  (strictly: the decoded record must re-encode to the same bytes) and the forbidden-image
  check: what a verifier does per record;
- ``decode_record`` alone, for the difference.

``STOCKADE_BENCH_EXECUTIONS_SIZES`` overrides the log sizes (e.g. ``1000,10000``).
"""

from __future__ import annotations

import hashlib
import os
import statistics
import time

from bench.timing import Row
from stockade.appraisal.executions import Forbidden, appraise_executions, replay_executions
from stockade.evidence.cel import marshal_record, parse_cel
from stockade.evidence.execution import ContainerStart, Mount, decode_record, encode_record

SIZES = [
    int(n) for n in os.environ.get("STOCKADE_BENCH_EXECUTIONS_SIZES", "10000,100000").split(",")
]
TARGET = 100_000.0
SHA1, SHA256 = 0x0004, 0x000B
HASHES = {SHA1: hashlib.sha1, SHA256: hashlib.sha256}
FORBIDDEN = Forbidden(
    digests=frozenset({"sha256:" + "ee" * 32}), references=frozenset({"registry.example/bad"})
)


def build_log(records: int) -> tuple[bytes, dict[int, bytes]]:
    """(log bytes, quoted PCR 13 per bank) after ``records`` container starts."""
    pcr = {alg: bytes(h().digest_size) for alg, h in HASHES.items()}
    parts = []
    for number in range(records):
        content = encode_record(
            ContainerStart(
                container_id=f"{number:064x}",
                image_reference=f"registry.example.com/team/app-{number % 50}:1.{number % 7}",
                manifest_digest="sha256:" + hashlib.sha256(b"m%d" % (number % 50)).hexdigest(),
                config_digest="sha256:" + hashlib.sha256(b"c%d" % (number % 50)).hexdigest(),
                args=("/usr/bin/app", "--port", str(8000 + number % 100), "--verbose"),
                env_names=("PATH", "HOME", "APP_MODE", "APP_TOKEN"),
                mounts=(
                    Mount("/data", f"/var/lib/app/{number}", "bind", ("rbind", "rw")),
                    Mount("/etc/app", "/etc/app", "bind", ("rbind", "ro")),
                ),
                time=f"2025-01-02T03:{number // 60 % 60:02d}:{number % 60:02d}Z",
                trust_policy_digest="sha256:" + "11" * 32,
            )
        )
        digests = {alg: h(content).digest() for alg, h in HASHES.items()}
        for alg, h in HASHES.items():
            pcr[alg] = h(pcr[alg] + digests[alg]).digest()
        parts.append(marshal_record(number, 13, digests, content))
    return b"".join(parts), pcr


def _rates(action, records: int, rounds: int) -> list[float]:
    rates = []
    for _ in range(rounds):
        start = time.perf_counter()
        action()
        rates.append(records / (time.perf_counter() - start))
    return rates


def run(rounds: int) -> list[Row]:
    rows: list[Row] = []
    for size in SIZES:
        log, quoted = build_log(size)
        # fewer rounds for the big log: each one takes seconds
        n = max(3, rounds if size <= 10_000 else rounds // 3)

        def replay(log=log, quoted=quoted) -> None:
            result = replay_executions(None, 1, 0, log, quoted)
            assert result.ok, result.problems[:3]

        def appraise(log=log, quoted=quoted) -> None:
            result = appraise_executions(None, 1, 0, log, quoted, FORBIDDEN)
            assert result.ok, result.reasons[:3]

        contents = [record.content for record in parse_cel(log)]

        def decode(contents=contents) -> None:
            for content in contents:
                decode_record(content)

        replay_rate = statistics.median(_rates(replay, size, n))
        rows += [
            (
                f"execution log replay (parse+digests+replay), {size} records, sha1+sha256",
                replay_rate,
                "records/s",
            ),
            (f"  / target {TARGET:.0f}/s", replay_rate / TARGET, "x"),
            (
                f"execution log appraisal (replay+decode+forbidden), {size} records",
                statistics.median(_rates(appraise, size, n)),
                "records/s",
            ),
            (
                f"  decode_record alone, {size} records",
                statistics.median(_rates(decode, size, n)),
                "records/s",
            ),
            (f"  log size per record, {size} records", len(log) / size, "bytes"),
        ]
    return rows
