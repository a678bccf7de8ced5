"""Fuzz target: the image parsers (``stockade.images``): OCI image manifests and indexes
(``parse_manifest``, ``parse_index``), simple-signing payloads
(``parse_simple_signing_payload``), trust policy documents (``parse_trust_policy``) and
docker references (``parse_reference``).

    pip install atheris
    python fuzz/fuzz_image_manifest.py [libFuzzer options] [corpus directory]

Each parser must succeed or raise ``ImageError``. What parses must hold up: a parsed
manifest's descriptors serialize and parse back to themselves, a parsed payload
rebuilt by ``simple_signing_payload`` parses back to the same fields (when its digest is
well formed), a parsed reference's string parses back to the same reference.
Importable without atheris: tests/images/test_images_fuzz_target.py drives
``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.images.errors import ImageError
    from stockade.images.layout import Descriptor, parse_index, parse_manifest
    from stockade.images.policy import parse_trust_policy
    from stockade.images.reference import DIGEST, parse_reference
    from stockade.images.signature import parse_simple_signing_payload, simple_signing_payload


def _check_manifest(data: bytes) -> None:
    try:
        manifest = parse_manifest(data)
    except ImageError:
        return
    for descriptor in (manifest.config, *manifest.layers):
        again = Descriptor.from_json(descriptor.to_json(), "descriptor")
        if again != descriptor:
            raise AssertionError(f"descriptor does not round-trip: {descriptor}")


def _check_payload(data: bytes) -> None:
    try:
        payload = parse_simple_signing_payload(data)
    except ImageError:
        return
    if not DIGEST.fullmatch(payload.manifest_digest):
        return
    rebuilt = parse_simple_signing_payload(
        simple_signing_payload(payload.docker_reference, payload.manifest_digest)
    )
    if (rebuilt.docker_reference, rebuilt.manifest_digest) != (
        payload.docker_reference,
        payload.manifest_digest,
    ):
        raise AssertionError("simple-signing payload does not round-trip")


def _check_reference(data: bytes) -> None:
    try:
        reference = parse_reference(data.decode("utf-8"))
    except (ImageError, UnicodeDecodeError):
        return
    if parse_reference(str(reference)) != reference:
        raise AssertionError(f"reference {reference} does not round-trip")


def test_one_input(data: bytes) -> None:
    _check_manifest(data)
    with contextlib.suppress(ImageError):
        parse_index(data)
    _check_payload(data)
    with contextlib.suppress(ImageError):
        parse_trust_policy(data)
    _check_reference(data)


if __name__ == "__main__":
    fuzz(test_one_input)
