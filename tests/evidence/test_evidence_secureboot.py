"""Secure Boot state comes only from a log verified against quoted PCRs."""

from __future__ import annotations

import pytest

from stockade.evidence.errors import EventLogMismatch
from stockade.evidence.eventlog import EventLog, parse_event_log
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.replay import VerifiedEventLog, replay, verify_log
from stockade.evidence.secureboot import SecureBootUnknown, secure_boot_state
from support.fixtures import SHARED

FIXTURES = SHARED / "eventlogs"
SHA256 = 0x000B

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"real event logs not found at {FIXTURES}"
)


def load(name: str) -> EventLog:
    return parse_event_log((FIXTURES / name).read_bytes())


def quoted(log: EventLog, drop: int | None = None, change: int | None = None) -> PcrValues:
    """What an honest TPM behind ``log`` would quote, optionally minus or altering a PCR."""
    banks = {alg: dict(values) for alg, values in replay(log).values.banks.items()}
    for values in banks.values():
        if drop is not None:
            values.pop(drop, None)
        if change is not None:
            values[change] = bytes(len(values[change]))
    return PcrValues(banks)


def test_state_of_a_secure_boot_machine():
    log = load("event-moklisttrusted.bin")
    state = secure_boot_state(verify_log(log, quoted(log)))
    assert state.enabled is True
    assert len(state.keys["db"].certificates()) == 2
    assert len(state.keys["dbx"].sha256_digests()) == 1
    assert "shimx64.efi" in state.boot_applications[0].device_path
    assert state.boot_applications[0].authority is not None
    assert state.kernel_command_line is not None
    assert state.kernel_command_line.startswith("(hd0,gpt2)/vmlinuz-5.14.0-130.el9.x86_64")


def test_state_of_a_machine_without_secure_boot():
    log = load("event-arch-linux.bin")
    state = secure_boot_state(verify_log(log, quoted(log)))
    assert state.enabled is False
    assert len(state.keys["dbx"].sha256_digests()) == 77
    assert state.boot_applications[-1].device_path.endswith("File(\\vmlinuz-linux-lts)")
    # systemd-boot logged the command line with a digest that is not of that text
    # (tpm2_eventlog warns too), so the text proves nothing and is not reported
    assert state.kernel_command_line is None


def test_command_line_is_read_only_where_its_digest_is_of_the_text():
    log = load("event-bootorder.bin")
    state = secure_boot_state(verify_log(log, quoted(log)))
    assert state.kernel_command_line is not None
    assert state.kernel_command_line.startswith("/boot/vmlinuz-5.4.0-45-generic")
    forged_events = list(log.events)
    index, event = next(
        (i, e) for i, e in enumerate(log.events) if e.data.startswith(b"kernel_cmdline: ")
    )
    forged_events[index] = event._replace(data=event.data.replace(b" ro", b" rw", 1))
    forged = EventLog(log.crypto_agile, log.spec_id, tuple(forged_events))
    # the digests are untouched, so the forged log still replays to the same PCRs
    forged_state = secure_boot_state(verify_log(forged, quoted(log)))
    assert forged_state.kernel_command_line != state.kernel_command_line
    assert forged_state.kernel_command_line is None or " rw" not in forged_state.kernel_command_line


def test_log_that_claims_secure_boot_but_pcr7_differs_is_rejected():
    """The attack: a node sends a good-looking log while its TPM says otherwise."""
    log = load("event-moklisttrusted.bin")
    with pytest.raises(EventLogMismatch) as rejected:
        verify_log(log, quoted(log, change=7))
    assert "PCR 7 sha256" in str(rejected.value)
    assert "EV_" in str(rejected.value)  # names the last event in that PCR
    # The same, as fields a program can act on (no parsing of the message).
    (mismatch,) = rejected.value.mismatches
    assert (mismatch.pcr, mismatch.bank) == (7, "sha256")
    assert mismatch.quoted != mismatch.replayed and mismatch.quoted is not None
    last_seven = [e for e in log.events if e.pcr == 7 and e.type_name != "EV_NO_ACTION"][-1]
    assert (mismatch.last_event, mismatch.last_event_type) == (
        last_seven.number,
        last_seven.type_name,
    )


def test_forged_event_digest_is_rejected():
    log = load("event-arch-linux.bin")
    honest = quoted(log)
    forged_events = list(log.events)
    kernel = forged_events[-2]
    forged_events[-2] = kernel._replace(
        digests=tuple((alg, bytes(len(d))) for alg, d in kernel.digests)
    )
    forged = EventLog(log.crypto_agile, log.spec_id, tuple(forged_events))
    with pytest.raises(EventLogMismatch, match=f"PCR {kernel.pcr} "):
        verify_log(forged, honest)


def test_unquoted_pcr7_means_unknown_state():
    log = load("event-moklisttrusted.bin")
    verified = verify_log(log, quoted(log, drop=7))
    assert 7 not in verified.trusted_pcrs
    with pytest.raises(SecureBootUnknown):
        secure_boot_state(verified)


def test_quote_of_another_bank_only_is_rejected():
    log = load("event-uefi-sha1-log.bin")  # SHA-1 only
    with pytest.raises(EventLogMismatch, match="share no PCR bank"):
        verify_log(log, PcrValues({SHA256: {0: bytes(32)}}))


def test_verified_log_cannot_be_made_by_hand():
    log = load("event-arch-linux.bin")
    with pytest.raises(TypeError, match="only from verify_log"):
        VerifiedEventLog(log, frozenset({7}), (SHA256,), PcrValues({}))
