"""Attestation: nonces, quotes under the right identity, EARs, staleness, persistence."""

from __future__ import annotations

import base64
import json
import time

import jwt
import pytest
from verifier_support import DevAgent, policy_document, read

pytestmark = pytest.mark.swtpm


def _nonce(client, agent: DevAgent) -> bytes:
    response = client.post(f"/v1/nodes/{agent.node_id}/nonces", auth=agent.auth)
    assert response.status_code == 201, response.text
    assert response.json()["pcr_selection"] == "sha256:0,1,2,3,4,5,6,7"
    return base64.b64decode(response.json()["nonce"])


def test_attest_affirms_and_ear_verifies_with_jwks(client, software_tpm):
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-e")
    nonce = _nonce(client, agent)
    response = client.post(
        f"/v1/nodes/{node_id}/evidence", json=agent.evidence(nonce), auth=agent.auth
    )
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["status"] == "affirming" and body["state"] == "trusted"

    jwks = client.get("/v1/keys").json()
    header = jwt.get_unverified_header(body["ear"])
    (jwk,) = [k for k in jwks["keys"] if k["kid"] == header["kid"]]
    assert header["alg"] == "ES256" and len(header["kid"]) == 64
    key = jwt.PyJWK(jwk).key
    claims = jwt.decode(body["ear"], key, algorithms=["ES256"])
    submod = claims["submods"]["node-e"]
    assert claims["eat_profile"] == "tag:github.com,2023:veraison/ear"
    assert claims["eat_nonce"] == base64.urlsafe_b64encode(nonce).rstrip(b"=").decode()
    assert claims["ear.verifier-id"]["developer"] == "stockade"
    assert claims["exp"] - claims["iat"] == 120
    assert submod["ear.status"] == "affirming"
    assert submod["stockade.node-id"] == node_id
    assert submod["stockade.result-id"] == body["result_id"]
    assert set(submod["ear.trustworthiness-vector"]) == {
        "instance-identity",
        "configuration",
        "executables",
        "hardware",
        "file-system",
    }
    # A token signed by another key does not verify against the JWKS.
    other = jwt.encode(claims, _other_key(), algorithm="ES256")
    with pytest.raises(jwt.InvalidSignatureError):
        jwt.decode(other, key, algorithms=["ES256"])

    results = read(client, f"/v1/nodes/{node_id}/results", params={"limit": 5}).json()["results"]
    assert results[0]["result_id"] == body["result_id"]
    assert results[0]["claims"]["submods"]["node-e"]["ear.status"] == "affirming"
    assert read(client, f"/v1/nodes/{node_id}").json()["clock"]["reset_count"] is not None


def _other_key():
    from cryptography.hazmat.primitives.asymmetric import ec

    return ec.generate_private_key(ec.SECP256R1())


def test_nonce_reuse_and_expiry_are_409(client, software_tpm, clock):
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-n")
    nonce = _nonce(client, agent)
    evidence = agent.evidence(nonce)
    assert (
        client.post(f"/v1/nodes/{node_id}/evidence", json=evidence, auth=agent.auth).status_code
        == 200
    )
    replay = client.post(f"/v1/nodes/{node_id}/evidence", json=evidence, auth=agent.auth)
    assert replay.status_code == 409 and replay.json()["error"] == "nonce"

    late = _nonce(client, agent)
    evidence = agent.evidence(late)
    clock.advance(31)
    expired = client.post(f"/v1/nodes/{node_id}/evidence", json=evidence, auth=agent.auth)
    assert expired.status_code == 409 and expired.json()["error"] == "nonce"
    # A nonce the verifier never issued.
    forged = agent.evidence(bytes(32))
    assert (
        client.post(f"/v1/nodes/{node_id}/evidence", json=forged, auth=agent.auth).status_code
        == 409
    )
    assert len(read(client, f"/v1/nodes/{node_id}/results").json()["results"]) == 1


def test_evidence_under_another_nodes_identity(client, make_software_tpm):
    a, b = DevAgent.create(make_software_tpm()), DevAgent.create(make_software_tpm())
    node_a, node_b = a.enroll(client, "node-a"), b.enroll(client, "node-b")
    assert b.attest(client).json()["state"] == "trusted"
    # A asks for B's nonce: A cannot sign as B.
    as_b = client.post(f"/v1/nodes/{node_b}/nonces", auth=a.auth_as(node_b))
    assert as_b.status_code == 401 and as_b.json()["error"] == "channel"
    # Even over B's own channel (B's agent relaying), A's quote does not verify with B's AK:
    # refused, and B's state, results and log stay as they were.
    nonce_b = _nonce(client, b)
    relayed = client.post(f"/v1/nodes/{node_b}/evidence", json=a.evidence(nonce_b), auth=b.auth)
    assert relayed.status_code == 403 and relayed.json()["error"] == "evidence"
    assert "signature" in relayed.json()["detail"]
    assert read(client, f"/v1/nodes/{node_b}").json()["state"] == "trusted"
    assert len(read(client, f"/v1/nodes/{node_b}/results").json()["results"]) == 1
    # B's nonce is not valid for A either.
    nonce_b = _nonce(client, b)
    response = client.post(f"/v1/nodes/{node_a}/evidence", json=a.evidence(nonce_b), auth=a.auth)
    assert response.status_code == 409
    events = read(client, "/v1/events", params={"follow": "false"}).text
    assert '"to": "failed"' not in events


