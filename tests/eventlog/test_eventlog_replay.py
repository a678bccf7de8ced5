"""Replay semantics (StartupLocality, EV_NO_ACTION, unknown banks) and the parser's
strictness, on small hand-built logs whose expected values are computed here."""

from __future__ import annotations

import hashlib
import struct

import pytest

from stockade.evidence import EvidenceError, MalformedStructure
from stockade.evidence.event_data import SeparatorData, StartupLocalityData, TextData
from stockade.evidence.eventlog import (
    AlgorithmSize,
    Event,
    EventLog,
    EventType,
    SpecIdEvent,
    parse_event_log,
)
from stockade.evidence.replay import replay, startup_locality

SHA1, SHA256, SHA384, SM3 = 0x0004, 0x000B, 0x000C, 0x0012
SIZES = {SHA1: 20, SHA256: 32, SHA384: 48, SM3: 32}
NAMES = {SHA1: "sha1", SHA256: "sha256", SHA384: "sha384"}
SEPARATOR = SeparatorData(0).encode()


def spec(*algorithms: int, signature: bytes = b"Spec ID Event03\x00") -> SpecIdEvent:
    return SpecIdEvent(
        signature, 0, 0, 2, 0, 2, tuple(AlgorithmSize(a, SIZES[a]) for a in algorithms), b""
    )


def measured(number: int, pcr: int, data: bytes, algorithms, kind=EventType.EV_SEPARATOR) -> Event:
    digests = tuple(
        (a, hashlib.new(NAMES[a], data).digest() if a in NAMES else bytes(SIZES[a]))
        for a in algorithms
    )
    return Event(number, pcr, int(kind), digests, data)


def informational(number: int, pcr: int, data: bytes, algorithms, digest_byte=0) -> Event:
    digests = tuple((a, bytes([digest_byte]) * SIZES[a]) for a in algorithms)
    return Event(number, pcr, EventType.EV_NO_ACTION, digests, data)


def agile_log(algorithms, *events) -> EventLog:
    header = Event(0, 0, EventType.EV_NO_ACTION, ((SHA1, bytes(20)),), spec(*algorithms).marshal())
    return EventLog(True, spec(*algorithms), (header, *events))


def extend(bank: str, old: bytes, data: bytes) -> bytes:
    return hashlib.new(bank, old + hashlib.new(bank, data).digest()).digest()


def test_startup_locality_3_sets_pcr0s_initial_value():
    banks = (SHA1, SHA256)
    log = agile_log(
        banks,
        informational(1, 0, StartupLocalityData(3).encode(), banks),
        measured(2, 0, SEPARATOR, banks),
    )
    log = parse_event_log(log.marshal())
    assert startup_locality(log.events[1]) == 3
    values = replay(log).values.to_json()
    assert values == {
        "sha1": {"0": extend("sha1", bytes(19) + b"\x03", SEPARATOR).hex()},
        "sha256": {"0": extend("sha256", bytes(31) + b"\x03", SEPARATOR).hex()},
    }


def test_startup_locality_alone_still_reports_pcr0():
    """DESIGN.md: the replay includes PCRs whose initial value comes from StartupLocality."""
    banks = (SHA1, SHA256)
    log = agile_log(banks, informational(1, 0, StartupLocalityData(4).encode(), banks))
    assert replay(log).values.to_json() == {
        "sha1": {"0": (bytes(19) + b"\x04").hex()},
        "sha256": {"0": (bytes(31) + b"\x04").hex()},
    }


def test_a_startup_locality_event_outside_pcr0_changes_nothing():
    banks = (SHA256,)
    log = agile_log(
        banks,
        informational(1, 7, StartupLocalityData(3).encode(), banks),
        measured(2, 7, SEPARATOR, banks),
    )
    assert startup_locality(log.events[1]) is None
    assert replay(log).values.to_json() == {
        "sha256": {"7": extend("sha256", bytes(32), SEPARATOR).hex()}
    }


def test_no_action_events_are_never_extended_whatever_their_digests():
    banks = (SHA1,)
    log = agile_log(
        banks,
        informational(1, 3, b"anything at all", banks, digest_byte=0xAB),
        measured(2, 4, SEPARATOR, banks),
    )
    assert replay(log).values.to_json() == {
        "sha1": {"4": extend("sha1", bytes(20), SEPARATOR).hex()}
    }


def test_a_bank_without_a_python_hash_is_reported_uncomputable():
    banks = (SHA256, SM3)
    log = parse_event_log(agile_log(banks, measured(1, 0, SEPARATOR, banks)).marshal())
    result = replay(log)
    assert result.uncomputable_banks == (SM3,)
    assert result.values.to_json() == {
        "sha256": {"0": extend("sha256", bytes(32), SEPARATOR).hex()}
    }


def test_a_startup_locality_event_after_pcr0_measurements_does_not_hide_them():
    banks = (SHA256,)
    crtm = TextData("forged CRTM version", utf16=True, nul_terminated=True).encode()
    genuine = agile_log(
        banks,
        informational(1, 0, StartupLocalityData(3).encode(), banks),
        measured(2, 0, SEPARATOR, banks),
    )
    forged = agile_log(
        banks,
        measured(1, 0, crtm, banks, kind=EventType.EV_S_CRTM_VERSION),
        informational(2, 0, StartupLocalityData(3).encode(), banks),
        measured(3, 0, SEPARATOR, banks),
    )
    try:
        forged_values = replay(parse_event_log(forged.marshal())).values
    except EvidenceError:
        return  # rejecting the log is a fine answer too
    assert forged_values != replay(genuine).values, "the forged CRTM event left no trace"


