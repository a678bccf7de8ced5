"""Fuzz target: the tpm2-tools credential file (``unmarshal_credential_file``).

    pip install atheris
    python fuzz/fuzz_credential_file.py [libFuzzer options] [corpus directory]

Parsing must succeed or raise ``EvidenceError``; a parsed file must marshal back to the
same bytes. Importable without atheris: tests/evidence/test_fuzz_targets.py drives
``test_one_input`` directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.evidence.credential import marshal_credential_file, unmarshal_credential_file
    from stockade.evidence.errors import EvidenceError


def test_one_input(data: bytes) -> None:
    try:
        blob = unmarshal_credential_file(data)
    except EvidenceError:
        return
    if marshal_credential_file(blob) != data:
        raise AssertionError(f"credential file does not marshal back to {data.hex()}")


if __name__ == "__main__":
    fuzz(test_one_input)
