"""Verifier benchmarks (issue 4, "Measure").

- Appraisal throughput and latency: a real ``stockade verifier serve`` process (TLS on
  127.0.0.1, SQLite WAL) with a real policy (a development platform and a signed
  release), ``NODES`` enrolled nodes, driven by a load generator in another process
  (``bench.verifier_load``) with every node in flight at once. The boot log and PCR values
  come from one development node really booted on swtpm through the verified chain;
  each simulated node has its own software ECC P-256 AK (restricted-signing AK template)
  and signs a fresh quote over the verifier's single-use nonce, so the verifier does all
  its real work (nonce, quote signature, clock, log replay, reference lookup, EAR, DB).
  The two processes share this machine's cores.
- ``appraise()`` alone, in-process, for the same evidence.
- Verifier RSS per enrolled node: a fresh verifier with 0 nodes vs 10,000 nodes, each
  after ``GET /v1/nodes`` has loaded every node.

Nodes are inserted straight into the verifier's database with its own ORM models (the
enrollment protocol is tested elsewhere; it is not what is measured here).
"""

from __future__ import annotations

import base64
import json
import multiprocessing
import os
import statistics
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine, insert

from bench.timing import Row, median_seconds
from bench.verifier_load import LoadPlan, LoadReport, SimulatedNode, quote_for, run_load, sign_quote
from stockade.cli.demo_cluster import (
    QUOTED_PCRS,
    OrgMaterial,
    VerifierProcess,
    ek_ca_bundle,
    make_org_material,
    policy_document,
)
from stockade.evidence.attest import Attest
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.templates import KeyKind, ak_template

NODES = 128  # enrolled and all in flight at once
LIGHT_NODES = 16  # a second, lighter load: the verifier's peak before contention
WARMUP_SECONDS = 4.0
LOAD_SECONDS = 8.0
MEMORY_NODES = 10_000


@dataclass(frozen=True)
class BootedNode:
    """What one really booted development node gives the benchmark."""

    quote: bytes  # a real TPMS_ATTEST from its swtpm (template for the synthetic quotes)
    pcrs: PcrValues  # the quoted sha256 PCRs
    event_log: bytes  # binary_bios_measurements, as the boot chain wrote it


def boot_development_node(org: OrgMaterial, home: Path, ek_ca: Any) -> BootedNode:
    from stockade.boot import DevelopmentPlatform, boot_node, load_release
    from stockade.tpm.ak import create_ak
    from stockade.tpm.device import Tpm
    from stockade.tpm.quote import quote
    from stockade.tpm.swtpm import start_swtpm

    selection = PcrSelection.parse(QUOTED_PCRS)
    with start_swtpm("bench-verifier", home, ek_ca) as swtpm:
        booted = boot_node(
            swtpm, DevelopmentPlatform.load(org.platform_dir), load_release(org.release_dir)
        )
        booted.check()
        with Tpm(swtpm.tcti) as tpm:
            evidence = quote(tpm, create_ak(tpm, KeyKind.ECC), selection, os.urandom(32))
    return BootedNode(
        evidence.message, evidence.pcr_values.restricted_to(selection), booted.log_bytes
    )


def software_ak() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A software P-256 key and its TPM2B_PUBLIC under the restricted-signing AK template."""
    key = ec.generate_private_key(ec.SECP256R1())
    return key, ak_template(KeyKind.ECC).with_public_key(key.public_key()).marshal_tpm2b()


def insert_nodes(database_url: str, count: int, prefix: str) -> list[SimulatedNode]:
    """``count`` enrolled nodes straight into the verifier's ``nodes`` table."""
    from stockade.verifier.models import Node

    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    nodes: list[SimulatedNode] = []
    for number in range(count):
        key, ak_public = software_ak()
        node_id = str(uuid.uuid4())
        rows.append(
            {
                "id": node_id,
                "name": f"{prefix}-{number:05d}",
                "ek_fingerprint": os.urandom(32).hex(),
                # Opaque here (never parsed after enrollment), sized like an RSA-2048
                # EK TPM2B_PUBLIC and its certificate.
                "ek_public": os.urandom(314),
                "ek_certificate": os.urandom(1100),
                "ak_public": ak_public,
                "state": "enrolled",
                "revoked": False,
                "allowed": True,
                "created_at": now,
                "updated_at": now,
            }
        )
        pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        nodes.append(SimulatedNode(node_id, pem))
    engine = create_engine(database_url, connect_args={"timeout": 30})
    try:
        with engine.begin() as connection:
            for start in range(0, len(rows), 2000):
                connection.execute(insert(Node), rows[start : start + 2000])
    finally:
        engine.dispose()
    return nodes


@contextmanager
def verifier_process(
    work: Path, name: str, ek_ca_file: Path, policy: Path
) -> Iterator[VerifierProcess]:
    verifier = VerifierProcess(work / name, ek_ca_file, policy)
    verifier.start(timeout=60)
    try:
        yield verifier
    finally:
        verifier.stop()


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def list_nodes(verifier: VerifierProcess) -> int:
    with httpx.Client(verify=str(verifier.ca), timeout=120) as client:
        answer = client.get(f"{verifier.url}/v1/nodes")
        answer.raise_for_status()
        return len(answer.json()["nodes"])


