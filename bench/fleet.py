"""Fleet benchmarks (issue 16): how many nodes one verifier keeps trusted, and its memory.

- Fleet capacity at a 10 s interval: one ``stockade verifier serve`` (TLS on 127.0.0.1,
  SQLite WAL, ``WORKERS`` process) under a policy whose results are valid for
  ``VALIDITY_SECONDS`` (two intervals: a node that misses one round stays trusted), and N
  simulated nodes (``bench.verifier_load``, paced mode), each attesting every
  ``INTERVAL_SECONDS`` from a random phase, on a connection of its own that it reopens
  when the verifier closed it while idle (uvicorn closes connections idle for 5 s, so at a
  10 s interval every attestation pays a TLS handshake, as a real agent's does). The real
  interval, not a scaled model: each step runs one interval of warm-up (every node's first
  result) and then ``WINDOW_SECONDS`` measured. N passes when, in the window: every result
  is affirming and no call fails; the verifier keeps up (at least ``KEEP_UP`` of the
  attestations due in the window are answered inside it: a verifier behind the offered
  rate builds a backlog, which over a longer run would push renewals past the deadline;
  at 0.97 of a 20 s window its answers lag by less than about 0.6 s at the window's end);
  no node goes longer than its result's validity without a new result (the load
  generator's clock); and the verifier's own sweeper marked none of them untrusted (no
  ``stale`` event after the node's first result in the step). The search starts from a closed-loop
  estimate (32 clients, back to back: attestations/s x interval), steps up by
  ``GROW`` while N passes (down by ``SHRINK`` while it fails), then bisects, at most
  ``MAX_STEPS`` steps; the capacity is the largest N that passed. The same nodes are
  reused by later steps (their TPM clocks advance with wall time).
- Verifier memory per enrolled node at ``MEMORY_NODES``: a fresh verifier on an empty
  database and a fresh verifier on ``MEMORY_NODES`` nodes (bulk-inserted straight into its
  SQLite database with its ORM models, EK public areas and certificates sized like RSA-2048
  ones), each after ``GET /v1/nodes`` and ``GET /v1/trust`` (which load every node); RSS
  of the verifier's processes, difference over the nodes.
"""

from __future__ import annotations

import json
import math
import os
import statistics
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx

from bench.timing import Row
from bench.verifier import (
    BootedNode,
    boot_development_node,
    database_url,
    insert_nodes,
    insert_rows,
    list_nodes,
    load_plan,
    measure,
    percentile,
    software_ak,
    software_channel_key,
    spawn_pool,
    tree_rss_kb,
    verifier_set,
)
from bench.verifier_load import LoadReport, SimulatedNode
from stockade.demo.cluster import (
    VerifierProcess,
    ek_ca_bundle,
    make_org_material,
    policy_document,
)

INTERVAL_SECONDS = 10.0  # each node attests this often
WORKERS = 1  # the verifier's processes (`verifier serve --workers`)
VALIDITY_SECONDS = 20  # the policy's result_validity_seconds: two intervals
WINDOW_SECONDS = 20.0  # measured, after one interval of warm-up
KEEP_UP = 0.97  # attestations due in the window and answered inside it / all due in it
ESTIMATE_CLIENTS = 32
ESTIMATE_WARMUP_SECONDS, ESTIMATE_SECONDS = 2.0, 4.0
START_FRACTION = 0.55  # of the closed-loop estimate, the first N tried
GROW, SHRINK = 1.3, 0.7
BISECT_UNTIL = 1.08  # stop bisecting when the failing N is within 8% of the passing one
MAX_STEPS = 4
MEMORY_NODES = 100_000


@dataclass(frozen=True)
class Step:
    nodes: int
    report: LoadReport
    verifier_cpu: float
    stale: int  # stale events the verifier recorded for these nodes after their first result

    @property
    def offered(self) -> float:
        return self.nodes * self.report.seconds / INTERVAL_SECONDS

    @property
    def keeps_up(self) -> float:
        return self.report.completed / self.offered if self.offered else 0.0

    @property
    def passed(self) -> bool:
        report = self.report
        return (
            report.error_count == 0
            and set(report.statuses) <= {"affirming"}
            and self.keeps_up >= KEEP_UP
            and report.overdue_nodes == 0
            and self.stale == 0
        )

    def describe(self) -> str:
        report = self.report
        p99 = percentile(report.latencies, 0.99) * 1e3 if report.latencies else math.nan
        return (
            f"N={self.nodes}: {'pass' if self.passed else 'FAIL'}: {report.completed} results "
            f"in {report.seconds:g} s ({self.keeps_up:.1%} of offered), p99 {p99:.0f} ms, "
            f"longest without a result {report.max_gap:.1f} s, overdue {report.overdue_nodes}, "
            f"started over 1 s late {report.late_starts}, "
            f"stale {self.stale}, errors {report.error_count} {report.errors[:2]}"
        )


