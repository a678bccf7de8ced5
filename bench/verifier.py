"""Verifier benchmarks (issue 4, "Measure"; issue 16, "Scale").

- Throughput and latency matrix: real ``stockade verifier serve`` processes (TLS on
  127.0.0.1) with a real policy (a development platform and a signed release) and
  ``NODES`` enrolled nodes, driven by the load generator (``bench.verifier_load``, its own
  process) with 4 and 32 concurrent clients (each client one keep-alive connection,
  attesting back to back, cycling through its share of the nodes). Rows: {SQLite,
  PostgreSQL} x {1, 2 worker processes (``verifier serve --workers``)} x {4, 32 clients},
  and PostgreSQL with 1, 2 and 3 replicas at 32 clients: separate ``verifier serve``
  processes, each with its own data directory and port, on one database, sharing one set
  of keys (``stockade verifier keys`` and ``--keys-dir`` when ``serve`` has it, else the
  first replica's ``keys/`` copied, each then with its own TLS CA), the clients spread
  round-robin over them. PostgreSQL is a throwaway server (``scripts/ci_postgres.sh``:
  fsync off) with a fresh database per configuration (``synchronous_commit`` on). Without
  PostgreSQL, or without ``--workers``, those rows are skipped with a note; a row whose
  attestations fail is reported as FAILED, with the verifier's log on stderr.
  Each row reports attestations/s, the latency of one attestation (nonce + evidence) at
  p50 and p99, the verifier's CPU per attestation (user + system of every verifier
  process and its descendants, from /proc, over the measured window), PostgreSQL's (its
  postmaster and backends), and the load generator's own (``getrusage`` in its process).
  Windows: ``WARMUP_SECONDS`` then ``LOAD_SECONDS`` per row, aligned on the wall clock in
  both processes.
  The boot log and PCR values come from one development node really booted on swtpm through
  the verified chain; each simulated node has its own software ECC P-256 AK
  (restricted-signing AK template) and signs a fresh quote over the verifier's single-use
  nonce, so the verifier does all its real work (channel signature, nonce, quote signature,
  clock, log replay, reference lookup, EAR, DB, transparency log). Every node call is
  signed (RFC 9421, ``stockade.channel``) with the node's software ECC P-256 channel key,
  pinned on its row as a TPM2B_PUBLIC. The load generator and the verifiers share this
  machine's cores.
- ``appraise()`` alone, in-process, for the same evidence.
- The node channel's cost: ``stockade.channel.verify_request`` alone, in-process (what the
  verifier adds to each node call), and the node's side, a channel signature in swtpm
  (load the key + TPM2_Sign; and as the agent makes it, on a TPM connection of its own).

Fleet capacity and memory per enrolled node are ``bench.fleet``.

Nodes are inserted straight into the verifier's database with its own ORM models (the
enrollment protocol is tested elsewhere; it is not what is measured here).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import math
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from sqlalchemy import create_engine, insert
from sqlalchemy.exc import SQLAlchemyError

from bench.timing import Row, median_seconds
from bench.verifier_load import (
    LoadPlan,
    LoadReport,
    SimulatedNode,
    Target,
    quote_for,
    run_load,
    sign_quote,
    signed_post,
    software_signer,
)
from stockade.demo.cluster import (
    QUOTED_PCRS,
    OrgMaterial,
    VerifierProcess,
    ek_ca_bundle,
    make_org_material,
    policy_document,
)
from stockade.evidence.algorithms import Alg
from stockade.evidence.attest import Attest
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import EccParameters, ObjectAttributes, Scheme
from stockade.evidence.templates import KeyKind, ak_template

NODES = 128  # enrolled per configuration; the clients cycle through them
CLIENTS = (4, 32)  # concurrent clients (keep-alive connections) per matrix row
WORKERS = (1, 2)  # `verifier serve --workers`
REPLICAS = (1, 2, 3)  # on PostgreSQL, at REPLICA_CLIENTS
REPLICA_CLIENTS = 32
WARMUP_SECONDS = 3.0
LOAD_SECONDS = 6.0
SPAWN_SECONDS = 1.5  # the load process's start-up, before its warm-up


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


def software_channel_key() -> tuple[ec.EllipticCurvePrivateKey, bytes]:
    """A software P-256 key and its TPM2B_PUBLIC as an unrestricted signing key (what
    ``create_node_key`` makes in a TPM): the node's channel key, for ``channel_key_public``."""
    key = ec.generate_private_key(ec.SECP256R1())
    template = ak_template(KeyKind.ECC)
    assert isinstance(template.parameters, EccParameters)
    channel = replace(
        template,
        attributes=int(ObjectAttributes(template.attributes) & ~ObjectAttributes.RESTRICTED),
        parameters=replace(template.parameters, scheme=Scheme(Alg.NULL)),
    )
    return key, channel.with_public_key(key.public_key()).marshal_tpm2b()


