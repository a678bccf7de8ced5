"""Fleet API benchmarks (the dashboard's reads, ``stockade.verifier.fleet``).

A fresh verifier app on a fresh SQLite database (WAL, as ``verifier serve`` runs it), filled
through its ORM models with ``NODES`` nodes (``STOCKADE_BENCH_FLEET_NODES``, default 20,000),
each with a latest result: states, releases and labels varied (most trusted, some whose trust
ran out, failed, untrusted, enrolled without a result, revoked, pending; three releases and
none; a role, a zone and a rack label). Then, in-process through the app (Starlette's
TestClient: routing, the reader credential, JSON), the median over rounds of:

- ``GET /v1/fleet/nodes`` first page (the default 50), unfiltered, by ``state``, by
  ``release`` (NAME@VERSION), by ``label``, by ``name`` (a substring), and a page from the
  middle of the fleet (``after`` a cursor);
- ``GET /v1/fleet/summary``;

and the size of the unfiltered first page in bytes. Each page answer includes ``total``, the
count of every match: the page and the count are both measured.
"""

from __future__ import annotations

import os
import statistics
import tempfile
import time
import uuid
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from bench.timing import Row

NODES = int(os.environ.get("STOCKADE_BENCH_FLEET_NODES", "20000"))
BATCH = 5000
EAR_BYTES = 1200  # about one signed EAR; the page never reads it, the table holds it
RELEASES = [
    ("stockade-os", "1.0.0", 3, "11" * 32),
    ("stockade-os", "1.1.0", 4, "22" * 32),
    ("stockade-os", "1.2.0", 5, "33" * 32),
    None,
]
ROLES = ["web", "db", "cache", "batch"]
ZONES = ["a", "b", "c", "d"]


def _state(number: int) -> tuple[str, int | None, str]:
    """(stored state, trust deadline in minutes from now or None, latest result's status)."""
    slot = number % 100
    if slot < 70:
        return "trusted", 5 + number % 60, "affirming"
    if slot < 75:
        return "trusted", -(1 + number % 30), "affirming"  # its trust ran out: untrusted
    if slot < 80:
        return "untrusted", None, "affirming"
    if slot < 85:
        return "failed", None, "contraindicated"
    if slot < 95:
        return "enrolled", None, ""  # no result yet
    if slot < 98:
        return "revoked", None, "contraindicated"
    return "pending", None, ""


def fill(engine: Any, count: int, now: datetime) -> None:
    """``count`` nodes and one latest result each, in batches, through the models."""
    from sqlalchemy import insert

    from stockade.verifier.models import Node, Result

    ear = "e" * EAR_BYTES
    with engine.begin() as connection:
        for start in range(0, count, BATCH):
            nodes: list[dict[str, Any]] = []
            results: list[dict[str, Any]] = []
            for number in range(start, min(start + BATCH, count)):
                node_id = str(uuid.uuid4())
                state, deadline, status = _state(number)
                release = RELEASES[number % len(RELEASES)]
                result_id = str(uuid.uuid4()) if status else None
                nodes.append(
                    {
                        "id": node_id,
                        "name": f"node-{number:05d}",
                        "ek_fingerprint": os.urandom(32).hex(),
                        "ek_public": os.urandom(314),
                        "ek_certificate": os.urandom(1100),
                        "ak_public": os.urandom(280),
                        "state": state,
                        "revoked": state == "revoked",
                        "allowed": state != "revoked",
                        "trusted_until": None
                        if deadline is None
                        else now + timedelta(minutes=deadline),
                        "latest_result_id": result_id,
                        "labels": {
                            "role": ROLES[number % len(ROLES)],
                            "topology.example.com/zone": ZONES[number // 7 % len(ZONES)],
                            "rack": f"r{number % 50:02d}",
                        },
                        "created_at": now,
                        "updated_at": now,
                    }
                )
                if result_id is None:
                    continue
                results.append(
                    {
                        "id": result_id,
                        "node_id": node_id,
                        "status": status,
                        "ear": ear,
                        "reasons": []
                        if status == "affirming"
                        else ["pcr 7 differs from every reference", "secure boot is off"],
                        "policy_ref": "fleet@1",
                        "not_after": now + timedelta(minutes=10),
                        "created_at": now - timedelta(seconds=number % 3600),
                        "log_index": None,
                        "release_name": None if release is None else release[0],
                        "release_version": None if release is None else release[1],
                        "release_security_version": None if release is None else release[2],
                        "release_digest": None if release is None else release[3],
                    }
                )
            connection.execute(insert(Node), nodes)
            if results:
                connection.execute(insert(Result), results)


def _median_ms(call: Any, rounds: int) -> float:
    samples = []
    for _ in range(rounds):
        start = time.perf_counter()
        call()
        samples.append(time.perf_counter() - start)
    return statistics.median(samples) * 1000


def run(rounds: int) -> list[Row]:
    from fastapi.testclient import TestClient

    from stockade.verifier import VerifierConfig, create_app

    with tempfile.TemporaryDirectory(prefix="stockade-bench-fleet-nodes-") as scratch:
        config = VerifierConfig(
            data_dir=Path(scratch) / "verifier",
            sweep_interval_seconds=3600.0,  # the stale nodes stay stored as trusted
        )
        app = create_app(config)
        with TestClient(app) as client:
            service = app.state.service
            fill(service.engine, NODES, service.now())
            token = (config.data_dir / "reader-token").read_text().strip()
            headers = {"Authorization": f"Bearer {token}"}

            def get(path: str, **params: str) -> bytes:
                answer = client.get(path, params=params, headers=headers)
                if answer.status_code != 200:
                    raise RuntimeError(f"{path} {params}: {answer.status_code} {answer.text}")
                return answer.content

            # A cursor at the middle of the fleet (the node named there, as a page gives it).
            from stockade.verifier.fleet import encode_cursor

            middle = client.get(
                "/v1/fleet/nodes", params={"name": f"node-{NODES // 2:05d}"}, headers=headers
            ).json()["nodes"]
            after = encode_cursor(middle[0]["name"], middle[0]["node_id"]) if middle else None
            cases: list[tuple[str, str, dict[str, str]]] = [
                ("page", "/v1/fleet/nodes", {}),
                ("page state=untrusted", "/v1/fleet/nodes", {"state": "untrusted"}),
                ("page release=NAME@VERSION", "/v1/fleet/nodes",
                 {"release": "stockade-os@1.1.0"}),
                ("page label=role=db", "/v1/fleet/nodes", {"label": "role=db"}),
                ("page name=substring", "/v1/fleet/nodes", {"name": "-012"}),
                ("summary", "/v1/fleet/summary", {}),
            ]  # fmt: skip
            if after is not None:
                cases.insert(5, ("page after a mid-fleet cursor", "/v1/fleet/nodes",
                                 {"after": after}))  # fmt: skip
            rows: list[Row] = []
            for what, path, params in cases:
                get(path, **params)  # warm: statement caches, pages in memory
                median = _median_ms(lambda path=path, params=params: get(path, **params), rounds)
                rows.append((f"fleet_nodes {what} ({NODES} nodes)", median, "ms"))
            size = len(get("/v1/fleet/nodes"))
            rows.append((f"fleet_nodes first page of 50 ({NODES} nodes)", float(size), "bytes"))
    return rows


if __name__ == "__main__":
    for name, value, unit in run(15):
        print(f"{name:<60} {value:>10.1f} {unit}")
