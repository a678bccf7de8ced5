"""Drive fuzz/fuzz_image_manifest.py without atheris: real manifests, indexes, payloads
and policies from an umoci layout, their mutations, and random inputs."""

from __future__ import annotations

import importlib.util
import json
import random
from pathlib import Path
from types import ModuleType

import pytest
from images_support import REFERENCE, TAG

from stockade.images.errors import ImageError
from stockade.images.reference import check_scope
from stockade.images.signature import sign_image, simple_signing_payload
from stockade.strict_json import canonical_json

TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_image_manifest.py"
MUTATIONS = 300
RANDOM_INPUTS = 1500


@pytest.fixture(scope="module")
def target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_image_manifest", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture
def seeds(layout, build_key, policy_document) -> list[bytes]:
    sig_tag = sign_image(layout, TAG, REFERENCE, build_key)
    found = [(layout.path / "index.json").read_bytes(), canonical_json(policy_document)]
    for tag in (TAG, sig_tag):
        manifest = layout.manifest(layout.resolve(tag))
        found.append(layout.blob(layout.resolve(tag).digest))
        found.append(layout.blob(manifest["config"]["digest"]))
        if tag == sig_tag:
            found.append(layout.blob(manifest["layers"][0]["digest"]))
    found += [REFERENCE.encode(), b"alpine:3@sha256:" + b"a" * 64]
    found += [b"docker.io/library/xmrig", b"docker.io/xmrig/", b"registry.example/org"]
    return found


def mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        choice = rng.random()
        position = rng.randrange(len(buffer) + 1)
        if choice < 0.4 and buffer:
            buffer[min(position, len(buffer) - 1)] = rng.randrange(256)
        elif choice < 0.7:
            buffer[position:position] = bytes([rng.choice(b'{}[]":,0a\\')])
        else:
            del buffer[position : position + rng.randint(1, 8)]
    return bytes(buffer)


def test_seeds_parse(target, seeds):
    for seed in seeds:
        target.test_one_input(seed)


def test_mutations_and_random_inputs(target, seeds):
    rng = random.Random(20260)
    for _ in range(MUTATIONS):
        target.test_one_input(mutate(rng, rng.choice(seeds)))
    for _ in range(RANDOM_INPUTS):
        target.test_one_input(rng.randbytes(rng.randrange(64)))
    deep = b"[" * 100000
    target.test_one_input(deep)
    target.test_one_input(json.dumps({"schemaVersion": 2, "layers": [1]}).encode())


def test_target_catches_a_scope_that_covers_nothing(target, monkeypatch):
    """With the ambiguity check reverted, the review's scope fails the invariant."""
    target.test_one_input(b"docker.io/xmrig")

    def lenient(prefix: str) -> str:
        try:
            return check_scope(prefix)
        except ImageError as error:
            if "ambiguous" in str(error):
                return prefix
            raise

    monkeypatch.setattr(target, "check_scope", lenient)
    with pytest.raises(AssertionError, match=r"does not cover 'docker\.io/xmrig'"):
        target.test_one_input(b"docker.io/xmrig")


def test_target_catches_a_last_wins_payload_parser(target, monkeypatch):
    """With duplicate keys read last-wins again, the target finds the second reading."""
    payload = simple_signing_payload(REFERENCE, "sha256:" + "a" * 64)
    forged = payload.replace(
        b'{"docker-reference":', b'{"docker-reference":"x","docker-reference":'
    )
    target.test_one_input(forged)
    strict = target.parse_simple_signing_payload

    def last_wins(raw: bytes) -> object:
        return strict(json.dumps(json.loads(raw)).encode())

    monkeypatch.setattr(target, "parse_simple_signing_payload", last_wins)
    with pytest.raises(AssertionError, match="two readings"):
        target.test_one_input(forged)
