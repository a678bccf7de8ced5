"""``fuzz/fuzz_statements.py`` run over its seeds, their truncations and byte flips, and
random inputs: the strict reader and the statement checks only ever raise their typed
errors, and nothing unsigned verifies."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from types import ModuleType

import pytest

FUZZ = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_statements.py"


@pytest.fixture(scope="module")
def target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_statements", FUZZ)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_seeds_pass_and_verify(target):
    seeds = target.SEEDS
    for seed in seeds:
        target.test_one_input(seed)
    ear = seeds[2].decode()
    assert target.verify_ear(ear, target.PINNED, node="n-1", now=target.NOW).result_id == "r-1"


def test_mutations_only_raise_typed_errors(target):
    rng = random.Random(20)
    for seed in target.SEEDS:
        for cut in range(0, len(seed), max(1, len(seed) // 40)):
            target.test_one_input(seed[:cut])
        for _ in range(300):
            mutated = bytearray(seed)
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            target.test_one_input(bytes(mutated))


def test_random_inputs(target):
    rng = random.Random(21)
    alphabet = b'{}[]":,0123456789.eE+-truefalsnNaIfiy \\u00ff\xef\xbb\xbfabc'
    for _ in range(2000):
        size = rng.randrange(64)
        target.test_one_input(bytes(rng.choice(alphabet) for _ in range(size)))


def test_a_checker_that_accepts_forgeries_is_caught(target, monkeypatch):
    header, payload, signature = target.SEEDS[2].split(b".")
    forged = b".".join((header, payload.replace(b"n", b"m", 1), signature))
    monkeypatch.setattr(target, "verify_ear", lambda *args, **kwargs: None)
    with pytest.raises(AssertionError, match="nobody signed"):
        target.test_one_input(forged)
