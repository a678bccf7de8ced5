"""Events that were never extended into the quoted bank are never trusted.

A crypto-agile log carries, per event, one digest per bank (PFP 10.2.2). An event
with no digest for the bank the quote covers adds nothing to that bank's replay, so
the quote vouches for nothing it says. Each attack below takes a real log, adds such
an event claiming Secure Boot on, an attacker's db certificate or a different kernel
command line, and sends the bytes: the replay still equals the honest quote, and
``verify_log`` must refuse the log instead of handing the event to ``secure_boot_state``.
"""

from __future__ import annotations

import hashlib
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.evidence.efi_signatures import EFI_CERT_X509_GUID, SignatureEntry, SignatureList
from stockade.evidence.errors import EventLogMismatch, MalformedStructure
from stockade.evidence.event_data import SeparatorData, TextData, UefiVariableData, decode
from stockade.evidence.event_digests import data_is_measured
from stockade.evidence.eventlog import (
    AlgorithmSize,
    Event,
    EventLog,
    EventType,
    SpecIdEvent,
    parse_event_log,
)
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.replay import replay, verify_log
from stockade.evidence.secureboot import secure_boot_state
from support.fixtures import SHARED

FIXTURES = SHARED / "eventlogs"
SHA1, SHA256, SHA384, SM3 = 0x0004, 0x000B, 0x000C, 0x0012
HASHLIB = {SHA1: "sha1", SHA256: "sha256", SHA384: "sha384"}
EFI_GLOBAL_VARIABLE = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
EFI_IMAGE_SECURITY_DATABASE = uuid.UUID("d719b2cb-3d3a-4596-a3bc-dad00e67656f")
ATTACKER = uuid.UUID("00000000-0000-0000-0000-00000000a77a")

pytestmark = pytest.mark.skipif(
    not FIXTURES.is_dir(), reason=f"real event logs not found at {FIXTURES}"
)


def load(name: str) -> EventLog:
    return parse_event_log((FIXTURES / f"{name}.bin").read_bytes())


def honest_quote(log: EventLog, *banks: int) -> PcrValues:
    """What the TPM behind ``log`` quotes in ``banks``: the log's own replay."""
    values = replay(log).values
    return PcrValues({alg: dict(values.banks[alg]) for alg in banks})


def digests(data: bytes, *banks: int) -> tuple[tuple[int, bytes], ...]:
    """Digests of ``data`` itself, so each one passes the "digest is of the data" check."""
    return tuple((alg, hashlib.new(HASHLIB[alg], data).digest()) for alg in banks)


def inserted(log: EventLog, after: int, pcr: int, kind: int, data: bytes, carried) -> EventLog:
    """``log`` as an attacker sends it: one more event after event ``after``, re-parsed
    from bytes so numbers and offsets are the ones a verifier sees."""
    events = list(log.events)
    events.insert(after + 1, Event(0, pcr, int(kind), carried, data))
    renumbered = tuple(event._replace(number=i) for i, event in enumerate(events))
    return parse_event_log(EventLog(log.crypto_agile, log.spec_id, renumbered).marshal())


def variable(name: str, value: bytes, owner: uuid.UUID = EFI_GLOBAL_VARIABLE) -> bytes:
    return UefiVariableData(owner, name, value).encode()


def secure_boot_on() -> bytes:
    return variable("SecureBoot", b"\x01")


def attackers_db() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Attacker db key")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .sign(key, hashes.SHA256())
    ).public_bytes(serialization.Encoding.DER)
    entry = SignatureEntry(ATTACKER, certificate)
    signature_list = SignatureList(EFI_CERT_X509_GUID, b"", 16 + len(certificate), (entry,))
    return variable("db", signature_list.marshal(), EFI_IMAGE_SECURITY_DATABASE)


def find(log: EventLog, predicate) -> Event:
    return next(event for event in log.events if predicate(event))


def is_variable(name: str):
    def test(event: Event) -> bool:
        decoded = decode(event)
        return (
            event.pcr == 7
            and event.type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG
            and isinstance(decoded, UefiVariableData)
            and decoded.unicode_name == name
        )

    return test


def is_command_line(event: Event) -> bool:
    return event.data.startswith(b"kernel_cmdline: ")


# -- the attacks -------------------------------------------------------------------------


