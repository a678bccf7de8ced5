"""The trust policy: org-signed DSSE, canonical, longest prefix wins, reject by default."""

from __future__ import annotations

import base64
import hashlib
import json

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from images_support import public_pem

from stockade.images.errors import ImageError, ImageRejected
from stockade.images.policy import (
    PAYLOAD_TYPE,
    load_trust_policy,
    parse_trust_policy,
    sign_trust_policy,
)
from stockade.images.reference import check_scope, normalise_repository, scope_covers
from stockade.release import dsse
from stockade.strict_json import canonical_json


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


# -- Docker Hub scopes mean what the references written for them normalise to ----------


def xmrig_policy(policy_document, prefix: str) -> dict[str, object]:
    """The review's policy: all of Docker Hub trusted for key 'other', and a reject rule
    meant for the miner image ``xmrig`` (``docker pull xmrig``)."""
    return {
        **policy_document,
        "scopes": [
            {"prefix": "docker.io", "keys": ["other"]},
            {"prefix": prefix, "keys": []},
        ],
    }


def test_ambiguous_docker_hub_reject_rule_is_refused_when_signing(policy_document, org_key):
    """``docker.io/xmrig`` covered ``docker.io/xmrig/*`` only; ``xmrig`` (that is
    ``docker.io/library/xmrig``) fell through to the ``docker.io`` scope and verified."""
    with pytest.raises(ImageError) as caught:
        sign_trust_policy(xmrig_policy(policy_document, "docker.io/xmrig"), org_key)
    message = str(caught.value)
    assert "scopes[1].prefix" in message
    assert "ambiguous" in message
    assert "'docker.io/library/xmrig'" in message
    assert "'docker.io/xmrig/'" in message


def test_ambiguous_docker_hub_scope_in_an_org_signed_policy_is_refused(policy_document, org_key):
    """A policy signed before scopes were checked (or by another tool) does not load:
    the node refuses every image rather than run one the author meant to reject."""
    payload = canonical_json(xmrig_policy(policy_document, "docker.io/xmrig"))
    envelope = dsse.sign(payload, PAYLOAD_TYPE, [org_key]).to_bytes()
    with pytest.raises(ImageError, match="ambiguous"):
        load_trust_policy(envelope, [org_key.public_key()])


def test_docker_hub_official_image_reject_rule(make_policy, policy_document):
    policy = make_policy(xmrig_policy(policy_document, "docker.io/library/xmrig"))
    for written in ("xmrig", "docker.io/xmrig", "index.docker.io/library/xmrig"):
        assert policy.keys_for(written) == (), written
    assert policy.keys_for("xmrig/xmrig") == ("other",)
    assert policy.keys_for("alpine") == ("other",)


def test_docker_hub_namespace_scope_ends_in_a_slash(make_policy, policy_document):
    policy = make_policy(xmrig_policy(policy_document, "docker.io/xmrig/"))
    assert policy.keys_for("xmrig/xmrig") == ()
    assert policy.keys_for("docker.io/xmrig/miner/v6") == ()
    assert policy.keys_for("xmrig") == ("other",)  # the author wrote the namespace, not the image
    assert policy.keys_for("xmrig-tools/app") == ("other",)


@pytest.mark.parametrize(
    ("prefix", "message"),
    [
        ("docker.io/xmrig", "ambiguous"),
        ("docker.io/library/", "write 'docker.io/library'"),
        ("docker.io/", "write 'docker.io'"),
        ("registry.example/", "write 'registry.example'"),
        ("registry.example/org/", "write 'registry.example/org'"),
        ("docker.io/bitnami/redis/", "write 'docker.io/bitnami/redis'"),
        ("docker.io/xmrig//", "path component ''"),
        ("registry.example//org", "path component ''"),
        ("index.docker.io/library", "write 'docker.io'"),
        ("index.docker.io", "write 'docker.io'"),
        ("xmrig", "registry domain"),
        ("library/xmrig", "registry domain"),
        ("Docker.io/library", "registry domain"),
        ("registry.example/" + "a" * 250, "longer than 255"),
    ],
)
def test_scopes_normalisation_would_change_or_that_cover_nothing_are_refused(
    policy_document, prefix, message
):
    document = {**policy_document, "scopes": [{"prefix": prefix, "keys": []}]}
    with pytest.raises(ImageError, match=message):
        parse_trust_policy(canonical_json(document))


