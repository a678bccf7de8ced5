"""docs/real-hardware.md, steps 2-4, as written: a real server's event log (the real shim +
GRUB machine in ../shared/fixtures/real-machines) measured into a software TPM, an EK and AK
made and a quote taken by tpm2-tools, then `stockade policy capture` and `stockade appraise
--ak --message --signature --nonce --pcrs` on tpm2-tools' own files. The golden log is
affirming with the quote verified; a log with one boot application changed (replaying
consistently, so only the quote can tell) is refused, since the TPM did not sign it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from crosscheck.conftest import make_tools, run_stockade
from stockade.evidence.eventlog import EventType, parse_event_log
from support.eventlogs import rewritten
from support.fixtures import SHARED

pytestmark = [pytest.mark.swtpm, pytest.mark.crosscheck]

REAL_LOG = SHARED / "real-machines" / "keylime-shim-grub-secureboot.bin"
SELECTION = "sha256:0,1,2,3,4,5,6,7,8,9,14"


@pytest.fixture
def walkthrough(software_tpm, tmp_path):
    if not REAL_LOG.exists():
        pytest.skip(f"{REAL_LOG} is absent (../shared/fixtures/real-machines)")
    log = parse_event_log(REAL_LOG.read_bytes())
    tools = make_tools(software_tpm.tcti, tmp_path)
    # What the machine's firmware, shim and GRUB did: every measured event into its PCR.
    extends = [
        f"{event.pcr}:sha256={event.digest(0x000B).hex()}"  # type: ignore[union-attr]
        for event in log.events
        if event.type != EventType.EV_NO_ACTION
    ]
    tools("tpm2_pcrextend", *extends)
    (tmp_path / "rack7-a.bin").write_bytes(REAL_LOG.read_bytes())
    tools("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    tools("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256",
          "-s", "ecdsa", "-u", "ak.pub", "-n", "ak.name")  # fmt: skip
    nonce = os.urandom(32).hex()
    tools("tpm2_quote", "-c", "ak.ctx", "-l", SELECTION, "-q", nonce, "-m", "quote.msg",
          "-s", "quote.sig", "-o", "quote.pcrs")  # fmt: skip
    capture = run_stockade(
        "policy", "capture", "--event-log", tmp_path / "rack7-a.bin", "--id", "rack7",
        "--machine", "rack7-a", "--out", tmp_path / "rack7-a.yaml",
    )  # fmt: skip
    assert capture.returncode == 0, capture.stderr
    return tmp_path, nonce, log


def _appraise(base: Path, nonce: str, log: str, *extra: object):
    return run_stockade(
        "appraise", "--policy", base / "rack7-a.yaml", "--event-log", base / log,
        "--ak", base / "ak.pub", "--message", base / "quote.msg",
        "--signature", base / "quote.sig", "--nonce", nonce, *extra,
    )  # fmt: skip


def test_the_golden_machine_is_affirming_with_its_tpm2_tools_quote(walkthrough):
    base, nonce, _ = walkthrough
    for extra in ((), ("--pcrs", base / "quote.pcrs")):
        result = _appraise(base, nonce, "rack7-a.bin", *extra)
        assert result.returncode == 0, result.stdout + result.stderr
        document = json.loads(result.stdout)
        assert document["status"] == "affirming"
        assert document["quote"] == {"verified": True, "selection": SELECTION}


def test_a_log_the_tpm_did_not_measure_is_refused(walkthrough):
    base, nonce, log = walkthrough
    shim = next(e for e in log.events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION)
    (base / "evil.bin").write_bytes(rewritten(log, shim.number).marshal())
    without_pcrs = _appraise(base, nonce, "evil.bin")
    assert without_pcrs.returncode == 1
    document = json.loads(without_pcrs.stdout)
    assert document["quote"]["verified"] is False
    assert "pcr-digest" in document["reasons"][0]["reason"]
    # With the quoted PCR values the quote verifies, and the log does not replay to them.
    with_pcrs = _appraise(base, nonce, "evil.bin", "--pcrs", base / "quote.pcrs")
    assert with_pcrs.returncode == 1
    reasons = json.loads(with_pcrs.stdout)["reasons"]
    assert any(reason["pcr"] == 4 for reason in reasons), reasons