def database_url(verifier: VerifierProcess) -> str:
    return f"sqlite:///{verifier.data_dir / 'verifier.db'}"


def throughput(
    verifier: VerifierProcess, booted: BootedNode, in_flight: int = NODES
) -> tuple[LoadReport, float, list[Row]]:
    nodes = insert_nodes(database_url(verifier), in_flight, f"load{in_flight}")
    plan = LoadPlan(
        url=verifier.url,
        ca=str(verifier.ca),
        nodes=tuple(nodes),
        template=booted.quote,
        pcrs=booted.pcrs.to_json(),
        event_log_b64=base64.b64encode(booted.event_log).decode("ascii"),
        warmup_seconds=WARMUP_SECONDS,
        seconds=LOAD_SECONDS,
    )
    assert verifier.process is not None
    pid = verifier.process.pid
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        pending = pool.apply_async(run_load, (plan,))
        time.sleep(WARMUP_SECONDS)
        cpu_before = cpu_seconds(pid)
        time.sleep(LOAD_SECONDS)
        verifier_cpu = cpu_seconds(pid) - cpu_before
        report: LoadReport = pending.get(timeout=LOAD_SECONDS + 120)
    if report.errors or set(report.statuses) != {"affirming"}:
        raise RuntimeError(
            f"verifier load: statuses {report.statuses}, errors {report.errors}: {verifier.tail()}"
        )
    rate = report.attestations / report.seconds
    latencies = sorted(report.latencies)
    p99 = latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))]
    rows: list[Row] = [
        (f"verifier attestations/s ({in_flight} nodes in flight, HTTPS)", rate, "att/s"),
        ("  attestation latency p50 (nonce + evidence)", statistics.median(latencies) * 1e3, "ms"),
        ("  attestation latency p99", p99 * 1e3, "ms"),
        ("  verifier CPU per attestation", verifier_cpu / report.attestations * 1e3, "ms"),
        ("  load generator CPU per attestation", report.cpu_seconds / report.attestations * 1e3,
         "ms"),
    ]  # fmt: skip
    return report, verifier_cpu, rows


def appraise_only(org: OrgMaterial, booted: BootedNode, rounds: int) -> Row:
    from stockade.appraisal import appraise as core
    from stockade.appraisal.policy import parse_policy
    from stockade.evidence.public import TpmPublic

    policy = parse_policy(policy_document(org), 1)
    references = core.build_references(policy)
    key, ak_public = software_ak()
    nonce = os.urandom(32)
    template = Attest.unmarshal(booted.quote)
    message = quote_for(template, nonce, template.clock_info.clock + 1000)
    evidence = core.Evidence(
        nonce, message, sign_quote(key, message), booted.pcrs, booted.event_log
    )
    node = core.NodeView("bench", "bench", TpmPublic.unmarshal_tpm2b(ak_public), None)
    result = core.appraise(policy, references, node, evidence, nonce)
    if result.status != core.Status.AFFIRMING:
        raise RuntimeError(f"appraise() on the booted node's evidence: {result.reasons}")
    seconds = median_seconds(
        lambda: core.appraise(policy, references, node, evidence, nonce), rounds, inner=50
    )
    return ("appraise() only, in-process (same evidence)", seconds * 1e6, "us")


def memory_per_node(work: Path, ek_ca_file: Path, policy: Path) -> list[Row]:
    with verifier_process(work, "verifier-memory", ek_ca_file, policy) as verifier:
        assert verifier.process is not None
        pid = verifier.process.pid
        list_nodes(verifier)
        empty = rss_kb(pid)
        insert_nodes(database_url(verifier), MEMORY_NODES, "mem")
        for _ in range(3):
            if list_nodes(verifier) != MEMORY_NODES:
                raise RuntimeError("GET /v1/nodes did not list every inserted node")
        full = rss_kb(pid)
    per_node = (full - empty) / MEMORY_NODES
    return [
        ("verifier RSS, 0 nodes (after GET /v1/nodes)", empty / 1024, "MiB"),
        (f"verifier RSS, {MEMORY_NODES:,} nodes (after GET /v1/nodes x3)", full / 1024, "MiB"),
        (f"  verifier RSS per enrolled node ({MEMORY_NODES:,})", per_node, "KB"),
    ]


def run(rounds: int) -> list[Row]:
    from stockade.tpm.ekca import EkCa

    with tempfile.TemporaryDirectory(prefix="stockade-bench-verifier-") as scratch:
        work = Path(scratch)
        org = make_org_material(work / "org")
        policy = work / "policy.json"
        policy.write_text(json.dumps(policy_document(org)))
        ek_ca = EkCa.load_or_create(work / "home" / "ek-ca")
        ek_ca_file = ek_ca_bundle(ek_ca, work / "ek-ca.pem")
        booted = boot_development_node(org, work / "home", ek_ca)
        rows = [appraise_only(org, booted, rounds)]
        with verifier_process(work, "verifier-load", ek_ca_file, policy) as verifier:
            _, _, load_rows = throughput(verifier, booted, NODES)
            _, _, light_rows = throughput(verifier, booted, LIGHT_NODES)
        rows = load_rows + light_rows + rows + memory_per_node(work, ek_ca_file, policy)
        return rows
