"""The verifier's side of provable container execution, with a real software TPM: records
extended into PCR 13 and appended to a real execution log file, the log sent with quotes,
appraised incrementally, stored with the quote that proved them, logged in the transparency
log, audited offline; and every way of rewriting the log caught and named."""

from __future__ import annotations

import base64
import dataclasses
import hashlib
from pathlib import Path

import pytest
from verifier_support import (
    DevAgent,
    QuoteOnlyAppraiser,
    QuotePolicy,
    b64,
    operator_headers,
    read,
)

from stockade.agent.execution_log import ExecutionLog
from stockade.agent.loop import Agent, AgentConfig
from stockade.agent.oci_hook import _digests, _resolve_pending
from stockade.agent.source import NodeSource
from stockade.agent.state import Enrolled
from stockade.appraisal.execution_proof import ExecutionProofInvalid, verify_execution_proof
from stockade.appraisal.executions import Forbidden
from stockade.evidence.cel import marshal_record, parse_cel
from stockade.evidence.execution import (
    ABANDONED_CONTENT_TYPE,
    CONTENT_TYPE,
    EXECUTION_PCR,
    PENDING_CONTENT_TYPE,
    ContainerStart,
    Mount,
    encode_record,
)
from stockade.evidence.pcr_selection import PcrSelection
from stockade.tpm.device import Tpm
from stockade.verifier_client import Nonce

SELECTION = "sha256:0,1,2,3,4,5,6,7,13"
BAD_DIGEST = "sha256:" + "66" * 32


@dataclasses.dataclass(frozen=True)
class ExecutionPolicy(QuotePolicy):
    executions_quoted: bool = True
    forbidden: Forbidden = dataclasses.field(default_factory=Forbidden)


class ExecutionAppraiser(QuoteOnlyAppraiser):
    def parse_policy(self, document, version):
        base = super().parse_policy(document, version)
        forbid = document.get("executions", {}).get("forbid", {})
        return ExecutionPolicy(
            base.ref,
            base.pcrs,
            base.result_validity_seconds,
            forbidden=Forbidden(
                frozenset(forbid.get("digests", [])), frozenset(forbid.get("references", []))
            ),
        )


def policy(**forbid) -> dict:
    return {
        "id": "exec",
        "pcrs": SELECTION,
        "result_validity_seconds": 120,
        "executions": {"forbid": forbid},
    }


@pytest.fixture
def api(verifier_config):
    from fastapi.testclient import TestClient

    from stockade.verifier import create_app

    clients = []

    def make(document=None):
        client = TestClient(
            create_app(verifier_config, appraiser=ExecutionAppraiser()),
            raise_server_exceptions=False,
        )
        client.__enter__()
        clients.append(client)
        document = document or policy()
        stored = client.put(
            f"/v1/policies/{document['id']}",
            json=document,
            headers=operator_headers(verifier_config.data_dir),
        )
        assert stored.status_code == 200
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


def start(n: int, image: str = "registry.example/org/app", digest: str | None = None):
    return ContainerStart(
        container_id=f"c{n}",
        image_reference=image,
        manifest_digest=digest or "sha256:" + hashlib.sha256(image.encode()).hexdigest(),
        config_digest="sha256:" + "11" * 32,
        args=("/app", f"--n={n}"),
        env_names=("PATH", "TOKEN"),
        mounts=(Mount("/data", "/srv/data", "bind", ("rbind", "ro")),),
        time="2026-11-29T01:00:00Z",
    )


