"""Node identity and every door of the verifier, attacked on real processes: a ``stockade
verifier serve`` over TLS (enrollment mode ``approve``, the default), software TPMs with genuine
EK certificates, nodes booted through the verified chain with ``stockade agent run`` (or the
agent's loop in a thread), and an attacker with httpx and the verifier's CA.

Each test shows one attack of the issue "Node identity rooted in the TPM, and every door of
the verifier authenticated", asserts that it is refused, and that nothing changed: node
states, results, the transparency log, certificates and secrets."""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import ssl
import sys
import threading
import time
import uuid
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stockade.agent.client import ChannelAuth
from stockade.agent.loop import Agent, AgentConfig
from stockade.agent.source import NodeSource
from stockade.boot import DevelopmentPlatform, boot_node, load_release
from stockade.boot.chain import event_log_path
from stockade.channel import sign_request
from stockade.cluster.secret_store import KeyEncryptionKey
from stockade.demo.cluster import (
    AgentProcess,
    OrgMaterial,
    VerifierProcess,
    policy_document,
    wait_for,
)
from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind
from stockade.tpm.device import Tpm
from stockade.tpm.ek import read_endorsement
from stockade.tpm.swtpm import EXECUTION_LOG_NAME, SoftwareTpm
from stockade.verifier.security_events import PER_KEY_PER_MINUTE
from support.cli import run_stockade

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "verifier"))
from verifier_support import DevAgent, b64

VALIDITY = 60  # seconds a result stays valid: trust never lapses within a test
SECRET_NAME = "db-password"
SHM = Path("/dev/shm")


# -- the stand: one verifier for the module, and what the tests read from it ------------------


@dataclass
class Stand:
    verifier: VerifierProcess
    org: OrgMaterial
    platform: DevelopmentPlatform
    make_tpm: Callable[[], SoftwareTpm]
    home: Path
    work: Path
    secret: bytes
    base_extra: tuple[str, ...]
    _reader: httpx.Client | None = None
    _lock: threading.Lock = field(default_factory=threading.Lock)

    # clients

    def client(self, headers: dict[str, str] | None = None) -> httpx.Client:
        """An HTTPS client that trusts only the verifier's CA: with no headers, the attacker
        (anyone who can reach the verifier) or a node's unauthenticated calls."""
        context = ssl.create_default_context(cafile=str(self.verifier.ca))
        return httpx.Client(
            base_url=self.verifier.url, verify=context, timeout=30, headers=headers or {}
        )

    def token(self, which: str) -> str:
        return (self.verifier.data_dir / f"{which}-token").read_text().strip()

    def bearer(self, which: str) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token(which)}"}

    def read(self, path: str, **params: Any) -> Any:
        """GET with the reader token; the JSON answer (asserting 200)."""
        with self._lock:
            if self._reader is None:
                self._reader = self.client(self.bearer("reader"))
            reader = self._reader
        response = reader.get(path, params=params)
        assert response.status_code == 200, (path, response.text)
        return response.json()

    def operator(self, method: str, path: str, body: Any = None) -> Any:
        with self.client(self.bearer("operator")) as client:
            response = client.request(method, path, json=body)
        assert response.status_code in (200, 201), (path, response.text)
        return response.json()

    def restarted(self, mode: str, extra: tuple[str, ...] = ()) -> None:
        """Stop the verifier and start it again with another enrollment mode."""
        with self._lock:
            if self._reader is not None:
                self._reader.close()
                self._reader = None
        self.verifier.stop()
        self.verifier.enrollment_mode = mode
        self.verifier.extra = (*self.base_extra, *extra)
        self.verifier.start()

    # the verifier's state

    def nodes(self) -> list[dict[str, Any]]:
        return list(self.read("/v1/nodes")["nodes"])

    def node(self, node_id: str) -> dict[str, Any]:
        return dict(self.read(f"/v1/nodes/{node_id}"))

    def named(self, name: str) -> list[dict[str, Any]]:
        return [node for node in self.nodes() if node["name"] == name]

    def results(self, node_id: str) -> list[dict[str, Any]]:
        return list(self.read(f"/v1/nodes/{node_id}/results", limit=1000)["results"])

    def log_size(self) -> int:
        """The transparency log's size, from its public signed checkpoint."""
        with self.client() as anyone:
            response = anyone.get("/v1/log/checkpoint", params={"format": "json"})
        assert response.status_code == 200, response.text
        return int(response.json()["size"])

    def log_entries(self, start: int) -> list[dict[str, Any]]:
        entries = self.read("/v1/log/entries", start=start)["entries"]
        return [json.loads(base64.b64decode(entry["entry"])) for entry in entries]

    def security_events(self, after: int = 0) -> list[dict[str, Any]]:
        rows: list[dict[str, Any]] = []
        while True:
            page = self.read("/v1/security-events", after=after, limit=1000)["security_events"]
            rows += page
            if len(page) < 1000:
                return rows
            after = page[-1]["id"]

    def last_security_event(self) -> int:
        rows = self.security_events()
        return rows[-1]["id"] if rows else 0

    def events(self) -> list[dict[str, Any]]:
        """Every stored state transition (``GET /v1/events``, not following)."""
        with self._lock:
            if self._reader is None:
                self._reader = self.client(self.bearer("reader"))
            reader = self._reader
        response = reader.get("/v1/events", params={"follow": "false"})
        assert response.status_code == 200, response.text
        return [
            json.loads(line[5:].strip())
            for line in response.text.splitlines()
            if line.startswith("data:")
        ]

    # operator acts, through the CLI as an operator would

    def cli(self, *args: str) -> Any:
        env = {**os.environ, "STOCKADE_OPERATOR_TOKEN": self.token("operator")}
        result = run_stockade(
            *args, "--verifier", self.verifier.url, "--ca", self.verifier.ca, "--format", "json",
            env=env, timeout=120,
        )  # fmt: skip
        assert result.returncode == 0, result.stderr
        return json.loads(result.stdout)

    # nodes

    def booted_tpm(self) -> SoftwareTpm:
        """A fresh swtpm (its own EK) that booted the organization's signed release."""
        tpm = self.make_tpm()
        boot_node(tpm, self.platform, load_release(self.org.release_dir)).check()
        return tpm

    def agent_process(self, name: str, tpm: SoftwareTpm, label: str, *extra: str) -> AgentProcess:
        return AgentProcess(
            name, tpm.name, self.verifier, self.home, self.work / "agents" / label,
            interval=0.5, jitter=0.1, extra=extra,
        )  # fmt: skip

    def wait_named(self, name: str, state: str, timeout: float = 60) -> dict[str, Any]:
        def found() -> dict[str, Any] | None:
            named = self.named(name)
            return named[0] if len(named) == 1 and named[0]["state"] == state else None

        return dict(wait_for(found, timeout, f"node {name} {state}", interval=0.2))

    def approve(self, node_id: str) -> None:
        assert self.operator("POST", f"/v1/nodes/{node_id}/approve")["state"] == "enrolled"


