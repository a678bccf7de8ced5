"""The TPM layer over tpm2-pytss, against a real swtpm, cross-read with tpm2-tools."""

from __future__ import annotations

import hashlib
import os
import re
import subprocess

import pytest

from stockade.errors import TpmUnavailable
from stockade.evidence import ClockRollback, PcrSelection, Signature, verify_quote
from stockade.evidence.clock import check_clock_progression, is_new_boot
from stockade.evidence.templates import KeyKind
from stockade.tpm.ak import AttestationKey, create_ak, loaded_ak
from stockade.tpm.device import Tpm, parse_tcti
from stockade.tpm.quote import quote, quote_with_handle

pytestmark = pytest.mark.swtpm


def pcrread(tcti: str, spec: str) -> dict[str, dict[int, str]]:
    """tpm2_pcrread's YAML-ish output as {bank: {index: hex}}."""
    text = subprocess.run(
        ["tpm2_pcrread", "-T", tcti, spec], capture_output=True, text=True, check=True
    ).stdout
    banks: dict[str, dict[int, str]] = {}
    bank = ""
    for line in text.splitlines():
        if match := re.match(r"^\s{2}(\w+):\s*$", line):
            bank = match.group(1)
        elif match := re.match(r"^\s+(\d+)\s*:\s*0x([0-9A-F]+)", line):
            banks.setdefault(bank, {})[int(match.group(1))] = match.group(2).lower()
    return banks


def test_extend_reaches_every_active_bank(software_tpm):
    with Tpm(software_tpm.tcti) as tpm:
        banks = tpm.active_banks()
        assert {b.bank_name for b in banks.banks} >= {"sha1", "sha256"}
        tpm.extend_pcr(16, b"measured thing")
        active = "+".join(f"{b.bank_name}:16" for b in banks.banks)
        ours = tpm.read_pcrs(PcrSelection.parse(active))
    theirs = pcrread(software_tpm.tcti, active)
    for bank in banks.banks:
        name = bank.bank_name
        digest = hashlib.new(name, b"measured thing").digest()
        expected = hashlib.new(name, bytes(len(digest)) + digest).hexdigest()
        assert ours.get(bank.hash_alg, 16).hex() == expected
        assert theirs[name][16] == expected


def test_read_more_than_eight_pcrs_in_several_banks(software_tpm):
    selection = PcrSelection.parse("sha256:0-23+sha1:0-23")
    with Tpm(software_tpm.tcti) as tpm:
        tpm.extend_pcr(23, b"x")
        values = tpm.read_pcrs(selection)
    theirs = pcrread(software_tpm.tcti, "sha256:" + ",".join(map(str, range(24))))
    assert len(values.banks[0x000B]) == 24 and len(values.banks[0x0004]) == 24
    assert theirs["sha256"] == {i: v.hex() for i, v in values.banks[0x000B].items()}


@pytest.mark.parametrize("kind", list(KeyKind), ids=lambda k: k.value)
def test_thousand_quotes_leave_no_objects_behind(kind, shared_software_tpm):
    """Each quote loads the AK under the EK and flushes both: no object-memory exhaustion."""
    selection = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7")
    with Tpm(shared_software_tpm.tcti) as tpm:
        ak = create_ak(tpm, kind)
        rounds = 1000 if kind is KeyKind.ECC else 300
        previous = None
        for round_number in range(rounds):
            nonce = round_number.to_bytes(4, "big")
            if round_number % 2:
                evidence = quote(tpm, ak, selection, nonce)
            else:
                with loaded_ak(tpm, ak) as handle:
                    evidence = quote_with_handle(tpm, handle, selection, nonce)
            if round_number % 97 == 0:
                verified = verify_quote(
                    ak.public,
                    evidence.message,
                    Signature.unmarshal(evidence.signature),
                    nonce=nonce,
                    pcr_values=evidence.pcr_values,
                    previous_clock=previous,
                )
                previous = verified.clock_info
        assert tpm.transient_object_count() == 0


def test_ak_attributes_and_persistence(software_tpm, tmp_path):
    with Tpm(software_tpm.tcti) as tpm:
        ak = create_ak(tpm, KeyKind.ECC)
        ak.save(tmp_path)
        again = AttestationKey.load(tmp_path)
        assert again.name == ak.name
        nonce = os.urandom(8)
        evidence = quote(tpm, again, PcrSelection.parse("sha256:0"), nonce)
    verify_quote(
        ak.public,
        evidence.message,
        Signature.unmarshal(evidence.signature),
        nonce=nonce,
        pcr_values=evidence.pcr_values,
    )
    # tpm2-tools reads the saved AK public area and computes the same name.
    printed = subprocess.run(
        ["tpm2_print", "-t", "TPM2B_PUBLIC", str(tmp_path / "ak.pub")],
        capture_output=True, text=True, check=True,
    ).stdout  # fmt: skip
    assert "restricted" in printed and "sign" in printed


def test_power_cycle_is_a_new_boot_and_clock_rules_hold(software_tpm):
    selection = PcrSelection.parse("sha256:16")
    with Tpm(software_tpm.tcti) as tpm:
        ak = create_ak(tpm, KeyKind.ECC)
        tpm.extend_pcr(16, b"before reboot")
        first = quote(tpm, ak, selection, b"one")
        second = quote(tpm, ak, selection, b"two")
    software_tpm.power_cycle()
    with Tpm(software_tpm.tcti) as tpm:
        third = quote(tpm, ak, selection, b"three")
    clocks = [
        verify_quote(
            ak.public,
            e.message,
            Signature.unmarshal(e.signature),
            nonce=n,
            pcr_values=e.pcr_values,
        ).clock_info
        for e, n in ((first, b"one"), (second, b"two"), (third, b"three"))
    ]
    assert first.pcr_values.get(0x000B, 16) != bytes(32)
    assert third.pcr_values.get(0x000B, 16) == bytes(32)  # PCRs cleared by the reboot
    check_clock_progression(clocks[0], clocks[1])
    check_clock_progression(clocks[1], clocks[2])
    assert is_new_boot(clocks[1], clocks[2])
    with pytest.raises(ClockRollback, match="resetCount"):
        check_clock_progression(clocks[2], clocks[1])
    with pytest.raises(ClockRollback, match="clock"):
        check_clock_progression(clocks[1], clocks[0])


def test_read_clock_matches_tpm2_readclock(software_tpm):
    with Tpm(software_tpm.tcti) as tpm:
        ours = tpm.read_clock()
    text = subprocess.run(
        ["tpm2_readclock", "-T", software_tpm.tcti], capture_output=True, text=True, check=True
    ).stdout
    reset_count = int(re.search(r"reset_count:\s*(\d+)", text).group(1))
    clock = int(re.search(r"clock:\s*(\d+)", text).group(1))
    assert ours.reset_count == reset_count
    assert 0 <= clock - ours.clock < 10_000


def test_absent_tpm_is_tpm_unavailable(tmp_path):
    with pytest.raises(TpmUnavailable):
        Tpm("swtpm:host=127.0.0.1,port=1")
    with pytest.raises(TpmUnavailable):
        Tpm(f"device:{tmp_path / 'no-such-tpm'}")
    with pytest.raises(TpmUnavailable):
        parse_tcti("not a tcti!")
