"""The trust policy: org-signed DSSE, canonical, longest prefix wins, reject by default."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from conftest import public_pem
from stockade.images.errors import ImageError, ImageRejected
from stockade.images.policy import (
    PAYLOAD_TYPE,
    canonical_json,
    load_trust_policy,
    parse_trust_policy,
    sign_trust_policy,
)
from stockade.release import dsse


def test_policy_round_trip_and_digest(policy_document, org_key):
    envelope = sign_trust_policy(policy_document, org_key)
    policy = load_trust_policy(envelope, [org_key.public_key()])
    assert policy.document == canonical_json(policy_document)
    assert json.loads(envelope)["payloadType"] == PAYLOAD_TYPE
    assert policy.digest == "sha256:" + hashlib.sha256(policy.document).hexdigest()
    assert sorted(policy.keys) == ["build", "other"]
    assert all(isinstance(key, ec.EllipticCurvePublicKey) for key in policy.keys.values())
    # one policy, one digest: signing again (another signature) measures the same
    again = load_trust_policy(sign_trust_policy(policy_document, org_key), [org_key.public_key()])
    assert again.digest == policy.digest


@pytest.mark.parametrize(
    ("repository", "keys"),
    [
        ("registry.example/org", ("build",)),
        ("registry.example/org/app", ("build",)),
        ("registry.example/org/team/app", ("build",)),
        ("registry.example/org/legacy", ()),
        ("registry.example/org/legacy/app", ()),
        ("registry.example/organization/app", ()),
        ("registry.example/other/app", ("other",)),
        ("registry.example/app", ()),
        ("docker.io/library/alpine", ()),
        ("alpine", ()),
    ],
)
def test_keys_for_longest_prefix_and_default_reject(policy, repository, keys):
    assert policy.keys_for(repository) == keys


def test_docker_hub_scope(make_policy, policy_document):
    document = {**policy_document, "scopes": [{"prefix": "docker.io/library", "keys": ["build"]}]}
    policy = make_policy(document)
    assert policy.keys_for("alpine") == ("build",)
    assert policy.keys_for("index.docker.io/library/alpine") == ("build",)
    assert policy.keys_for("docker.io/bitnami/redis") == ()


def test_unsigned_policy_is_refused(policy_document, org_key):
    envelope = json.loads(sign_trust_policy(policy_document, org_key))
    envelope["signatures"] = []
    with pytest.raises(ImageRejected) as caught:
        load_trust_policy(json.dumps(envelope).encode(), [org_key.public_key()])
    assert caught.value.check == "policy"


def test_tampered_policy_is_refused(policy_document, org_key, stranger_key):
    envelope = json.loads(sign_trust_policy(policy_document, org_key))
    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["keys"]["build"] = public_pem(stranger_key)
    envelope["payload"] = base64.b64encode(canonical_json(payload)).decode()
    with pytest.raises(ImageRejected) as caught:
        load_trust_policy(json.dumps(envelope).encode(), [org_key.public_key()])
    assert caught.value.check == "policy"


def test_policy_by_unknown_signer_is_refused(policy_document, org_key):
    impostor = ed25519.Ed25519PrivateKey.generate()
    with pytest.raises(ImageRejected) as caught:
        load_trust_policy(sign_trust_policy(policy_document, impostor), [org_key.public_key()])
    assert caught.value.check == "policy"


def test_other_payload_type_is_refused(policy_document, org_key):
    envelope = dsse.sign(canonical_json(policy_document), "application/vnd.other+json", [org_key])
    with pytest.raises(ImageRejected) as caught:
        load_trust_policy(envelope.to_bytes(), [org_key.public_key()])
    assert caught.value.check == "policy"


def test_not_an_envelope_is_an_input_error(org_key):
    with pytest.raises(ImageError):
        load_trust_policy(b"not json", [org_key.public_key()])


def test_non_canonical_payload_is_refused(policy_document, org_key):
    payload = json.dumps(policy_document, indent=2).encode()
    envelope = dsse.sign(payload, PAYLOAD_TYPE, [org_key]).to_bytes()
    with pytest.raises(ImageError, match="canonical"):
        load_trust_policy(envelope, [org_key.public_key()])


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"version": 2}, "version"),
        ({"extra": 1}, "fields"),
        ({"keys": {"Bad Name": "x"}}, "key name"),
        ({"keys": {"k": "not pem"}}, "PEM"),
        ({"scopes": [{"prefix": "org/app", "keys": []}]}, "registry domain"),
        ({"scopes": [{"prefix": "registry.example/Org", "keys": []}]}, "path component"),
        ({"scopes": [{"prefix": "registry.example/org", "keys": ["nobody"]}]}, "undefined"),
        (
            {"scopes": [{"prefix": "r.example", "keys": []}, {"prefix": "r.example", "keys": []}]},
            "twice",
        ),
    ],
)
def test_malformed_policies(policy_document, change, message):
    with pytest.raises(ImageError, match=message):
        parse_trust_policy(canonical_json({**policy_document, **change}))


def test_ed25519_image_key_is_refused(policy_document):
    from cryptography.hazmat.primitives import serialization

    pem = (
        ed25519.Ed25519PrivateKey.generate()
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    with pytest.raises(ImageError, match="P-256"):
        parse_trust_policy(canonical_json({**policy_document, "keys": {"k": pem}}))
