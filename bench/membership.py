"""Cluster membership benchmarks: joining, and releasing secrets.

Against a real ``stockade verifier serve`` process (TLS on 127.0.0.1, SQLite WAL, a KEK) with
the real appraisal policy of a development platform and a signed release:

- Join: from agent start (its TPM booted) to holding a node certificate. Each round takes a
  freshly provisioned swtpm (its own EK and EK certificate), boots it through the development
  chain and gives the agent an empty state directory; then, timed, what ``stockade join``
  does: enroll (AK, EK certificate, MakeCredential/ActivateCredential, and the channel key:
  created in the TPM, certified by the AK, pinned at activation), attest (nonce, quote, the
  verifier's log replay and appraisal), create the TPM-resident node key, certify it with
  the AK over a fresh nonce, and receive the certificate. Every node call after activation
  is signed in the TPM with the channel key (``stockade.channel``): those signatures are
  inside the steps and also reported on their own. In this process (the agent's code
  path), and a few rounds of the real ``stockade join`` command, whose Python start-up is
  part of what a user waits for.
- Secret release: many concurrent ``POST /v1/nodes/{id}/secrets/{name}`` over HTTPS for a
  trusted node (each one checks the request's channel signature, decrypts the secret under
  the KEK and wraps it as a TPM2_Import blob for the node's EK, attested PCRs and channel
  key), from a thread pool in this process; plus ``seal_secret`` alone, and the node's fetch
  + TPM unseal. The load's channel signatures are made beforehand in the node's swtpm with
  its real channel key (each signature is single-use), so the TPM does not pace the load.
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
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Any

import httpx

from bench.timing import Row, median_seconds
from bench.verifier import cpu_seconds
from stockade.demo.cluster import (
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
RELEASE_PRESIGNED = 2500  # channel-signed requests made before the release load
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


@contextmanager
def timing(owner: Any, name: str, spent: list[float]) -> Iterator[None]:
    """Within the block, each call of ``owner.name`` appends its duration to ``spent``."""
    original: Callable[..., Any] = getattr(owner, name)

    def timed(*args: Any, **kwargs: Any) -> Any:
        start = time.perf_counter()
        try:
            return original(*args, **kwargs)
        finally:
            spent.append(time.perf_counter() - start)

    setattr(owner, name, timed)
    try:
        yield
    finally:
        setattr(owner, name, original)


def join_once(node: Node, url: str, ca: Path) -> dict[str, float]:
    """What ``stockade join`` does, timed step by step; the total is from agent start.

    Also timed on their own, inside those steps: making the channel key (TPM2_Create), its
    certification by the AK (TPM2_Certify) during enrollment, and every channel signature
    the agent makes in the TPM (``ChannelSigner``: its own TPM connection, load, TPM2_Sign).
    """
    import stockade.tpm.node_key
    from stockade.agent.channel_key import ChannelSigner
    from stockade.agent.client import VerifierClient

    channel_create: list[float] = []
    channel_certify: list[float] = []
    signatures: list[float] = []
    with ExitStack() as probes:
        probes.enter_context(timing(ChannelSigner, "__call__", signatures))
        marks = [time.perf_counter()]
        with VerifierClient(url, ca) as client:
            with (
                timing(stockade.tpm.node_key, "create_node_key", channel_create),
                timing(stockade.tpm.node_key, "certify_node_key", channel_certify),
            ):
                enrolled = node.agent.enroll(client)
            marks.append(time.perf_counter())
            issued = _attest_and_certify(node, client, enrolled, marks)
    if not issued.certificate.exists():
        raise RuntimeError("join: no certificate written")
    if len(channel_create) != 1 or len(channel_certify) != 1:
        raise RuntimeError("join: enrollment did not make and certify one channel key")
    steps = ("enroll", "attest", "node key", "certify")
    timings = {step: marks[i + 1] - marks[i] for i, step in enumerate(steps)}
    timings["total"] = marks[-1] - marks[0]
    timings["channel create"] = channel_create[0]
    timings["channel certify"] = channel_certify[0]
    timings["signatures"] = float(len(signatures))
    timings["signing"] = sum(signatures)
    timings["one signature"] = statistics.median(signatures)
    return timings


def _attest_and_certify(node: Node, client: Any, enrolled: Any, marks: list[float]) -> Any:
    """The join after enrollment: attest, make the node key, get it certified."""
    answer = node.agent.attest_once(client, enrolled)
    if answer.get("status") != "affirming":
        raise RuntimeError(f"join: the node was not affirmed: {answer.get('reasons')}")
    marks.append(time.perf_counter())
    membership = node.agent.membership
    membership.node_key()
    marks.append(time.perf_counter())
    issued = membership.renew_certificate(client, enrolled.node_id)
    marks.append(time.perf_counter())
    return issued


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
        ("enroll", "enroll (AK, EK cert, MakeCredential + ActivateCredential, channel key)"),
        ("channel create", "  of which: create the channel key in the TPM"),
        ("channel certify", "  of which: certify the channel key with the AK (TPM2_Certify)"),
        ("attest", "attest (nonce, quote, replay + appraisal)"),
        ("node key", "create the TPM node key"),
        ("certify", "certify (nonce, TPM2_Certify, certificate)"),
    ):
        rows.append((f"    {what}", statistics.median(s[step] for s in samples) * 1e3, "ms"))
    count = statistics.median(s["signatures"] for s in samples)
    rows += [
        (f"    channel signatures in the TPM, all {count:.0f} of a join (in the steps above)",
         statistics.median(s["signing"] for s in samples) * 1e3, "ms"),
        ("      sign a request in the TPM (swtpm; connect, load key, TPM2_Sign)",
         statistics.median(s["one signature"] for s in samples) * 1e3, "ms"),
    ]  # fmt: skip
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


def presign(node: Node, node_id: str, path: str, count: int) -> list[dict[str, str]]:
    """``count`` channel signatures of ``POST path`` (empty body), each with its own nonce,
    made in the node's swtpm by its channel key (loaded once)."""
    from stockade.channel import sign_request
    from stockade.tpm.device import Tpm
    from stockade.tpm.node_key import loaded_node_key, sign_digest_with

    key = node.agent.membership.channel_key()
    with Tpm(node.tpm.tcti) as tpm, loaded_node_key(tpm, key) as handle:

        def sign(digest: bytes) -> bytes:
            return sign_digest_with(tpm, handle, digest)

        return [
            sign_request("POST", path, "", b"", keyid=node_id, created=int(time.time()),
                         sign_digest=sign)
            for _ in range(count)
        ]  # fmt: skip


