"""Fuzz target: TPMT_SIGNATURE, as ``tpm2_quote -s`` writes it (``Signature.unmarshal``).

    pip install atheris
    python fuzz/fuzz_signature.py [libFuzzer options] [corpus directory]

Parsing must succeed or raise ``EvidenceError``, a parsed signature must marshal back to
the same bytes, and verifying it (with an RSA and an ECC key) must answer True or False,
never raise. Importable without atheris: tests/evidence/test_fuzz_targets.py drives
``test_one_input`` directly.
"""

from __future__ import annotations

import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from cryptography.hazmat.primitives.asymmetric import ec, rsa

    from stockade.evidence.errors import EvidenceError
    from stockade.evidence.signature import Signature

MESSAGE = b"\xffTCG\x80\x18 a message the signature does not cover"
RSA_KEY = rsa.generate_private_key(65537, 2048).public_key()
ECC_KEY = ec.derive_private_key(0x5EED, ec.SECP256R1()).public_key()


def test_one_input(data: bytes) -> None:
    try:
        signature = Signature.unmarshal(data)
    except EvidenceError:
        return
    if signature.marshal() != data:
        raise AssertionError(f"TPMT_SIGNATURE does not marshal back to {data.hex()}")
    for key in (RSA_KEY, ECC_KEY):
        if signature.verify(key, MESSAGE) not in (True, False):
            raise AssertionError("Signature.verify returned something other than a bool")


if __name__ == "__main__":
    fuzz(test_one_input)
