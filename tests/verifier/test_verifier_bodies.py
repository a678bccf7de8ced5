"""Bad requests get a JSON 4xx naming the problem, never a traceback; the service keeps serving."""

from __future__ import annotations

import pytest
from verifier_support import read


def _assert_error(response, status: int, code: str | None = None) -> dict:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"error", "detail"}
    assert "Traceback" not in response.text
    if code is not None:
        assert body["error"] == code
    return body


@pytest.mark.parametrize(
    ("body", "headers", "status", "code"),
    [
        (b"{not json", {"content-type": "application/json"}, 422, "invalid-request"),
        (b"[]", {"content-type": "application/json"}, 422, "invalid-request"),
        (b'{"name": "x"}', {"content-type": "application/json"}, 422, "invalid-request"),
        (
            b'{"name": "x", "ek_certificate": "!!", "ek_public": "AA==", "ak_public": "AA=="}',
            {"content-type": "application/json"},
            400,
            "base64",
        ),
        (
            b'{"name": "x", "ek_certificate": "AA==", "ek_public": "AAAA", "ak_public": "AA=="}',
            {"content-type": "application/json"},
            400,
            "malformed",
        ),
        (b"\xff\xfe\x00", {"content-type": "application/json"}, 400, "bad-request"),
    ],
)
def test_malformed_enrollments(client, body, headers, status, code):
    _assert_error(client.post("/v1/enrollments", content=body, headers=headers), status, code)
    assert client.get("/v1/health").json() == {"status": "ok"}


def test_base64_error_names_the_field(client):
    body = {"name": "x", "ek_certificate": "AA==", "ek_public": "AA==", "ak_public": "@@"}
    detail = _assert_error(client.post("/v1/enrollments", json=body), 400, "base64")["detail"]
    assert detail.startswith("ak_public")


def test_validation_error_names_the_field(client):
    detail = _assert_error(client.post("/v1/enrollments", json={"name": "x"}), 422)["detail"]
    assert "ek_certificate" in detail


def test_oversized_body_is_413(client):
    big = b'{"name": "' + b"a" * (4 * 1024 * 1024 + 1) + b'"}'
    _assert_error(
        client.post("/v1/enrollments", content=big, headers={"content-type": "application/json"}),
        413,
        "too-large",
    )

    def chunks():
        for _ in range(5):
            yield b"a" * (1024 * 1024)

    # Without a Content-Length (chunked), the limit still holds.
    _assert_error(client.post("/v1/enrollments", content=chunks()), 413, "too-large")
    assert client.get("/v1/health").status_code == 200


def test_unknown_node_and_route(client):
    # A node the verifier does not know holds no channel key: nothing it sends is authentic.
    _assert_error(client.post("/v1/nodes/nope/nonces"), 401, "channel-unknown")
    _assert_error(read(client, "/v1/nodes/nope"), 404, "node")
    _assert_error(client.get("/v1/nowhere"), 404, "not-found")
    evidence = {"nonce": "AA==", "quote": "AA==", "signature": "AA==", "pcrs": {}, "event_log": ""}
    _assert_error(client.post("/v1/nodes/nope/evidence", json=evidence), 401, "channel-unknown")


def test_malformed_evidence_fields(client, software_tpm):
    from verifier_support import DevAgent

    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-m")
    good = {"nonce": "AA==", "quote": "AA==", "signature": "AA==", "pcrs": {}, "event_log": ""}
    url = f"/v1/nodes/{node_id}/evidence"
    auth = agent.auth
    _assert_error(client.post(url, json={**good, "quote": "%%"}, auth=auth), 400, "base64")
    _assert_error(client.post(url, json={**good, "pcrs": {"sha999": {"0": "zz"}}}, auth=auth), 400)
    _assert_error(client.post(url, json={**good, "pcrs": "x"}, auth=auth), 422)
    _assert_error(client.post(url, json={**good, "surprise": 1}, auth=auth), 422)
    # Garbage TPM structures under a valid nonce and the node's own channel: refused, not a
    # crash, and not a result either (it proves nothing about the node).
    nonce = client.post(f"/v1/nodes/{node_id}/nonces", auth=auth).json()["nonce"]
    garbage = {**good, "nonce": nonce, "quote": "AAAA", "signature": "AA=="}
    _assert_error(client.post(url, json=garbage, auth=auth), 403, "evidence")
    assert read(client, f"/v1/nodes/{node_id}/results").json()["results"] == []
    assert agent.attest(client).json()["status"] == "affirming"


def test_policy_documents(client, verifier_config):
    from verifier_support import operator_headers

    operator = operator_headers(verifier_config.data_dir)
    yaml_headers = {**operator, "content-type": "application/yaml"}
    mismatch = client.put("/v1/policies/other", json={"id": "mismatch"}, headers=operator)
    _assert_error(mismatch, 422, "policy")
    _assert_error(client.put("/v1/policies/bad", content=b": : :", headers=operator), 422, "policy")
    yaml_doc = b"id: second\npcrs: sha256:0,7\nresult_validity_seconds: 60\n"
    # Without the operator token nobody may replace what nodes are appraised against.
    anonymous = client.put(
        "/v1/policies/second", content=yaml_doc, headers={"content-type": "application/yaml"}
    )
    _assert_error(anonymous, 401, "operator-token")
    stored = client.put("/v1/policies/second", content=yaml_doc, headers=yaml_headers)
    assert stored.json()["version"] == 1
    again = client.put("/v1/policies/second", content=yaml_doc, headers=yaml_headers)
    assert again.json()["version"] == 1
    ids = [p["id"] for p in read(client, "/v1/policies").json()["policies"]]
    assert ids == ["second", "test"]
    assert read(client, "/v1/policies/second").json()["document"]["pcrs"] == "sha256:0,7"
    assert "/v1/enrollments" in read(client, "/v1/openapi.json").json()["paths"]
