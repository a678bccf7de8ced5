"""Fuzz target: sealed secrets (``SealedSecret.unmarshal``), the verifier-to-node blob.

    pip install atheris
    python fuzz/fuzz_sealed_secret.py [libFuzzer options] [corpus directory]

Parsing must succeed or raise ``EvidenceError`` (``SealingError`` is one); a parsed secret
must marshal back to the same bytes and survive ``to_json()`` then ``from_json()``.
Importable without atheris: tests/evidence/test_fuzz_targets.py drives ``test_one_input``
directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.evidence.duplication import SealedSecret
    from stockade.evidence.errors import EvidenceError


def test_one_input(data: bytes) -> None:
    try:
        sealed = SealedSecret.unmarshal(data)
    except EvidenceError:
        return
    if sealed.marshal() != data:
        raise AssertionError(f"sealed secret does not marshal back to {data.hex()}")
    if SealedSecret.from_json(sealed.to_json()) != sealed:
        raise AssertionError(f"sealed secret {data.hex()} does not survive JSON")


if __name__ == "__main__":
    fuzz(test_one_input)