def private_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def insert_nodes(database_url: str, count: int, prefix: str) -> list[SimulatedNode]:
    """``count`` enrolled nodes straight into the verifier's ``nodes`` table."""
    now = datetime.now(UTC)
    rows: list[dict[str, Any]] = []
    nodes: list[SimulatedNode] = []
    for number in range(count):
        key, ak_public = software_ak()
        channel_key, channel_public = software_channel_key()
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
                "channel_key_public": channel_public,
                "state": "enrolled",
                "revoked": False,
                "allowed": True,
                "created_at": now,
                "updated_at": now,
            }
        )
        nodes.append(SimulatedNode(node_id, private_pem(key), private_pem(channel_key)))
    insert_rows(database_url, rows)
    return nodes


def insert_rows(database_url: str, rows: list[dict[str, Any]]) -> None:
    """Rows into the ``nodes`` table, in large batches (one executemany each)."""
    from stockade.verifier.models import Node

    sqlite = database_url.startswith("sqlite")
    engine = create_engine(database_url, connect_args={"timeout": 30} if sqlite else {})
    try:
        with engine.begin() as connection:
            for start in range(0, len(rows), 10_000):
                connection.execute(insert(Node), rows[start : start + 10_000])
    finally:
        engine.dispose()


@contextmanager
def verifier_process(
    work: Path, name: str, ek_ca_file: Path, policy: Path, extra: tuple[str, ...] = ()
) -> Iterator[VerifierProcess]:
    verifier = VerifierProcess(work / name, ek_ca_file, policy, extra=extra)
    verifier.start(timeout=60)
    try:
        yield verifier
    finally:
        verifier.stop()


@dataclass
class SharedKeysVerifier(VerifierProcess):
    """A replica started with ``--keys-dir``: its TLS CA is the shared one."""

    keys_dir: Path | None = None

    @property
    def ca(self) -> Path:
        assert self.keys_dir is not None
        return self.keys_dir / "tls-ca.pem"

    def operator_token(self) -> str | None:
        assert self.keys_dir is not None
        token = self.keys_dir / "operator-token"
        return token.read_text().strip() if token.exists() else super().operator_token()


@contextmanager
def verifier_set(
    work: Path,
    name: str,
    ek_ca_file: Path,
    policy: Path,
    *,
    database: str | None = None,
    workers: int = 1,
    replicas: int = 1,
) -> Iterator[list[VerifierProcess]]:
    """``replicas`` verifiers on one database (SQLite in the first's data directory unless
    ``database``), each with ``--workers N`` when N > 1. Replicas share their keys (the log
    must be signed by one key): from ``stockade verifier keys`` and ``--keys-dir`` when
    ``serve`` has it, else copied from the first replica's data directory (each replica
    then has its own TLS CA)."""
    extra = ("--workers", str(workers)) if workers > 1 else ()
    started: list[VerifierProcess] = []
    keys_dir = shared_keys(work / f"{name}-keys") if replicas > 1 else None
    try:
        for number in range(replicas):
            data_dir = work / f"{name}-{number}"
            verifier: VerifierProcess
            if keys_dir is not None:
                verifier = SharedKeysVerifier(
                    data_dir, ek_ca_file, policy, database,
                    extra=(*extra, "--keys-dir", str(keys_dir)), keys_dir=keys_dir,
                )  # fmt: skip
            else:
                if number:
                    copy_keys(started[0].data_dir, data_dir)
                verifier = VerifierProcess(data_dir, ek_ca_file, policy, database, extra=extra)
            started.append(verifier)
            verifier.start(timeout=60)
            database = database or database_url(verifier)  # the others share the first's
        yield started
    finally:
        for verifier in started:
            verifier.stop()


