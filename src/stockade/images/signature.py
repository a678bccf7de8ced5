"""Cosign image signatures: the simple-signing payload, and the signature "image" cosign
(and containers/image with ``use-sigstore-attachments``) store beside the signed image.

cosign's SIGNATURE_SPEC.md: the payload is a JSON document

    {"critical": {"identity": {"docker-reference": REF},
                  "image": {"docker-manifest-digest": "sha256:..."},
                  "type": "cosign container image signature"},
     "optional": null | {...}}

signed with ECDSA P-256 / SHA-256 (an ASN.1 DER signature, base64 in the layer's
``dev.cosignproject.cosign/signature`` annotation). Each signature is one layer of media
type ``application/vnd.dev.cosign.simplesigning.v1+json`` whose bytes are the payload, in
an OCI image manifest tagged ``sha256-<hex of the signed manifest digest>.sig`` in the
same repository (here: the same OCI layout). More signatures append layers.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.images.errors import ImageError
from stockade.images.layout import (
    MANIFEST_TYPES,
    OCI_CONFIG,
    OCI_MANIFEST,
    Descriptor,
    ImageLayout,
    parse_manifest,
    sha256_digest,
)
from stockade.images.reference import DIGEST, parse_reference
from stockade.strict_json import Fields, loads_strict

COSIGN_TYPE: Final = "cosign container image signature"
SIMPLE_SIGNING_MEDIA_TYPE: Final = "application/vnd.dev.cosign.simplesigning.v1+json"
SIGNATURE_ANNOTATION: Final = "dev.cosignproject.cosign/signature"
MAX_PAYLOAD: Final = 64 * 1024
"""Payloads larger than this are refused before they are parsed or verified."""


def signature_tag(manifest_digest: str) -> str:
    """``sha256:<hex>`` -> ``sha256-<hex>.sig``, the tag cosign stores signatures under."""
    if not DIGEST.fullmatch(manifest_digest):
        raise ImageError(f"'{manifest_digest}' is not a sha256 digest")
    return manifest_digest.replace(":", "-", 1) + ".sig"


@dataclass(frozen=True)
class SimpleSigningPayload:
    """A parsed simple-signing payload (not yet trusted: verify the signature first)."""

    docker_reference: str
    manifest_digest: str
    type: str
    optional: Mapping[str, Any] | None = field(default=None)


def simple_signing_payload(
    docker_reference: str,
    manifest_digest: str,
    optional: Mapping[str, str] | None = None,
) -> bytes:
    """The exact payload bytes cosign would sign: compact JSON in cosign's field order
    (``critical`` {identity, image, type}, then ``optional``: null when absent)."""
    if not DIGEST.fullmatch(manifest_digest):
        raise ImageError(f"'{manifest_digest}' is not a sha256 digest")
    document = {
        "critical": {
            "identity": {"docker-reference": docker_reference},
            "image": {"docker-manifest-digest": manifest_digest},
            "type": COSIGN_TYPE,
        },
        "optional": dict(sorted(optional.items())) if optional is not None else None,
    }
    return json.dumps(document, separators=(",", ":"), ensure_ascii=False).encode("utf-8")


def parse_simple_signing_payload(raw: bytes) -> SimpleSigningPayload:
    """Parse payload bytes strictly, as containers/image does: no key twice (anywhere,
    ``optional`` included), ``critical`` and its ``identity`` and ``image`` have exactly
    the fields above; ``optional`` is null, absent or an object. The type is returned,
    not checked: the verifier checks it."""
    document = loads_strict(raw, "simple-signing payload", max_size=MAX_PAYLOAD, error=ImageError)
    top = Fields(
        document,
        "simple-signing payload",
        error=ImageError,
        required={"critical"},
        optional={"optional"},
    )
    critical = top.object("critical", required={"identity", "image", "type"})
    identity = critical.object("identity", required={"docker-reference"})
    image = critical.object("image", required={"docker-manifest-digest"})
    optional = top.value.get("optional")
    if optional is not None and not isinstance(optional, dict):
        raise ImageError("simple-signing payload.optional is neither null nor an object")
    return SimpleSigningPayload(
        docker_reference=identity.string("docker-reference", empty=True),
        manifest_digest=image.string("docker-manifest-digest", empty=True),
        type=critical.string("type", empty=True),
        optional=optional,
    )


def sign_payload(payload: bytes, private_key: ec.EllipticCurvePrivateKey) -> str:
    """Base64 of the DER ECDSA P-256 SHA-256 signature over ``payload``."""
    if not isinstance(private_key.curve, ec.SECP256R1):
        raise ImageError(f"image signing keys are P-256, not {private_key.curve.name}")
    signature = private_key.sign(payload, ec.ECDSA(hashes.SHA256()))
    return base64.b64encode(signature).decode("ascii")


def decode_signature(annotation: str) -> bytes:
    """The DER signature in a ``dev.cosignproject.cosign/signature`` annotation."""
    try:
        return base64.b64decode(annotation, validate=True)
    except (binascii.Error, ValueError):
        raise ImageError("signature annotation is not base64") from None


def signature_valid(
    public_key: ec.EllipticCurvePublicKey, signature: bytes, payload: bytes
) -> bool:
    try:
        public_key.verify(signature, payload, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


def _signature_config(layers: list[Descriptor]) -> bytes:
    """The config blob of a signature image, as cosign writes it: no OS, no architecture,
    the payload layers as diff_ids (they are not compressed)."""
    config = {
        "architecture": "",
        "config": {},
        "created": "0001-01-01T00:00:00Z",
        "history": [{"created": "0001-01-01T00:00:00Z"}],
        "os": "",
        "rootfs": {"diff_ids": [layer.digest for layer in layers], "type": "layers"},
    }
    return json.dumps(config, separators=(",", ":")).encode("utf-8")


def sign_image(
    layout: ImageLayout,
    tag: str,
    docker_reference: str,
    private_key: ec.EllipticCurvePrivateKey,
    optional: Mapping[str, str] | None = None,
) -> str:
    """Sign the manifest ``tag`` points at as ``docker_reference`` and store the signature
    as cosign does, tagged ``sha256-<hex>.sig`` in the same layout (appended as a new
    layer when that tag already holds signatures). Returns the signature tag.

    ``docker_reference`` is validated and written in its normal form
    (``stockade.images.reference``), e.g. ``registry.example/org/app:1.0``.
    """
    reference = parse_reference(docker_reference)
    if reference.digest is not None:
        raise ImageError(
            f"--reference '{docker_reference}' carries a digest; sign a repository or a tag"
        )
    descriptor = layout.resolve(tag)
    if descriptor.media_type not in MANIFEST_TYPES:
        raise ImageError(f"'{tag}' is a '{descriptor.media_type}', not an image manifest")
    layout.manifest(descriptor)
    payload = simple_signing_payload(str(reference), descriptor.digest, optional)
    layer = layout.add_blob(payload, SIMPLE_SIGNING_MEDIA_TYPE)
    layer = Descriptor(
        layer.media_type,
        layer.digest,
        layer.size,
        {SIGNATURE_ANNOTATION: sign_payload(payload, private_key)},
    )
    sig_tag = signature_tag(descriptor.digest)
    layers: list[Descriptor] = []
    existing = layout.find(sig_tag)
    if existing is not None:
        layers = list(parse_manifest(layout.blob(existing.digest), existing.media_type).layers)
    layers.append(layer)
    config = layout.add_blob(_signature_config(layers), OCI_CONFIG)
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": config.to_json(),
        "layers": [entry.to_json() for entry in layers],
    }
    raw = json.dumps(manifest, separators=(",", ":")).encode("utf-8")
    stored = layout.add_blob(raw, OCI_MANIFEST)
    assert stored.digest == sha256_digest(raw)
    layout.tag(stored, sig_tag)
    return sig_tag
