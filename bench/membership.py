"""Cluster membership benchmarks: joining, and releasing secrets.

Against a real ``stockade verifier serve`` process (TLS on 127.0.0.1, SQLite WAL, a KEK) with
the real appraisal policy of a development platform and a signed release:

- Join: from agent start (its TPM booted) to holding a node certificate. Each round takes a
  freshly provisioned swtpm (its own EK and EK certificate), boots it through the development
  chain and gives the agent an empty state directory; then, timed, what ``stockade join``
  does: enroll (AK, EK certificate, MakeCredential/ActivateCredential), attest (nonce, quote,
  the verifier's log replay and appraisal), create the TPM-resident node key, certify it with
  the AK over a fresh nonce, and receive the certificate. In this process (the agent's code
  path), and a few rounds of the real ``stockade join`` command, whose Python start-up is
  part of what a user waits for.
- Secret release: many concurrent ``POST /v1/nodes/{id}/secrets/{name}`` over HTTPS for a
  trusted node (each one decrypts the secret under the KEK and wraps it as a TPM2_Import
  blob for the node's EK and attested PCRs), from a thread pool in this process; plus
  ``seal_secret`` alone, and the node's fetch + TPM unseal.
"""

from __future__ import annotations

import json
import os
import ssl
import statistics
import subprocess
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import httpx

from bench.timing import Row, median_seconds
from bench.verifier import cpu_seconds
from stockade.cli.demo_cluster import (
    VerifierProcess,
    ek_ca_bundle,
    make_org_material,
    policy_document,
    stockade_executable,
)

JOIN_ROUNDS = 9  # at most: each round provisions a fresh swtpm (~0.8 s, not timed)
CLI_JOIN_ROUNDS = 3
RELEASE_THREADS = 16
RELEASE_SECONDS = 3.0
RELEASE_WARMUP_SECONDS = 0.5
SECRET = os.urandom(256)  # e.g. a database password file or a TLS key's passphrase


def p90(samples: list[float]) -> float:
    ordered = sorted(samples)
    return ordered[min(len(ordered) - 1, round(0.9 * (len(ordered) - 1)))]


class Node:
    """A fresh swtpm booted through the development chain, and the agent for it."""

    def __init__(self, stack: ExitStack, work: Path, name: str, env: dict[str, Any]) -> None:
        from stockade.agent import Agent, AgentConfig
        from stockade.agent.source import NodeSource
        from stockade.boot import boot_node
        from stockade.tpm.swtpm import start_swtpm

        self.tpm = stack.enter_context(start_swtpm(name, env["home"], env["ek_ca"]))
        booted = boot_node(self.tpm, env["platform"], env["release"])
        booted.check()
        self.log = booted.log_path
        self.state_dir = work / name
        self.agent = Agent(
            AgentConfig(
                verifier=env["url"],
                ca=env["ca"],
                name=name,
                source=NodeSource(self.tpm.tcti, self.log, f"bench TPM {name}"),
                state_dir=self.state_dir,
            ),
            log=lambda line: None,
        )


def join_once(node: Node, url: str, ca: Path) -> dict[str, float]:
    """What ``stockade join`` does, timed step by step; the total is from agent start."""
    from stockade.agent.client import VerifierClient

    marks = [time.perf_counter()]
    with VerifierClient(url, ca) as client:
        enrolled = node.agent.enroll(client)
        marks.append(time.perf_counter())
        answer = node.agent.attest_once(client, enrolled)
        if answer.get("status") != "affirming":
            raise RuntimeError(f"join: the node was not affirmed: {answer.get('reasons')}")
        marks.append(time.perf_counter())
        membership = node.agent.membership
        membership.node_key()
        marks.append(time.perf_counter())
        issued = membership.renew_certificate(client, enrolled.node_id)
        marks.append(time.perf_counter())
    if not issued.certificate.exists():
        raise RuntimeError("join: no certificate written")
    steps = ("enroll", "attest", "node key", "certify")
    timings = {step: marks[i + 1] - marks[i] for i, step in enumerate(steps)}
    timings["total"] = marks[-1] - marks[0]
    return timings