def stale_events(url: str, first_results: dict[str, float]) -> int:
    """``stale`` events the verifier recorded for these nodes after their first result."""
    from sqlalchemy import create_engine, select

    from stockade.verifier.models import Event

    if not first_results:
        return 0
    since = datetime.fromtimestamp(min(first_results.values()), UTC)
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            found = connection.execute(
                select(Event.node_id, Event.time).where(
                    Event.reason == "stale", Event.time >= since
                )
            ).all()
    finally:
        engine.dispose()
    return sum(
        1
        for node_id, when in found
        if node_id in first_results and _aware(when).timestamp() >= first_results[node_id]
    )


def _aware(when: datetime) -> datetime:
    return when if when.tzinfo else when.replace(tzinfo=UTC)


def paced_step(
    pool: Any, verifier: VerifierProcess, booted: BootedNode, nodes: list[SimulatedNode]
) -> Step:
    plan = load_plan([verifier], booted, nodes, 0, INTERVAL_SECONDS, WINDOW_SECONDS)
    plan = replace(plan, interval=INTERVAL_SECONDS, deadline_seconds=float(VALIDITY_SECONDS))
    assert verifier.process is not None
    measured = measure(pool, plan, [verifier.process.pid])
    report = measured.report
    time.sleep(1.5)  # one more sweep over the window's end
    stale = stale_events(database_url(verifier), report.first_results)
    return Step(len(nodes), report, measured.verifier_cpu, stale)


def estimate(pool: Any, verifier: VerifierProcess, booted: BootedNode) -> float:
    """Closed-loop attestations/s at ``ESTIMATE_CLIENTS`` clients."""
    nodes = insert_nodes(database_url(verifier), ESTIMATE_CLIENTS * 4, "estimate")
    plan = load_plan(
        [verifier], booted, nodes, ESTIMATE_CLIENTS, ESTIMATE_WARMUP_SECONDS, ESTIMATE_SECONDS
    )
    assert verifier.process is not None
    report = measure(pool, plan, [verifier.process.pid]).report
    if report.error_count or set(report.statuses) != {"affirming"}:
        raise RuntimeError(f"fleet estimate: {report.statuses}, {report.errors}")
    return report.attestations / report.seconds


def capacity_rows(work: Path, booted: BootedNode, ek_ca_file: Path, policy: Path) -> list[Row]:
    steps: list[Step] = []
    with (
        spawn_pool() as pool,
        verifier_set(work, "fleet", ek_ca_file, policy, workers=WORKERS) as verifiers,
    ):
        verifier = verifiers[0]
        rate = estimate(pool, verifier, booted)
        print(f"fleet: closed-loop estimate {rate:.0f} att/s", file=sys.stderr)
        nodes: list[SimulatedNode] = []
        passed: Step | None = None
        failed: Step | None = None
        count = max(10, round(START_FRACTION * rate * INTERVAL_SECONDS))
        while len(steps) < MAX_STEPS:
            if count > len(nodes):
                nodes += insert_nodes(
                    database_url(verifier), count - len(nodes), f"fleet{len(steps)}"
                )
            step = paced_step(pool, verifier, booted, nodes[:count])
            steps.append(step)
            print(f"fleet: {step.describe()}", file=sys.stderr)
            if step.passed and (passed is None or step.nodes > passed.nodes):
                passed = step
            if not step.passed and (failed is None or step.nodes < failed.nodes):
                failed = step
            if passed is not None and failed is not None:
                if failed.nodes / passed.nodes <= BISECT_UNTIL:
                    break
                count = round(math.sqrt(passed.nodes * failed.nodes))
            elif passed is not None:
                count = round(passed.nodes * GROW)
            else:
                count = max(1, round(count * SHRINK))
    rows: list[Row] = [("fleet: closed-loop attestations/s (32 clients, the estimate)", rate,
                        "att/s")]  # fmt: skip
    if passed is None:
        print("note: fleet: no N passed", file=sys.stderr)
        return [*rows, (f"fleet capacity at {INTERVAL_SECONDS:g} s interval", 0.0, "nodes")]
    report = passed.report
    rows += [
        (f"fleet capacity at {INTERVAL_SECONDS:g} s interval", passed.nodes, "nodes"),
        ("  smallest N that failed (nan: none reached)",
         math.nan if failed is None else failed.nodes, "nodes"),
        ("  at capacity: results/s", report.completed / report.seconds, "att/s"),
        ("  at capacity: latency p50 (handshake + nonce + evidence)",
         statistics.median(report.latencies) * 1e3, "ms"),
        ("  at capacity: latency p99", percentile(report.latencies, 0.99) * 1e3, "ms"),
        ("  at capacity: longest a node went without a new result", report.max_gap, "s"),
        ("  at capacity: verifier CPU per attestation",
         passed.verifier_cpu / max(1, report.completed) * 1e3, "ms"),
        ("  at capacity: load generator CPU per attestation (a TLS handshake each)",
         report.cpu_seconds / max(1, report.completed) * 1e3, "ms"),
        ("  fleet search steps", len(steps), "steps"),
    ]  # fmt: skip
    return rows


