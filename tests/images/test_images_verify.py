"""verify_image: a signed image verifies; unsigned, untrusted, wrong-repository and
tampered images are refused with the check that failed."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from images_support import REFERENCE, TAG, public_pem

from stockade.images.errors import ImageError, ImageRejected
from stockade.images.layout import OCI_MANIFEST, Descriptor, ImageLayout, parse_manifest
from stockade.images.reference import parse_reference
from stockade.images.signature import (
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    sign_image,
    signature_tag,
    simple_signing_payload,
)
from stockade.images.verify import VerifiedImage, reference_matches, verify_image


def rejected(layout: ImageLayout, policy, reference: str = REFERENCE) -> ImageRejected:
    with pytest.raises(ImageRejected) as caught:
        verify_image(layout, TAG, reference, policy)
    return caught.value


def blob_path(layout: ImageLayout, digest: str) -> Path:
    return layout.path / "blobs" / "sha256" / digest.removeprefix("sha256:")


def test_signed_image_verifies(layout, policy, build_key):
    sign_image(layout, TAG, REFERENCE, build_key)
    verified = verify_image(layout, TAG, REFERENCE, policy)
    assert isinstance(verified, VerifiedImage)
    manifest = parse_manifest(layout.blob(layout.resolve(TAG).digest))
    assert verified.reference == REFERENCE
    assert verified.manifest_digest == layout.resolve(TAG).digest
    assert verified.config_digest == manifest.config.digest
    assert verified.layers == tuple(layer.digest for layer in manifest.layers)
    assert len(verified.layers) == 2
    assert verified.signer == "build"


def test_verifies_after_reopening_the_layout(layout_dir, policy, build_key):
    sign_image(ImageLayout.open(layout_dir), TAG, REFERENCE, build_key)
    assert verify_image(ImageLayout.open(layout_dir), TAG, REFERENCE, policy).signer == "build"


def test_unsigned_image_is_refused(layout, policy):
    failure = rejected(layout, policy)
    assert failure.check == "unsigned"
    assert "sha256-" in failure.detail


def test_signature_by_unknown_key_is_refused(layout, policy, stranger_key):
    sign_image(layout, TAG, REFERENCE, stranger_key)
    failure = rejected(layout, policy)
    assert failure.check == "untrusted-key"
    assert "registry.example/org/app" in failure.detail


def test_signature_by_key_scoped_elsewhere_is_refused(layout, policy, other_key):
    sign_image(layout, TAG, REFERENCE, other_key)
    failure = rejected(layout, policy)
    assert failure.check == "untrusted-key"
    assert "'other'" in failure.detail


def test_signature_for_another_repository_is_refused(layout, policy, build_key):
    sign_image(layout, TAG, "registry.example/org/other-app:v1", build_key)
    failure = rejected(layout, policy)
    assert failure.check == "reference"
    assert "registry.example/org/other-app:v1" in failure.detail


def test_signature_for_another_tag_is_refused(layout, policy, build_key):
    sign_image(layout, TAG, "registry.example/org/app:v2", build_key)
    assert rejected(layout, policy).check == "reference"


def test_layer_byte_changed_after_signing_is_refused(layout, policy, build_key):
    sign_image(layout, TAG, REFERENCE, build_key)
    manifest = parse_manifest(layout.blob(layout.resolve(TAG).digest))
    path = blob_path(layout, manifest.layers[-1].digest)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01
    path.write_bytes(bytes(data))
    failure = rejected(layout, policy)
    assert failure.check == "digest"
    assert manifest.layers[-1].digest in failure.detail


def test_config_byte_changed_is_refused(layout, policy, build_key):
    sign_image(layout, TAG, REFERENCE, build_key)
    manifest = parse_manifest(layout.blob(layout.resolve(TAG).digest))
    path = blob_path(layout, manifest.config.digest)
    path.write_bytes(path.read_bytes().replace(b"/bin/true", b"/bin/evil"))
    assert rejected(layout, policy).check == "digest"


def test_manifest_rewritten_to_other_layers_is_unsigned(layout, policy, build_key):
    """Retagging a modified manifest changes its digest: the signature no longer applies."""
    sign_image(layout, TAG, REFERENCE, build_key)
    descriptor = layout.resolve(TAG)
    document = json.loads(layout.blob(descriptor.digest))
    document["layers"] = document["layers"][:1]
    raw = json.dumps(document).encode()
    layout.tag(layout.add_blob(raw, OCI_MANIFEST), TAG)
    assert rejected(layout, policy).check == "unsigned"


def test_signature_copied_to_another_manifest_is_refused(layout, policy, build_key):
    """The old signature manifest moved under the new digest's tag: the payload names the
    old digest."""
    sig_tag = sign_image(layout, TAG, REFERENCE, build_key)
    signature = layout.resolve(sig_tag)
    document = json.loads(layout.blob(layout.resolve(TAG).digest))
    document["layers"] = document["layers"][:1]
    new = layout.add_blob(json.dumps(document).encode(), OCI_MANIFEST)
    layout.tag(new, TAG)
    layout.tag(signature, signature_tag(new.digest))
    failure = rejected(layout, policy)
    assert failure.check == "digest"
    assert "signs manifest" in failure.detail


def _sig_layer(layout: ImageLayout, payload: bytes, signature: str) -> Descriptor:
    blob = layout.add_blob(payload, SIMPLE_SIGNING_MEDIA_TYPE)
    return Descriptor(blob.media_type, blob.digest, blob.size, {SIGNATURE_ANNOTATION: signature})


def _store_signatures(layout: ImageLayout, layers: list[Descriptor]) -> None:
    config = layout.add_blob(b"{}", "application/vnd.oci.image.config.v1+json")
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [layer.to_json() for layer in layers],
    }
    stored = layout.add_blob(json.dumps(manifest).encode(), OCI_MANIFEST)
    layout.tag(stored, signature_tag(layout.resolve(TAG).digest))


def _sign(key: ec.EllipticCurvePrivateKey, payload: bytes) -> str:
    return base64.b64encode(key.sign(payload, ec.ECDSA(hashes.SHA256()))).decode()


def test_wrong_cosign_type_is_refused(layout, policy, build_key):
    digest = layout.resolve(TAG).digest
    payload = simple_signing_payload(REFERENCE, digest).replace(
        b"cosign container image signature", b"atomic container signature"
    )
    _store_signatures(layout, [_sig_layer(layout, payload, _sign(build_key, payload))])
    failure = rejected(layout, policy)
    assert failure.check == "signature"
    assert "critical.type" in failure.detail


def test_payload_changed_after_signing_is_refused(layout, policy, build_key):
    digest = layout.resolve(TAG).digest
    payload = simple_signing_payload("registry.example/org/app:v2", digest)
    forged = simple_signing_payload(REFERENCE, digest)
    _store_signatures(layout, [_sig_layer(layout, forged, _sign(build_key, payload))])
    assert rejected(layout, policy).check == "untrusted-key"


def test_signature_annotation_missing_or_garbled(layout, policy, build_key):
    digest = layout.resolve(TAG).digest
    payload = simple_signing_payload(REFERENCE, digest)
    blob = layout.add_blob(payload, SIMPLE_SIGNING_MEDIA_TYPE)
    _store_signatures(layout, [blob, _sig_layer(layout, payload, "not base64!")])
    failure = rejected(layout, policy)
    assert failure.check == "signature"


def test_tampered_signature_layer_blob_is_refused(layout, policy, build_key):
    sig_tag = sign_image(layout, TAG, REFERENCE, build_key)
    layer = parse_manifest(layout.blob(layout.resolve(sig_tag).digest)).layers[0]
    path = blob_path(layout, layer.digest)
    path.write_bytes(path.read_bytes().replace(b"org/app", b"org/apq"))
    assert rejected(layout, policy).check == "digest"


def test_one_good_signature_among_bad_ones_is_enough(layout, policy, build_key, stranger_key):
    sign_image(layout, TAG, REFERENCE, stranger_key)
    sign_image(layout, TAG, "registry.example/org/elsewhere:v1", build_key)
    assert rejected(layout, policy).check == "reference"  # the most specific failure
    sign_image(layout, TAG, REFERENCE, build_key)
    sig = parse_manifest(
        layout.blob(layout.resolve(signature_tag(layout.resolve(TAG).digest)).digest)
    )
    assert len(sig.layers) == 3
    assert verify_image(layout, TAG, REFERENCE, policy).signer == "build"


def test_repository_without_scope_or_with_empty_scope_is_refused(layout, policy, build_key):
    sign_image(layout, TAG, "registry.example/org/legacy/app:v1", build_key)
    failure = rejected(layout, policy, "registry.example/org/legacy/app:v1")
    assert failure.check == "untrusted-key"
    assert "allows no key" in failure.detail
    sign_image(layout, TAG, "elsewhere.example/app:v1", build_key)
    assert rejected(layout, policy, "elsewhere.example/app:v1").check == "untrusted-key"


def test_repository_only_signature_matches_any_tag(layout, policy, build_key):
    """cosign signs the repository alone; that matches every tag of it."""
    sign_image(layout, TAG, "registry.example/org/app", build_key)
    for expected in (REFERENCE, "registry.example/org/app:other", "registry.example/org/app"):
        assert verify_image(layout, TAG, expected, policy).reference == "registry.example/org/app"


def test_expected_digest_must_be_the_manifest(layout, policy, build_key):
    sign_image(layout, TAG, REFERENCE, build_key)
    digest = layout.resolve(TAG).digest
    assert verify_image(layout, TAG, f"registry.example/org/app@{digest}", policy)
    other = "sha256:" + "0" * 64
    assert rejected(layout, policy, f"registry.example/org/app@{other}").check == "digest"


def test_unreadable_inputs_are_image_errors(layout, policy):
    with pytest.raises(ImageError):
        verify_image(layout, "no-such-tag", REFERENCE, policy)
    with pytest.raises(ImageError):
        verify_image(layout, TAG, "Not A Reference", policy)


@pytest.mark.parametrize(
    ("signed", "expected", "matches"),
    [
        ("registry.example/org/app", "registry.example/org/app:v1", True),
        ("registry.example/org/app:v1", "registry.example/org/app:v1", True),
        ("registry.example/org/app:v1", "registry.example/org/app:v2", False),
        ("registry.example/org/app:v1", "registry.example/org/app", False),
        ("registry.example/org/app:v1", "registry.example/org/app@sha256:" + "a" * 64, True),
        ("registry.example/org/app", "registry.example/org/app2", False),
        ("alpine:3", "docker.io/library/alpine:3", True),
        ("index.docker.io/library/alpine", "alpine:3", True),
    ],
)
def test_reference_rule(signed, expected, matches):
    assert reference_matches(parse_reference(signed), parse_reference(expected)) is matches


# -- review findings: Docker Hub scopes, duplicate keys, normalised references ----------


@pytest.fixture
def hub_policy(make_policy, build_key, other_key):
    """All of Docker Hub trusted for 'other'; the official image xmrig rejected."""
    return make_policy(
        {
            "version": 1,
            "keys": {"build": public_pem(build_key), "other": public_pem(other_key)},
            "scopes": [
                {"prefix": "docker.io", "keys": ["other"]},
                {"prefix": "docker.io/library/xmrig", "keys": []},
            ],
        }
    )


def test_docker_hub_reject_rule_refuses_the_official_image(layout, hub_policy, other_key):
    """The image ``xmrig``, signed by a key trusted for all of Docker Hub, is refused by
    the rule written for it, however the pod spells it."""
    sign_image(layout, TAG, "xmrig:latest", other_key)
    for expected in ("xmrig:latest", "docker.io/xmrig:latest", "index.docker.io/library/xmrig"):
        failure = rejected(layout, hub_policy, expected)
        assert failure.check == "untrusted-key"
        assert "allows no key to sign docker.io/library/xmrig" in failure.detail
    sign_image(layout, TAG, "docker.io/bitnami/redis:7", other_key)
    assert verify_image(layout, TAG, "bitnami/redis:7", hub_policy).signer == "other"


def test_verified_reference_is_normalised(layout, hub_policy, other_key):
    """cosign signs the reference as typed ("alpine:3"); what Stockade records, and
    forbid-lists are compared with, is the one normal form."""
    digest = layout.resolve(TAG).digest
    payload = simple_signing_payload("alpine:3", digest)
    assert b'"docker-reference":"alpine:3"' in payload
    _store_signatures(layout, [_sig_layer(layout, payload, _sign(other_key, payload))])
    verified = verify_image(layout, TAG, "docker.io/library/alpine:3", hub_policy)
    assert verified.reference == "docker.io/library/alpine:3"
    assert verified.to_json()["reference"] == "docker.io/library/alpine:3"


def test_payload_with_a_duplicate_docker_reference_is_refused(layout, policy, build_key):
    """Signed bytes with two readings: a first-wins reader (the signer's review) sees a
    harmless repository, a last-wins reader the production one. containers/image
    refuses such a payload; so does Stockade."""
    digest = layout.resolve(TAG).digest
    payload = simple_signing_payload(REFERENCE, digest).replace(
        b'{"docker-reference":',
        b'{"docker-reference":"registry.example/org/sandbox:v1","docker-reference":',
    )
    assert json.loads(payload)["critical"]["identity"]["docker-reference"] == REFERENCE
    _store_signatures(layout, [_sig_layer(layout, payload, _sign(build_key, payload))])
    failure = rejected(layout, policy)
    assert failure.check == "signature"
    assert "key 'docker-reference' twice" in failure.detail


def _signed_manifest(layout: ImageLayout, raw: bytes, key: ec.EllipticCurvePrivateKey) -> None:
    """Tag ``raw`` as the image and sign its digest (as a build system would, unaware)."""
    descriptor = layout.add_blob(raw, OCI_MANIFEST)
    layout.tag(descriptor, TAG)
    payload = simple_signing_payload(REFERENCE, descriptor.digest)
    _store_signatures(layout, [_sig_layer(layout, payload, _sign(key, payload))])


def test_signed_manifest_with_duplicate_layers_is_refused(layout, policy, build_key):
    """The first "layers" is what Stockade would check and record, the last what a
    last-wins unpacker runs: one signed digest, two images."""
    original = layout.blob(layout.resolve(TAG).digest)
    document = json.loads(original)
    evil = json.dumps(document["layers"][:1]).encode()
    raw = original.rstrip(b"}\n") + b',"layers":' + evil + b"}"
    _signed_manifest(layout, raw, build_key)
    with pytest.raises(ImageError, match="key 'layers' twice"):
        verify_image(layout, TAG, REFERENCE, policy)


@pytest.mark.parametrize("variant", ["Layers", "LAYERS", "layer\u017f"])
def test_signed_manifest_with_a_case_variant_field_is_refused(layout, policy, build_key, variant):
    """Go's encoding/json (umoci, containerd) reads "Layers" as layers, and "layer" plus
    U+017F LATIN SMALL LETTER LONG S too (it folds to "s"): a second reading, like a
    duplicate key."""
    original = layout.blob(layout.resolve(TAG).digest)
    document = json.loads(original)
    evil = json.dumps(document["layers"][:1]).encode()
    raw = original.rstrip(b"}\n") + f',"{variant}":'.encode() + evil + b"}"
    _signed_manifest(layout, raw, build_key)
    with pytest.raises(ImageError, match="Go's JSON decoder reads as 'layers'"):
        verify_image(layout, TAG, REFERENCE, policy)