@pytest.mark.parametrize(
    "prefix",
    [
        "docker.io",
        "docker.io/library",
        "docker.io/library/xmrig",
        "docker.io/xmrig/",
        "docker.io/bitnami/redis",
        "registry.example",
        "registry.example/org",
        "127.0.0.1:5000/org/app",
        "localhost/app",
    ],
)
def test_every_accepted_scope_covers_what_is_written_under_it(prefix):
    """The invariant behind the review's finding: a reference spelled as the scope (minus
    a namespace's '/') or one component under it normalises into the scope."""
    assert check_scope(prefix) == prefix
    base = prefix.removesuffix("/")
    assert scope_covers(prefix, normalise_repository(base + "/app"))
    if not prefix.endswith("/") and "/" in prefix:
        assert scope_covers(prefix, normalise_repository(base))


@pytest.mark.parametrize(
    ("prefix", "repository", "covered"),
    [
        ("registry.example/org", "registry.example/org", True),
        ("registry.example/org", "registry.example/org/app", True),
        ("registry.example/org", "registry.example/organisation", False),
        ("registry.example/org", "registry.example/org-tools/app", False),
        ("registry.example/org", "registry.example/org.io/app", False),
        ("registry.example", "registry.example.evil/app", False),
        ("registry.example", "registry.example:5000/app", False),
        ("docker.io/xmrig/", "docker.io/xmrig/xmrig", True),
        ("docker.io/xmrig/", "docker.io/library/xmrig", False),
        ("docker.io/xmrig/", "docker.io/xmrigs/app", False),
        ("docker.io/library/xmrig", "docker.io/library/xmrig-proxy", False),
    ],
)
def test_scopes_match_whole_path_components(prefix, repository, covered):
    assert scope_covers(prefix, repository) is covered


# -- the policy payload is read strictly, in the shared canonical form ------------------


def test_duplicate_key_in_an_org_signed_policy_is_refused(policy_document, org_key, other_key):
    """Two "keys" objects: the one a last-wins reader takes trusts only 'other'."""
    canonical = canonical_json(policy_document).decode()
    forged = canonical.replace(
        '"keys":{', '"keys":{"other":' + json.dumps(public_pem(other_key)) + '},"keys":{', 1
    )
    envelope = dsse.sign(forged.encode(), PAYLOAD_TYPE, [org_key]).to_bytes()
    with pytest.raises(ImageError, match="key 'keys' twice"):
        load_trust_policy(envelope, [org_key.public_key()])


def test_policy_digest_is_unchanged_by_the_shared_canonical_form(policy_document):
    """Valid policies are ASCII, so the shared UTF-8 form is byte for byte the ASCII form
    policies were signed in before: their digests (what nodes measure) are stable."""
    old = json.dumps(policy_document, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    assert canonical_json(policy_document) == old.encode("ascii")


def test_non_ascii_policies_are_refused_however_encoded(policy_document, org_key, build_key):
    document = {**policy_document, "keys": {"bücher": public_pem(build_key)}, "scopes": []}
    with pytest.raises(ImageError, match="key name 'bücher'"):
        sign_trust_policy(document, org_key)
    escaped = json.dumps(document, sort_keys=True, separators=(",", ":")).encode()
    with pytest.raises(ImageError, match="not canonical"):
        parse_trust_policy(escaped)
    with pytest.raises(ImageError, match="canonical JSON"):
        sign_trust_policy({**policy_document, "version": float("nan")}, org_key)


def test_version_must_be_the_integer_1(policy_document):
    payload = canonical_json(policy_document).replace(b'"version":1', b'"version":1.0')
    with pytest.raises(ImageError, match=r"version 1\.0 is not 1"):
        parse_trust_policy(payload)
