"""The verifier benchmark's load generator: many simulated nodes over HTTPS, one process.

Each simulated node holds a software ECC P-256 AK (enrolled with the restricted-signing
AK template) and a software ECC P-256 channel key (pinned on its row), and loops:
``POST /v1/nodes/{id}/nonces``, build a TPMS_ATTEST over the real booted node's PCR
selection and digest with the fresh nonce as extraData and its TPM clock moving forward,
sign it ECDSA-SHA256, ``POST /v1/nodes/{id}/evidence`` with the real boot log. Both calls
carry the node channel's RFC 9421 signature (``stockade.channel.sign_request``) made with
the channel key, as every node call must. Runs in its own process (``multiprocessing``
spawn), so its CPU is not the verifier's: on a 2-core machine they share the two cores.
"""

from __future__ import annotations

import asyncio
import base64
import json
import os
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import httpx
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from stockade.channel import sign_request
from stockade.evidence.algorithms import Alg
from stockade.evidence.attest import Attest, ClockInfo
from stockade.evidence.signature import EcdsaSignature, Signature


@dataclass(frozen=True)
class SimulatedNode:
    node_id: str
    ak_private_pem: bytes
    channel_private_pem: bytes


@dataclass(frozen=True)
class LoadPlan:
    """Everything the load process needs; picklable."""

    url: str
    ca: str
    nodes: tuple[SimulatedNode, ...]
    template: bytes  # a real TPMS_ATTEST quote from the booted node
    pcrs: dict[str, dict[str, str]]
    event_log_b64: str
    warmup_seconds: float
    seconds: float


@dataclass
class LoadReport:
    attestations: int = 0  # completed (nonce + evidence) inside the measured window
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, nonce start -> result
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    cpu_seconds: float = 0.0  # this process's CPU inside the measured window


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sign_quote(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return Signature(
        EcdsaSignature(Alg.ECDSA, Alg.SHA256, r.to_bytes(32, "big"), s.to_bytes(32, "big"))
    ).marshal()


def software_signer(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    """``sign_digest`` for ``stockade.channel.sign_request`` with a software P-256 key: ECDSA
    over a SHA-256 digest, as IEEE P1363 ``r || s`` (what the TPM's TPM2_Sign gives)."""

    def sign_digest(digest: bytes) -> bytes:
        der = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign_digest


def signed_post(
    node_id: str, sign_digest: Callable[[bytes], bytes], path: str, body: Any = None
) -> tuple[bytes, dict[str, str]]:
    """The body bytes and headers of a node's channel-signed ``POST path`` (JSON body)."""
    content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    headers = sign_request(
        "POST", path, "", content, keyid=node_id, created=int(time.time()), sign_digest=sign_digest
    )
    if body is not None:
        headers["Content-Type"] = "application/json"
    return content, headers


def quote_for(template: Attest, nonce: bytes, clock: int) -> bytes:
    """The template quote with a fresh nonce and a later TPM clock (same boot)."""
    info = template.clock_info
    return Attest(
        template.magic,
        template.type,
        template.qualified_signer,
        nonce,
        ClockInfo(clock, info.reset_count, info.restart_count, info.safe),
        template.firmware_version,
        template.attested,
    ).marshal()


async def _node_loop(
    context: ssl.SSLContext,
    plan: LoadPlan,
    node: SimulatedNode,
    template: Attest,
    window: tuple[float, float],
    report: LoadReport,
    statuses: Counter[str],
) -> None:
    """One simulated node: its own HTTPS connection (as a real agent has), attesting in a loop.

    A client per node, not one shared pool: httpx's pool scans every connection for each
    request, which made the load generator, not the verifier, the bottleneck at 100+ nodes.
    """
    key = serialization.load_pem_private_key(node.ak_private_pem, None)
    assert isinstance(key, ec.EllipticCurvePrivateKey)
    channel_key = serialization.load_pem_private_key(node.channel_private_pem, None)
    assert isinstance(channel_key, ec.EllipticCurvePrivateKey)
    channel = software_signer(channel_key)
    nonces_path = f"/v1/nodes/{node.node_id}/nonces"
    evidence_path = f"/v1/nodes/{node.node_id}/evidence"
    clock = template.clock_info.clock + 1000
    start_at, end_at = window
    async with httpx.AsyncClient(base_url=plan.url, verify=context, timeout=60.0) as client:
        while True:
            began = time.perf_counter()
            if began >= end_at:
                return
            try:
                content, headers = signed_post(node.node_id, channel, nonces_path)
                answer = await client.post(nonces_path, content=content, headers=headers)
                answer.raise_for_status()
                nonce = base64.b64decode(answer.json()["nonce"])
                clock += 1000
                message = quote_for(template, nonce, clock)
                body = {
                    "nonce": b64(nonce),
                    "quote": b64(message),
                    "signature": b64(sign_quote(key, message)),
                    "pcrs": plan.pcrs,
                    "event_log": plan.event_log_b64,
                }
                content, headers = signed_post(node.node_id, channel, evidence_path, body)
                answer = await client.post(evidence_path, content=content, headers=headers)
                answer.raise_for_status()
                status = str(answer.json()["status"])
            except (httpx.HTTPError, KeyError, ValueError) as error:
                if len(report.errors) < 5:
                    report.errors.append(f"{type(error).__name__}: {error}")
                status = "error"
            done = time.perf_counter()
            if start_at <= began and done <= end_at:
                report.latencies.append(done - began)
                statuses[status] += 1


async def _drive(plan: LoadPlan) -> LoadReport:
    context = ssl.create_default_context(cafile=plan.ca)
    template = Attest.unmarshal(plan.template)
    report = LoadReport()
    statuses: Counter[str] = Counter()
    now = time.perf_counter()
    window = (now + plan.warmup_seconds, now + plan.warmup_seconds + plan.seconds)
    cpu_task = asyncio.create_task(_cpu_in_window(window))
    await asyncio.gather(
        *(
            _node_loop(context, plan, node, template, window, report, statuses)
            for node in plan.nodes
        )
    )
    report.cpu_seconds = await cpu_task
    report.attestations = len(report.latencies)
    report.seconds = plan.seconds
    report.statuses = dict(statuses)
    return report


async def _cpu_in_window(window: tuple[float, float]) -> float:
    await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
    before = os.times()
    await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    after = os.times()
    return (after.user + after.system) - (before.user + before.system)


def run_load(plan: LoadPlan) -> LoadReport:
    """Entry point in the load process."""
    return asyncio.run(_drive(plan))


def describe(report: LoadReport) -> dict[str, Any]:
    return {
        "attestations": report.attestations,
        "statuses": report.statuses,
        "errors": report.errors,
    }
