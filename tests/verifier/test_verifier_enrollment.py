"""Enrollment against real software TPMs: EK chain, credential activation, re-enrollment."""

from __future__ import annotations

import hashlib

import pytest
from verifier_support import DevAgent, b64, operator_headers

from stockade.evidence.ek_identity import ek_identity
from stockade.evidence.public import TpmPublic
from stockade.tpm.ekca import EkCa

pytestmark = pytest.mark.swtpm


@pytest.fixture
def reader(verifier_config) -> dict[str, str]:
    return operator_headers(verifier_config.data_dir)


def test_enroll_happy_path(client, software_tpm, reader):
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-a")
    node = client.get(f"/v1/nodes/{node_id}", headers=reader).json()
    assert node["name"] == "node-a"
    assert node["state"] == "enrolled"
    listed = client.get("/v1/nodes", headers=reader).json()["nodes"]
    assert [n["node_id"] for n in listed] == [node_id]
    events = client.get("/v1/events", params={"follow": "false"}, headers=reader).text
    assert '"to": "enrolled"' in events and node_id in events


def test_untrusted_ek_ca_is_refused(client, software_tpm, tmp_path, reader):
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
    assert client.get("/v1/nodes", headers=reader).json()["nodes"] == []


def test_ak_from_another_tpm_fails_activation(client, make_software_tpm, reader):
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
        f"/v1/enrollments/{challenge['enrollment_id']}/activation",
        json=agent.activation_request(challenge["enrollment_id"], bytes(32)),
    )
    assert response.status_code == 403 and response.json()["error"] == "activation"
    assert client.get("/v1/nodes", headers=reader).json()["nodes"] == []


def test_wrong_secret_then_reuse_and_expiry(client, software_tpm, clock, reader):
    agent = DevAgent.create(software_tpm)
    challenge = client.post("/v1/enrollments", json=agent.enrollment_request("n")).json()
    secret = agent.activate(challenge)
    url = f"/v1/enrollments/{challenge['enrollment_id']}/activation"
    enrollment_id = challenge["enrollment_id"]
    wrong = bytes(b ^ 1 for b in secret)
    assert client.post(url, json=agent.activation_request(enrollment_id, wrong)).status_code == 403
    # One attempt per enrollment: even the right secret is now refused.
    again = client.post(url, json=agent.activation_request(enrollment_id, secret))
    assert again.status_code == 409 and again.json()["error"] == "enrollment"

    challenge = client.post("/v1/enrollments", json=agent.enrollment_request("n")).json()
    secret = agent.activate(challenge)
    clock.advance(301)
    url = f"/v1/enrollments/{challenge['enrollment_id']}/activation"
    late = agent.activation_request(challenge["enrollment_id"], secret)
    # Expired: refused, and (once the sweeper ran) forgotten.
    assert client.post(url, json=late).status_code in (404, 409)
    assert client.get("/v1/nodes", headers=reader).json()["nodes"] == []
    unknown = client.post("/v1/enrollments/nope/activation", json=late)
    assert unknown.status_code == 404


def test_reenrollment_keeps_node_and_replaces_ak(client, software_tpm, reader):
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-r")
    assert agent.attest(client).json()["status"] == "affirming"
    reinstalled = DevAgent.create(software_tpm)
    assert reinstalled.enroll(client, "node-r") == node_id
    assert len(client.get(f"/v1/nodes/{node_id}/results", headers=reader).json()["results"]) == 1
    # The old channel key (and with it the old AK) is no longer accepted.
    old = client.post(f"/v1/nodes/{node_id}/nonces", auth=agent.auth)
    assert old.status_code == 401 and old.json()["error"] == "channel"
    # The old AK's quote over a nonce the new channel obtained changes nothing.
    nonce = reinstalled.nonce(client)
    stale_ak = client.post(
        f"/v1/nodes/{node_id}/evidence", json=agent.evidence(nonce), auth=reinstalled.auth
    )
    assert stale_ak.status_code == 403 and stale_ak.json()["error"] == "evidence"
    assert client.get(f"/v1/nodes/{node_id}", headers=reader).json()["state"] == "enrolled"
    assert reinstalled.attest(client).json()["status"] == "affirming"


def test_revoked_node_cannot_enroll_or_attest_until_allowed(client, software_tpm, verifier_config):
    from verifier_support import operator_headers

    operator = operator_headers(verifier_config.data_dir)
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-v")
    revoked = client.post(
        f"/v1/nodes/{node_id}/revoke", json={"reason": "stolen"}, headers=operator
    )
    assert revoked.json()["state"] == "revoked"
    assert client.post(f"/v1/nodes/{node_id}/nonces").status_code == 401  # unsigned
    assert client.post(f"/v1/nodes/{node_id}/nonces", auth=agent.auth).status_code == 403
    refused = client.post("/v1/enrollments", json=agent.enrollment_request("node-v"))
    assert refused.status_code == 403 and refused.json()["error"] == "revoked"
    # Allowing it back is the operator's call, not anyone's who can reach the verifier.
    anonymous = client.post(f"/v1/nodes/{node_id}/allow")
    assert anonymous.status_code == 401 and anonymous.json()["error"] == "operator-token"
    allowed = client.post(f"/v1/nodes/{node_id}/allow", headers=operator)
    assert allowed.json()["state"] == "enrolled"
    assert agent.attest(client).json()["state"] == "trusted"
    events = client.get("/v1/events", params={"follow": "false"}, headers=operator).text
    assert '"reason": "stolen"' in events
    assert client.post(f"/v1/nodes/{node_id}/revoke").status_code == 401


def test_allowlist(make_client, verifier_config, software_tpm):
    agent = DevAgent.create(software_tpm)
    verifier_config.ek_allowlist = frozenset({"00" * 32})
    client = make_client()
    response = client.post("/v1/enrollments", json=agent.enrollment_request("n"))
    assert response.status_code == 403 and response.json()["error"] == "allowlist"
    # The old fingerprint (sha256 of the TPM2B_PUBLIC bytes a node sends) admits nothing.
    verifier_config.ek_allowlist = frozenset({hashlib.sha256(agent.ek_public).hexdigest()})
    refused = make_client().post("/v1/enrollments", json=agent.enrollment_request("n"))
    assert refused.status_code == 403
    identity = ek_identity(TpmPublic.unmarshal_tpm2b(agent.ek_public))
    certificate = hashlib.sha256(agent.ek_certificate).hexdigest()
    for entry in (identity, certificate):
        verifier_config.ek_allowlist = frozenset({entry})
        allowed = make_client().post("/v1/enrollments", json=agent.enrollment_request("n"))
        assert allowed.status_code == 201
