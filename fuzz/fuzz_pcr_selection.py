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

try:
    import atheris
except ImportError:  # the tests import this module without atheris
    atheris = None

with atheris.instrument_imports() if atheris else contextlib.nullcontext():
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


def main() -> None:
    if atheris is None:
        sys.exit(f"{__file__} needs atheris (pip install atheris)")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
