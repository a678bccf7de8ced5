"""Policy documents: what parse_policy accepts, and the field it names when it refuses."""

from __future__ import annotations

import json

import pytest

from stockade.appraisal.policy import Enforcement, PolicyInvalid, parse_policy


def test_the_documented_policy_parses(world):
    policy = parse_policy(world.document(), 4)
    assert policy.ref == "production@4"
    assert str(policy.pcrs) == "sha256:0,1,2,3,4,5,6,7,8,9,12"
    assert [m.version for m in policy.releases] == ["1.0.0"]
    assert policy.enforce["clock"] is Enforcement.ENFORCE  # default
    assert policy.secure_boot.db_must_contain == (world.keys.secure_boot_fingerprint,)


def test_a_manifest_may_be_given_as_envelope_json_text(world):
    releases = {
        "signers": [world.keys.paths.org_pub.read_text()],
        "min_security_version": 3,
        "manifests": [json.dumps(world.current.envelope.to_json())],
    }
    assert parse_policy(world.document(releases=releases), 1).releases[0].version == "1.0.0"


def _releases(world, **changes):
    releases = {
        "signers": [world.keys.paths.org_pub.read_text()],
        "min_security_version": 3,
        "manifests": [world.current.envelope.to_json()],
    }
    releases.update(changes)
    return releases


def test_bad_pem_names_the_signer(world):
    with pytest.raises(PolicyInvalid, match=r"releases\.signers\[0\]: .*not a PEM public key"):
        parse_policy(world.document(releases=_releases(world, signers=["not a key"])), 1)


def test_unverifiable_manifest_names_the_manifest(world):
    rogue = world.rogue_keys.paths.org_pub.read_text()
    with pytest.raises(PolicyInvalid, match=r"releases\.manifests\[0\]: .*valid signature") as err:
        parse_policy(world.document(releases=_releases(world, signers=[rogue])), 1)
    assert err.value.field == "releases.manifests[0]"


def test_a_tampered_envelope_does_not_verify(world):
    envelope = world.current.envelope.to_json()
    envelope["signatures"][0]["sig"] = envelope["signatures"][0]["sig"][::-1]
    with pytest.raises(PolicyInvalid, match=r"releases\.manifests\[0\]"):
        parse_policy(world.document(releases=_releases(world, manifests=[envelope])), 1)


@pytest.mark.parametrize("pcrs", ["sha1:0,1,7", "sha256:0,7+sha1:0", "sha384:0"])
def test_pcrs_must_be_sha256_only(world, pcrs):
    with pytest.raises(
        PolicyInvalid, match=r"^policy pcrs: .*only the sha256 bank.*sha256 digests"
    ):
        parse_policy(world.document(pcrs=pcrs), 1)


def test_pcrs_without_reference_values_are_refused(world):
    with pytest.raises(PolicyInvalid, match=r"^policy pcrs: PCR 10, 14 has no reference value"):
        parse_policy(world.document(pcrs="sha256:0,7,10,14"), 1)


def test_unknown_enforce_key_is_named(world):
    with pytest.raises(PolicyInvalid, match=r"^policy enforce\.kernel: unknown check") as err:
        parse_policy(world.document(enforce={"kernel": "warn"}), 1)
    assert err.value.field == "enforce.kernel"


def test_bad_enforce_value_is_named(world):
    with pytest.raises(
        PolicyInvalid, match=r"^policy enforce\.clock: 'maybe' is not enforce or warn"
    ):
        parse_policy(world.document(enforce={"clock": "maybe"}), 1)


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"id": ""}, "id"),
        ({"id": "a@b"}, "id"),
        ({"result_validity_seconds": 0}, "result_validity_seconds"),
        ({"platforms": []}, "platforms"),
        ({"platforms": [{"schema": "nope"}]}, "platforms[0]"),
        ({"secure_boot": {"required": "yes"}}, "secure_boot.required"),
        ({"secure_boot": {"db_must_contain": ["zz"]}}, "secure_boot.db_must_contain[0]"),
        ({"colour": "blue"}, "colour"),
    ],
)
def test_malformed_fields_are_named(world, changes, field):
    with pytest.raises(PolicyInvalid) as err:
        parse_policy(world.document(**changes), 1)
    assert err.value.field == field


def test_missing_fields_are_named(world):
    document = world.document()
    del document["releases"]["min_security_version"]
    with pytest.raises(PolicyInvalid, match=r"^policy releases\.min_security_version: is required"):
        parse_policy(document, 1)