def join_rows(stack: ExitStack, work: Path, env: dict[str, Any], rounds: int) -> list[Row]:
    samples: list[dict[str, float]] = []
    for number in range(rounds):
        node = Node(stack, work, f"bench-join-{number}", env)
        samples.append(join_once(node, env["url"], env["ca"]))
        node.tpm.stop()
    totals = [sample["total"] for sample in samples]
    rows: list[Row] = [
        (f"join: agent start -> node certificate, median of {rounds} (target < 1000)",
         statistics.median(totals) * 1e3, "ms"),
        (f"  join p90 of {rounds}", p90(totals) * 1e3, "ms"),
    ]  # fmt: skip
    for step, what in (
        ("enroll", "enroll (AK, EK cert, MakeCredential + ActivateCredential)"),
        ("attest", "attest (nonce, quote, replay + appraisal)"),
        ("node key", "create the TPM node key"),
        ("certify", "certify (nonce, TPM2_Certify, certificate)"),
    ):
        rows.append((f"    {what}", statistics.median(s[step] for s in samples) * 1e3, "ms"))
    return rows


def cli_join_rows(stack: ExitStack, work: Path, env: dict[str, Any], rounds: int) -> list[Row]:
    samples = []
    for number in range(rounds):
        node = Node(stack, work, f"bench-cli-{number}", env)
        command = [
            stockade_executable(), "join", "--name", f"bench-cli-{number}",
            "--verifier", env["url"], "--ca", str(env["ca"]), "--tcti", node.tpm.tcti,
            "--event-log", str(node.log), "--state-dir", str(node.state_dir),
        ]  # fmt: skip
        start = time.perf_counter()
        done = subprocess.run(command, capture_output=True, text=True, check=False)
        samples.append(time.perf_counter() - start)
        if done.returncode != 0:
            raise RuntimeError(f"stockade join: {done.stderr.strip()}")
        node.tpm.stop()
    # The same start-up and nothing else: a command that fails at once on a closed port.
    refused = [stockade_executable(), "nodes", "list", "--verifier", "https://127.0.0.1:1"]
    startup = []
    for _ in range(3):
        start = time.perf_counter()
        subprocess.run(refused, capture_output=True, check=False)
        startup.append(time.perf_counter() - start)
    return [
        (f"  `stockade join` command, median of {rounds} (a new process)",
         statistics.median(samples) * 1e3, "ms"),
        ("    of which start-up (`stockade nodes list`, port closed)",
         statistics.median(startup) * 1e3, "ms"),
    ]  # fmt: skip


