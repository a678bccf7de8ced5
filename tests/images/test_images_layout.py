"""OCI image layouts as umoci writes them; references; the simple-signing payload."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from images_support import TAG

from stockade.images.errors import ImageError, ImageRejected
from stockade.images.layout import (
    REF_NAME,
    ImageLayout,
    parse_image_ref,
    parse_index,
    parse_manifest,
)
from stockade.images.reference import parse_reference
from stockade.images.signature import (
    COSIGN_TYPE,
    parse_simple_signing_payload,
    sign_image,
    signature_tag,
    simple_signing_payload,
)

DIGEST = "sha256:" + "ab" * 32


def test_umoci_layout_resolves_and_reads(layout):
    descriptor = layout.resolve(TAG)
    manifest = layout.manifest(descriptor)
    assert manifest["schemaVersion"] == 2
    parsed = parse_manifest(layout.blob(descriptor.digest), descriptor.media_type)
    assert len(parsed.layers) == 2
    for part in (parsed.config, *parsed.layers):
        assert len(layout.blob(part.digest)) == part.size
    assert layout.tags() == (TAG,)


def test_blob_with_changed_byte_is_rejected(layout):
    digest = layout.resolve(TAG).digest
    path = layout.path / "blobs" / "sha256" / digest.removeprefix("sha256:")
    path.write_bytes(path.read_bytes() + b" ")
    with pytest.raises(ImageRejected) as caught:
        layout.blob(digest)
    assert caught.value.check == "digest"


def test_add_blob_and_tag_rewrite_index_atomically(layout):
    descriptor = layout.add_blob(b"hello", "text/plain")
    assert layout.blob(descriptor.digest) == b"hello"
    assert layout.add_blob(b"hello", "text/plain") == descriptor
    layout.tag(descriptor, "greeting")
    layout.tag(descriptor, "greeting")
    index = json.loads((layout.path / "index.json").read_text())
    names = [entry["annotations"][REF_NAME] for entry in index["manifests"]]
    assert names.count("greeting") == 1
    assert ImageLayout.open(layout.path).resolve("greeting").digest == descriptor.digest
    assert not [p for p in layout.path.iterdir() if p.name.startswith(".index.json")]


def test_not_a_layout(tmp_path):
    with pytest.raises(ImageError, match="not an OCI image layout"):
        ImageLayout.open(tmp_path)
    (tmp_path / "oci-layout").write_text('{"imageLayoutVersion": "2.0.0"}')
    (tmp_path / "index.json").write_text('{"schemaVersion": 2, "manifests": []}')
    with pytest.raises(ImageError, match="imageLayoutVersion"):
        ImageLayout.open(tmp_path)


def test_unknown_tag_names_the_known_ones(layout):
    with pytest.raises(ImageError, match=f"tags: {TAG}"):
        layout.resolve("nope")


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("dir:v1", (Path("dir"), "v1")),
        ("/a/b/dir", (Path("/a/b/dir"), "latest")),
        ("/a/b:c/dir", (Path("/a/b:c/dir"), "latest")),
        ("/a/b:c/dir:tag", (Path("/a/b:c/dir"), "tag")),
        ("L:sha256-" + "a" * 64 + ".sig", (Path("L"), "sha256-" + "a" * 64 + ".sig")),
    ],
)
def test_parse_image_ref(text, expected):
    assert parse_image_ref(text) == expected


@pytest.mark.parametrize("text", [":v1", "dir:", "dir:bad tag", "dir:.dot"])
def test_parse_image_ref_refuses(text):
    with pytest.raises(ImageError):
        parse_image_ref(text)


@pytest.mark.parametrize(
    ("text", "repository", "tag", "digest"),
    [
        ("alpine", "docker.io/library/alpine", None, None),
        ("alpine:3.19", "docker.io/library/alpine", "3.19", None),
        ("docker.io/alpine", "docker.io/library/alpine", None, None),
        ("index.docker.io/library/alpine", "docker.io/library/alpine", None, None),
        ("bitnami/redis:7", "docker.io/bitnami/redis", "7", None),
        ("localhost/app", "localhost/app", None, None),
        ("127.0.0.1:5000/org/app:v1", "127.0.0.1:5000/org/app", "v1", None),
        ("r.example/a/b@" + DIGEST, "r.example/a/b", None, DIGEST),
        ("r.example/a:t@" + DIGEST, "r.example/a", "t", DIGEST),
    ],
)
def test_references_normalise(text, repository, tag, digest):
    reference = parse_reference(text)
    assert (reference.repository, reference.tag, reference.digest) == (repository, tag, digest)
    assert parse_reference(str(reference)) == reference


@pytest.mark.parametrize(
    "text",
    ["", "App", "r.example/Org/app", "r.example/a@sha512:00", "r.example/a:", "a//b", "a/-b"],
)
def test_references_refused(text):
    with pytest.raises(ImageError):
        parse_reference(text)


def test_simple_signing_payload_exact_bytes():
    assert simple_signing_payload("r.example/org/app:v1", DIGEST) == (
        b'{"critical":{"identity":{"docker-reference":"r.example/org/app:v1"},'
        b'"image":{"docker-manifest-digest":"' + DIGEST.encode() + b'"},'
        b'"type":"cosign container image signature"},"optional":null}'
    )
    with_optional = simple_signing_payload("r.example/a", DIGEST, {"z": "1", "a": "2"})
    assert with_optional.endswith(b'"optional":{"a":"2","z":"1"}}')
    parsed = parse_simple_signing_payload(with_optional)
    assert parsed.type == COSIGN_TYPE
    assert parsed.manifest_digest == DIGEST
    assert parsed.optional == {"a": "2", "z": "1"}


@pytest.mark.parametrize(
    "raw",
    [
        b"[]",
        b'{"critical":{}}',
        b'{"critical":{"identity":{"docker-reference":"a"},"image":{"docker-manifest-digest":"d"},'
        b'"type":"t","extra":1}}',
        b'{"critical":{"identity":{"docker-reference":1},"image":{"docker-manifest-digest":"d"},'
        b'"type":"t"}}',
        b'{"critical":{"identity":{"docker-reference":"a"},"image":{"docker-manifest-digest":"d"},'
        b'"type":"t"},"optional":[]}',
        b'{"critical":{"identity":{"docker-reference":"a"},"image":{"docker-manifest-digest":"d"},'
        b'"type":"t"},"other":{}}',
    ],
)
def test_payload_parser_is_strict(raw):
    with pytest.raises(ImageError):
        parse_simple_signing_payload(raw)


def test_sign_image_stores_cosign_layout(layout, build_key):
    sig_tag = sign_image(layout, TAG, "registry.example/org/app:v1", build_key)
    digest = layout.resolve(TAG).digest
    assert sig_tag == signature_tag(digest) == "sha256-" + digest[7:] + ".sig"
    manifest = layout.manifest(layout.resolve(sig_tag))
    assert manifest["mediaType"] == "application/vnd.oci.image.manifest.v1+json"
    (layer,) = manifest["layers"]
    assert layer["mediaType"] == "application/vnd.dev.cosign.simplesigning.v1+json"
    assert "dev.cosignproject.cosign/signature" in layer["annotations"]
    payload = layout.blob(layer["digest"])
    assert payload == simple_signing_payload("registry.example/org/app:v1", digest)
    config = json.loads(layout.blob(manifest["config"]["digest"]))
    assert config["rootfs"]["diff_ids"] == [layer["digest"]]


GOOD_PAYLOAD = simple_signing_payload("r.example/org/app:v1", DIGEST, {"creator": "ci"})


@pytest.mark.parametrize(
    ("forged", "key"),
    [
        (
            GOOD_PAYLOAD.replace(
                b'{"docker-reference":', b'{"docker-reference":"r.example/x","docker-reference":'
            ),
            "docker-reference",
        ),
        (
            GOOD_PAYLOAD.replace(
                b'{"docker-manifest-digest":',
                b'{"docker-manifest-digest":"sha256:' + b"0" * 64 + b'","docker-manifest-digest":',
            ),
            "docker-manifest-digest",
        ),
        (
            GOOD_PAYLOAD.replace(b'"type":', b'"type":"other","type":'),
            "type",
        ),
        (
            GOOD_PAYLOAD.replace(
                b'{"critical":', b'{"critical":{"identity":{},"image":{},"type":""},"critical":'
            ),
            "critical",
        ),
        (GOOD_PAYLOAD[:-1] + b',"optional":null}', "optional"),
        (GOOD_PAYLOAD.replace(b'{"creator":"ci"}', b'{"creator":"x","creator":"ci"}'), "creator"),
    ],
)
def test_payload_with_a_duplicate_key_is_refused(forged, key):
    """Last wins in Python's json; containers/image refuses. A signed payload has one
    reading or none."""
    assert json.loads(forged)  # what the old parser read without complaint
    with pytest.raises(ImageError, match=f"key '{key}' twice"):
        parse_simple_signing_payload(forged)


@pytest.mark.parametrize(
    "forged",
    [
        GOOD_PAYLOAD.decode().encode("utf-16"),
        GOOD_PAYLOAD.decode().encode("utf-32-le"),
        b"\xef\xbb\xbf" + GOOD_PAYLOAD,
        GOOD_PAYLOAD.replace(b'"optional":{"creator":"ci"}', b'"optional":{"n":NaN}'),
    ],
)
def test_payload_in_another_encoding_or_with_non_json_is_refused(forged):
    """Python's json.loads(bytes) guesses UTF-16/32 and takes NaN; Go's decoder takes
    neither. Both readings must be the same, so these are refused."""
    with pytest.raises(ImageError):
        parse_simple_signing_payload(forged)


def test_manifest_and_index_with_duplicate_keys_are_refused(layout):
    raw = layout.blob(layout.resolve(TAG).digest)
    parse_manifest(raw)
    forged = raw.replace(b'"schemaVersion":2', b'"schemaVersion":2,"schemaVersion":2', 1)
    assert forged != raw
    with pytest.raises(ImageError, match="image manifest has the key 'schemaVersion' twice"):
        parse_manifest(forged)
    index = (layout.path / "index.json").read_bytes()
    parse_index(index)
    forged_index = index.replace(b'"manifests":', b'"manifests":[],"manifests":', 1)
    assert forged_index != index
    with pytest.raises(ImageError, match=r"index\.json has the key 'manifests' twice"):
        parse_index(forged_index)
    (layout.path / "index.json").write_bytes(forged_index)
    with pytest.raises(ImageError, match="twice"):
        ImageLayout.open(layout.path)


def test_descriptor_with_a_case_variant_field_is_refused(layout):
    """``"Digest"`` beside ``"digest"``: Go's decoder takes the last of the two."""
    raw = layout.blob(layout.resolve(TAG).digest)
    document = json.loads(raw)
    layer = document["layers"][0]
    document["layers"][0] = {**layer, "Digest": "sha256:" + "0" * 64}
    with pytest.raises(ImageError, match="layers\\[0\\] has the key 'Digest'"):
        parse_manifest(json.dumps(document).encode())