def copy_keys(source: Path, data_dir: Path) -> None:
    keys = data_dir / "keys"
    keys.mkdir(parents=True, mode=0o700)
    data_dir.chmod(0o700)
    for key in (source / "keys").iterdir():
        (keys / key.name).write_bytes(key.read_bytes())
        (keys / key.name).chmod(0o600)


def shared_keys(directory: Path) -> Path | None:
    """The replicas' shared keys made by ``stockade verifier keys --out`` when ``serve``
    takes ``--keys-dir``; None otherwise (with a note)."""
    from stockade.demo.cluster import stockade_executable

    if not serve_has_option("--keys-dir"):
        return None
    made = subprocess.run(
        [stockade_executable(), "verifier", "keys", "--out", str(directory)],
        check=False, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    if made.returncode != 0 or not (directory / "tls-ca.pem").exists():
        print(f"note: `stockade verifier keys` failed, replicas copy the first one's keys: "
              f"{made.stderr[-300:]}", file=sys.stderr)  # fmt: skip
        return None
    return directory


def rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for {pid}")


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def process_tree(roots: list[int]) -> list[int]:
    """``roots`` and every process descending from them (from /proc)."""
    children: dict[int, list[int]] = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue  # gone meanwhile
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    found: list[int] = []
    pending = list(roots)
    while pending:
        pid = pending.pop()
        found.append(pid)
        pending.extend(children.get(pid, ()))
    return found


def tree_cpu_seconds(roots: list[int]) -> float:
    """User + system CPU of ``roots`` and their descendants, and of the children they
    already reaped (cutime, cstime), in seconds."""
    total = 0
    for pid in process_tree(roots):
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        total += int(fields[11]) + int(fields[12])
        if pid in roots:
            total += int(fields[13]) + int(fields[14])
    return total / os.sysconf("SC_CLK_TCK")


def tree_rss_kb(roots: list[int]) -> int:
    total = 0
    for pid in process_tree(roots):
        try:
            total += rss_kb(pid)
        except (OSError, RuntimeError):
            continue
    return total


def list_nodes(verifier: VerifierProcess) -> int:
    """``GET /v1/nodes`` with the operator's token (reads of trust state need a credential)."""
    headers = {"Authorization": f"Bearer {verifier.operator_token()}"}
    with httpx.Client(verify=str(verifier.ca), timeout=300, headers=headers) as client:
        answer = client.get(f"{verifier.url}/v1/nodes")
        answer.raise_for_status()
        return len(answer.json()["nodes"])


def database_url(verifier: VerifierProcess) -> str:
    return verifier.database or f"sqlite:///{verifier.data_dir / 'verifier.db'}"


@functools.cache
def serve_help() -> str:
    from stockade.demo.cluster import stockade_executable

    shown = subprocess.run(
        [stockade_executable(), "verifier", "serve", "--help"],
        check=False, capture_output=True, text=True, timeout=60,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    return shown.stdout


def serve_has_option(option: str) -> bool:
    """Whether ``stockade verifier serve`` takes ``option`` (``--workers`` and
    ``--keys-dir`` are being added, issue 16)."""
    return f" {option} " in serve_help()


@dataclass(frozen=True)
class PostgresServer:
    directory: Path
    url: str  # of its first database

    @property
    def pid(self) -> int:
        return int((self.directory / "data" / "postmaster.pid").read_text().split()[0])

    def new_database(self, name: str) -> str:
        """A fresh, empty database on this server; its URL. With ``synchronous_commit`` on,
        as docs/operations.md asks (the throwaway server turns it off; it also runs with
        fsync off, so a commit waits for the WAL write, not for the disk)."""
        from sqlalchemy import text

        engine = create_engine(self.url, isolation_level="AUTOCOMMIT")
        try:
            with engine.connect() as connection:
                connection.execute(text(f'CREATE DATABASE "{name}"'))
                connection.execute(text(f'ALTER DATABASE "{name}" SET synchronous_commit = on'))
        finally:
            engine.dispose()
        return self.url.rsplit("/", 1)[0] + f"/{name}"


@contextmanager
def postgres_server() -> Iterator[PostgresServer | None]:
    """A throwaway PostgreSQL (``scripts/ci_postgres.sh``), or None (with a note) when it
    cannot start."""
    script = Path(__file__).resolve().parent.parent / "scripts" / "ci_postgres.sh"
    # Not under a 0700 scratch directory: the server runs as the postgres user.
    directory = Path(tempfile.gettempdir()) / f"stockade-bench-pg-{uuid.uuid4().hex[:12]}"
    try:
        started = subprocess.run(
            ["bash", str(script), "start", str(directory)],
            check=False, capture_output=True, text=True, timeout=300,
        )  # fmt: skip
    except (OSError, subprocess.TimeoutExpired) as error:
        started = subprocess.CompletedProcess([], 1, "", str(error))
    url = started.stdout.strip().splitlines()[-1] if started.stdout.strip() else ""
    try:
        if started.returncode != 0 or not url.startswith("postgresql"):
            print(f"note: PostgreSQL did not start, its rows are skipped: {started.stderr[-500:]}",
                  file=sys.stderr)  # fmt: skip
            yield None
        else:
            yield PostgresServer(directory, url)
    finally:
        subprocess.run(
            ["bash", str(script), "stop", str(directory)],
            check=False,
            capture_output=True,
            timeout=120,
        )


def load_plan(
    verifiers: list[VerifierProcess],
    booted: BootedNode,
    nodes: list[SimulatedNode],
    clients: int,
    warmup: float | None = None,
    seconds: float | None = None,
) -> LoadPlan:
    warmup = WARMUP_SECONDS if warmup is None else warmup
    seconds = LOAD_SECONDS if seconds is None else seconds
    return LoadPlan(
        targets=tuple(Target(verifier.url, str(verifier.ca)) for verifier in verifiers),
        nodes=tuple(nodes),
        template=booted.quote,
        pcrs=booted.pcrs.to_json(),
        event_log_b64=base64.b64encode(booted.event_log).decode("ascii"),
        warmup_seconds=warmup,
        seconds=seconds,
        clients=clients,
        clock_epoch_ms=CLOCK_EPOCH_MS,
        start_at=time.time() + SPAWN_SECONDS + warmup,
    )


# The simulated TPM clocks read the template's clock at this moment and advance with wall
# time, so the same nodes can be driven by several load runs.
CLOCK_EPOCH_MS = time.time_ns() // 1_000_000


@dataclass(frozen=True)
class Measured:
    report: LoadReport
    verifier_cpu: float  # seconds, inside the window
    database_cpu: float | None  # PostgreSQL's, when it is measured


def measure(
    pool: Any,
    plan: LoadPlan,
    verifier_pids: list[int],
    database_pid: int | None = None,
) -> Measured:
    """Run ``plan`` in the load process of ``pool`` and read the verifiers' (and the
    database's) CPU over the same window."""
    pending = pool.apply_async(run_load, (plan,))
    time.sleep(max(0.0, plan.start_at - time.time()))
    verifier_before = tree_cpu_seconds(verifier_pids)
    database_before = None if database_pid is None else tree_cpu_seconds([database_pid])
    time.sleep(max(0.0, plan.start_at + plan.seconds - time.time()))
    verifier_cpu = tree_cpu_seconds(verifier_pids) - verifier_before
    database_cpu = (
        None
        if database_pid is None or database_before is None
        else tree_cpu_seconds([database_pid]) - database_before
    )
    report: LoadReport = pending.get(timeout=plan.seconds + 180)
    return Measured(report, verifier_cpu, database_cpu)


def percentile(values: list[float], fraction: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))]


