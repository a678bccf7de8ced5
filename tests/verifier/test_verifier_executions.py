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
from stockade.appraisal.execution_proof import ExecutionProofInvalid, verify_execution_proof
from stockade.appraisal.executions import Forbidden
from stockade.evidence.cel import parse_cel
from stockade.evidence.execution import EXECUTION_PCR, ContainerStart, Mount, encode_record
from stockade.evidence.pcr_selection import PcrSelection
from stockade.tpm.device import Tpm

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
        content = encode_record(record)
        with Tpm(self.agent.tpm.tcti) as tpm, self.log.locked():
            banks = tpm.active_banks()
            tpm.extend_pcr(EXECUTION_PCR, content, banks)
            digests = {bank.hash_alg: hashlib.new(_name(bank.hash_alg), content).digest()
                       for bank in banks.banks}  # fmt: skip
            self.log.append(content, digests)

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


def _name(alg: int) -> str:
    return {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}[alg]


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
    # Every record is in the transparency log, before the result that proved them.
    entries = read(client, "/v1/log/entries", params={"start": 0, "end": 101}).json()["entries"]
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
