"""Verify a signed image in an OCI layout against a trust policy, failing closed.

``verify_image(layout, tag, expected_reference, policy)``:

1. resolves ``tag`` to an image manifest and reads the manifest, its config and every
   layer, checking each digest and size (a changed byte: ``digest``);
2. reads the signatures tagged ``sha256-<manifest hex>.sig`` in the same layout (none:
   ``unsigned``);
3. accepts when one simple-signing layer passes every check, in this order: its blob
   hashes to its digest (``digest``); its annotation is a base64 signature
   (``signature``); it verifies over the payload bytes under a key the policy allows for
   the expected repository (``untrusted-key``); the payload parses and its
   ``critical.type`` is ``cosign container image signature`` (``signature``); its
   ``docker-manifest-digest`` is the manifest's digest (``digest``); its
   ``docker-reference`` matches the expected reference (``reference``).

When none passes, the failure of the signature that got furthest is raised, so a
signature by the right key for another repository reports ``reference`` even when other
signatures are by unknown keys.

Reference matching (like containers/image's ``matchRepoDigestOrExact``, with cosign's
repository-only identities allowed), after normalisation (``stockade.images.reference``):

- the repositories must be equal;
- a signed reference without a tag (what ``cosign sign`` writes) matches any expected
  tag;
- a signed reference with a tag matches an expected reference with the same tag, or one
  pinned by digest alone; an expected reference with neither tag nor digest matches only
  untagged signed references;
- a digest in either reference must be the manifest's digest (else ``digest``).

References are only ever compared in that normal form: ``VerifiedImage.reference`` is
the signed reference normalised, never the payload's spelling of it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from stockade.images.errors import Check, ImageError, ImageRejected
from stockade.images.layout import MANIFEST_TYPES, ImageLayout, parse_manifest
from stockade.images.policy import TrustPolicy
from stockade.images.reference import ImageReference, parse_reference
from stockade.images.signature import (
    COSIGN_TYPE,
    SIGNATURE_ANNOTATION,
    SIMPLE_SIGNING_MEDIA_TYPE,
    decode_signature,
    parse_simple_signing_payload,
    signature_tag,
    signature_valid,
)


@dataclass(frozen=True)
class VerifiedImage:
    reference: str
    """The docker-reference that was signed, in its normal form (``docker.io/library/x``
    for ``x``): what execution records carry and forbid-lists are compared with."""
    manifest_digest: str
    config_digest: str
    signer: str
    """The trust policy's name for the key whose signature was accepted."""
    layers: tuple[str, ...]
    """Layer digests, in manifest order."""

    def to_json(self) -> dict[str, Any]:
        return {
            "reference": self.reference,
            "manifest_digest": self.manifest_digest,
            "config_digest": self.config_digest,
            "signer": self.signer,
            "layers": list(self.layers),
        }


class _Failure(Exception):
    def __init__(self, check: Check, detail: str, stage: int) -> None:
        super().__init__(detail)
        self.check: Check = check
        self.detail = detail
        self.stage = stage


def reference_matches(signed: ImageReference, expected: ImageReference) -> bool:
    """The tag rule of the module docstring (repositories and digests checked apart)."""
    if signed.repository != expected.repository:
        return False
    if signed.tag is None:
        return True
    if expected.tag is not None:
        return signed.tag == expected.tag
    return expected.digest is not None