def measured_rows(title: str, measured: Measured, verifiers: list[VerifierProcess]) -> list[Row]:
    report = measured.report
    if report.error_count or set(report.statuses) != {"affirming"} or not report.attestations:
        tails = "\n".join(verifier.tail() for verifier in verifiers)
        print(f"note: {title}: statuses {report.statuses}, {report.error_count} errors "
              f"{report.errors}\n{tails}", file=sys.stderr)  # fmt: skip
        return [(f"{title}: FAILED (see stderr)", math.nan, "att/s")]
    count = report.attestations
    rows: list[Row] = [
        (f"{title}: attestations/s", count / report.seconds, "att/s"),
        ("  latency p50 (nonce + evidence)", statistics.median(report.latencies) * 1e3, "ms"),
        ("  latency p99", percentile(report.latencies, 0.99) * 1e3, "ms"),
        ("  verifier CPU per attestation (all its processes)", measured.verifier_cpu / count * 1e3,
         "ms"),
    ]  # fmt: skip
    if measured.database_cpu is not None:
        rows.append(("  PostgreSQL CPU per attestation", measured.database_cpu / count * 1e3, "ms"))
    rows.append(("  load generator CPU per attestation", report.cpu_seconds / count * 1e3, "ms"))
    return rows


def spawn_pool() -> Any:
    return multiprocessing.get_context("spawn").Pool(1)