def test_stale_node_becomes_untrusted_right_after_deadline(make_client, software_tpm):
    client = make_client(policy=policy_document("short", validity=1))
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-s")
    # The verifier's deadline is 1 s after the moment it appraised, which lies between these
    # two readings (the same process's monotonic clock: no skew to allow for).
    started = time.monotonic()
    body = agent.attest(client).json()
    answered = time.monotonic()
    assert body["state"] == "trusted"
    while read(client, f"/v1/nodes/{node_id}").json()["state"] == "trusted":
        assert time.monotonic() < answered + 1.5, "still trusted 0.5 s past its deadline"
        time.sleep(0.02)
    assert time.monotonic() >= started + 1.0, "untrusted before its deadline"
    # The sweeper writes it down with an event, promptly.
    for _ in range(50):
        lines = read(client, "/v1/events", params={"follow": "false"}).text.splitlines()
        stale = [json.loads(line[6:]) for line in lines if line.startswith("data: ")]
        stale = [e for e in stale if e["reason"] == "stale"]
        if stale:
            break
        time.sleep(0.02)
    assert stale and stale[0]["to"] == "untrusted" and stale[0]["result_id"] == body["result_id"]


def test_restart_keeps_nodes_results_and_events(make_client, software_tpm):
    client = make_client(policy=policy_document())
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-p")
    result = agent.attest(client).json()
    events = read(client, "/v1/events", params={"follow": "false"}).text
    keys = client.get("/v1/keys").json()
    client.__exit__(None, None, None)

    restarted = make_client()
    assert read(restarted, f"/v1/nodes/{node_id}").json()["state"] == "trusted"
    results = read(restarted, f"/v1/nodes/{node_id}/results").json()["results"]
    assert [r["result_id"] for r in results] == [result["result_id"]]
    assert read(restarted, "/v1/events", params={"follow": "false"}).text == events
    assert restarted.get("/v1/keys").json() == keys
    assert read(restarted, "/v1/policies").json()["policies"][0]["ref"] == "test@1"
    # The node keeps attesting after the restart, with its clock history.
    assert agent.attest(restarted).json()["status"] == "affirming"


def test_events_resume_after_last_event_id(client, software_tpm):
    agent = DevAgent.create(software_tpm)
    agent.enroll(client, "node-l")
    agent.attest(client)
    first = read(client, "/v1/events", params={"follow": "false"}).text
    ids = [int(line[4:]) for line in first.splitlines() if line.startswith("id: ")]
    assert len(ids) == 2
    rest = read(
        client, "/v1/events", params={"follow": "false"}, headers={"Last-Event-ID": str(ids[0])}
    ).text
    assert [int(line[4:]) for line in rest.splitlines() if line.startswith("id: ")] == ids[1:]


def test_racing_submissions_with_one_nonce_win_once(client, software_tpm):
    from concurrent.futures import ThreadPoolExecutor

    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-race")
    evidence = agent.evidence(_nonce(client, agent))
    with ThreadPoolExecutor(8) as pool:
        codes = list(
            pool.map(
                lambda _: (
                    client.post(
                        f"/v1/nodes/{node_id}/evidence", json=evidence, auth=agent.auth
                    ).status_code
                ),
                range(8),
            )
        )
    assert sorted(codes) == [200] + [409] * 7


@pytest.mark.parametrize("stale_reads", [1, 3])
def test_evidence_appraised_again_when_the_node_changed_meanwhile(
    client, software_tpm, monkeypatch, stale_reads
):
    """Appraisal runs outside the write transaction; a node whose appraisal inputs changed
    before the write (another submission committed) is appraised again, and after three lost
    races under the write lock: the nonce is still spent once, one result is stored."""
    from sqlalchemy import update

    from stockade.verifier import attestation
    from stockade.verifier.models import Node

    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-stale-read")
    service = client.app.state.service
    real_prepare = attestation._prepare
    calls: list[object] = []

    def racing_prepare(*args, **kwargs):
        calls.append(args[2])
        if len(calls) <= stale_reads:
            with service.engine.begin() as connection:
                connection.execute(
                    update(Node)
                    .where(Node.id == node_id)
                    .values(last_clock_safe=len(calls) % 2 == 1)
                )
        return real_prepare(*args, **kwargs)

    monkeypatch.setattr(attestation, "_prepare", racing_prepare)
    evidence = agent.evidence(_nonce(client, agent))
    response = client.post(f"/v1/nodes/{node_id}/evidence", json=evidence, auth=agent.auth)
    assert response.status_code == 200, response.text
    assert response.json()["status"] == "affirming"
    assert len(calls) == stale_reads + 1
    results = read(client, f"/v1/nodes/{node_id}/results", params={"limit": 5}).json()["results"]
    assert [result["result_id"] for result in results] == [response.json()["result_id"]]
    again = client.post(f"/v1/nodes/{node_id}/evidence", json=evidence, auth=agent.auth)
    assert again.status_code == 409 and again.json()["error"] == "nonce"
