"""Reference values predicted from the platform reference and the signed release equal what a
booted node's TPM holds, and differ exactly where the node differs."""

from __future__ import annotations

import contextlib
import dataclasses
import json

import pytest
from boot_support import pcrread
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.appraisal.measured_boot import (
    RELEASE_PCR,
    MeasurementInputError,
    PlatformReference,
)
from stockade.appraisal.reference import (
    ReferenceMalformed,
    compare,
    platform_from_json,
    platform_to_json,
    predict,
)
from stockade.boot import boot_node, load_release
from stockade.boot.platform import REFERENCE_FILE
from stockade.boot.release import kernel_authority, release_reference
from stockade.evidence.algorithms import Alg
from stockade.evidence.eventlog import EventType
from stockade.evidence.replay import replay
from stockade.release.errors import ReleaseInvalid

BANKS = [Alg.SHA1, Alg.SHA256]


@pytest.fixture(scope="module")
def prediction(platform_reference, release):
    return predict(
        platform_reference,
        release_reference(release.manifest, release.directory, BANKS),
        BANKS,
        kernel_authority(platform_reference, release.manifest, release.directory),
    )


@pytest.mark.swtpm
def test_prediction_equals_the_booted_nodes_pcrs(software_tpm, platform, release, prediction):
    assert prediction.pcrs == (0, 1, 2, 3, 4, 5, 6, 7, 8, 9, RELEASE_PCR)
    result = boot_node(software_tpm, platform, load_release(release.directory))
    tpm = pcrread(software_tpm.tcti, ["sha1", "sha256"], list(prediction.pcrs))
    assert compare(prediction.values, tpm) == ()
    assert prediction.log.marshal() == result.log_bytes


@pytest.mark.swtpm
def test_modified_usr_image_changes_only_the_release_pcr(
    software_tpm, platform, release, prediction, modified_usr
):
    result = boot_node(
        software_tpm, platform, load_release(release.directory, usr_image=modified_usr)
    )
    assert result.booted  # Secure Boot does not cover /usr; the measurement does
    tpm = pcrread(software_tpm.tcti, ["sha1", "sha256"], list(prediction.pcrs))
    assert {(d.bank, d.pcr) for d in compare(prediction.values, tpm)} == {
        ("sha1", RELEASE_PCR),
        ("sha256", RELEASE_PCR),
    }
    verity = result.log.events[-3]
    assert verity.pcr == RELEASE_PCR
    assert verity.data.startswith(b"stockade-usr-verity: ")
    assert verity.data != prediction.log.events[-3].data
    assert bytes.fromhex(verity.data.split(b": ")[1].decode()) != (
        release.manifest.usr.verity.root_hash
    )


def test_prediction_needs_no_tpm_and_replays_its_own_log(prediction):
    assert replay(prediction.log).values == prediction.values
    assert prediction.values.get(Alg.SHA256, 0) != bytes(32)


def test_platform_reference_json_round_trips(platform_dir, platform_reference):
    document = json.loads((platform_dir / REFERENCE_FILE).read_text())
    assert platform_to_json(platform_from_json(document)) == document
    assert [s.name for s in platform_reference.stages] == ["shim", "grub"]
    assert all(
        s.authority == platform_reference.db[0].entries[0] for s in platform_reference.stages
    )


def test_platform_reference_errors_name_the_field(platform_dir):
    document = json.loads((platform_dir / REFERENCE_FILE).read_text())
    document["stages"][1]["authority"] = "00" * 32
    with pytest.raises(ReferenceMalformed, match=r"stages\[1\]\.authority"):
        platform_from_json(document)
    del document["db"]
    with pytest.raises(ReferenceMalformed, match="lacks db"):
        platform_from_json(document)


def test_no_reference_values_for_a_chain_that_would_not_boot(platform_reference, release):
    reference = release_reference(release.manifest, release.directory, BANKS)
    with pytest.raises(MeasurementInputError, match="authority for kernel"):
        predict(platform_reference, reference, BANKS, kernel_authority=None)
    no_authority = dataclasses.replace(
        platform_reference,
        stages=tuple(dataclasses.replace(s, authority=None) for s in platform_reference.stages),
    )
    with pytest.raises(MeasurementInputError, match="authority for shim"):
        predict(no_authority, reference, BANKS, platform_reference.stages[0].authority)


def test_secure_boot_off_reference_has_no_authorities(platform_reference, release):
    off: PlatformReference = dataclasses.replace(platform_reference, secure_boot=False)
    reference = release_reference(release.manifest, release.directory, BANKS)
    prediction = predict(off, reference, BANKS, kernel_authority=None)
    types = [e.type for e in prediction.log.events]
    assert EventType.EV_EFI_VARIABLE_AUTHORITY not in types
    assert types.count(EventType.EV_EFI_BOOT_SERVICES_APPLICATION) == 3


def test_release_files_must_match_the_signed_manifest(release, tmp_path, kernels):
    copy = tmp_path / "release"
    copy.mkdir()
    for path in release.directory.iterdir():
        (copy / path.name).write_bytes(path.read_bytes())
    (copy / release.manifest.kernel.file.path).write_bytes(kernels.modified.read_bytes())
    with pytest.raises(ReleaseInvalid, match="vmlinuz: sha256 differs"):
        release_reference(release.manifest, copy, BANKS)


def test_a_bank_without_digests_is_refused(platform_reference, release):
    reference = release_reference(release.manifest, release.directory, BANKS)
    with pytest.raises(MeasurementInputError, match="no sha384 digest"):
        predict(
            platform_reference,
            reference,
            [Alg.SHA384],
            platform_reference.stages[0].authority,
        )


_JSON = st.recursive(
    st.none() | st.booleans() | st.integers(-2, 2**70) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner),
    max_leaves=6,
)


def test_non_ascii_base64_in_a_platform_reference_is_a_typed_error(platform_dir):
    """Found by the property below: base64 text with a non-ASCII character raised a bare
    ValueError from the standard library instead of the reference's typed error."""
    document = json.loads((platform_dir / REFERENCE_FILE).read_text())
    entries = [entry for sig_list in document["db"] for entry in sig_list["entries"]]
    assert entries, "the development platform's db has entries"
    entries[0]["data"] = "\x80"
    with pytest.raises(MeasurementInputError, match="not base64"):
        platform_from_json(document)


@settings(
    max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(data=st.data())
def test_any_damaged_platform_reference_is_a_typed_error(platform_dir, data):
    document = json.loads((platform_dir / REFERENCE_FILE).read_text())
    target = document
    path = []
    while isinstance(target, dict | list) and target and data.draw(st.booleans()):
        key = data.draw(
            st.sampled_from(sorted(target) if isinstance(target, dict) else range(len(target)))
        )
        path.append(key)
        if not isinstance(target[key], dict | list):
            break
        target = target[key]
    if path:
        parent = document
        for key in path[:-1]:
            parent = parent[key]
        parent[path[-1]] = data.draw(_JSON)
    with contextlib.suppress(MeasurementInputError):  # anything else fails the test
        platform_from_json(document)
