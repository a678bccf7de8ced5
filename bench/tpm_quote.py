"""TPM layer benchmarks.

- pure-Python quote verification (RSA-2048 and ECC P-256 AKs, 24 sha256 PCRs),
  and ``tpm2_checkquote`` on the same quotes, as a ratio;
- quote latency from swtpm, with the AK already loaded and with load+flush.
"""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

from bench.timing import Row, median_seconds
from stockade.evidence import PcrSelection, Signature, TpmPublic, verify_quote
from stockade.evidence.templates import KeyKind
from stockade.evidence.tpm2_tools_files import write_pcr_file
from stockade.tpm.ak import create_ak, loaded_ak
from stockade.tpm.device import Tpm
from stockade.tpm.quote import QuoteEvidence, quote, quote_with_handle
from stockade.tpm.swtpm import start_swtpm

SELECTION = PcrSelection.parse("sha256:0-23")


def checkquote_seconds(
    ak: TpmPublic, evidence: QuoteEvidence, nonce: bytes, rounds: int, workdir: Path
) -> float:
    paths = {name: workdir / name for name in ("ak.pub", "q.msg", "q.sig", "q.pcrs")}
    paths["ak.pub"].write_bytes(ak.marshal_tpm2b())
    paths["q.msg"].write_bytes(evidence.message)
    paths["q.sig"].write_bytes(evidence.signature)
    paths["q.pcrs"].write_bytes(write_pcr_file(evidence.selection, evidence.pcr_values))
    command = [
        "tpm2_checkquote", "-u", str(paths["ak.pub"]), "-m", str(paths["q.msg"]),
        "-s", str(paths["q.sig"]), "-f", str(paths["q.pcrs"]), "-q", nonce.hex(), "-g", "sha256",
    ]  # fmt: skip

    def run() -> None:
        subprocess.run(command, check=True, capture_output=True)

    return median_seconds(run, rounds)


def bench_kind(tpm: Tpm, kind: KeyKind, rounds: int, workdir: Path) -> list[Row]:
    ak = create_ak(tpm, kind)
    nonce = os.urandom(32)
    evidence = quote(tpm, ak, SELECTION, nonce)
    signature = Signature.unmarshal(evidence.signature)

    def verify() -> None:
        verify_quote(
            ak.public, evidence.message, signature, nonce=nonce, pcr_values=evidence.pcr_values
        )

    ours = median_seconds(verify, rounds, inner=200)
    theirs = checkquote_seconds(ak.public, evidence, nonce, rounds, workdir)
    with loaded_ak(tpm, ak) as handle:
        warm = median_seconds(lambda: quote_with_handle(tpm, handle, SELECTION, nonce), rounds)
    cold = median_seconds(lambda: quote(tpm, ak, SELECTION, nonce), rounds)
    return [
        (f"verify quote {kind.value}, 24 PCRs (stockade)", ours * 1e6, "us"),
        (f"verify quote {kind.value}, 24 PCRs (tpm2_checkquote)", theirs * 1e6, "us"),
        (f"  tpm2_checkquote / stockade ({kind.value})", theirs / ours, "x"),
        (f"swtpm quote {kind.value}, AK loaded", warm * 1e3, "ms"),
        (f"swtpm quote {kind.value}, load+quote+flush", cold * 1e3, "ms"),
    ]


def run(rounds: int) -> list[Row]:
    with tempfile.TemporaryDirectory(prefix="stockade-bench-") as scratch:
        home = Path(scratch)
        with start_swtpm("bench", home=home) as swtpm, Tpm(swtpm.tcti) as tpm:
            return [
                row
                for kind in (KeyKind.RSA, KeyKind.ECC)
                for row in bench_kind(tpm, kind, rounds, home)
            ]
