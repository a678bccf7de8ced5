"""The active policy lives in the database (``PUT /v1/active-policy``, ``stockade policy
activate``): every replica on one database appraises under it, applying another policy id never
changes it (nor breaks attestation, as it did when the verifier chose "the only policy
stored"), only the operator can change it, and the active policy cannot be deleted."""

from __future__ import annotations

import dataclasses

import jwt
from verifier_support import DevAgent, operator_headers, policy_document, reader_headers


def _put(client, config, document):
    response = client.put(
        f"/v1/policies/{document['id']}", json=document, headers=operator_headers(config.data_dir)
    )
    assert response.status_code == 200, response.text
    return response.json()


def _activate(client, headers, policy_id: str):
    return client.put("/v1/active-policy", json={"id": policy_id}, headers=headers)


def _policy_of_result(response) -> str:
    """``ear.appraisal-policy-id`` of the answer's EAR (read, not verified: the signature is
    tested elsewhere)."""
    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["ear"], options={"verify_signature": False})
    (submod,) = claims["submods"].values()
    return str(submod["ear.appraisal-policy-id"])


def test_applying_another_policy_keeps_the_active_one(client, verifier_config, software_tpm):
    agent = DevAgent.create(software_tpm)
    agent.enroll(client, "node-a")
    assert _policy_of_result(agent.attest(client)).startswith("test@")
    _put(client, verifier_config, policy_document("other"))
    # Two ids stored: the first stays active, and attestation goes on under it.
    assert _policy_of_result(agent.attest(client)).startswith("test@")
    active = client.get("/v1/active-policy", headers=reader_headers(client)).json()
    assert active["id"] == "test"


def test_an_activation_is_seen_by_every_replica(make_client, verifier_config, software_tpm):
    config = dataclasses.replace(verifier_config, policy_refresh_seconds=0.0)
    first = make_client(config, policy=policy_document())
    second = make_client(config)  # another replica on the same database
    _put(first, config, policy_document("other"))
    agent = DevAgent.create(software_tpm)
    agent.enroll(first, "node-b")
    assert _policy_of_result(agent.attest(second)).startswith("test@")
    response = _activate(first, operator_headers(config.data_dir), "other")
    assert response.status_code == 200, response.text
    assert response.json()["id"] == "other" and response.json()["version"] == 1
    assert _policy_of_result(agent.attest(second)) == "other@1"
    assert _policy_of_result(agent.attest(first)) == "other@1"


def test_only_the_operator_activates_and_only_stored_policies(client, verifier_config):
    _put(client, verifier_config, policy_document("other"))
    for headers in ({}, reader_headers(client)):
        refused = _activate(client, headers, "other")
        assert refused.status_code in (401, 403), refused.text
    unknown = _activate(client, operator_headers(verifier_config.data_dir), "nowhere")
    assert unknown.status_code == 404
    assert client.get("/v1/active-policy", headers=reader_headers(client)).json()["id"] == "test"


def test_the_active_policy_cannot_be_deleted(client, verifier_config, software_tpm):
    _put(client, verifier_config, policy_document("other"))
    headers = operator_headers(verifier_config.data_dir)
    refused = client.delete("/v1/policies/test", headers=headers)
    assert refused.status_code == 409 and refused.json()["error"] == "policy-active"
    assert client.delete("/v1/policies/other", headers=reader_headers(client)).status_code in (
        401,
        403,
    )
    assert client.delete("/v1/policies/other", headers=headers).status_code == 204
    assert client.get("/v1/policies/other", headers=headers).status_code == 404
    assert client.delete("/v1/policies/other", headers=headers).status_code == 404
    agent = DevAgent.create(software_tpm)
    agent.enroll(client, "node-c")
    assert _policy_of_result(agent.attest(client)).startswith("test@")


def test_the_verifier_keeps_a_bounded_number_of_versions_built(client, verifier_config):
    """Each stored version the verifier appraised under keeps its references built, but only
    the newest few: a long-lived verifier does not hold every version it ever saw."""
    from stockade.verifier.service import REFERENCES_KEPT

    service = client.app.state.service
    seen = []
    for number in range(REFERENCES_KEPT + 3):
        stored = _put(client, verifier_config, policy_document("test", validity=200 + number))
        service.invalidate_policy()
        active = service.active_policy()
        assert active.version == stored["version"]
        seen.append(active.version)
    kept = [v for v in seen if service.cached_references("test", v) is not None]
    assert kept == seen[-REFERENCES_KEPT:]
    # The newest is served from the cache: the same object, not built again.
    assert service.active_policy() is service.cached_references("test", seen[-1])
