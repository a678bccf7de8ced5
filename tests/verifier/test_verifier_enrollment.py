"""Enrollment against real software TPMs: EK chain, credential activation, re-enrollment."""

from __future__ import annotations

import pytest
from verifier_support import DevAgent, b64

from stockade.tpm.ekca import EkCa

pytestmark = pytest.mark.swtpm


def test_enroll_happy_path(client, software_tpm):
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-a")
    node = client.get(f"/v1/nodes/{node_id}").json()
    assert node["name"] == "node-a"
    assert node["state"] == "enrolled"
    assert [n["node_id"] for n in client.get("/v1/nodes").json()["nodes"]] == [node_id]
    events = client.get("/v1/events", params={"follow": "false"}).text
    assert '"to": "enrolled"' in events and node_id in events


def test_untrusted_ek_ca_is_refused(client, software_tpm, tmp_path):
    agent = DevAgent.create(software_tpm)
    rogue = EkCa.load_or_create(tmp_path / "rogue-ca")
    from cryptography.hazmat.primitives import serialization

    from stockade.evidence.public import TpmPublic

    ek_key = TpmPublic.unmarshal_tpm2b(agent.ek_public).public_key()
    forged = rogue.issue_ek_certificate(ek_key, software_tpm.identity())
    request = agent.enrollment_request("node-rogue")
    request["ek_certificate"] = b64(forged.public_bytes(serialization.Encoding.DER))
    response = client.post("/v1/enrollments", json=request)
    assert response.status_code == 403
    assert response.json()["error"] == "ek-certificate"
    assert client.get("/v1/nodes").json()["nodes"] == []


def test_ak_from_another_tpm_fails_activation(client, make_software_tpm):
    first, second = make_software_tpm(), make_software_tpm()
    agent = DevAgent.create(first)
    impostor = DevAgent.create(second)
    # The AK of the second TPM is presented under the first TPM's EK.
    request = agent.enrollment_request("node-x")
    request["ak_public"] = b64(impostor.ak.public.marshal_tpm2b())
    challenge = client.post("/v1/enrollments", json=request).json()
    with pytest.raises(Exception):  # noqa: B017 - the TPM refuses: the AK is not under this EK
        impostor.activate(challenge, activator=first)
    # Guessing fails too, and uses the enrollment up.
    response = client.post(
        f"/v1/enrollments/{challenge['enrollment_id']}/activation", json={"secret": b64(bytes(32))}
    )
    assert response.status_code == 403 and response.json()["error"] == "activation"
    assert client.get("/v1/nodes").json()["nodes"] == []


def test_wrong_secret_then_reuse_and_expiry(client, software_tpm, clock):
    agent = DevAgent.create(software_tpm)
    challenge = client.post("/v1/enrollments", json=agent.enrollment_request("n")).json()
    secret = agent.activate(challenge)
    url = f"/v1/enrollments/{challenge['enrollment_id']}/activation"
    wrong = bytes(b ^ 1 for b in secret)
    assert client.post(url, json={"secret": b64(wrong)}).status_code == 403
    # One attempt per enrollment: even the right secret is now refused.
    again = client.post(url, json={"secret": b64(secret)})
    assert again.status_code == 409 and again.json()["error"] == "enrollment"

    challenge = client.post("/v1/enrollments", json=agent.enrollment_request("n")).json()
    secret = agent.activate(challenge)
    clock.advance(301)
    url = f"/v1/enrollments/{challenge['enrollment_id']}/activation"
    assert client.post(url, json={"secret": b64(secret)}).status_code == 409
    assert client.get("/v1/nodes").json()["nodes"] == []
    unknown = client.post("/v1/enrollments/nope/activation", json={"secret": "AA=="})
    assert unknown.status_code == 404


def test_reenrollment_keeps_node_and_replaces_ak(client, software_tpm):
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-r")
    assert agent.attest(client).json()["status"] == "affirming"
    reinstalled = DevAgent.create(software_tpm)
    assert reinstalled.enroll(client, "node-r") == node_id
    assert len(client.get(f"/v1/nodes/{node_id}/results").json()["results"]) == 1
    # The old AK is no longer accepted.
    old = agent.attest(client, node_id).json()
    assert old["status"] == "contraindicated" and old["state"] == "failed"
    assert reinstalled.attest(client, node_id).json()["status"] == "affirming"


def test_revoked_node_cannot_enroll_or_attest_until_allowed(client, software_tpm, verifier_config):
    from verifier_support import operator_headers

    operator = operator_headers(verifier_config.data_dir)
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-v")
    revoked = client.post(
        f"/v1/nodes/{node_id}/revoke", json={"reason": "stolen"}, headers=operator
    )
    assert revoked.json()["state"] == "revoked"
    assert client.post(f"/v1/nodes/{node_id}/nonces").status_code == 403
    refused = client.post("/v1/enrollments", json=agent.enrollment_request("node-v"))
    assert refused.status_code == 403 and refused.json()["error"] == "revoked"
    # Allowing it back is the operator's call, not anyone's who can reach the verifier.
    anonymous = client.post(f"/v1/nodes/{node_id}/allow")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "operator-token"
    allowed = client.post(f"/v1/nodes/{node_id}/allow", headers=operator)
    assert allowed.json()["state"] == "enrolled"
    assert agent.attest(client).json()["state"] == "trusted"
    events = client.get("/v1/events", params={"follow": "false"}).text
    assert '"reason": "stolen"' in events
    assert client.post(f"/v1/nodes/{node_id}/revoke").status_code == 401


def test_allowlist(make_client, verifier_config, software_tpm):
    agent = DevAgent.create(software_tpm)
    verifier_config.ek_allowlist = frozenset({"00" * 32})
    client = make_client()
    response = client.post("/v1/enrollments", json=agent.enrollment_request("n"))
    assert response.status_code == 403 and response.json()["error"] == "allowlist"
    import hashlib

    verifier_config.ek_allowlist = frozenset({hashlib.sha256(agent.ek_public).hexdigest()})
    allowed = make_client().post("/v1/enrollments", json=agent.enrollment_request("n"))
    assert allowed.status_code == 201