def throughput(
    verifier: VerifierProcess, booted: BootedNode, in_flight: int = NODES
) -> tuple[LoadReport, float, list[Row]]:
    """One verifier, ``in_flight`` fresh nodes each its own client (``bench.verifier_profile``)."""
    nodes = insert_nodes(database_url(verifier), in_flight, f"load{uuid.uuid4().hex[:6]}")
    assert verifier.process is not None
    with spawn_pool() as pool:
        measured = measure(
            pool, load_plan([verifier], booted, nodes, in_flight), [verifier.process.pid]
        )
    title = f"verifier ({in_flight} clients, HTTPS, signed calls)"
    return measured.report, measured.verifier_cpu, measured_rows(title, measured, [verifier])


def configuration_rows(
    pool: Any,
    work: Path,
    booted: BootedNode,
    ek_ca_file: Path,
    policy: Path,
    *,
    label: str,
    postgres: PostgresServer | None,
    workers: int,
    replicas: int,
    clients: tuple[int, ...],
) -> list[Row]:
    """Rows of one configuration: its verifiers started, ``NODES`` nodes, each client count.
    A configuration that cannot be started or driven gives FAILED rows and a note."""
    from stockade.demo.cluster import ClusterError

    name = f"{label.split(',', maxsplit=1)[0].lower()}-w{workers}-r{replicas}"
    rows: list[Row] = []
    try:
        database = None if postgres is None else postgres.new_database(name.replace("-", "_"))
        with verifier_set(
            work, name, ek_ca_file, policy, database=database, workers=workers, replicas=replicas
        ) as verifiers:
            nodes = insert_nodes(database_url(verifiers[0]), NODES, name)
            pids = [v.process.pid for v in verifiers if v.process is not None]
            for count in clients:
                plan = load_plan(verifiers, booted, nodes, count)
                measured = measure(pool, plan, pids, None if postgres is None else postgres.pid)
                rows += measured_rows(f"verifier [{label}, {count} clients]", measured, verifiers)
    except (ClusterError, SQLAlchemyError, multiprocessing.TimeoutError, OSError) as error:
        print(f"note: verifier [{label}]: {type(error).__name__}: {error}", file=sys.stderr)
        done = {row[0].split(" clients]")[0] for row in rows}
        rows += [
            (f"verifier [{label}, {count} clients]: FAILED (see stderr)", math.nan, "att/s")
            for count in clients
            if f"verifier [{label}, {count}" not in done
        ]
    return rows


def block(rows: list[Row], title: str) -> list[Row]:
    """The row starting with ``title`` and the indented rows under it."""
    found: list[Row] = []
    for row in rows:
        if row[0].startswith(title) or (found and row[0].startswith(" ")):
            found.append(row)
        elif found:
            break
    return found


def plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"


def matrix_rows(work: Path, booted: BootedNode, ek_ca_file: Path, policy: Path) -> list[Row]:
    workers: tuple[int, ...] = WORKERS
    if max(WORKERS) > 1 and not serve_has_option("--workers"):
        print("note: `stockade verifier serve --help` shows no --workers: the rows with more "
              "than one worker process are skipped", file=sys.stderr)  # fmt: skip
        workers = (1,)
    rows: list[Row] = []
    with spawn_pool() as pool:
        for count in workers:
            rows += configuration_rows(
                pool, work, booted, ek_ca_file, policy, label=f"SQLite, {plural(count, 'worker')}",
                postgres=None, workers=count, replicas=1, clients=CLIENTS,
            )  # fmt: skip
        with postgres_server() as postgres:
            if postgres is None:
                return rows
            for count in workers:
                rows += configuration_rows(
                    pool, work, booted, ek_ca_file, policy,
                    label=f"PostgreSQL, {plural(count, 'worker')}", postgres=postgres,
                    workers=count, replicas=1, clients=CLIENTS,
                )  # fmt: skip
            for count in REPLICAS:
                one = f"verifier [PostgreSQL, 1 worker, {REPLICA_CLIENTS} clients]"
                if count == 1 and REPLICA_CLIENTS in CLIENTS and 1 in workers:
                    # one replica of one process is the 1-worker configuration above
                    same = f"verifier [PostgreSQL, 1 replica, {REPLICA_CLIENTS} clients]"
                    rows += [
                        (name.replace(one, f"{same} (the 1-worker row)"), value, unit)
                        for name, value, unit in block(rows, one)
                    ]
                    continue
                rows += configuration_rows(
                    pool, work, booted, ek_ca_file, policy,
                    label=f"PostgreSQL, {plural(count, 'replica')}", postgres=postgres, workers=1,
                    replicas=count, clients=(REPLICA_CLIENTS,),
                )  # fmt: skip
    return rows


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