def release_load(url: str, ca: Path, path: str) -> tuple[int, list[float], dict[int, int]]:
    """RELEASE_THREADS threads POSTing ``path`` for RELEASE_SECONDS (after a warm-up)."""
    context = ssl.create_default_context(cafile=str(ca))
    latencies: list[list[float]] = [[] for _ in range(RELEASE_THREADS)]
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    begin = time.perf_counter()
    measure_from = begin + RELEASE_WARMUP_SECONDS
    end = measure_from + RELEASE_SECONDS

    def worker(index: int) -> None:
        with httpx.Client(base_url=url, verify=context, timeout=30, trust_env=False) as client:
            while (now := time.perf_counter()) < end:
                answer = client.post(path)
                done = time.perf_counter()
                if now >= measure_from:
                    latencies[index].append(done - now)
                    with lock:
                        statuses[answer.status_code] = statuses.get(answer.status_code, 0) + 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(RELEASE_THREADS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    flat = [latency for per_thread in latencies for latency in per_thread]
    return statuses.get(200, 0), flat, statuses


def release_rows(stack: ExitStack, work: Path, env: dict[str, Any], rounds: int) -> list[Row]:
    from stockade.agent.client import VerifierClient
    from stockade.evidence.duplication import seal_secret
    from stockade.evidence.pcr_selection import PcrSelection
    from stockade.evidence.templates import KeyKind
    from stockade.tpm.device import Tpm
    from stockade.tpm.ek import read_endorsement

    node = Node(stack, work, "bench-release", env)
    join_once(node, env["url"], env["ca"])  # trusted, certificate and all
    enrolled = node.agent.state.enrolled()
    assert enrolled is not None
    with VerifierClient(env["url"], env["ca"], operator_token=env["token"]) as operator:
        operator.put_secret("bench-secret", SECRET)
        operator.grant("bench-secret", f"node:{enrolled.name}")

    # Correctness first: what the verifier releases unseals to the secret in this TPM.
    membership = node.agent.membership
    with VerifierClient(env["url"], env["ca"]) as client:
        membership.fetch_secret(client, enrolled.node_id, "bench-secret")
        if membership.unseal("bench-secret") != SECRET:
            raise RuntimeError("the released secret does not unseal to the stored one")

        def fetch_and_unseal() -> None:
            membership.fetch_secret(client, enrolled.node_id, "bench-secret")
            membership.unseal("bench-secret")

        node_side = median_seconds(fetch_and_unseal, max(3, rounds // 3))

    pid = env["pid"]
    cpu_before = cpu_seconds(pid)
    released, latencies, statuses = release_load(
        env["url"], env["ca"], f"/v1/nodes/{enrolled.node_id}/secrets/bench-secret"
    )
    verifier_cpu = cpu_seconds(pid) - cpu_before  # includes the short warm-up
    if set(statuses) != {200}:
        raise RuntimeError(f"secret release answers: {statuses}")
    latencies.sort()

    selection = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7,8,9,12")
    with Tpm(node.tpm.tcti) as tpm:
        pcrs = tpm.read_pcrs(selection)
        eks = {kind: read_endorsement(tpm, kind).public for kind in (KeyKind.ECC, KeyKind.RSA)}
    seal = {
        kind: median_seconds(lambda ek=ek: seal_secret(ek, SECRET, selection, pcrs), rounds, 20)
        for kind, ek in eks.items()
    }
    node.tpm.stop()
    total_requests = sum(statuses.values())
    return [
        (f"secret releases/s ({RELEASE_THREADS} threads, HTTPS, one node)",
         released / RELEASE_SECONDS, "rel/s"),
        ("  release latency p50", statistics.median(latencies) * 1e3, "ms"),
        ("  release latency p99",
         latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3, "ms"),
        ("  verifier CPU per release",
         verifier_cpu / max(1, total_requests) * 1e3, "ms"),
        ("  seal_secret() only (ECC P-256 EK, 256 B, 11 PCRs)", seal[KeyKind.ECC] * 1e6, "us"),
        ("  seal_secret() only (RSA 2048 EK)", seal[KeyKind.RSA] * 1e6, "us"),
        ("  node: fetch + TPM import/load/unseal (swtpm)", node_side * 1e3, "ms"),
    ]  # fmt: skip


def run(rounds: int) -> list[Row]:
    from stockade.boot import DevelopmentPlatform, load_release
    from stockade.cluster.secret_store import KeyEncryptionKey
    from stockade.tpm.ekca import EkCa

    with tempfile.TemporaryDirectory(prefix="stockade-bench-membership-") as scratch:
        work = Path(scratch)
        org = make_org_material(work / "org")
        policy = work / "policy.json"
        policy.write_text(json.dumps(policy_document(org, validity_seconds=300)))
        home = work / "home"
        ek_ca = EkCa.load_or_create(home / "ek-ca")
        kek = work / "kek"
        fd = os.open(kek, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as handle:
            handle.write(KeyEncryptionKey.generate().to_text())
        verifier = VerifierProcess(
            work / "verifier",
            ek_ca_bundle(ek_ca, work / "ek-ca.pem"),
            policy,
            extra=("--kek-file", str(kek)),
        )
        verifier.start(timeout=60)
        with ExitStack() as stack:
            stack.callback(verifier.stop)
            assert verifier.process is not None
            env = {
                "home": home,
                "ek_ca": ek_ca,
                "platform": DevelopmentPlatform.load(org.platform_dir),
                "release": load_release(org.release_dir),
                "url": verifier.url,
                "ca": verifier.ca,
                "token": (verifier.data_dir / "operator-token").read_text().strip(),
                "pid": verifier.process.pid,
            }
            rows = join_rows(stack, work, env, min(rounds, JOIN_ROUNDS))
            rows += cli_join_rows(stack, work, env, CLI_JOIN_ROUNDS)
            rows += release_rows(stack, work, env, rounds)
        return rows
