"""Verifier benchmarks (issue 4, "Measure").

- Appraisal throughput and latency: a real ``stockade verifier serve`` process (TLS on
  127.0.0.1, SQLite WAL) with a real policy (a development platform and a signed
  release), ``NODES`` enrolled nodes, driven by a load generator in another process
  (``bench.verifier_load``) with every node in flight at once. The boot log and PCR values
  come from one development node really booted on swtpm through the verified chain;
  each simulated node has its own software ECC P-256 AK (restricted-signing AK template)
  and signs a fresh quote over the verifier's single-use nonce, so the verifier does all
  its real work (channel signature, nonce, quote signature, clock, log replay, reference
  lookup, EAR, DB). Every node call is signed (RFC 9421, ``stockade.channel``) with the
  node's software ECC P-256 channel key, pinned on its row as a TPM2B_PUBLIC.
  The two processes share this machine's cores.
- ``appraise()`` alone, in-process, for the same evidence.
- The node channel's cost: ``stockade.channel.verify_request`` alone, in-process (what the
  verifier adds to each node call), and the node's side, a channel signature in swtpm
  (load the key + TPM2_Sign; and as the agent makes it, on a TPM connection of its own).
- Verifier RSS per enrolled node: a fresh verifier with 0 nodes vs 10,000 nodes, each
  after ``GET /v1/nodes`` has loaded every node.

Nodes are inserted straight into the verifier's database with its own ORM models (the
enrollment protocol is tested elsewhere; it is not what is measured here).
"""

from __future__ import annotations

import base64
import functools
import hashlib
import json
import multiprocessing
import os
import statistics
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

from bench.timing import Row, median_seconds
from bench.verifier_load import (
    LoadPlan,
    LoadReport,
    SimulatedNode,
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
    from stockade.verifier.models import Node

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
    """``GET /v1/nodes`` with the operator's token (reads of trust state need a credential)."""
    headers = {"Authorization": f"Bearer {verifier.operator_token()}"}
    with httpx.Client(verify=str(verifier.ca), timeout=120, headers=headers) as client:
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
        (f"verifier attestations/s ({in_flight} nodes in flight, HTTPS, signed calls)", rate,
         "att/s"),
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
    from stockade.verifier.node_auth import _authenticate, _spend

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
                service, node.node_id, "POST", path, "", b"", next(calls), "127.0.0.1", spend
            )

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
                _spend(service, connection, node.node_id, next(nonces), now)

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
        rows += channel_verify_rows(booted, rounds)
        rows += channel_auth_rows(work, rounds)
        rows += tpm_sign_rows(work / "home", ek_ca, rounds)
        with verifier_process(work, "verifier-load", ek_ca_file, policy) as verifier:
            _, _, load_rows = throughput(verifier, booted, NODES)
            _, _, light_rows = throughput(verifier, booted, LIGHT_NODES)
        rows = load_rows + light_rows + rows + memory_per_node(work, ek_ca_file, policy)
        return rows
