"""Releases accepted by signer and minimum security version, from the envelope a node sends
with its evidence (issue 18): a new release signed by the org key needs no policy edit, and
an envelope is bound to the boot the quote and the replayed log show. Real signed releases,
real boots on a software TPM (tests/appraisal/conftest.py).

Attacks: an envelope signed by another key; a genuinely signed envelope of another release
than the one booted (PCR 12 measured another manifest digest); a signed release below the
minimum (rollback); an oversized or malformed envelope; a signed envelope with a boot that
differs elsewhere (Secure Boot off). Each is a contraindicated result naming why, never an
exception."""

from __future__ import annotations

import dataclasses
import json
from typing import Any

import jsonschema
import pytest
from appraisal_support import Boots, Captured, Release, World, make_release

from stockade.appraisal.appraise import (
    MAX_RELEASE_ENVELOPE,
    Appraisal,
    NodeView,
    ReferenceSet,
    SignedPredictions,
    Status,
    appraise,
    build_references,
    reappraise_quoted,
)
from stockade.appraisal.policy import Policy, PolicyInvalid, parse_policy
from stockade.appraisal.policy_schema import policy_schema
from stockade.release.keys import load_signing_key
from stockade.release.manifest import manifest_digest, sign_manifest

pytestmark = pytest.mark.tools


def signer_rule(world: World, minimum: int = 3, **changes: Any) -> Policy:
    """The "no policy edit" policy: the org key and a minimum, no release listed."""
    releases: dict[str, Any] = {
        "signer": world.keys.paths.org_pub.read_text(),
        "min_security_version": minimum,
    }
    releases.update(changes)
    return parse_policy(world.document(releases=releases), 1)


def references_of(policy: Policy) -> ReferenceSet:
    references = build_references(policy)
    assert isinstance(references, ReferenceSet)
    return references


def with_envelope(captured: Captured, envelope: bytes | None) -> Captured:
    return dataclasses.replace(
        captured, evidence=dataclasses.replace(captured.evidence, release_envelope=envelope)
    )


def appraised(
    policy: Policy, references: ReferenceSet, node: NodeView, captured: Captured
) -> Appraisal:
    return appraise(policy, references, node, captured.evidence, captured.evidence.nonce)


@pytest.fixture(scope="module")
def newer(world: World, tmp_path_factory: pytest.TempPathFactory) -> Release:
    """The organization's next release (1.1.0, security version 4), signed by its key and
    never listed in a policy, never booted here."""
    return make_release(
        tmp_path_factory.mktemp("newer"), world.keys, world.signed_kernel, "1.1.0", 4, 11
    )


def test_a_policy_may_list_no_release(world: World) -> None:
    policy = signer_rule(world)
    assert policy.releases == ()
    references = references_of(policy)
    assert references.entries == ()


def test_a_signed_release_the_policy_does_not_list_is_affirmed(
    world: World, boots: Boots, node: NodeView
) -> None:
    policy = signer_rule(world)
    references = references_of(policy)
    result = appraised(
        policy, references, node, with_envelope(boots.good, world.current.envelope.to_bytes())
    )
    assert result.status is Status.AFFIRMING, result.reasons
    assert result.reasons == ()
    assert result.matched_release == "stockade-os 1.0.0"
    entry = result.matched_reference
    assert entry is not None
    assert entry.manifest_digest == manifest_digest(world.current.manifest)
    assert entry.security_version == 3
    assert all(value == 2 for value in result.trust_vector.values())


def test_a_new_release_needs_no_policy_edit(world: World, boots: Boots, node: NodeView) -> None:
    # The policy was written when 0.9.0 was current; the fleet now boots 1.0.0.
    policy = parse_policy(
        world.document(
            releases={
                "signer": world.keys.paths.org_pub.read_text(),
                "min_security_version": 2,
                "manifests": [world.old.envelope.to_json()],
            }
        ),
        1,
    )
    references = references_of(policy)
    without = appraised(policy, references, node, boots.good)
    assert without.status is Status.CONTRAINDICATED  # unlisted, and no envelope: fail closed
    assert without.matched_release is None
    result = appraised(
        policy, references, node, with_envelope(boots.good, world.current.envelope.to_bytes())
    )
    assert result.status is Status.AFFIRMING, result.reasons
    assert result.matched_release == "stockade-os 1.0.0"
    # The listed release still affirms as before, envelope or not.
    listed = appraised(policy, references, node, boots.rollback)
    assert listed.status is Status.AFFIRMING, listed.reasons