def channel_verify_rows(booted: BootedNode, rounds: int) -> list[Row]:
    """What the node channel adds to each node call at the verifier, in-process: the request's
    signature checked by ``verify_request`` (header parsing, Content-Digest over the body,
    signature base, ECDSA P-256 verify), for the two calls of an attestation; and decoding a
    pinned TPM2B_PUBLIC into a key (the verifier caches it, so once per key)."""
    from stockade.channel import verify_request
    from stockade.evidence.public import TpmPublic

    key, channel_public = software_channel_key()
    public_key = TpmPublic.unmarshal_tpm2b(channel_public).public_key()
    assert isinstance(public_key, ec.EllipticCurvePublicKey)
    node_id = str(uuid.uuid4())
    ak, _ = software_ak()
    template = Attest.unmarshal(booted.quote)
    nonce = os.urandom(32)
    message = quote_for(template, nonce, template.clock_info.clock + 1000)
    evidence = {
        "nonce": base64.b64encode(nonce).decode(),
        "quote": base64.b64encode(message).decode(),
        "signature": base64.b64encode(sign_quote(ak, message)).decode(),
        "pcrs": booted.pcrs.to_json(),
        "event_log": base64.b64encode(booted.event_log).decode(),
    }
    rows: list[Row] = []
    for call, body in (("nonces", None), ("evidence", evidence)):
        path = f"/v1/nodes/{node_id}/{call}"
        content, headers = signed_post(node_id, software_signer(key), path, body)
        lowered = {name.lower(): value for name, value in headers.items()}
        created = int(lowered["signature-input"].split("created=")[1].split(";")[0])

        verify = functools.partial(
            verify_request, "POST", path, "", content, lowered, public_key,
            keyid=node_id, now=created, max_skew=300,
        )  # fmt: skip
        verify()  # it verifies at all
        seconds = median_seconds(verify, rounds, inner=200)
        what = "empty body" if body is None else f"{len(content) / 1024:.0f} KiB body"
        rows.append(
            (f"verify one channel signature (parse + ECDSA P-256 verify), {call} ({what})",
             seconds * 1e6, "us")
        )  # fmt: skip
    decode = median_seconds(
        lambda: TpmPublic.unmarshal_tpm2b(channel_public).public_key(), rounds, inner=200
    )
    rows.append(("  decode a channel key TPM2B_PUBLIC (once per key, cached)", decode * 1e6, "us"))
    return rows


