"""Reference values from the manifest alone equal those from the release's files."""

from __future__ import annotations

import dataclasses

import pytest

from stockade.appraisal.appraise import build_references
from stockade.appraisal.reference import platform_from_json, predict
from stockade.appraisal.release_reference import (
    ReleaseNotBootable,
    UnsupportedReferenceBank,
    kernel_authority_from_manifest,
    release_reference_from_manifest,
)
from stockade.boot.release import kernel_authority, release_reference
from stockade.evidence.algorithms import Alg


@pytest.fixture(scope="module")
def platform(world):
    return platform_from_json(world.platform_document)


def test_pure_release_reference_equals_the_file_based_one(world):
    manifest, directory = world.current.manifest, world.current.directory
    pure = release_reference_from_manifest(manifest)
    assert pure == release_reference(manifest, directory, [Alg.SHA256])


def test_pure_kernel_authority_and_prediction_equal_the_file_based_ones(world, platform):
    manifest, directory = world.current.manifest, world.current.directory
    authority = kernel_authority_from_manifest(platform, manifest)
    assert authority is not None
    assert authority == kernel_authority(platform, manifest, directory)  # sbverify decides
    pure = predict(platform, release_reference_from_manifest(manifest), [Alg.SHA256], authority)
    files = predict(
        platform,
        release_reference(manifest, directory, [Alg.SHA256]),
        [Alg.SHA256],
        kernel_authority(platform, manifest, directory),
    )
    assert pure.values == files.values
    assert pure.log.marshal() == files.log.marshal()


def test_build_references_holds_that_prediction(world, platform, policy, references):
    (entry,) = references.entries
    manifest = world.current.manifest
    expected = predict(
        platform,
        release_reference_from_manifest(manifest),
        [Alg.SHA256],
        kernel_authority_from_manifest(platform, manifest),
    )
    assert entry.values == expected.values.restricted_to(policy.pcrs)
    assert entry.log == expected.log
    assert entry.release == "stockade-os 1.0.0"
    assert entry.security_version == 3
    assert len(entry.labels) == len(entry.log.events)


def test_other_banks_are_a_typed_error(world):
    with pytest.raises(
        UnsupportedReferenceBank, match="sha256 digests only; no reference values for sha1"
    ):
        release_reference_from_manifest(world.current.manifest, [Alg.SHA1, Alg.SHA256])


def test_no_kernel_authority_without_secure_boot(world, platform):
    off = dataclasses.replace(platform, secure_boot=False)
    assert kernel_authority_from_manifest(off, world.current.manifest) is None


def test_a_kernel_revoked_in_dbx_has_no_reference(world, platform, policy):
    from stockade.appraisal.measured_boot import sha256_signature_list
    from stockade.boot.platform import STOCKADE_OWNER_GUID

    digest = world.current.manifest.kernel.authenticode_sha256
    revoked = dataclasses.replace(
        platform, dbx=(sha256_signature_list(STOCKADE_OWNER_GUID, [digest]),)
    )
    with pytest.raises(ReleaseNotBootable, match="revoked in the platform's dbx"):
        kernel_authority_from_manifest(revoked, world.current.manifest)
    # A policy whose only platform revokes the only release has no reference values.
    from stockade.appraisal.policy import PolicyInvalid

    with pytest.raises(PolicyInvalid, match="no \\(platform, release\\) pair has reference values"):
        build_references(dataclasses.replace(policy, platforms=(revoked,)))