def _refused(response: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert response.status_code == status, (response.status_code, response.text)
    body = response.json()
    assert body["error"] == code, body
    return dict(body)


def _nonce(client: httpx.Client, agent: DevAgent) -> tuple[bytes, str]:
    issued = client.post(f"/v1/nodes/{agent.node_id}/nonces", auth=agent.auth)
    assert issued.status_code == 201, issued.text
    return base64.b64decode(issued.json()["nonce"]), issued.json()["pcr_selection"]


def _booted_evidence(agent: DevAgent, nonce: bytes, selection: str) -> dict[str, Any]:
    """What an agent sends: a quote of the selected PCRs and the node's boot event log."""
    body = agent.evidence(nonce, selection)
    body["event_log"] = b64(event_log_path(agent.tpm).read_bytes())
    return body


def _entries_are_results_of(stand: Stand, start: int, node_ids: set[str]) -> list[dict[str, Any]]:
    """Every log entry from ``start`` on is an attestation result stored for one of
    ``node_ids``: nothing else was logged."""
    entries = stand.log_entries(start)
    stored = {r["result_id"] for node_id in node_ids for r in stand.results(node_id)}
    for entry in entries:
        assert entry["type"] == "attestation-result", entry
        assert entry["node_id"] in node_ids, entry
        assert entry["result_id"] in stored, entry
    return entries


@pytest.fixture(scope="module")
def stand(
    org: OrgMaterial,
    make_module_tpm: Any,
    tmp_path_factory: pytest.TempPathFactory,
    ek_ca_file: Path,
    database_url: str | None,
    stockade_home: Path,
) -> Iterator[Stand]:
    work = tmp_path_factory.mktemp("identity")
    policy = work / "policy.json"
    policy.write_text(json.dumps(policy_document(org, validity_seconds=VALIDITY)))
    kek_file = work / "kek"
    kek_file.write_text(KeyEncryptionKey.generate().to_text() + "\n")
    kek_file.chmod(0o600)
    # Every test agent enrolls from 127.0.0.1, and refused ones keep trying: one address
    # stands for a whole fleet here, as behind a NAT.
    base_extra = ("--kek-file", str(kek_file), "--enrollment-rate", "1200")
    verifier = VerifierProcess(
        work / "verifier",
        ek_ca_file,
        policy,
        database=database_url,
        enrollment_mode="approve",
        extra=base_extra,
    )
    verifier.start()
    try:
        stand = Stand(
            verifier,
            org,
            DevelopmentPlatform.load(org.platform_dir),
            make_module_tpm,
            stockade_home,
            work,
            b"s3cret-" + os.urandom(12).hex().encode(),
            base_extra,
        )
        stand.operator("PUT", f"/v1/secrets/{SECRET_NAME}", {"value": b64(stand.secret)})
        yield stand
    finally:
        verifier.stop()


# -- 1. name and id takeover ------------------------------------------------------------------


def _certificate_names(path: Path) -> tuple[str, list[str], bytes]:
    certificate = x509.load_pem_x509_certificate(path.read_bytes())
    san = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    key = certificate.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    return (
        certificate.subject.rfc4514_string(),
        [str(uri) for uri in san.get_values_for_type(x509.UniformResourceIdentifier)],
        key,
    )


def test_a_second_tpm_cannot_take_a_nodes_name_or_id(stand: Stand) -> None:
    # Node A: booted, `stockade agent run --certificates --secret`, approved by the operator.
    tpm_a = stand.booted_tpm()
    secrets_dir = SHM / f"stockade-e2e-identity-{os.getpid()}" / "node-a"
    state_a = stand.work / "agents" / "node-a"
    agent_a = stand.agent_process(
        "node-a", tpm_a, "node-a",
        "--certificates", "--secret", SECRET_NAME, "--secrets-dir", str(secrets_dir),
    )  # fmt: skip
    agent_a.start()
    try:
        node_a = stand.wait_named("node-a", "pending")
        a_id = node_a["node_id"]
        stand.approve(a_id)
        stand.operator("POST", f"/v1/secrets/{SECRET_NAME}/grants", {"selector": "node:node-a"})
        certificate, delivered = state_a / "pki" / "node.pem", secrets_dir / SECRET_NAME
        wait_for(
            lambda: certificate.exists() and delivered.exists(), 60, "node-a's cert and secret"
        )
        stand.wait_named("node-a", "trusted")
        subject, sans, key = _certificate_names(certificate)
        assert subject == "CN=system:node:node-a,O=system:nodes"
        assert sans == [f"spiffe://stockade/node/{a_id}"]
        log_before = stand.log_size()
        events_before = stand.last_security_event()

        # B: its own swtpm with a genuine EK certificate, never booted, on the network.
        b = DevAgent.create(stand.make_tpm())
        with stand.client() as attacker:
            taken = attacker.post("/v1/enrollments", json=b.enrollment_request("node-a"))
            _refused(taken, 409, "name")
            # A's node id as a name, in any spelling uuid.UUID reads: never a name.
            for spelling in (a_id, a_id.upper(), a_id.replace("-", ""), f"{{{a_id}}}"):
                as_id = attacker.post("/v1/enrollments", json=b.enrollment_request(spelling))
                _refused(as_id, 400, "name")
            # Under its own name B is a new machine, waiting for the operator.
            b_id = b.enroll(attacker, "node-b", expect_state="pending")
            # Signed with B's own (TPM-resident, AK-certified) channel key, claiming A's id:
            # no nonce, no certificate, no secret of A's.
            as_a = b.auth_as(a_id)
            _refused(attacker.post(f"/v1/nodes/{a_id}/nonces", auth=as_a), 401, "channel")
            certify = {"nonce": b64(os.urandom(32)), "key_public": b64(b.ak.public.marshal_tpm2b()),
                       "certify_info": b64(b"x"), "signature": b64(b"x")}  # fmt: skip
            _refused(
                attacker.post(f"/v1/nodes/{a_id}/certificates", json=certify, auth=as_a),
                401,
                "channel",
            )
            # (A's secret asked for in A's name: see the test after this one.)
            # As itself: pending, so nothing at all.
            _refused(attacker.post(f"/v1/nodes/{b_id}/nonces", auth=b.auth), 403, "pending")
            own_secret = attacker.post(f"/v1/nodes/{b_id}/secrets/{SECRET_NAME}", auth=b.auth)
            assert own_secret.status_code == 403, own_secret.text

        # Recorded: the attempt on A's name, naming A's node.
        recorded = [e for e in stand.security_events(events_before) if e["kind"] == "name-taken"]
        assert len(recorded) == 1
        assert recorded[0]["node_id"] == a_id and recorded[0]["name"] == "node-a"
        # The operator sees the same with the CLI.
        listed = stand.cli("nodes", "security-events", "--after", str(events_before))
        assert recorded[0] in listed["security_events"]
        # A is still A: same id, same EK, trusted; the only node named node-a.
        after = stand.named("node-a")
        assert [n["node_id"] for n in after] == [a_id]
        assert after[0]["ek_fingerprint"] == node_a["ek_fingerprint"]
        assert stand.node(a_id)["state"] == "trusted"
        assert stand.node(b_id)["state"] == "pending"
        assert stand.node(b_id)["ek_fingerprint"] != node_a["ek_fingerprint"]
        # Its agent kept attesting; every new log entry is one of A's own results.
        wait_for(lambda: stand.log_size() > log_before, 30, "A's next result")
        _entries_are_results_of(stand, log_before, {a_id})
        # A's certificate still names A (and A's TPM key), its secret is the stored one.
        assert _certificate_names(certificate) == (subject, sans, key)
        assert delivered.read_bytes() == stand.secret
        assert b.node_id == b_id and b_id != a_id
    finally:
        agent_a.stop()
        shutil.rmtree(secrets_dir.parent, ignore_errors=True)


def _secret_releases(stand: Stand) -> int:
    """Rows in ``secret_releases`` (no API reads them: the audit table itself)."""
    from sqlalchemy import create_engine, func, select

    from stockade.verifier.models import SecretRelease

    url = stand.verifier.database or f"sqlite:///{stand.verifier.data_dir / 'verifier.db'}"
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return int(
                connection.execute(select(func.count()).select_from(SecretRelease)).scalar() or 0
            )
    finally:
        engine.dispose()


def _trusted_dev_node(stand: Stand, client: httpx.Client, name: str) -> DevAgent:
    """A booted TPM enrolled (and approved) under ``name``, its first evidence affirming."""
    node = DevAgent.create(stand.booted_tpm())
    node_id = node.enroll(client, name, expect_state="pending")
    stand.approve(node_id)
    nonce, selection = _nonce(client, node)
    answer = client.post(
        f"/v1/nodes/{node_id}/evidence", json=_booted_evidence(node, nonce, selection),
        auth=node.auth,
    )  # fmt: skip
    assert answer.status_code == 200, answer.text
    assert answer.json()["status"] == "affirming", answer.json()["reasons"]
    return node


def test_a_nodes_secret_is_released_only_over_its_own_channel(stand: Stand) -> None:
    with stand.client() as anyone:
        owner = _trusted_dev_node(stand, anyone, "secret-owner")
        stand.operator(
            "POST", f"/v1/secrets/{SECRET_NAME}/grants", {"selector": "node:secret-owner"}
        )
        other = DevAgent.create(stand.make_tpm())
        other.enroll(anyone, "secret-other", expect_state="pending")
        releases = _secret_releases(stand)
        path = f"/v1/nodes/{owner.node_id}/secrets/{SECRET_NAME}"
        unsigned = anyone.post(path)
        forged = anyone.post(path, auth=other.auth_as(owner.node_id))
        assert (unsigned.status_code, forged.status_code) == (401, 401), (
            unsigned.text[:200], forged.text[:200],
        )  # fmt: skip
        assert unsigned.json()["error"] == forged.json()["error"] == "channel"
        assert _secret_releases(stand) == releases
        # Its own channel still gets it.
        assert anyone.post(path, auth=owner.auth).status_code == 200
        assert _secret_releases(stand) == releases + 1


# -- 2. revocation bypass ---------------------------------------------------------------------


def test_a_revoked_tpm_cannot_come_back_with_its_ek_reencoded(stand: Stand) -> None:
    with stand.client() as anyone:
        stolen = DevAgent.create(stand.make_tpm())
        node_id = stolen.enroll(anyone, "node-r", expect_state="pending")
        stand.approve(node_id)
        revoked = stand.cli("nodes", "revoke", "node-r")
        assert revoked["state"] == "revoked"
        nodes_before = {n["node_id"] for n in stand.nodes()}
        log_before = stand.log_size()

        ek = TpmPublic.unmarshal_tpm2b(stolen.ek_public)
        assert ek.parameters.exponent == 0  # the TCG template's spelling of 65537
        variants = {
            "exponent 65537": replace(ek, parameters=replace(ek.parameters, exponent=65537)),
            "another authPolicy": replace(ek, auth_policy=hashlib.sha256(b"other").digest()),
            "both": replace(
                ek,
                auth_policy=b"",
                parameters=replace(ek.parameters, exponent=65537),
            ),
        }
        for what, variant in variants.items():
            # The same key, so the same EK certificate still certifies it.
            assert variant.public_key().public_numbers() == ek.public_key().public_numbers()
            for name in ("node-r", "node-r-again"):
                request = stolen.enrollment_request(name)
                request["ek_public"] = b64(variant.marshal_tpm2b())
                response = anyone.post("/v1/enrollments", json=request)
                assert response.status_code == 403, (what, name, response.text)
                assert "template" in response.json()["detail"], response.json()
        # Spelt as its certificate says, it is the revoked node, under any name.
        for name in ("node-r", "node-r-again"):
            again = anyone.post("/v1/enrollments", json=stolen.enrollment_request(name))
            _refused(again, 403, "revoked")
        # Its old channel key is no way back either.
        _refused(anyone.post(f"/v1/nodes/{node_id}/nonces", auth=stolen.auth), 403, "revoked")

    assert {n["node_id"] for n in stand.nodes()} == nodes_before  # no new node
    assert stand.node(node_id)["state"] == "revoked"
    assert stand.log_size() == log_before


# -- 3. anyone who can reach the verifier can fail a node -------------------------------------


@dataclass(frozen=True)
class _Captured:
    """A signed request as it left the agent (what a logging proxy or a capture would hold)."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes


class _CapturingAuth(httpx.Auth):
    requires_request_body = True

    def __init__(self, inner: ChannelAuth, sink: list[_Captured]) -> None:
        self.inner = inner
        self.sink = sink

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
        signed = next(self.inner.auth_flow(request))
        wanted = ("content-type", "content-digest", "signature-input", "signature")
        self.sink.append(
            _Captured(
                signed.method,
                signed.url.raw_path.decode(),
                {name: signed.headers[name] for name in wanted if name in signed.headers},
                signed.content,
            )
        )
        yield signed


@dataclass
class _CapturedAgent(Agent):
    """The agent's own loop; every signed request it sends is also kept."""

    sent: list[_Captured] = field(default_factory=list)

    def sign_as_node(self, client: Any, enrolled: Any) -> None:
        super().sign_as_node(client, enrolled)
        # The client keeps the node's auth privately; wrapping it changes nothing it signs.
        client._node_auth = _CapturingAuth(client._node_auth, self.sent)


@contextlib.contextmanager
def _running(agent: Agent) -> Iterator[threading.Thread]:
    thread = threading.Thread(target=agent.run, name="victim-agent", daemon=True)
    thread.start()
    try:
        yield thread
    finally:
        agent.stop.set()
        thread.join(30)
        assert not thread.is_alive()


def _replay(client: httpx.Client, captured: _Captured) -> httpx.Response:
    return client.request(
        captured.method, captured.path, content=captured.body, headers=captured.headers
    )


def test_anyone_on_the_network_cannot_fail_or_flood_a_node(stand: Stand) -> None:
    tpm = stand.booted_tpm()
    lines: list[str] = []
    victim = _CapturedAgent(
        AgentConfig(
            verifier=stand.verifier.url,
            ca=stand.verifier.ca,
            name="victim",
            source=NodeSource(
                tpm.tcti,
                event_log_path(tpm),
                f"development TPM {tpm.name}",
                tpm.instance_dir / EXECUTION_LOG_NAME,
            ),
            state_dir=stand.work / "agents" / "victim",
            interval=0.5,
            jitter=0.1,
            max_backoff=1.0,
        ),
        log=lines.append,
    )
    with stand.client() as attacker, _running(victim):
        victim_id = stand.wait_named("victim", "pending")["node_id"]
        stand.approve(victim_id)
        stand.wait_named("victim", "trusted")
        # Another node's TPM: its channel key is real, certified by its own AK.
        mallory = DevAgent.create(stand.make_tpm())
        mallory.enroll(attacker, "mallory", expect_state="pending")
        wait_for(lambda: any(c.path.endswith("/evidence") for c in victim.sent), 30, "a capture")
        captured_nonce = next(c for c in victim.sent if c.path.endswith("/nonces"))
        captured_evidence = next(c for c in victim.sent if c.path.endswith("/evidence"))

        results_before = {r["result_id"] for r in stand.results(victim_id)}
        log_before = stand.log_size()
        events_before = {e["id"] for e in stand.events()}
        security_before = stand.last_security_event()

        junk = {"nonce": b64(os.urandom(32)), "quote": b64(os.urandom(120)),
                "signature": b64(os.urandom(72)), "pcrs": {"sha256": {"0": "00" * 32}},
                "event_log": ""}  # fmt: skip
        evidence_path = f"/v1/nodes/{victim_id}/evidence"

        def random_signature() -> dict[str, str]:
            body = json.dumps(junk).encode()
            headers = sign_request(
                "POST", evidence_path, "", body, keyid=victim_id, created=int(time.time()),
                sign_digest=lambda _digest: os.urandom(64),
            )  # fmt: skip
            return {**headers, "content-type": "application/json"}

        attempts: list[tuple[str, Callable[[], httpx.Response], int, str]] = [
            ("list nodes", lambda: attacker.get("/v1/nodes"), 401, "read-token"),
            ("read results", lambda: attacker.get(f"/v1/nodes/{victim_id}/results"), 401,
             "read-token"),
            ("nonce", lambda: attacker.post(f"/v1/nodes/{victim_id}/nonces"), 401, "channel"),
            ("junk evidence", lambda: attacker.post(evidence_path, json=junk), 401, "channel"),
            ("random signature",
             lambda: attacker.post(evidence_path, content=json.dumps(junk).encode(),
                                   headers=random_signature()), 401, "channel"),
            ("malformed signature",
             lambda: attacker.post(evidence_path, json=junk,
                                   headers={"Signature-Input": "stockade=()", "Signature": "x",
                                            "Content-Digest": "sha-256=:x:"}), 401, "channel"),
            ("unknown node",
             lambda: attacker.post(f"/v1/nodes/{uuid.uuid4()}/evidence", json=junk), 401,
             "channel-unknown"),
            ("replayed nonce request", lambda: _replay(attacker, captured_nonce), 401, "channel"),
            ("replayed evidence", lambda: _replay(attacker, captured_evidence), 401, "channel"),
            ("certificate", lambda: attacker.post(f"/v1/nodes/{victim_id}/certificates",
                                                  json={}), 401, "channel"),
            ("revoke", lambda: attacker.post(f"/v1/nodes/{victim_id}/revoke"), 401,
             "operator-token"),
        ]  # fmt: skip
        forged = (
            "forged by mallory's channel key",
            lambda: attacker.post(f"/v1/nodes/{victim_id}/nonces", auth=mallory.auth_as(victim_id)),
            401,
            "channel",
        )

        states: list[str] = []
        watching = threading.Event()

        def watch() -> None:
            with stand.client(stand.bearer("reader")) as reader:
                while not watching.is_set():
                    states.append(reader.get(f"/v1/nodes/{victim_id}").json()["state"])
                    time.sleep(0.1)

        watcher = threading.Thread(target=watch, daemon=True)
        watcher.start()
        sent: dict[str, int] = {}
        started = time.monotonic()
        try:
            round_ = 0
            while (time.monotonic() - started < 4 or sum(sent.values()) < 300) and (
                time.monotonic() - started < 30
            ):
                # Forging costs the attacker a TPM signature: every tenth round.
                this_round = [*attempts, forged] if round_ % 10 == 0 else attempts
                for what, send, status, code in this_round:
                    response = send()
                    assert response.status_code == status, (what, response.text)
                    assert response.json()["error"] == code, (what, response.json())
                    if what.startswith("replayed"):
                        assert "replay" in response.json()["detail"], response.json()
                    sent[what] = sent.get(what, 0) + 1
                round_ += 1
        finally:
            watching.set()
            watcher.join(10)
        posts = sum(sent.values())
        assert posts >= 200, sent
        # The victim's own agent kept attesting through the flood.
        wait_for(
            lambda: len({r["result_id"] for r in stand.results(victim_id)} - results_before) >= 2,
            30, "the victim's next results",
        )  # fmt: skip

    # Trusted the whole time; no transition, let alone to failed.
    assert states and set(states) == {"trusted"}, states
    assert stand.node(victim_id)["state"] == "trusted"
    new_events = [e for e in stand.events() if e["id"] not in events_before]
    assert [e for e in new_events if e["node_id"] == victim_id] == []
    assert not any(e["to"] == "failed" for e in new_events)
    assert not any("status=contraindicated" in line for line in lines)
    # The log grew by the victim's own results only.
    results = stand.results(victim_id)
    assert all(r["status"] == "affirming" for r in results)
    # Entries are served up to the newest signed checkpoint, which follows a commit closely:
    # the victim's agent is still attesting, so let the log catch up with what was read.
    new_results = {r["result_id"] for r in results} - results_before
    entries = wait_for(
        lambda: (e := _entries_are_results_of(stand, log_before, {victim_id}))
        and len(e) >= len(new_results) and e,
        10, "the log to hold every result",
    )  # fmt: skip
    assert new_results <= {entry["result_id"] for entry in entries}
    # Hundreds of refusals, a handful of security events: rate-limited per kind and node
    # (PER_KEY_PER_MINUTE rows a minute; beyond that they are counted, not stored).
    rows = stand.security_events(security_before)
    kinds: dict[str, int] = {}
    for row in rows:
        kinds[row["kind"]] = kinds.get(row["kind"], 0) + 1
        assert row["count"] >= 1
    assert {"channel-missing", "channel-signature", "channel-replay", "channel-unknown"} <= set(
        kinds
    ), kinds
    assert all(n <= 2 * PER_KEY_PER_MINUTE for n in kinds.values()), kinds
    assert len(rows) <= 40 and len(rows) * 5 < posts, (len(rows), posts, kinds)
    assert sum(row["count"] for row in rows) <= posts


def test_a_captured_request_replayed_after_a_verifier_restart_is_refused(stand: Stand) -> None:
    with stand.client() as anyone:
        node = DevAgent.create(stand.make_tpm())
        node_id = node.enroll(anyone, "node-restart", expect_state="pending")
        stand.approve(node_id)
        path = f"/v1/nodes/{node_id}/nonces"
        signed = next(node.auth.auth_flow(anyone.build_request("POST", path)))
        assert anyone.send(signed).status_code == 201
        captured = _Captured("POST", path, dict(signed.headers), b"")
        _refused(_replay(anyone, captured), 401, "channel")
    stand.restarted("approve")
    with stand.client() as anyone:
        replayed = _replay(anyone, captured)
    _refused(replayed, 401, "channel")


# -- 4. phantom enrollment --------------------------------------------------------------------


def test_a_tpm_that_never_booted_waits_for_the_operator(stand: Stand) -> None:
    with stand.client() as anyone:
        holder = DevAgent.create(stand.make_tpm())
        holder_id = holder.enroll(anyone, "node-p", expect_state="pending")
        stand.approve(holder_id)
        log_before = stand.log_size()
        # A genuine EK certificate on a TPM that never booted anything.
        phantom = DevAgent.create(stand.make_tpm())
        _refused(anyone.post("/v1/enrollments", json=phantom.enrollment_request("node-p")), 409,
                 "name")  # fmt: skip
        phantom_id = phantom.enroll(anyone, "node-phantom", expect_state="pending")
        assert stand.node(phantom_id)["state"] == "pending"
        # Waiting: no nonce, so no evidence, no certificate, no secret.
        _refused(anyone.post(f"/v1/nodes/{phantom_id}/nonces", auth=phantom.auth), 403, "pending")
        # Nobody but the operator approves: not the node, not anyone, not a reader.
        approve = f"/v1/nodes/{phantom_id}/approve"
        _refused(anyone.post(approve), 401, "operator-token")
        with stand.client(stand.bearer("reader")) as reader:
            assert reader.post(approve).status_code in (401, 403)
        assert anyone.post(approve, auth=phantom.auth).status_code == 401
        assert stand.node(phantom_id)["state"] == "pending"
        assert stand.results(phantom_id) == []
        assert stand.log_size() == log_before
        assert stand.node(holder_id)["ek_fingerprint"] != stand.node(phantom_id)["ek_fingerprint"]

        approved = stand.cli("nodes", "approve", "node-phantom")
        assert approved["state"] == "enrolled"
        # Now it attests, and what it attests is a TPM that booted nothing the policy knows.
        nonce, selection = _nonce(anyone, phantom)
        answer = anyone.post(
            f"/v1/nodes/{phantom_id}/evidence", json=phantom.evidence(nonce, selection),
            auth=phantom.auth,
        )  # fmt: skip
        assert answer.status_code == 200, answer.text
        assert answer.json()["status"] == "contraindicated"
        assert stand.node(phantom_id)["state"] == "failed"
        # The operator's approval (an operator-action entry), then the result.
        assert stand.log_size() == log_before + 2
    events = [e for e in stand.events() if e["node_id"] == phantom_id]
    assert [(e["from"], e["to"]) for e in events] == [
        (None, "pending"), ("pending", "enrolled"), ("enrolled", "failed"),
    ]  # fmt: skip
    assert events[1]["actor"] == "operator"


def test_allowlist_mode_admits_only_the_listed_ek(stand: Stand) -> None:
    listed = DevAgent.create(stand.make_tpm())
    unlisted = DevAgent.create(stand.make_tpm())
    allowlist = stand.work / "ek-allowlist"
    allowlist.write_text(
        "# sha256 of the EK certificate (DER)\n"
        f"{hashlib.sha256(listed.ek_certificate).hexdigest()}\n"
    )
    nodes_before = {n["node_id"] for n in stand.nodes()}
    stand.restarted("allowlist", ("--ek-allowlist", str(allowlist)))
    try:
        with stand.client() as anyone:
            for name in ("node-unlisted", "node-listed"):
                refused = anyone.post("/v1/enrollments", json=unlisted.enrollment_request(name))
                _refused(refused, 403, "allowlist")
            listed_id = listed.enroll(anyone, "node-listed", expect_state="enrolled")
            nonce, _ = _nonce(anyone, listed)
            assert len(nonce) == 32
        assert {n["node_id"] for n in stand.nodes()} == nodes_before | {listed_id}
    finally:
        stand.restarted("approve")


# -- 5. board swap ----------------------------------------------------------------------------


def test_a_board_swap_moves_the_node_to_the_new_tpm_only(stand: Stand) -> None:
    old_tpm, new_tpm = stand.booted_tpm(), stand.booted_tpm()
    with Tpm(new_tpm.tcti) as device:
        new_certificate = read_endorsement(device, KeyKind.ECC).certificate
    assert new_certificate is not None
    old_agent = stand.agent_process("node-s", old_tpm, "node-s-old")
    new_agent = stand.agent_process("node-s", new_tpm, "node-s-new")
    old_agent.start()
    try:
        node_id = stand.wait_named("node-s", "pending")["node_id"]
        stand.approve(node_id)
        before = stand.wait_named("node-s", "trusted")
        results_before = {r["result_id"] for r in stand.results(node_id)}
        events_before = [e for e in stand.events() if e["node_id"] == node_id]

        # The operator opens the name to the new board's EK (its certificate's sha256).
        opened = stand.cli(
            "nodes", "replace", "node-s", "--ek", hashlib.sha256(new_certificate).hexdigest()
        )
        assert opened["node_id"] == node_id and opened["replace_until"]
        # While it is open, another TPM still cannot take the name.
        with stand.client() as anyone:
            intruder = DevAgent.create(stand.make_tpm())
            taken = anyone.post("/v1/enrollments", json=intruder.enrollment_request("node-s"))
            _refused(taken, 409, "name")

        new_agent.start()
        swapped = wait_for(
            lambda: (n := stand.node(node_id))["ek_fingerprint"] != before["ek_fingerprint"]
            and n["state"] == "trusted" and n,
            60, "node-s trusted on the new board",
        )  # fmt: skip
        assert swapped["replace_until"] is None
        # The old board's agent is refused from then on (its channel key is not node-s's).
        refusals = wait_for(
            lambda: [line for line in old_agent.lines() if "401 channel" in line],
            30, "the old agent refused",
        )  # fmt: skip
        old_lines = old_agent.lines()
        first = old_lines.index(refusals[0])
        assert not any("stockade.agent: attestation " in line for line in old_lines[first:]), (
            "\n".join(old_lines)
        )
        time.sleep(1.5)  # it keeps trying, and keeps being refused
        assert stand.node(node_id)["state"] == "trusted"
    finally:
        old_agent.stop()
        new_agent.stop()

    # One node-s, the same id, its history kept, the swap recorded.
    assert [n["node_id"] for n in stand.named("node-s")] == [node_id]
    assert results_before <= {r["result_id"] for r in stand.results(node_id)}
    events = [e for e in stand.events() if e["node_id"] == node_id]
    assert events[: len(events_before)] == events_before
    assert any(
        e["reason"].startswith(f"replaced: EK {before['ek_fingerprint']} -> ") for e in events
    ), events
    refused = [e for e in stand.security_events() if e["node_id"] == node_id]
    assert "channel-signature" in {e["kind"] for e in refused}
    # The old TPM, its agent stopped, cannot enroll under the name again.
    with stand.client() as anyone:
        old = DevAgent.create(old_tpm)
        _refused(anyone.post("/v1/enrollments", json=old.enrollment_request("node-s")), 409, "name")
    assert stand.node(node_id)["ek_fingerprint"] == swapped["ek_fingerprint"]


# -- 6. evidence that does not verify ---------------------------------------------------------


def test_evidence_that_does_not_verify_changes_nothing(stand: Stand) -> None:
    with stand.client() as channel:
        node = _trusted_dev_node(stand, channel, "node-e")
        other = DevAgent.create(stand.booted_tpm())
        node_id = str(node.node_id)
        before = stand.node(node_id)
        results_before = stand.results(node_id)
        log_before = stand.log_size()
        events_before = [e for e in stand.events() if e["node_id"] == node_id]
        security_before = stand.last_security_event()
        path = f"/v1/nodes/{node_id}/evidence"

        def submit(body_for: Callable[[bytes, str], dict[str, Any]]) -> httpx.Response:
            nonce, selection = _nonce(channel, node)
            return channel.post(path, json=body_for(nonce, selection), auth=node.auth)

        # Over the node's own authenticated channel: another TPM's AK quoting the same boot.
        by_other = submit(lambda n, s: _booted_evidence(other, n, s))
        _refused(by_other, 403, "evidence")
        # Garbage in place of the quote, and of the signature.
        garbage = submit(
            lambda n, s: {**_booted_evidence(node, n, s), "quote": b64(os.urandom(145))}
        )
        _refused(garbage, 403, "evidence")
        bad_signature = submit(
            lambda n, s: {**_booted_evidence(node, n, s), "signature": b64(os.urandom(72))}
        )
        _refused(bad_signature, 403, "evidence")
        # The node's own, valid, earlier quote over an earlier nonce.
        old_nonce, selection = _nonce(channel, node)
        old_quote = _booted_evidence(node, old_nonce, selection)
        replayed = submit(lambda n, s: {**old_quote, "nonce": b64(n)})
        _refused(replayed, 403, "evidence")

    after = stand.node(node_id)
    for key in ("state", "latest_result_id", "trusted_until", "clock", "ek_fingerprint"):
        assert after[key] == before[key], key
    assert after["state"] == "trusted"
    assert stand.results(node_id) == results_before
    assert stand.log_size() == log_before
    assert [e for e in stand.events() if e["node_id"] == node_id] == events_before
    rows = [e for e in stand.security_events(security_before) if e["node_id"] == node_id]
    assert {row["kind"] for row in rows} == {"evidence-unverified"}
    assert 1 <= len(rows) <= PER_KEY_PER_MINUTE
