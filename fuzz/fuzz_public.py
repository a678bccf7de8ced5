"""Fuzz target: TPM2B_PUBLIC, as ``tpm2_createak -u`` writes it (``TpmPublic.unmarshal_tpm2b``).

    pip install atheris
    python fuzz/fuzz_public.py [libFuzzer options] [corpus directory]

Parsing, the object Name and the public key must each succeed or raise ``EvidenceError``;
any other exception is a bug, and so is a parsed structure that does not marshal back to
the same bytes. Importable without atheris: tests/evidence/test_fuzz_targets.py drives
``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.evidence.errors import EvidenceError
    from stockade.evidence.public import TpmPublic


def test_one_input(data: bytes) -> None:
    try:
        public = TpmPublic.unmarshal_tpm2b(data)
    except EvidenceError:
        return
    if public.marshal_tpm2b() != data:
        raise AssertionError(f"TPM2B_PUBLIC does not marshal back to {data.hex()}")
    with contextlib.suppress(EvidenceError):
        public.name()
    with contextlib.suppress(EvidenceError):
        public.public_key()


if __name__ == "__main__":
    fuzz(test_one_input)