def test_predictions_are_made_once_per_release(world: World, boots: Boots, node: NodeView) -> None:
    policy = signer_rule(world)
    references = references_of(policy)
    envelope = world.current.envelope.to_bytes()
    first = appraised(policy, references, node, with_envelope(boots.good, envelope))
    assert len(references.signed) == 1
    again = appraised(policy, references, node, with_envelope(boots.good_later, envelope))
    assert len(references.signed) == 1
    assert again.matched_reference is first.matched_reference  # the cached prediction


def test_the_prediction_cache_is_bounded() -> None:
    cache = SignedPredictions(kept=2)
    made: list[bytes] = []

    def maker(digest: bytes) -> Any:
        def make() -> ReferenceSet:
            made.append(digest)
            return ReferenceSet("p@1", (0,), ())

        return make

    for digest in (b"a", b"b", b"a", b"c", b"a", b"b"):
        cache.get(("p@1", digest), maker(digest))
    # "a" stays (used most recently), "b" was dropped for "c" and is made again.
    assert made == [b"a", b"b", b"c", b"b"]
    assert len(cache) == 2
    cache.get(("p@2", b"a"), maker(b"a"))  # another policy version: another prediction
    assert made[-1] == b"a" and len(made) == 5


def test_no_envelope_fails_closed(world: World, boots: Boots, node: NodeView) -> None:
    policy = signer_rule(world)
    result = appraised(policy, references_of(policy), node, boots.good)
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons[0].startswith("the evidence carries no release envelope")
    assert result.matched_release is None


def test_an_envelope_signed_by_another_key_is_refused(
    world: World, boots: Boots, node: NodeView
) -> None:
    rogue = load_signing_key(world.rogue_keys.paths.org_key.read_bytes())
    forged = sign_manifest(world.current.manifest, [rogue]).to_bytes()
    policy = signer_rule(world)
    result = appraised(policy, references_of(policy), node, with_envelope(boots.good, forged))
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons[0].startswith(
        "release envelope does not verify under the policy's signers: "
    )
    assert result.trust_vector["executables"] == 96
    assert result.matched_release is None


def test_a_signed_envelope_of_another_release_than_booted_is_refused(
    world: World, boots: Boots, node: NodeView, newer: Release
) -> None:
    # The node booted 1.0.0 and presents the organization's genuine 1.1.0 envelope.
    policy = signer_rule(world)
    result = appraised(
        policy, references_of(policy), node, with_envelope(boots.good, newer.envelope.to_bytes())
    )
    assert result.status is Status.CONTRAINDICATED
    booted = manifest_digest(world.current.manifest).hex()[:16]
    assert result.reasons[0] == (
        f"release envelope of stockade-os 1.1.0 (manifest sha256:"
        f"{manifest_digest(newer.manifest).hex()[:16]}...) is not the release the quoted boot "
        f"measured into PCR 12 (sha256:{booted}...)"
    )
    assert result.matched_release is None
    # And a rollback node presenting the current release's envelope (both signed, both
    # at or above a minimum of 2): the same refusal.
    lenient = signer_rule(world, minimum=2)
    rollback = appraised(
        lenient,
        references_of(lenient),
        node,
        with_envelope(boots.rollback, world.current.envelope.to_bytes()),
    )
    assert rollback.status is Status.CONTRAINDICATED
    assert "is not the release the quoted boot measured into PCR 12" in rollback.reasons[0]


def test_a_signed_release_below_the_minimum_is_refused(
    world: World, boots: Boots, node: NodeView
) -> None:
    policy = signer_rule(world)  # minimum 3; 0.9.0 is security version 2
    result = appraised(
        policy,
        references_of(policy),
        node,
        with_envelope(boots.rollback, world.old.envelope.to_bytes()),
    )
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons[0] == (
        "signed release stockade-os 0.9.0 has security version 2, below the policy's "
        "minimum 3 (rollback refused)"
    )
    # Under a minimum of 2 the same evidence affirms: the minimum is what refused it.
    lenient = signer_rule(world, minimum=2)
    accepted = appraised(
        lenient,
        references_of(lenient),
        node,
        with_envelope(boots.rollback, world.old.envelope.to_bytes()),
    )
    assert accepted.status is Status.AFFIRMING, accepted.reasons