def _check_signature(
    layout: ImageLayout,
    layer_index: int,
    media_type: str,
    digest: str,
    size: int,
    annotations: dict[str, str],
    manifest_digest: str,
    expected: ImageReference,
    policy: TrustPolicy,
    allowed: tuple[str, ...],
) -> tuple[str, str]:
    """(signed reference, signer) for one signature layer, or ``_Failure``."""
    where = f"signature layer {layer_index} ({digest[:19]})"
    if media_type != SIMPLE_SIGNING_MEDIA_TYPE:
        raise _Failure("signature", f"{where} is a '{media_type}', not simple signing", 0)
    try:
        payload = layout.blob(digest)
    except ImageRejected as rejected:
        raise _Failure("digest", f"{where}: {rejected.detail}", 1) from None
    if len(payload) != size:
        raise _Failure("digest", f"{where} is {len(payload)} bytes, not {size}", 1)
    annotation = annotations.get(SIGNATURE_ANNOTATION)
    if annotation is None:
        raise _Failure("signature", f"{where} has no {SIGNATURE_ANNOTATION} annotation", 2)
    try:
        signature = decode_signature(annotation)
    except ImageError as error:
        raise _Failure("signature", f"{where}: {error}", 2) from None
    if not allowed:
        raise _Failure(
            "untrusted-key",
            f"the trust policy allows no key to sign {expected.repository}",
            3,
        )
    signer = next(
        (name for name in allowed if signature_valid(policy.keys[name], signature, payload)),
        None,
    )
    if signer is None:
        elsewhere = [
            name
            for name in sorted(policy.keys)
            if name not in allowed and signature_valid(policy.keys[name], signature, payload)
        ]
        if elsewhere:
            detail = (
                f"{where} is signed by key '{elsewhere[0]}', which the trust policy does "
                f"not allow for {expected.repository} (allowed: {', '.join(allowed)})"
            )
        else:
            detail = (
                f"{where} does not verify under any key allowed for {expected.repository} "
                f"({', '.join(allowed)})"
            )
        raise _Failure("untrusted-key", detail, 3)
    try:
        parsed = parse_simple_signing_payload(payload)
    except ImageError as error:
        raise _Failure("signature", f"{where} (key '{signer}'): {error}", 4) from None
    if parsed.type != COSIGN_TYPE:
        raise _Failure(
            "signature",
            f"{where} (key '{signer}'): critical.type is '{parsed.type}', not '{COSIGN_TYPE}'",
            4,
        )
    if parsed.manifest_digest != manifest_digest:
        raise _Failure(
            "digest",
            f"{where} (key '{signer}') signs manifest {parsed.manifest_digest}, "
            f"not {manifest_digest}",
            5,
        )
    try:
        signed = parse_reference(parsed.docker_reference)
    except ImageError as error:
        raise _Failure("reference", f"{where} (key '{signer}'): {error}", 6) from None
    if signed.digest is not None and signed.digest != manifest_digest:
        raise _Failure("digest", f"{where} (key '{signer}') names digest {signed.digest}", 5)
    if not reference_matches(signed, expected):
        raise _Failure(
            "reference",
            f"{where} (key '{signer}') is for '{parsed.docker_reference}', not '{expected}'",
            6,
        )
    return str(signed), signer


def verify_image(
    layout: ImageLayout, tag: str, expected_reference: str, policy: TrustPolicy
) -> VerifiedImage:
    """The verified image, or ``ImageRejected`` naming the check that failed (see the
    module docstring); ``ImageError`` when the layout or a manifest cannot be read."""
    expected = parse_reference(expected_reference)
    descriptor = layout.resolve(tag)
    if descriptor.media_type not in MANIFEST_TYPES:
        raise ImageError(
            f"'{tag}' is a '{descriptor.media_type}'; verify one platform's image manifest"
        )
    raw = layout.blob(descriptor.digest)
    if len(raw) != descriptor.size:
        raise ImageRejected(
            "digest", f"manifest {descriptor.digest} is {len(raw)} bytes, not {descriptor.size}"
        )
    manifest = parse_manifest(raw, descriptor.media_type)
    if expected.digest is not None and expected.digest != descriptor.digest:
        raise ImageRejected(
            "digest", f"'{tag}' is manifest {descriptor.digest}, not {expected.digest}"
        )
    for part in (manifest.config, *manifest.layers):
        data = layout.blob(part.digest)
        if len(data) != part.size:
            raise ImageRejected(
                "digest", f"blob {part.digest} is {len(data)} bytes, manifest says {part.size}"
            )

    sig_tag = signature_tag(descriptor.digest)
    sig_descriptor = layout.find(sig_tag)
    if sig_descriptor is None:
        raise ImageRejected(
            "unsigned", f"no signature for {descriptor.digest} ('{sig_tag}' is not in the layout)"
        )
    sig_raw = layout.blob(sig_descriptor.digest)
    signatures = parse_manifest(sig_raw, sig_descriptor.media_type).layers
    if not signatures:
        raise ImageRejected("unsigned", f"'{sig_tag}' holds no signature layers")

    allowed = policy.keys_for(expected.repository)
    best: _Failure | None = None
    for index, layer in enumerate(signatures):
        try:
            signed_reference, signer = _check_signature(
                layout,
                index,
                layer.media_type,
                layer.digest,
                layer.size,
                dict(layer.annotations),
                descriptor.digest,
                expected,
                policy,
                allowed,
            )
        except _Failure as failure:
            if best is None or failure.stage > best.stage:
                best = failure
            continue
        return VerifiedImage(
            reference=signed_reference,
            manifest_digest=descriptor.digest,
            config_digest=manifest.config.digest,
            signer=signer,
            layers=tuple(layer.digest for layer in manifest.layers),
        )
    assert best is not None
    raise ImageRejected(best.check, best.detail)
