"""Fuzz target: the image parsers (``stockade.images``): OCI image manifests and indexes
(``parse_manifest``, ``parse_index``), simple-signing payloads
(``parse_simple_signing_payload``), trust policy documents (``parse_trust_policy``),
docker references (``parse_reference``) and trust policy scopes (``check_scope``).

    pip install atheris
    python fuzz/fuzz_image_manifest.py [libFuzzer options] [corpus directory]

Each parser must succeed or raise ``ImageError``. What parses must hold up: a parsed
manifest's descriptors serialize and parse back to themselves, a parsed payload
rebuilt by ``simple_signing_payload`` parses back to the same fields (when its digest is
well formed), a parsed reference's string parses back to the same reference. A JSON
document any of them accepts has one reading: a first-wins and a last-wins reader of
duplicate keys see the same value. An accepted scope covers what is written under it:
the repository spelled like the scope (unless it is a ``docker.io/NAME/`` namespace)
and one component below it, both normalised.
Importable without atheris: tests/images/test_images_fuzz_target.py drives
``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import json
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.images.errors import ImageError
    from stockade.images.layout import Descriptor, parse_index, parse_manifest
    from stockade.images.policy import parse_trust_policy
    from stockade.images.reference import (
        DIGEST,
        MAX_NAME_LENGTH,
        check_scope,
        normalise_repository,
        parse_reference,
        scope_covers,
    )
    from stockade.images.signature import parse_simple_signing_payload, simple_signing_payload


def _first_wins(pairs: list[tuple[str, object]]) -> dict[str, object]:
    document: dict[str, object] = {}
    for key, value in pairs:
        document.setdefault(key, value)
    return document


def _check_one_reading(data: bytes, what: str) -> None:
    """``data`` was accepted by a parser: no reader of JSON may see another document."""
    if json.loads(data, object_pairs_hook=_first_wins) != json.loads(data):
        raise AssertionError(f"{what} accepted with duplicate keys: two readings")


def _check_manifest(data: bytes) -> None:
    try:
        manifest = parse_manifest(data)
    except ImageError:
        return
    _check_one_reading(data, "image manifest")
    for descriptor in (manifest.config, *manifest.layers):
        again = Descriptor.from_json(descriptor.to_json(), "descriptor")
        if again != descriptor:
            raise AssertionError(f"descriptor does not round-trip: {descriptor}")


def _check_payload(data: bytes) -> None:
    try:
        payload = parse_simple_signing_payload(data)
    except ImageError:
        return
    _check_one_reading(data, "simple-signing payload")
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


def _check_scope(data: bytes) -> None:
    try:
        prefix = check_scope(data.decode("utf-8"))
    except (ImageError, UnicodeDecodeError):
        return
    base = prefix.removesuffix("/")
    if len(base) + len("/library/app") > MAX_NAME_LENGTH:
        return
    written = [base + "/app"] if prefix.endswith("/") or "/" not in base else [base, base + "/app"]
    for text in written:
        if not scope_covers(prefix, normalise_repository(text)):
            raise AssertionError(f"scope {prefix!r} does not cover {text!r}, written under it")


def test_one_input(data: bytes) -> None:
    _check_manifest(data)
    with contextlib.suppress(ImageError):
        parse_index(data)
        _check_one_reading(data, "index")
    _check_payload(data)
    with contextlib.suppress(ImageError):
        parse_trust_policy(data)
        _check_one_reading(data, "trust policy")
    _check_reference(data)
    _check_scope(data)


if __name__ == "__main__":
    fuzz(test_one_input)