def release_load(
    url: str, ca: Path, path: str, presigned: list[dict[str, str]]
) -> tuple[int, list[float], dict[int, int], float, int]:
    """RELEASE_THREADS threads POSTing ``path`` for RELEASE_SECONDS (after a warm-up), each
    request with one of the ``presigned`` channel signatures: the load stops early when they
    run out. (released, latencies, statuses, measured seconds, requests sent)."""
    context = ssl.create_default_context(cafile=str(ca))
    latencies: list[list[float]] = [[] for _ in range(RELEASE_THREADS)]
    statuses: dict[int, int] = {}
    lock = threading.Lock()
    pending = list(reversed(presigned))
    ran_out = [float("inf")]
    sent = [0]
    begin = time.perf_counter()
    measure_from = begin + RELEASE_WARMUP_SECONDS
    end = measure_from + RELEASE_SECONDS

    def worker(index: int) -> None:
        with httpx.Client(base_url=url, verify=context, timeout=30, trust_env=False) as client:
            while (now := time.perf_counter()) < end:
                with lock:
                    if not pending:
                        ran_out[0] = min(ran_out[0], now)
                        return
                    headers = pending.pop()
                    sent[0] += 1
                answer = client.post(path, headers=headers)
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
    seconds = min(end, ran_out[0]) - measure_from
    if seconds < RELEASE_SECONDS / 2:
        raise RuntimeError(f"secret release load: {len(presigned)} signed requests lasted only "
                           f"{seconds:.1f} s; raise RELEASE_PRESIGNED")  # fmt: skip
    return statuses.get(200, 0), flat, statuses, seconds, sent[0]


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
        node.agent.sign_as_node(client, enrolled)  # the node's calls, signed in its TPM
        membership.fetch_secret(client, enrolled.node_id, "bench-secret")
        if membership.unseal("bench-secret") != SECRET:
            raise RuntimeError("the released secret does not unseal to the stored one")

        def fetch_and_unseal() -> None:
            membership.fetch_secret(client, enrolled.node_id, "bench-secret")
            membership.unseal("bench-secret")

        node_side = median_seconds(fetch_and_unseal, max(3, rounds // 3))

    path = f"/v1/nodes/{enrolled.node_id}/secrets/bench-secret"
    presigned = presign(node, enrolled.node_id, path, RELEASE_PRESIGNED)
    pid = env["pid"]
    cpu_before = cpu_seconds(pid)
    released, latencies, statuses, seconds, sent = release_load(
        env["url"], env["ca"], path, presigned
    )
    verifier_cpu = cpu_seconds(pid) - cpu_before  # includes the short warm-up
    if set(statuses) != {200}:
        raise RuntimeError(f"secret release answers: {statuses}")
    latencies.sort()

    selection = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7,8,9,12")
    with Tpm(node.tpm.tcti) as tpm:
        pcrs = tpm.read_pcrs(selection)
        eks = {kind: read_endorsement(tpm, kind).public for kind in (KeyKind.ECC, KeyKind.RSA)}
    authorizer = membership.channel_key().public.name()
    seal = {
        kind: median_seconds(
            lambda ek=ek: seal_secret(ek, SECRET, selection, pcrs, authorizer_name=authorizer),
            rounds,
            20,
        )
        for kind, ek in eks.items()
    }
    node.tpm.stop()
    return [
        (f"secret releases/s ({RELEASE_THREADS} threads, HTTPS, one node, signed calls)",
         released / seconds, "rel/s"),
        ("  release latency p50", statistics.median(latencies) * 1e3, "ms"),
        ("  release latency p99",
         latencies[min(len(latencies) - 1, int(0.99 * len(latencies)))] * 1e3, "ms"),
        ("  verifier CPU per release", verifier_cpu / max(1, sent) * 1e3, "ms"),
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