def test_secure_boot_on_from_an_event_with_only_a_sha1_digest_is_refused():
    """The finding: SHA-1 + SHA-256 log, quote over SHA-256. The forged SecureBoot=1
    event carries only a SHA-1 digest (of its own data), so the SHA-256 replay, and
    the quote, are unchanged."""
    log = load("event-bootorder")
    quote = honest_quote(log, SHA256)
    assert secure_boot_state(verify_log(log, quote)).enabled is False
    real = find(log, is_variable("SecureBoot"))
    data = secure_boot_on()
    forged = inserted(
        log, real.number, 7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, data, digests(data, SHA1)
    )
    assert replay(forged).values.banks[SHA256] == quote.banks[SHA256]
    with pytest.raises(MalformedStructure) as refused:
        verify_log(forged, quote)
    message = str(refused.value)
    assert f"event {real.number + 1} (EV_EFI_VARIABLE_DRIVER_CONFIG, PCR 7)" in message
    assert "no sha256 digest" in message
    assert refused.value.offset == forged.events[real.number + 1].offset > 0


@pytest.mark.parametrize(
    ("what", "after", "pcr", "kind", "data"),
    [
        ("SecureBoot=1", is_variable("SecureBoot"), 7, "EV_EFI_VARIABLE_DRIVER_CONFIG", None),
        ("attacker's db", is_variable("db"), 7, "EV_EFI_VARIABLE_DRIVER_CONFIG", None),
        (
            "kernel command line",
            is_command_line,
            8,
            "EV_IPL",
            b"kernel_cmdline: /boot/vmlinuz-5.4.0-45-generic root=/dev/sda1 init=/bin/sh",
        ),
    ],
    ids=["secure-boot-on", "attackers-db", "kernel-command-line"],
)
def test_events_carrying_no_digest_at_all_are_refused(what, after, pcr, kind, data):
    """Zero digests: the event is in no bank's replay, whatever the quote covers."""
    if data is None:
        data = secure_boot_on() if what == "SecureBoot=1" else attackers_db()
    log = load("event-bootorder")
    quote = honest_quote(log, SHA1, SHA256)
    anchor = find(log, after)
    forged = inserted(log, anchor.number, pcr, EventType[kind], data, ())
    assert replay(forged).values.to_json() == replay(log).values.to_json()
    with pytest.raises(MalformedStructure) as refused:
        verify_log(forged, quote)
    assert f"event {anchor.number + 1} ({kind}, PCR {pcr})" in str(refused.value)
    assert "no sha1 or sha256 digest" in str(refused.value)


def test_an_event_extended_into_one_quoted_bank_only_is_refused():
    """Both banks quoted. TPM2_PCR_Extend with a one-bank TPML_DIGEST_VALUES extends
    only that bank, so an attacker can make the SHA-1 PCR match a SHA-1-only event;
    the SHA-256 PCR never saw it."""
    log = load("event-bootorder")
    real = find(log, is_variable("SecureBoot"))
    data = secure_boot_on()
    forged = inserted(
        log, real.number, 7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, data, digests(data, SHA1)
    )
    quote = PcrValues(
        {
            SHA1: dict(replay(forged).values.banks[SHA1]),  # the attacker's extend
            SHA256: dict(replay(log).values.banks[SHA256]),
        }
    )
    with pytest.raises(MalformedStructure, match=r"PCR 7\) carries no sha256 digest"):
        verify_log(forged, quote)


def test_a_bank_stockade_cannot_compute_vouches_for_nothing():
    """An SM3-only log against a quote whose SM3 PCR 7 is all zeros (a bank the firmware
    never extended): the "replay" of an uncomputable bank is zeros too, so it matched."""
    spec = SpecIdEvent(b"Spec ID Event03\x00", 0, 0, 2, 0, 2, (AlgorithmSize(SM3, 32),), b"")
    header = Event(0, 0, EventType.EV_NO_ACTION, ((SHA1, bytes(20)),), spec.marshal())
    event = Event(
        1, 7, EventType.EV_EFI_VARIABLE_DRIVER_CONFIG, ((SM3, b"s" * 32),), secure_boot_on()
    )
    forged = parse_event_log(EventLog(True, spec, (header, event)).marshal())
    with pytest.raises(EventLogMismatch, match="share no PCR bank that Stockade can replay"):
        verify_log(forged, PcrValues({SM3: {7: bytes(32)}}))


def test_an_uncomputable_quoted_bank_is_skipped_and_the_computable_one_verified():
    spec = SpecIdEvent(
        b"Spec ID Event03\x00",
        0,
        0,
        2,
        0,
        2,
        (AlgorithmSize(SHA256, 32), AlgorithmSize(SM3, 32)),
        b"",
    )
    header = Event(0, 0, EventType.EV_NO_ACTION, ((SHA1, bytes(20)),), spec.marshal())
    data = secure_boot_on()
    event = Event(
        1,
        7,
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        (*digests(data, SHA256), (SM3, b"s" * 32)),
        data,
    )
    log = parse_event_log(EventLog(True, spec, (header, event)).marshal())
    quote = PcrValues({SHA256: dict(replay(log).values.banks[SHA256]), SM3: {7: b"q" * 32}})
    verified = verify_log(log, quote)
    assert verified.banks == (SHA256,)
    assert secure_boot_state(verified).enabled is True