class Node:
    """A development node: its TPM, AK, and an execution log as the OCI hook writes it."""

    def __init__(self, agent: DevAgent, path: Path) -> None:
        self.agent = agent
        self.log = ExecutionLog(path)

    def run(self, record: ContainerStart) -> None:
        """As the hook does: resolve a pending record left by a crash, append the record as
        pending, extend, mark it done."""
        content = encode_record(record)
        with self.log.locked(), Tpm(self.agent.tpm.tcti) as tpm:
            banks = tpm.active_banks()
            _resolve_pending(self.log, tpm, banks)
            recnum = self.log.append_pending(content, _digests(content, banks))
            tpm.extend_pcr(EXECUTION_PCR, content, banks)
            self.log.mark(recnum, CONTENT_TYPE)

    def crash(self, record: ContainerStart, *, extended: bool) -> None:
        """A hook killed after its append, before (or after) its extend, before its mark."""
        content = encode_record(record)
        with self.log.locked(), Tpm(self.agent.tpm.tcti) as tpm:
            banks = tpm.active_banks()
            self.log.append_pending(content, _digests(content, banks))
            if extended:
                tpm.extend_pcr(EXECUTION_PCR, content, banks)

    def attest(self, api, log: bytes | None = None, start_at: int = 0):
        issued = api.post(f"/v1/nodes/{self.agent.node_id}/nonces", auth=self.agent.auth).json()
        evidence = self.agent.evidence(base64.b64decode(issued["nonce"]), SELECTION)
        evidence["execution_log"] = b64(self.log.read_from(start_at) if log is None else log)
        evidence["execution_log_from"] = start_at
        answer = api.post(
            f"/v1/nodes/{self.agent.node_id}/evidence", json=evidence, auth=self.agent.auth
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def node(software_tpm, api, tmp_path):
    def make(client, name="node-x"):
        agent = DevAgent.create(software_tpm)
        agent.enroll(client, name)
        return Node(agent, tmp_path / f"{name}.log")

    return make


def test_100_starts_replay_to_the_quote_are_stored_logged_and_proven(api, node):
    client = api()
    member = node(client)
    for n in range(100):
        member.run(start(n))
    answer = member.attest(client)
    assert answer["status"] == "affirming", answer["reasons"]
    assert answer["execution_log_next"] == 100
    audit = read(client, "/v1/executions", params={"node": "node-x"}).json()["executions"]
    assert [entry["recnum"] for entry in audit] == list(range(100))
    assert audit[42]["record"]["container_id"] == "c42"
    assert "TOKEN" in audit[42]["record"]["env_names"]
    for entry in (audit[0], audit[99]):
        proof = entry["proof"]
        proven = verify_execution_proof(
            ak_public=base64.b64decode(proof["ak_public"]),
            quote=base64.b64decode(proof["quote"]),
            signature=base64.b64decode(proof["signature"]),
            pcrs=proof["pcrs"],
            execution_log=base64.b64decode(proof["execution_log"]),
            recnum=entry["recnum"],
            record=entry["record"],
        )
        assert proven.records_proven == 100
    # A record altered in the audit answer is not proven by the quote.
    forged = dict(audit[5]["record"], container_id="someone-else")
    with pytest.raises(ExecutionProofInvalid, match="differs"):
        verify_execution_proof(
            ak_public=base64.b64decode(audit[5]["proof"]["ak_public"]),
            quote=base64.b64decode(audit[5]["proof"]["quote"]),
            signature=base64.b64decode(audit[5]["proof"]["signature"]),
            pcrs=audit[5]["proof"]["pcrs"],
            execution_log=base64.b64decode(audit[5]["proof"]["execution_log"]),
            recnum=5,
            record=forged,
        )
    # Every record is in the transparency log, before the result that proved them (entry 0
    # is the operator storing the policy).
    entries = read(client, "/v1/log/entries", params={"start": 1, "end": 102}).json()["entries"]
    kinds = [base64.b64decode(e["entry"]) for e in entries]
    assert sum(b'"type":"execution-record"' in k for k in kinds) == 100
    assert b'"type":"attestation-result"' in kinds[100]


def test_incremental_submissions_continue_where_the_verifier_left_off(api, node):
    client = api()
    member = node(client)
    for n in range(3):
        member.run(start(n))
    assert member.attest(client)["execution_log_next"] == 3
    for n in range(3, 5):
        member.run(start(n))
    # Resending old records is harmless: they are skipped.
    answer = member.attest(client, start_at=1)
    assert answer["status"] == "affirming" and answer["execution_log_next"] == 5
    audit = read(client, "/v1/executions").json()["executions"]
    assert [entry["recnum"] for entry in audit] == [0, 1, 2, 3, 4]


def _records(log: bytes) -> list[bytes]:
    return [record.marshal() for record in parse_cel(log)]


@pytest.mark.parametrize(
    ("attack", "needle"),
    [
        ("delete-first", "record 0"),
        ("delete-middle", "record 2"),
        ("delete-last", "PCR 13"),
        ("reorder", "record 1"),
        ("edit", "record 3"),
    ],
)
def test_a_rewritten_log_is_caught_and_named(api, node, attack, needle):
    client = api()
    member = node(client)
    for n in range(5):
        member.run(start(n))
    records = _records(member.log.read_from(0))
    if attack == "delete-first":
        records = records[1:]
    elif attack == "delete-middle":
        del records[2]
    elif attack == "delete-last":
        records = records[:-1]
    elif attack == "reorder":
        records[1], records[2] = records[2], records[1]
    elif attack == "edit":
        edited = bytearray(records[3])
        edited[-5] ^= 0x01
        records[3] = bytes(edited)
    answer = member.attest(client, log=b"".join(records))
    assert answer["status"] == "contraindicated"
    text = " ".join(answer["reasons"])
    assert "execution log" in text and needle in text, text
    assert read(client, "/v1/executions").json()["executions"] == []  # nothing stored


def test_a_gap_in_what_is_sent_is_a_finding_and_the_agent_is_told_where_to_resume(api, node):
    client = api()
    member = node(client)
    for n in range(4):
        member.run(start(n))
    answer = member.attest(client, log=member.log.read_from(2), start_at=2)
    assert answer["status"] == "contraindicated"
    assert "records 0 to 1 were not sent" in " ".join(answer["reasons"])
    assert answer["execution_log_next"] == 0
    assert member.attest(client)["status"] == "affirming"


def test_a_forbidden_image_contraindicates_the_node(api, node):
    client = api(policy(digests=[BAD_DIGEST]))
    member = node(client)
    member.run(start(0))
    member.run(start(1, image="registry.example/org/miner", digest=BAD_DIGEST))
    answer = member.attest(client)
    assert answer["status"] == "contraindicated"
    assert "record 1 runs forbidden image" in " ".join(answer["reasons"])
    results = read(client, f"/v1/nodes/{member.agent.node_id}/results").json()["results"]
    submod = results[0]["claims"]["submods"]["node-x"]
    assert submod["ear.status"] == "contraindicated"
    assert submod["ear.trustworthiness-vector"]["executables"] == 96


def test_a_pcr_13_extend_without_a_record_is_caught(api, node, software_tpm):
    client = api()
    member = node(client)
    member.run(start(0))
    with Tpm(software_tpm.tcti) as tpm:
        tpm.extend_pcr(EXECUTION_PCR, b"a container started behind the hook's back")
    answer = member.attest(client)
    assert answer["status"] == "contraindicated"
    assert "PCR 13" in " ".join(answer["reasons"])


def test_secrets_are_never_sealed_to_pcr_13(api, node, verifier_config):
    selection = PcrSelection.parse(SELECTION)
    assert any(EXECUTION_PCR in bank.pcrs for bank in selection.banks)
    from stockade.evidence.pcr_values import PcrValues
    from stockade.verifier.secrets import _sealable

    sealable, values = _sealable(PcrValues({0x000B: {0: bytes(32), 13: b"\x01" * 32}}))
    assert all(EXECUTION_PCR not in bank.pcrs for bank in sealable.banks)
    assert values.get(0x000B, 13) is None


# -- the auditor trusts only the pinned verifier key (review finding 1) -------------------


def test_an_auditor_trusts_only_what_the_pinned_key_signed(
    api, node, verifier_config, make_software_tpm, tmp_path
):
    """A fake or compromised answer to ``GET /v1/executions`` cannot pass the audit: the
    proving result's EAR must verify under the key the auditor pinned and name the entry's
    node, boot, AK and quote. The review's forgery (made-up executions under any node name,
    proven by a key that merely claims AK attributes) fails at each step."""
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.appraisal.execution_proof import audit_execution
    from stockade.statements import VerifierKeys

    client = api()
    x = node(client, "node-x")
    other = DevAgent.create(make_software_tpm())
    other.enroll(client, "node-y")
    y = Node(other, tmp_path / "node-y.log")
    x.run(start(1))
    assert x.attest(client)["status"] == "affirming"
    y.run(start(2, image="registry.example/org/miner"))
    assert y.attest(client)["status"] == "affirming"
    audit = read(client, "/v1/executions").json()["executions"]
    ex = next(entry for entry in audit if entry["node_name"] == "node-x")
    ey = next(entry for entry in audit if entry["node_name"] == "node-y")
    keys = VerifierKeys.load(verifier_config.data_dir / "keys" / "verifier-key.pub.pem")
    assert audit_execution(ex, keys).records_proven == 1
    assert audit_execution(ey, keys).records_proven == 1

    # node-y's proven execution listed as node-x's: node-y's EAR is not about node-x.
    relabelled = {**ey, "node_id": ex["node_id"], "node_name": "node-x"}
    with pytest.raises(ExecutionProofInvalid, match=r"^ear: .* is about node"):
        audit_execution(relabelled, keys)
    # node-x's genuine EAR beside another AK, quote and log (node-y's, or a software key's):
    # the EAR names the AK and the quote it appraised, and these are not them.
    swapped_proof = {
        **ey["proof"],
        "result_id": ex["proof"]["result_id"],
        "ear": ex["proof"]["ear"],
    }
    swapped = {**ex, "record": ey["record"], "recnum": ey["recnum"], "proof": swapped_proof}
    with pytest.raises(ExecutionProofInvalid, match=r"^binding: .*AK, quote"):
        audit_execution(swapped, keys)
    # The same execution claimed for another boot of node-x.
    reboot = {**ex, "boot": {"reset_count": ex["boot"]["reset_count"] + 1, "restart_count": 0}}
    with pytest.raises(ExecutionProofInvalid, match=r"^binding: .*boot"):
        audit_execution(reboot, keys)
    # The fake verifier signs its own EAR for the swap, under the genuine kid or its own.
    genuine = jwt.decode(ex["proof"]["ear"], options={"verify_signature": False})
    claims = json_copy(genuine)
    submod = next(iter(claims["submods"].values()))
    submod["stockade.evidence"] = {
        "ak-sha256": hashlib.sha256(base64.b64decode(ey["proof"]["ak_public"])).hexdigest(),
        "quote-sha256": hashlib.sha256(base64.b64decode(ey["proof"]["quote"])).hexdigest(),
    }
    impostor = ec.generate_private_key(ec.SECP256R1())
    pinned_kid = next(iter(keys.keys))
    for kid in (pinned_kid, "impostor"):
        forged_ear = jwt.encode(claims, impostor, algorithm="ES256", headers={"kid": kid})
        forged = {**swapped, "proof": {**swapped_proof, "ear": forged_ear}}
        with pytest.raises(ExecutionProofInvalid, match=r"^ear: "):
            audit_execution(forged, keys)
    # No EAR at all, or a malformed entry: refused, never a traceback.
    with pytest.raises(ExecutionProofInvalid, match=r"^malformed: "):
        audit_execution({**ex, "proof": {k: v for k, v in ex["proof"].items() if k != "ear"}}, keys)
    with pytest.raises(ExecutionProofInvalid, match=r"^malformed: "):
        audit_execution({"node_id": 7}, keys)


def json_copy(document):
    import json

    return json.loads(json.dumps(document))


# -- faults: a torn tail, a hook killed between append and extend (review finding 6) -------


class InProcessVerifier:
    """The agent's verifier client, answered by the in-process verifier."""

    def __init__(self, api, agent: DevAgent) -> None:
        self.api, self.agent = api, agent

    def nonce(self, node_id: str) -> Nonce:
        issued = self.api.post(f"/v1/nodes/{node_id}/nonces", auth=self.agent.auth)
        assert issued.status_code == 201, issued.text
        body = issued.json()
        return Nonce(base64.b64decode(body["nonce"]), body["pcr_selection"], "")

    def evidence(self, node_id: str, body: dict) -> dict:
        answer = self.api.post(f"/v1/nodes/{node_id}/evidence", json=body, auth=self.agent.auth)
        assert answer.status_code == 200, answer.text
        return answer.json()


def real_agent(member: Node, tmp_path: Path) -> tuple[Agent, list[str]]:
    """The node's agent (``stockade.agent.loop``) with the node's AK and execution log."""
    state_dir = tmp_path / "agent-state"
    member.agent.ak.save(state_dir)
    boot_log = tmp_path / "boot.log"
    boot_log.write_bytes(b"")
    lines: list[str] = []
    config = AgentConfig(
        verifier="in-process",
        ca=None,
        name="node-x",
        source=NodeSource(member.agent.tpm.tcti, boot_log, "swtpm", member.log.path),
        state_dir=state_dir,
    )
    return Agent(config, log=lines.append), lines


def test_an_agent_reports_a_torn_tail_and_the_verifier_names_it(api, node, tmp_path):
    client = api()
    member = node(client)
    for n in range(3):
        member.run(start(n))
    complete = member.log.path.read_bytes()
    torn = marshal_record(3, EXECUTION_PCR, {0x0B: bytes(32)}, encode_record(start(3)))[:100]
    with member.log.path.open("ab") as file:  # the node lost power 100 bytes into record 3
        file.write(torn)
    agent, lines = real_agent(member, tmp_path)
    enrolled = Enrolled(member.agent.node_id, "node-x", "in-process")
    verifier = InProcessVerifier(client, member.agent)

    answer = agent.attest_once(verifier, enrolled)
    assert answer["status"] == "contraindicated"
    reason = next(r for r in answer["reasons"] if "torn tail" in r)
    assert reason.startswith(
        f"execution log: torn tail: record 3 at byte offset {len(complete)} is incomplete"
        " (100 bytes:"
    ), reason
    stored = read(client, f"/v1/nodes/{member.agent.node_id}/results").json()["results"][0]
    assert stored["status"] == "contraindicated" and reason in stored["reasons"]
    assert answer["execution_log_next"] == 0  # nothing stored: resent, now whole

    # Told, the agent set the tail aside (kept, not destroyed) and the hook appends again.
    aside = member.log.path.with_name(f"{member.log.path.name}.torn-{len(complete)}")
    assert aside.read_bytes() == torn and member.log.path.read_bytes() == complete
    assert any("set aside in" in line and "torn tail: record 3" in line for line in lines)
    member.run(start(3))
    answer = agent.attest_once(verifier, enrolled)
    assert answer["status"] == "affirming", answer["reasons"]
    assert answer["execution_log_next"] == 4


def test_a_pending_record_never_extended_never_started_and_the_node_affirms(
    api, node, verifier_config
):
    from stockade.appraisal.execution_proof import audit_execution
    from stockade.statements import VerifierKeys

    client = api()
    member = node(client)
    member.run(start(0))
    member.run(start(1))
    member.crash(start(2), extended=False)  # runc never started container c2
    answer = member.attest(client)
    assert answer["status"] == "affirming", answer["reasons"]
    assert answer["execution_log_next"] == 3
    audit = read(client, "/v1/executions").json()["executions"]
    assert [entry["recnum"] for entry in audit] == [0, 1]  # c2 never ran
    entries = read(client, "/v1/log/entries", params={"start": 0, "end": 4}).json()["entries"]
    kinds = [base64.b64decode(e["entry"]) for e in entries]
    assert sum(b'"kind":"container-start-not-started","node_id"' in k for k in kinds) == 1

    member.run(start(3))  # the next hook marks record 2 abandoned
    assert _statuses(member) == [CONTENT_TYPE, CONTENT_TYPE, ABANDONED_CONTENT_TYPE, CONTENT_TYPE]
    answer = member.attest(client, start_at=3)
    assert answer["status"] == "affirming", answer["reasons"]
    audit = read(client, "/v1/executions").json()["executions"]
    assert [entry["recnum"] for entry in audit] == [0, 1, 3]
    keys = VerifierKeys.load(verifier_config.data_dir / "keys" / "verifier-key.pub.pem")
    assert audit_execution(audit[-1], keys).records_proven == 4


def test_a_pending_record_extended_before_the_crash_is_accepted_as_started(
    api, node, verifier_config
):
    from stockade.appraisal.execution_proof import audit_execution
    from stockade.statements import VerifierKeys

    client = api()
    member = node(client)
    member.run(start(0))
    member.crash(start(1), extended=True)  # killed between the extend and the mark
    assert _statuses(member) == [CONTENT_TYPE, PENDING_CONTENT_TYPE]
    answer = member.attest(client)
    assert answer["status"] == "affirming", answer["reasons"]
    audit = read(client, "/v1/executions").json()["executions"]
    assert [entry["recnum"] for entry in audit] == [0, 1]
    # Stored in its final (done) form: the proof replays whatever the node writes later.
    keys = VerifierKeys.load(verifier_config.data_dir / "keys" / "verifier-key.pub.pem")
    assert audit_execution(audit[1], keys).records_proven == 2
    (stored,) = parse_cel(base64.b64decode(audit[1]["proof"]["execution_log"]))[1:]
    assert stored.content_type == CONTENT_TYPE

    member.run(start(2))  # the next hook marks record 1 done
    assert _statuses(member) == [CONTENT_TYPE] * 3
    answer = member.attest(client, start_at=2)
    assert answer["status"] == "affirming", answer["reasons"]
    assert answer["execution_log_next"] == 3


def _statuses(member: Node) -> list[int]:
    return [record.content_type for record in parse_cel(member.log.read_from(0))]


def _restatus(log: bytes, recnum: int, status: int) -> bytes:
    records = list(parse_cel(log))
    records[recnum] = records[recnum]._replace(
        content=bytes((status,)) + records[recnum].content[1:]
    )
    return b"".join(record.marshal() for record in records)


@pytest.mark.parametrize(
    ("forgery", "needle"),
    [
        # The forbidden container ran (extended); the log calls it abandoned, or pending.
        ("ran-called-abandoned", "records end at 2 but PCR 13"),
        ("ran-called-pending-not-last", "record 1 (container c1"),
        # An extend behind the hook's back, "explained" by a pending record of another start.
        ("pending-covers-another-extend", "records end at 2 but PCR 13"),
        # Two pending records, so PCR 13 might match in more than one way.
        ("two-pending", "is pending (its extend never confirmed) but is not the last record"),
    ],
)
def test_a_forged_pending_or_abandoned_record_is_refused(api, node, software_tpm, forgery, needle):
    client = api(policy(digests=[BAD_DIGEST]))
    member = node(client)
    member.run(start(0))
    if forgery == "ran-called-abandoned":
        member.run(start(1, image="registry.example/org/miner", digest=BAD_DIGEST))
        member.run(start(2))
        log = _restatus(member.log.read_from(0), 1, ABANDONED_CONTENT_TYPE)
    elif forgery == "ran-called-pending-not-last":
        member.run(start(1, image="registry.example/org/miner", digest=BAD_DIGEST))
        member.run(start(2))
        log = _restatus(member.log.read_from(0), 1, PENDING_CONTENT_TYPE)
    elif forgery == "pending-covers-another-extend":
        member.run(start(1))
        with Tpm(software_tpm.tcti) as tpm:
            tpm.extend_pcr(EXECUTION_PCR, encode_record(start(9, digest=BAD_DIGEST)))
        member.crash(start(2), extended=False)
        log = member.log.read_from(0)
    else:
        member.crash(start(1), extended=True)
        log = member.log.read_from(0)
        with Tpm(software_tpm.tcti) as tpm:
            banks = tpm.active_banks()
            content = encode_record(start(2))
            tpm.extend_pcr(EXECUTION_PCR, content, banks)
            member.log.append_pending(content, _digests(content, banks))  # no resolve
        log = member.log.read_from(0)
    answer = member.attest(client, log=log)
    assert answer["status"] == "contraindicated"
    text = " ".join(answer["reasons"])
    assert needle in text, text
    assert read(client, "/v1/executions").json()["executions"] == []
