"""Fuzz target: TPML_PCR_SELECTION (``PcrSelection.unmarshal``) and the tpm2-tools text
form (``PcrSelection.parse``), from the same input.

    pip install atheris
    python fuzz/fuzz_pcr_selection.py [libFuzzer options] [corpus directory]

Both must succeed or raise ``EvidenceError``; a parsed selection must marshal back to the
same bytes, and a parsed text must survive ``str()`` then ``parse()``. Importable without
atheris: tests/evidence/test_fuzz_targets.py drives ``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.evidence.errors import EvidenceError
    from stockade.evidence.pcr_selection import PcrSelection


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        selection = PcrSelection.unmarshal(data)
        if selection.marshal() != data:
            raise AssertionError(f"TPML_PCR_SELECTION does not marshal back to {data.hex()}")
    text = data.decode("utf-8", "replace")
    try:
        parsed = PcrSelection.parse(text)
    except EvidenceError:
        return
    if PcrSelection.parse(str(parsed)) != parsed:
        raise AssertionError(f"PCR selection {text!r} does not survive str() and parse()")


if __name__ == "__main__":
    fuzz(test_one_input)