def channel_auth_rows(work: Path, rounds: int) -> list[Row]:
    """The verifier's whole check of a node call, in-process (``node_auth._authenticate``,
    what ``require_node`` runs in a worker thread): read the node's pinned key from SQLite
    (WAL), verify the signature, admit its nonce to the replay cache and spend it in the
    database. Each call has a fresh signature (a replay would be refused), made beforehand.
    And the DB read and the spend alone."""
    from types import SimpleNamespace

    from sqlalchemy import select

    from stockade.channel import ReplayCache
    from stockade.verifier.db import make_engine, migrate
    from stockade.verifier.models import Node
    from stockade.verifier.node_auth import SignatureSpend, _authenticate, _spend

    url = f"sqlite:///{work / 'channel-auth.db'}"
    engine = make_engine(url)
    try:
        migrate(engine)
        node = insert_nodes(url, 1, "channel-auth")[0]
        channel_key = serialization.load_pem_private_key(node.channel_private_pem, None)
        assert isinstance(channel_key, ec.EllipticCurvePrivateKey)
        sign = software_signer(channel_key)
        path = f"/v1/nodes/{node.node_id}/nonces"
        inner = 100
        count = (2 * rounds + 4) * inner  # warm-up, then both modes
        signed = [signed_post(node.node_id, sign, path)[1] for _ in range(count)]
        calls = iter([{name.lower(): value for name, value in h.items()} for h in signed])
        service: Any = SimpleNamespace(  # the parts of a Service it uses
            engine=engine,
            now=lambda: datetime.now(UTC),
            config=SimpleNamespace(channel_max_skew_seconds=300),
            replay_cache=ReplayCache(window=600),
        )

        def authenticate(spend: bool) -> object:
            return _authenticate(
                service, node.node_id, "POST", path, "", b"", next(calls), "127.0.0.1",
                "now" if spend else "memory",
            )  # fmt: skip

        for _ in range(inner):  # warm: the connection pool, the parsed-key cache
            authenticate(True)
        spending = median_seconds(lambda: authenticate(True), rounds, inner=inner)
        remembering = median_seconds(lambda: authenticate(False), rounds, inner=inner)

        def read_key() -> object:  # as _authenticate reads it
            with engine.begin() as connection:
                query = select(Node.name, Node.channel_key_public).where(Node.id == node.node_id)
                return connection.execute(query).first()

        read = median_seconds(read_key, rounds, inner=inner)
        nonces = iter([os.urandom(18).hex() for _ in range((rounds + 1) * inner)])
        now = int(time.time())

        def spend_one() -> None:
            with engine.begin() as connection:
                expires = datetime.fromtimestamp(now + 301, UTC)
                _spend(connection, SignatureSpend(node.node_id, next(nonces), expires))

        spend = median_seconds(spend_one, rounds, inner=inner)
    finally:
        engine.dispose()
    return [
        ("  the verifier's whole channel check, spending the nonce in the DB (nonces, secrets)",
         spending * 1e6, "us"),
        ("  the verifier's whole channel check, nonce in process (evidence, certificates)",
         remembering * 1e6, "us"),
        ("    of which: read the node's pinned key (SQLite)", read * 1e6, "us"),
        ("    of which: spend the signature nonce (SQLite INSERT + commit)", spend * 1e6, "us"),
    ]  # fmt: skip


def tpm_sign_rows(home: Path, ek_ca: Any, rounds: int) -> list[Row]:
    """The node's side of the channel: one request signature by a channel key in swtpm."""
    from stockade.agent.channel_key import ChannelSigner
    from stockade.channel import sign_request
    from stockade.tpm.device import Tpm
    from stockade.tpm.node_key import create_node_key, save_node_key, sign_digest
    from stockade.tpm.swtpm import start_swtpm

    digest = hashlib.sha256(b"a signature base").digest()
    with start_swtpm("bench-channel", home, ek_ca) as swtpm:
        with Tpm(swtpm.tcti) as tpm:
            key = create_node_key(tpm)
            public_key = key.public.public_key()
            assert isinstance(public_key, ec.EllipticCurvePublicKey)
            signature = sign_digest(tpm, key, digest)
            r, s = int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
            public_key.verify(  # the TPM's r || s is what the verifier checks
                utils.encode_dss_signature(r, s), digest, ec.ECDSA(utils.Prehashed(hashes.SHA256()))
            )
            in_tpm = median_seconds(lambda: sign_digest(tpm, key, digest), max(5, rounds), 10)
        key_path = home / "bench-channel.key"
        save_node_key(key, key_path)
        signer = ChannelSigner(swtpm.tcti, key_path)
        as_agent = median_seconds(lambda: signer(digest), max(5, rounds), 10)
        whole = median_seconds(
            lambda: sign_request("POST", "/v1/nodes/x/nonces", "", b"", keyid="x",
                                 created=int(time.time()), sign_digest=signer),
            max(5, rounds), 10,
        )  # fmt: skip
    return [
        ("sign one request in swtpm (load key + TPM2_Sign)", in_tpm * 1e3, "ms"),
        ("  as the agent signs (own TPM connection + load + sign + flush)", as_agent * 1e3, "ms"),
        ("  sign_request() with the agent's signer (headers + the above)", whole * 1e3, "ms"),
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
        rows = matrix_rows(work, booted, ek_ca_file, policy)
        rows.append(appraise_only(org, booted, rounds))
        rows += channel_verify_rows(booted, rounds)
        rows += channel_auth_rows(work, rounds)
        rows += tpm_sign_rows(work / "home", ek_ca, rounds)
        return rows
