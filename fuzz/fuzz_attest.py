"""Fuzz target: TPMS_ATTEST, as ``tpm2_quote -m`` writes it (``Attest.unmarshal``).

    pip install atheris
    python fuzz/fuzz_attest.py [libFuzzer options] [corpus directory]

Parsing must succeed or raise ``EvidenceError``; any other exception is a bug, and so is a
parsed structure that does not marshal back to the same bytes. Importable without atheris:
tests/evidence/test_fuzz_targets.py drives ``test_one_input`` directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.evidence.attest import Attest
    from stockade.evidence.errors import EvidenceError


def test_one_input(data: bytes) -> None:
    try:
        attest = Attest.unmarshal(data)
    except EvidenceError:
        return
    if attest.marshal() != data:
        raise AssertionError(f"TPMS_ATTEST does not marshal back to {data.hex()}")


if __name__ == "__main__":
    fuzz(test_one_input)
