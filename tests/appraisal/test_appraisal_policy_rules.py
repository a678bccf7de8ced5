"""Release rules by signer and minimum security version, on real swtpm evidence: the
one-key ``releases.signer`` form, a signer rule without manifests accepted (it lists no
release: nodes send theirs), a rollback release (security version 2 under a minimum of 3)
never affirmed, even by references built outside ``parse_policy``, and ``reappraise_quoted``
(what a policy dry run runs on stored quoted PCR values) agreeing with ``appraise``."""

from __future__ import annotations

import dataclasses

import pytest
from appraisal_support import Boots, World

from stockade.appraisal.appraise import (
    CapturedReferences,
    NodeView,
    Status,
    appraise,
    build_references,
    reappraise_quoted,
)
from stockade.appraisal.policy import PolicyInvalid, parse_policy
from stockade.evidence.pcr_values import PcrValues

pytestmark = pytest.mark.tools


def _releases(world: World, **changes: object) -> dict[str, object]:
    releases: dict[str, object] = {
        "signer": world.keys.paths.org_pub.read_text(),
        "min_security_version": 3,
        "manifests": [world.current.envelope.to_json()],
    }
    releases.update(changes)
    return releases


def test_one_signer_form_is_the_signers_form(world: World) -> None:
    one = parse_policy(world.document(releases=_releases(world)), 1)
    listed = parse_policy(world.document(), 1)
    assert one.signers == listed.signers
    assert [m.version for m in one.releases] == ["1.0.0"]


def test_signer_and_signers_together_are_refused(world: World) -> None:
    releases = _releases(world, signers=[world.keys.paths.org_pub.read_text()])
    with pytest.raises(PolicyInvalid) as error:
        parse_policy(world.document(releases=releases), 1)
    assert error.value.field == "releases.signer"


def test_a_signer_rule_without_manifests_lists_no_release(world: World) -> None:
    # Releases then come with the evidence (tests/appraisal/test_appraisal_signer_rule.py).
    releases = _releases(world)
    del releases["manifests"]
    policy = parse_policy(world.document(releases=releases), 1)
    assert policy.releases == ()
    assert policy.min_security_version == 3
    assert len(policy.signers) == 1


def test_a_release_signed_by_another_key_is_refused_under_the_signer(world: World) -> None:
    rogue = world.rogue_keys.paths.org_pub.read_text()
    with pytest.raises(PolicyInvalid, match=r"valid signature") as error:
        parse_policy(world.document(releases=_releases(world, signer=rogue)), 1)
    assert error.value.field == "releases.manifests[0]"


def test_a_listed_release_below_the_minimum_is_refused(world: World) -> None:
    releases = _releases(world, manifests=[world.old.envelope.to_json()])
    with pytest.raises(PolicyInvalid, match=r"security") as error:
        parse_policy(world.document(releases=releases), 1)
    assert error.value.field == "releases.manifests[0]"


def test_a_node_booting_a_release_below_the_minimum_is_contraindicated(
    world: World, boots: Boots, node: NodeView
) -> None:
    # The attack: references that predict the rollback release (the old release was
    # accepted when they were built) used under a policy whose minimum is now 3.
    lenient = parse_policy(
        world.document(
            releases=_releases(
                world,
                min_security_version=2,
                manifests=[world.current.envelope.to_json(), world.old.envelope.to_json()],
            )
        ),
        1,
    )
    references = build_references(lenient)
    accepted = appraise(
        lenient, references, node, boots.rollback.evidence, boots.rollback.evidence.nonce
    )
    assert accepted.status is Status.AFFIRMING  # the lenient policy accepts 0.9.0
    strict = dataclasses.replace(lenient, min_security_version=3)
    result = appraise(
        strict, references, node, boots.rollback.evidence, boots.rollback.evidence.nonce
    )
    assert result.status is Status.CONTRAINDICATED
    assert result.reasons == (
        "release stockade-os 0.9.0 has security version 2, below the policy's minimum 3",
    )
    assert result.trust_vector["executables"] == 96
    # The current release still affirms under the strict minimum.
    good = appraise(strict, references, node, boots.good.evidence, boots.good.evidence.nonce)
    assert good.status is Status.AFFIRMING


def test_reappraise_quoted_agrees_with_appraise(world: World, boots: Boots, node: NodeView) -> None:
    policy = parse_policy(world.document(), 1)
    references = build_references(policy)
    for captured in (boots.good, boots.rollback, boots.secure_boot_off, boots.tampered):
        full = appraise(policy, references, node, captured.evidence, captured.evidence.nonce)
        quick = reappraise_quoted(policy, references, captured.evidence.pcrs)
        assert quick.status is full.status, (quick, full.reasons)
    rollback = reappraise_quoted(policy, references, boots.rollback.evidence.pcrs)
    assert rollback.reasons[0].startswith("no accepted release matches; closest reference: ")
    strict = dataclasses.replace(policy, min_security_version=4)
    assert reappraise_quoted(strict, references, boots.good.evidence.pcrs).reasons == (
        "release stockade-os 1.0.0 has security version 3, below the policy's minimum 4",
    )


def test_reappraise_quoted_cannot_tell_without_the_values(world: World, boots: Boots) -> None:
    policy = parse_policy(world.document(), 1)
    references = build_references(policy)
    bank = dict(next(iter(boots.good.evidence.pcrs.banks.values())))
    del bank[12]
    partial = PcrValues({next(iter(boots.good.evidence.pcrs.banks)): bank})
    outcome = reappraise_quoted(policy, references, partial)
    assert outcome.status is None
    assert outcome.reasons == ("PCR 12 was not quoted in the stored result",)
    captured = CapturedReferences(policy.ref, (0,), ())
    assert reappraise_quoted(policy, captured, boots.good.evidence.pcrs).status is None