@pytest.mark.parametrize("declared", [(SHA256,), (SHA256, SHA256)], ids=["once", "twice"])
def test_an_event_with_two_digests_for_one_bank_is_rejected(declared):
    """Declared once, the event takes the general path; declared twice in the Spec ID, the
    event matches the one-unpack fast path."""
    one = hashlib.sha256(b"benign").digest()
    two = hashlib.sha256(b"hidden").digest()
    event = Event(1, 4, EventType.EV_SEPARATOR, ((SHA256, one), (SHA256, two)), SEPARATOR)
    header = Event(0, 0, EventType.EV_NO_ACTION, ((SHA1, bytes(20)),), spec(*declared).marshal())
    data = EventLog(True, spec(*declared), (header, event)).marshal()
    try:
        parse_event_log(data)
    except MalformedStructure:
        return
    raise AssertionError("a TCG_PCR_EVENT2 with two sha256 digests was accepted")


# -- legacy logs with a Spec ID header -------------------------------------------------------


def legacy_spec_id_log(vendor_info: bytes) -> bytes:
    """TCG EFI Platform 1.22 (TPM 1.2): the first event's data is TCG_EfiSpecIdEventStruct
    "Spec ID Event00": platformClass u32, specVersionMinor, specVersionMajor, specErrata,
    uintnSize, vendorInfoSize (u8 each), vendorInfo; no algorithm list. Then SHA-1
    TCG_PCR_EVENTs."""
    data = b"Spec ID Event00\x00" + struct.pack("<IBBBBB", 0, 2, 1, 0, 2, len(vendor_info))
    data += vendor_info
    header = struct.pack("<II20sI", 0, EventType.EV_NO_ACTION, bytes(20), len(data)) + data
    separator = struct.pack(
        "<II20sI", 0, EventType.EV_SEPARATOR, hashlib.sha1(SEPARATOR).digest(), 4
    )
    return header + separator + SEPARATOR


def test_a_legacy_log_with_a_spec_id_event00_header_parses():
    raw = legacy_spec_id_log(b"")
    log = parse_event_log(raw)
    assert not log.crypto_agile
    assert log.marshal() == raw
    assert replay(log).values.to_json() == {
        "sha1": {"0": extend("sha1", bytes(20), SEPARATOR).hex()}
    }


def test_a_legacy_log_with_a_spec_id_event00_header_and_vendor_info_parses():
    raw = legacy_spec_id_log(b"vend")
    assert parse_event_log(raw).marshal() == raw


# -- parser strictness: typed errors that say where ------------------------------------------


def test_the_crypto_agile_header_must_be_in_pcr0_with_a_zero_digest():
    for pcr, digest in ((1, bytes(20)), (0, b"\x01" * 20)):
        header = Event(0, pcr, EventType.EV_NO_ACTION, ((SHA1, digest),), spec(SHA1).marshal())
        data = EventLog(True, spec(SHA1), (header,)).marshal()
        with pytest.raises(MalformedStructure, match="PCR 0 with a zero digest"):
            parse_event_log(data)


def test_a_digest_for_an_undeclared_bank_is_an_error_at_its_offset():
    log = agile_log((SHA1,), measured(1, 0, SEPARATOR, (SHA256,)))
    data = log.marshal()
    first_size = 32 + len(spec(SHA1).marshal())
    with pytest.raises(MalformedStructure) as caught:
        parse_event_log(data)
    assert caught.value.offset == first_size + 12
    assert "0x000b" in str(caught.value)


def test_a_declared_size_that_contradicts_the_algorithm_is_an_error():
    bad = SpecIdEvent(b"Spec ID Event03\x00", 0, 0, 2, 0, 2, (AlgorithmSize(SHA256, 20),), b"")
    header = Event(0, 0, EventType.EV_NO_ACTION, ((SHA1, bytes(20)),), bad.marshal())
    with pytest.raises(MalformedStructure, match="20-byte digests"):
        parse_event_log(EventLog(True, bad, (header,)).marshal())


@pytest.mark.parametrize("cut", [1, 12, 13, 40, 50])
def test_a_truncated_event_names_the_event(cut):
    log = agile_log((SHA1, SHA256), measured(1, 0, SEPARATOR, (SHA1, SHA256)))
    data = log.marshal()
    with pytest.raises(MalformedStructure, match="event 1 ") as caught:
        parse_event_log(data[: len(data) - len(SEPARATOR) - 58 + cut])
    assert caught.value.offset >= 32 + len(spec(SHA1, SHA256).marshal())


def test_an_event_claiming_more_data_than_the_log_has_is_an_error():
    data = agile_log((SHA1,), measured(1, 0, SEPARATOR, (SHA1,))).marshal()
    with pytest.raises(MalformedStructure, match="claims 4 bytes"):
        parse_event_log(data[:-1])
    with pytest.raises(MalformedStructure, match="empty"):
        parse_event_log(b"")