def memory_rows(work: Path, ek_ca_file: Path, policy: Path, count: int | None = None) -> list[Row]:
    def loaded(verifier: VerifierProcess, expect: int) -> int:
        """RSS (KiB, all the verifier's processes) after the calls that load every node."""
        if list_nodes(verifier) != expect:
            raise RuntimeError("GET /v1/nodes did not list every inserted node")
        headers = {"Authorization": f"Bearer {verifier.operator_token()}"}
        with httpx.Client(verify=str(verifier.ca), timeout=300, headers=headers) as client:
            answer = client.get(f"{verifier.url}/v1/trust")
            answer.raise_for_status()
            if answer.json()["nodes"] != expect:
                raise RuntimeError("GET /v1/trust did not count every inserted node")
        list_nodes(verifier)
        assert verifier.process is not None
        return tree_rss_kb([verifier.process.pid])

    count = MEMORY_NODES if count is None else count
    with verifier_set(work, "memory", ek_ca_file, policy) as verifiers:
        empty = loaded(verifiers[0], 0)
        url = database_url(verifiers[0])
    started = time.perf_counter()
    insert_rows(url, node_rows(count))
    inserted = time.perf_counter() - started
    with verifier_set(work, "memory", ek_ca_file, policy) as verifiers:  # a fresh process
        full = loaded(verifiers[0], count)
    return [
        ("verifier RSS, 0 nodes (after GET /v1/nodes, /v1/trust)", empty / 1024, "MiB"),
        (f"verifier RSS, {count:,} nodes (fresh process, after the same)", full / 1024, "MiB"),
        (f"  memory per enrolled node at {count:,} nodes", (full - empty) / count, "KB"),
        (f"  bulk insert of {count:,} nodes into SQLite", inserted, "s"),
    ]


def node_rows(count: int, distinct_keys: int = 64) -> list[dict[str, Any]]:
    """``count`` enrolled nodes' rows; their AK and channel keys drawn from
    ``distinct_keys`` real ones (nothing that loads every node parses them)."""
    keys = [(software_ak()[1], software_channel_key()[1]) for _ in range(distinct_keys)]
    now = datetime.now(UTC)
    random_bytes = os.urandom
    return [
        {
            "id": str(uuid.uuid4()),
            "name": f"mem-{number:06d}",
            "ek_fingerprint": random_bytes(32).hex(),
            "ek_public": random_bytes(314),
            "ek_certificate": random_bytes(1100),
            "ak_public": keys[number % distinct_keys][0],
            "channel_key_public": keys[number % distinct_keys][1],
            "state": "enrolled",
            "revoked": False,
            "allowed": True,
            "created_at": now,
            "updated_at": now,
        }
        for number in range(count)
    ]


def run(rounds: int) -> list[Row]:
    from stockade.tpm.ekca import EkCa

    del rounds  # timed windows, not rounds
    with tempfile.TemporaryDirectory(prefix="stockade-bench-fleet-") as scratch:
        work = Path(scratch)
        org = make_org_material(work / "org")
        policy = work / "policy.json"
        policy.write_text(json.dumps(policy_document(org, validity_seconds=VALIDITY_SECONDS)))
        ek_ca = EkCa.load_or_create(work / "home" / "ek-ca")
        ek_ca_file = ek_ca_bundle(ek_ca, work / "ek-ca.pem")
        booted = boot_development_node(org, work / "home", ek_ca)
        rows = capacity_rows(work, booted, ek_ca_file, policy)
        rows += memory_rows(work, ek_ca_file, policy)
        return rows