def test_an_oversized_envelope_is_refused(world: World, boots: Boots, node: NodeView) -> None:
    # A genuine envelope padded with JSON whitespace past the bound.
    envelope = world.current.envelope.to_bytes()
    padded = envelope + b" " * (MAX_RELEASE_ENVELOPE + 1 - len(envelope))
    policy = signer_rule(world)
    result = appraised(policy, references_of(policy), node, with_envelope(boots.good, padded))
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons[0] == (
        f"release envelope refused: {MAX_RELEASE_ENVELOPE + 1} bytes, more than the "
        f"{MAX_RELEASE_ENVELOPE} accepted"
    )
    at_bound = envelope + b" " * (MAX_RELEASE_ENVELOPE - len(envelope))
    fits = appraised(policy, references_of(policy), node, with_envelope(boots.good, at_bound))
    assert fits.status is Status.AFFIRMING, fits.reasons


@pytest.mark.parametrize(
    "envelope",
    [
        b"",
        b"not json",
        b"[]",
        b'{"payload": "%%%", "payloadType": "x", "signatures": []}',
        json.dumps({"payload": "e30=", "payloadType": "x"}).encode(),
    ],
)
def test_a_malformed_envelope_is_refused(
    world: World, boots: Boots, node: NodeView, envelope: bytes
) -> None:
    policy = signer_rule(world)
    result = appraised(policy, references_of(policy), node, with_envelope(boots.good, envelope))
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons[0].startswith("release envelope malformed: "), result.reasons


def test_a_signed_envelope_whose_manifest_is_malformed_is_refused(
    world: World, boots: Boots, node: NodeView
) -> None:
    from stockade.release.dsse import sign
    from stockade.release.manifest import PAYLOAD_TYPE

    org = load_signing_key(world.keys.paths.org_key.read_bytes())
    signed_garbage = sign(b'{"name": "x"}', PAYLOAD_TYPE, [org]).to_bytes()
    policy = signer_rule(world)
    result = appraised(
        policy, references_of(policy), node, with_envelope(boots.good, signed_garbage)
    )
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons[0].startswith("release envelope refused: "), result.reasons


def test_an_envelope_does_not_excuse_the_rest_of_the_boot(
    world: World, boots: Boots, node: NodeView
) -> None:
    # The current release's own envelope, on a boot with Secure Boot off.
    policy = signer_rule(world)
    result = appraised(
        policy,
        references_of(policy),
        node,
        with_envelope(boots.secure_boot_off, world.current.envelope.to_bytes()),
    )
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons[0] == (
        "the signed release the node sent matches no prediction on the policy's platforms"
    )
    assert result.reasons[1].startswith(
        "no accepted release matches; closest reference: stockade-os 1.0.0 on platform 0"
    )
    assert any("PCR 7" in reason for reason in result.reasons)
    assert result.matched_release is None


def test_a_dry_run_cannot_tell_under_a_signer_rule(world: World, boots: Boots) -> None:
    policy = signer_rule(world)
    outcome = reappraise_quoted(policy, references_of(policy), boots.good.evidence.pcrs)
    assert outcome.status is None
    assert "envelope" in outcome.reasons[0]


def test_the_schema_takes_a_signer_rule() -> None:
    validator = jsonschema.Draft202012Validator(policy_schema())
    rule = {
        "id": "production",
        "pcrs": "sha256:0,1,2,3,4,5,6,7,8,9,12",
        "result_validity_seconds": 120,
        "releases": {"signer": "keys/org.pub", "min_security_version": 3},
        "platforms": ["platforms/dev.json"],
    }
    validator.validate(rule)
    captured = {
        "id": "production",
        "result_validity_seconds": 120,
        "captured": {"kind": "captured", "id": "golden"},
        "releases": {"signer": "keys/org.pub", "min_security_version": 3},
    }
    with pytest.raises(jsonschema.ValidationError):
        validator.validate(captured)
    validator.validate(
        {**captured, "releases": {**captured["releases"], "manifests": ["r.dsse.json"]}}
    )


def test_a_captured_platform_still_lists_its_releases(world: World) -> None:
    with pytest.raises(PolicyInvalid) as error:
        parse_policy(
            {
                "id": "production",
                "result_validity_seconds": 120,
                "captured": {"kind": "captured", "id": "golden", "banks": ["sha256"], "pcrs": {}},
                "releases": {
                    "signer": world.keys.paths.org_pub.read_text(),
                    "min_security_version": 3,
                },
            },
            1,
        )
    assert error.value.field == "releases.manifests"
    assert "captured platform" in error.value.detail
