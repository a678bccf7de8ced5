"""Transparency log benchmarks (stockade.translog, "Measure").

On SQLite as the verifier runs it (a file in WAL mode, ``synchronous=NORMAL``, through
``stockade.verifier.db.make_engine``):

- appends per second, in batches of ``BATCH`` entries per transaction (``append_many``),
  growing the log to ``TARGET_ENTRIES`` or for ``TIME_BUDGET_S`` seconds, whichever comes
  first; the row says how many entries were reached (nothing is extrapolated). Target:
  >= 20,000/s;
- inclusion-proof latency (``MerkleLog.inclusion_proof``: database reads included) at the
  size reached, median and p99 over random indices; target <= 1 ms at 1,000,000;
- consistency-proof latency, and root-of-any-size latency;
- proof size in hashes against log2 n, and verification time of a proof (pure).

``STOCKADE_BENCH_TRANSLOG_ENTRIES`` overrides the target size (e.g. 100000 for a quick run).
"""

from __future__ import annotations

import math
import os
import random
import statistics
import tempfile
import time
from pathlib import Path

from bench.timing import Row, median_seconds
from stockade.translog import MerkleLog, create_tables, leaf_hash, verify_inclusion
from stockade.verifier.db import make_engine

TARGET_ENTRIES = int(os.environ.get("STOCKADE_BENCH_TRANSLOG_ENTRIES", "1000000"))
TIME_BUDGET_S = 60.0
BATCH = 1000
ENTRY_SIZE = 256  # about one attestation result or execution record
APPEND_TARGET = 20_000.0
INCLUSION_TARGET_MS = 1.0


def _batch(start: int, count: int) -> list[bytes]:
    padding = b"r" * (ENTRY_SIZE - 12)
    return [b"%012d" % index + padding for index in range(start, start + count)]


def _percentile(samples: list[float], fraction: float) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def _grow(log: MerkleLog) -> tuple[int, float, list[float]]:
    """Append until TARGET_ENTRIES or TIME_BUDGET_S; (entries, seconds appending, per-batch
    rates)."""
    size, spent, rates = 0, 0.0, []
    while size < TARGET_ENTRIES and spent < TIME_BUDGET_S:
        entries = _batch(size, min(BATCH, TARGET_ENTRIES - size))
        start = time.perf_counter()
        log.append_many(entries)
        elapsed = time.perf_counter() - start
        spent += elapsed
        rates.append(len(entries) / elapsed)
        size += len(entries)
    return size, spent, rates


def _latencies(action, arguments: list[tuple[int, ...]]) -> list[float]:
    for args in arguments[:50]:  # warm the statement cache and the page cache
        action(*args)
    samples = []
    for args in arguments:
        start = time.perf_counter()
        action(*args)
        samples.append(time.perf_counter() - start)
    return samples


def run(rounds: int) -> list[Row]:
    rows: list[Row] = []
    rng = random.Random("bench.translog")
    samples = max(1000, rounds * 100)
    with tempfile.TemporaryDirectory(prefix="stockade-bench-translog-") as scratch:
        path = Path(scratch) / "translog.db"
        engine = make_engine(f"sqlite:///{path}")
        create_tables(engine)
        log = MerkleLog(engine)
        size, spent, rates = _grow(log)
        tail = rates[-max(1, len(rates) // 10) :]
        rows += [
            (f"translog append, batches of {BATCH}, SQLite: to {size} entries", size / spent, "/s"),
            ("  median batch rate", statistics.median(rates), "/s"),
            ("  last 10% of batches (largest log)", statistics.median(tail), "/s"),
            (f"  overall / target {APPEND_TARGET:.0f}/s", size / spent / APPEND_TARGET, "x"),
            ("  database size per entry", path.stat().st_size / size, "bytes"),
        ]

        indices = [(rng.randrange(size), size) for _ in range(samples)]
        inclusion = _latencies(log.inclusion_proof, indices)
        median_ms = statistics.median(inclusion) * 1e3
        rows += [
            (f"translog inclusion proof at {size} entries: median", median_ms * 1e3, "us"),
            ("  p99", _percentile(inclusion, 0.99) * 1e6, "us"),
            (
                f"  median / target {INCLUSION_TARGET_MS:.0f} ms",
                median_ms / INCLUSION_TARGET_MS,
                "x",
            ),
        ]
        pairs = [(rng.randrange(1, size), size) for _ in range(samples)]
        consistency = _latencies(log.consistency_proof, pairs)
        rows += [
            (
                f"translog consistency proof to {size}: median",
                statistics.median(consistency) * 1e6,
                "us",
            ),
            ("  p99", _percentile(consistency, 0.99) * 1e6, "us"),
        ]
        roots = _latencies(log.root, [(rng.randrange(1, size + 1),) for _ in range(samples)])
        rows.append(
            ("translog root of a random size: median", statistics.median(roots) * 1e6, "us")
        )

        lengths = [len(log.inclusion_proof(index, size)) for index, _ in indices[:200]]
        consistency_lengths = [len(log.consistency_proof(old, size)) for old, _ in pairs[:200]]
        rows += [
            (
                f"translog inclusion proof size at {size}: median",
                statistics.median(lengths),
                "hashes",
            ),
            ("  max", max(lengths), "hashes"),
            ("  log2 n", math.log2(size), "hashes"),
            (
                "translog consistency proof size: median",
                statistics.median(consistency_lengths),
                "hashes",
            ),
            ("  max", max(consistency_lengths), "hashes"),
        ]

        index = size // 3
        proof = log.inclusion_proof(index, size)
        root = log.root(size)
        hashed = leaf_hash(log.entry(index))
        verify_seconds = median_seconds(
            lambda: verify_inclusion(hashed, index, size, proof, root), rounds, inner=200
        )
        rows.append(("translog verify_inclusion (pure)", verify_seconds * 1e6, "us"))
        engine.dispose()
    return rows
