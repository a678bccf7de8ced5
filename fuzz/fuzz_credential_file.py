"""Fuzz target: the tpm2-tools credential file (``unmarshal_credential_file``).

    pip install atheris
    python fuzz/fuzz_credential_file.py [libFuzzer options] [corpus directory]

Parsing must succeed or raise ``EvidenceError``; a parsed file must marshal back to the
same bytes. Importable without atheris: tests/evidence/test_fuzz_targets.py drives
``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import sys

try:
    import atheris
except ImportError:  # the tests import this module without atheris
    atheris = None

with atheris.instrument_imports() if atheris else contextlib.nullcontext():
    from stockade.evidence.credential import marshal_credential_file, unmarshal_credential_file
    from stockade.evidence.errors import EvidenceError


def test_one_input(data: bytes) -> None:
    try:
        blob = unmarshal_credential_file(data)
    except EvidenceError:
        return
    if marshal_credential_file(blob) != data:
        raise AssertionError(f"credential file does not marshal back to {data.hex()}")


def main() -> None:
    if atheris is None:
        sys.exit(f"{__file__} needs atheris (pip install atheris)")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