# -- what the fix keeps working, and its invariant -------------------------------------------


LOGS = [
    "event-arch-linux",
    "event-bootorder",
    "event-gce-ubuntu-2104-log",
    "event-moklisttrusted",
    "event-postcode",
    "event-sd-boot-fedora37",
    "event-uefi-sha1-log",
    "event-uefiaction",
    "event-uefiservices",
    "event-uefivar",
]


@pytest.mark.parametrize("name", LOGS)
def test_trusted_events_are_exactly_the_extended_ones(name):
    """For every real log and every bank it declares: either the log verifies and every
    trusted event carries that bank's digest (and none is EV_NO_ACTION, which is never
    extended), or an event in a quoted PCR lacks that digest and the log is refused."""
    log = load(name)
    full = replay(log).values
    verified_somewhere = False
    for alg in log.banks:
        if not full.banks[alg]:
            continue  # no event extends this bank (event-uefivar's sha384): nothing to quote
        quote = PcrValues({alg: dict(full.banks[alg])})
        lacking = [
            e
            for e in log.events
            if e.type != EventType.EV_NO_ACTION and e.pcr in quote.banks[alg] and not e.digest(alg)
        ]
        if lacking:
            with pytest.raises(MalformedStructure, match=f"event {lacking[0].number} "):
                verify_log(log, quote)
            continue
        verified = verify_log(log, quote)
        verified_somewhere = True
        assert verified.banks == (alg,)
        trusted = list(verified.trusted_events())
        assert trusted, f"{name} has no measured events in {alg:#x}"
        assert all(e.type != EventType.EV_NO_ACTION for e in trusted)
        assert all(e.digest(alg) is not None for e in trusted)
        if log.crypto_agile:
            assert log.events[0] not in trusted  # the Spec ID header: PCR 0, EV_NO_ACTION
    assert verified_somewhere


def test_a_log_declaring_more_banks_than_its_events_carry_is_trusted_in_the_carried_banks():
    """event-uefivar (tpm2-tools) declares sha1, sha256, sha384 and sha512; its one event
    carries sha1 and sha256. Against SHA-256 it verifies; against SHA-384 its event was
    never extended, and the log is refused naming it."""
    log = load("event-uefivar")
    assert secure_boot_state(verify_log(log, honest_quote(log, SHA256))).enabled is True
    quote = PcrValues({SHA384: {7: hashlib.sha384(b"anything").digest()}})
    with pytest.raises(MalformedStructure) as refused:
        verify_log(log, quote)
    assert "event 1 (EV_EFI_VARIABLE_DRIVER_CONFIG, PCR 7) carries no sha384 digest" in str(
        refused.value
    )


def test_boot_application_digests_are_reported_only_in_verified_banks():
    """A SHA-1 digest the quote did not cover could be anything: it is not reported."""
    log = load("event-bootorder")
    only_sha256 = secure_boot_state(verify_log(log, honest_quote(log, SHA256)))
    assert only_sha256.boot_applications
    assert all(set(a.digests) == {"sha256"} for a in only_sha256.boot_applications)
    both = secure_boot_state(verify_log(log, honest_quote(log, SHA1, SHA256)))
    assert all(set(a.digests) == {"sha1", "sha256"} for a in both.boot_applications)


def test_an_event_without_a_computable_digest_is_not_measured_data():
    """``data_is_measured`` is True only when some digest was checked against the data."""
    data = TextData("kernel_cmdline: root=/dev/sda1 rw").encode()
    assert data_is_measured(Event(1, 8, EventType.EV_IPL, (), data)) is None
    assert data_is_measured(Event(1, 8, EventType.EV_IPL, ((SM3, bytes(32)),), data)) is None
    measured = data.split(b" ", 1)[1]
    assert data_is_measured(Event(1, 8, EventType.EV_IPL, digests(measured, SHA256), data))
    separator = SeparatorData(0).encode()
    assert data_is_measured(Event(1, 4, EventType.EV_SEPARATOR, (), separator)) is None
    assert data_is_measured(
        Event(1, 4, EventType.EV_SEPARATOR, digests(separator, SHA1), separator)
    )
