"""Fuzz target: EK certificates as read from TPM NV or a file (``load_certificate``).

    pip install atheris
    python fuzz/fuzz_certificate.py [libFuzzer options] [corpus directory]

Loading must succeed or raise ``EvidenceError``; any other exception is a bug. Seed the
corpus with real EK certificates (``tpm2_getekcertificate``) to get past the DER framing.
Importable without atheris: tests/evidence/test_fuzz_targets.py drives ``test_one_input``
directly.
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.evidence.ek_certificate import load_certificate
    from stockade.evidence.errors import EvidenceError


def test_one_input(data: bytes) -> None:
    with warnings.catch_warnings():
        # e.g. "serial number which wasn't positive": cryptography's warning, not a crash
        warnings.simplefilter("ignore")
        try:
            load_certificate(data)
        except EvidenceError:
            return


if __name__ == "__main__":
    fuzz(test_one_input)
