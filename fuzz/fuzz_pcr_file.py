"""Fuzz target: tpm2-tools PCR files, ``serialized`` and ``values`` (``read_pcr_file``).

    pip install atheris
    python fuzz/fuzz_pcr_file.py [libFuzzer options] [corpus directory]

Reading must succeed or raise ``EvidenceError``; any other exception is a bug. A file read
as ``serialized`` must be written back (``write_pcr_file``) to a file that reads back to the
same values. Importable without atheris: tests/evidence/test_fuzz_targets.py drives
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
    from stockade.evidence.pcr_selection import PcrSelection
    from stockade.evidence.tpm2_tools_files import _read_serialized, read_pcr_file, write_pcr_file

# for the 'values' format: 4 x 32 + 2 x 20 = 168 bytes of digests
SELECTION = PcrSelection.parse("sha256:0,1,2,16+sha1:0,3")


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(EvidenceError):
        read_pcr_file(data, SELECTION)
    try:
        values = read_pcr_file(data)
    except EvidenceError:
        return
    selection, again = _read_serialized(data)
    if again != values:
        raise AssertionError("read_pcr_file and _read_serialized disagree")
    rewritten = write_pcr_file(selection, values)
    if read_pcr_file(rewritten) != values:
        raise AssertionError(f"PCR file does not survive a rewrite: {data.hex()}")


if __name__ == "__main__":
    fuzz(test_one_input)
