"""Helpers for the boot chain tests: real tools (tpm2_pcrread, tpm2_eventlog) and PE edits."""

from __future__ import annotations

import re
import subprocess
from dataclasses import dataclass
from pathlib import Path

from stockade.evidence.algorithms import HASHES, HASHES_BY_NAME
from stockade.evidence.eventlog import EventLog
from stockade.evidence.pcr_values import PcrValues

_BANK = re.compile(r"^\s*(sha\w+):\s*$")
_VALUE = re.compile(r"^\s*(\d+)\s*:\s*0x([0-9A-Fa-f]+)\s*$")


def parse_pcr_listing(text: str) -> PcrValues:
    """The ``sha1:`` / ``  0 : 0x...`` listing tpm2_pcrread prints and tpm2_eventlog ends with."""
    banks: dict[int, dict[int, bytes]] = {}
    current: dict[int, bytes] | None = None
    for line in text.splitlines():
        bank = _BANK.match(line)
        if bank:
            current = banks.setdefault(int(HASHES_BY_NAME[bank.group(1)].alg), {})
            continue
        value = _VALUE.match(line)
        if value and current is not None:
            current[int(value.group(1))] = bytes.fromhex(value.group(2))
    return PcrValues(banks)


def pcrread(tcti: str, banks: list[str], pcrs: list[int]) -> PcrValues:
    """PCR values as ``tpm2_pcrread`` reads them from the TPM."""
    selection = "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank in banks)
    result = subprocess.run(
        ["tpm2_pcrread", "-T", tcti, selection], capture_output=True, text=True, check=True
    )
    return parse_pcr_listing(result.stdout)


@dataclass(frozen=True)
class EventlogRun:
    returncode: int
    stdout: str
    stderr: str

    @property
    def event_count(self) -> int:
        return len(re.findall(r"^- EventNum: \d+$", self.stdout, re.MULTILINE))

    @property
    def pcrs(self) -> PcrValues:
        return parse_pcr_listing(self.stdout.split("\npcrs:\n", 1)[1])


def tpm2_eventlog(path: Path) -> EventlogRun:
    result = subprocess.run(
        ["tpm2_eventlog", str(path)], capture_output=True, text=True, check=False
    )
    return EventlogRun(result.returncode, result.stdout, result.stderr)


def tpm2_eventlog_knows_startup_locality() -> bool:
    """tpm2-tools 5.5 (pull request #3242) starts PCR 0 at the StartupLocality value."""
    result = subprocess.run(
        ["tpm2_eventlog", "--version"], capture_output=True, text=True, check=False
    )
    found = re.search(r'version="(\d+)\.(\d+)', result.stdout)
    return found is not None and (int(found.group(1)), int(found.group(2))) >= (5, 5)


def replay_as_tpm2_tools_5_4(log: EventLog, alg: int, pcr: int) -> bytes:
    """PCR ``pcr`` as tpm2_eventlog 5.4 computes it: from zero, extending every event after
    the Spec ID header, EV_NO_ACTION included."""
    hash_ = HASHES[alg]
    value = bytes(hash_.digest_size)
    for event in log.events[1:]:
        digest = event.digest(alg)
        if event.pcr == pcr and digest is not None:
            value = hash_.digest(value + digest)
    return value
