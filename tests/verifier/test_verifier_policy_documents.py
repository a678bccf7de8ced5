"""``PUT /v1/policies/{id}`` with YAML bodies (operator token): a YAML bomb or a key given
twice is 422 and nothing is stored; the same document as YAML and as JSON is one version."""

from __future__ import annotations

import json

from verifier_support import operator_headers, policy_document

BOMB = "\n".join(
    ["a0: &a0 [lol, lol, lol, lol, lol, lol, lol, lol, lol]"]
    + [f"a{n}: &a{n} [{', '.join([f'*a{n - 1}'] * 9)}]" for n in range(1, 10)]
)


def _put_yaml(client, verifier_config, policy_id: str, text: str):
    headers = {**operator_headers(verifier_config.data_dir), "content-type": "application/yaml"}
    return client.put(f"/v1/policies/{policy_id}", content=text.encode(), headers=headers)


def _versions(client, verifier_config, policy_id: str) -> int | None:
    response = client.get(
        f"/v1/policies/{policy_id}", headers=operator_headers(verifier_config.data_dir)
    )
    return response.json()["version"] if response.status_code == 200 else None


def test_a_yaml_bomb_is_refused_and_nothing_is_stored(client, verifier_config):
    response = _put_yaml(client, verifier_config, "bomb", "id: bomb\n" + BOMB)
    assert response.status_code == 422, response.text
    assert "alias" in response.json()["detail"]
    assert _versions(client, verifier_config, "bomb") is None


def test_a_key_given_twice_is_refused(client, verifier_config):
    document = policy_document("twice")
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in document.items())
    response = _put_yaml(client, verifier_config, "twice", text + "id: other\n")
    assert response.status_code == 422
    assert "appears twice" in response.json()["detail"]
    assert _versions(client, verifier_config, "twice") is None


def test_yaml_and_json_of_one_document_are_one_version(client, verifier_config):
    document = policy_document("same")
    text = "".join(f"{key}: {json.dumps(value)}\n" for key, value in document.items())
    assert _put_yaml(client, verifier_config, "same", text).json()["version"] == 1
    again = client.put(
        "/v1/policies/same", json=document, headers=operator_headers(verifier_config.data_dir)
    )
    assert again.json()["version"] == 1
