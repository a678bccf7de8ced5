"""TCG PC Client event logs (TCG PC Client Platform Firmware Profile, "PFP",
section 10 "Event Logging"): the legacy SHA-1 format (TCG_PCR_EVENT) and the
crypto-agile format (TCG_PCR_EVENT2 after a Spec ID Event03 header).

All integers are little-endian (PFP 10.2). Parsing is strict about the
structure (sizes, digest counts, algorithms from the header) and keeps every
event's data bytes as they were, so ``EventLog.marshal()`` gives back the exact
log. Decoding the data of an event into typed fields is separate
(``stockade.evidence.event_data``) and never makes a log unreadable.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from enum import IntEnum
from typing import NamedTuple

from stockade.evidence.algorithms import DIGEST_SIZES, HASHES
from stockade.evidence.errors import MalformedStructure

SPEC_ID_SIGNATURE_AGILE = b"Spec ID Event03\x00"
SPEC_ID_SIGNATURE_LEGACY = b"Spec ID Event00\x00"
SHA1_ALG = 0x0004
SHA1_SIZE = 20
MAX_EVENT_DATA = 16 * 1024 * 1024
MAX_DIGESTS = 16


class EventType(IntEnum):
    """PFP Table 9 "Events", and the EFI events at EV_EFI_EVENT_BASE."""

    EV_PREBOOT_CERT = 0x00000000
    EV_POST_CODE = 0x00000001
    EV_UNUSED = 0x00000002
    EV_NO_ACTION = 0x00000003
    EV_SEPARATOR = 0x00000004
    EV_ACTION = 0x00000005
    EV_EVENT_TAG = 0x00000006
    EV_S_CRTM_CONTENTS = 0x00000007
    EV_S_CRTM_VERSION = 0x00000008
    EV_CPU_MICROCODE = 0x00000009
    EV_PLATFORM_CONFIG_FLAGS = 0x0000000A
    EV_TABLE_OF_DEVICES = 0x0000000B
    EV_COMPACT_HASH = 0x0000000C
    EV_IPL = 0x0000000D
    EV_IPL_PARTITION_DATA = 0x0000000E
    EV_NONHOST_CODE = 0x0000000F
    EV_NONHOST_CONFIG = 0x00000010
    EV_NONHOST_INFO = 0x00000011
    EV_OMIT_BOOT_DEVICE_EVENTS = 0x00000012
    EV_POST_CODE2 = 0x00000013
    EV_EFI_EVENT_BASE = 0x80000000
    EV_EFI_VARIABLE_DRIVER_CONFIG = 0x80000001
    EV_EFI_VARIABLE_BOOT = 0x80000002
    EV_EFI_BOOT_SERVICES_APPLICATION = 0x80000003
    EV_EFI_BOOT_SERVICES_DRIVER = 0x80000004
    EV_EFI_RUNTIME_SERVICES_DRIVER = 0x80000005
    EV_EFI_GPT_EVENT = 0x80000006
    EV_EFI_ACTION = 0x80000007
    EV_EFI_PLATFORM_FIRMWARE_BLOB = 0x80000008
    EV_EFI_HANDOFF_TABLES = 0x80000009
    EV_EFI_PLATFORM_FIRMWARE_BLOB2 = 0x8000000A
    EV_EFI_HANDOFF_TABLES2 = 0x8000000B
    EV_EFI_VARIABLE_BOOT2 = 0x8000000C
    EV_EFI_GPT_EVENT2 = 0x8000000D
    EV_EFI_HCRTM_EVENT = 0x80000010
    EV_EFI_VARIABLE_AUTHORITY = 0x800000E0
    EV_EFI_SPDM_FIRMWARE_BLOB = 0x800000E1
    EV_EFI_SPDM_FIRMWARE_CONFIG = 0x800000E2


def event_type_name(event_type: int) -> str:
    try:
        return EventType(event_type).name
    except ValueError:
        return f"0x{event_type:08x}"


@dataclass(frozen=True)
class AlgorithmSize:
    algorithm_id: int
    digest_size: int


@dataclass(frozen=True)
class SpecIdEvent:
    """TCG_EfiSpecIDEvent (PFP 10.4.5.1): the first event's data, naming the log's banks."""

    signature: bytes
    platform_class: int
    spec_version_minor: int
    spec_version_major: int
    spec_errata: int
    uintn_size: int
    algorithms: tuple[AlgorithmSize, ...]
    vendor_info: bytes

    @property
    def is_crypto_agile(self) -> bool:
        return self.signature == SPEC_ID_SIGNATURE_AGILE

    def marshal(self) -> bytes:
        if not self.is_crypto_agile:
            # TCG EFI Platform 1.22 (TPM 1.2) layout: no algorithm list.
            return (
                self.signature
                + struct.pack(
                    "<IBBBBB",
                    self.platform_class,
                    self.spec_version_minor,
                    self.spec_version_major,
                    self.spec_errata,
                    self.uintn_size,
                    len(self.vendor_info),
                )
                + self.vendor_info
            )
        out = bytearray(self.signature)
        out += struct.pack(
            "<IBBBBI",
            self.platform_class,
            self.spec_version_minor,
            self.spec_version_major,
            self.spec_errata,
            self.uintn_size,
            len(self.algorithms),
        )
        for algorithm in self.algorithms:
            out += struct.pack("<HH", algorithm.algorithm_id, algorithm.digest_size)
        out += struct.pack("<B", len(self.vendor_info)) + self.vendor_info
        return bytes(out)

    @classmethod
    def unmarshal(cls, data: bytes) -> SpecIdEvent:
        """Decode a Spec ID event (PFP 10.4.5.1 "Spec ID Event03", or the TPM 1.2
        "Spec ID Event00" of TCG EFI Platform 1.22); ``MalformedStructure`` if it is not one."""
        where = "TCG_EfiSpecIDEvent"
        signature = data[:16]
        if signature == SPEC_ID_SIGNATURE_LEGACY:
            if len(data) < 25:
                raise MalformedStructure(where, 0, f"{len(data)} bytes is too short")
            platform_class, minor, major, errata, uintn, vendor_size = struct.unpack_from(
                "<IBBBBB", data, 16
            )
            if 25 + vendor_size != len(data):
                raise MalformedStructure(
                    where, 24, f"vendorInfoSize {vendor_size} does not fill the event"
                )
            return cls(signature, platform_class, minor, major, errata, uintn, (), data[25:])
        if len(data) < 29:
            raise MalformedStructure(where, 0, f"{len(data)} bytes is too short")
        platform_class, minor, major, errata, uintn, count = struct.unpack_from("<IBBBBI", data, 16)
        if count > MAX_DIGESTS:
            raise MalformedStructure(where, 24, f"numberOfAlgorithms {count} exceeds {MAX_DIGESTS}")
        offset = 28
        algorithms: list[AlgorithmSize] = []
        for _ in range(count):
            if offset + 4 > len(data):
                raise MalformedStructure(where, offset, "algorithm list is truncated")
            algorithm_id, size = struct.unpack_from("<HH", data, offset)
            known = DIGEST_SIZES.get(algorithm_id)
            if known is not None and known != size:
                raise MalformedStructure(
                    where,
                    offset,
                    f"algorithm 0x{algorithm_id:04x} declared with {size}-byte digests",
                )
            if size == 0 or size > 64:
                raise MalformedStructure(where, offset, f"digest size {size} is not plausible")
            if any(a.algorithm_id == algorithm_id for a in algorithms):
                raise MalformedStructure(where, offset, f"algorithm 0x{algorithm_id:04x} twice")
            algorithms.append(AlgorithmSize(algorithm_id, size))
            offset += 4
        if offset + 1 > len(data):
            raise MalformedStructure(where, offset, "vendorInfoSize is missing")
        vendor_size = data[offset]
        offset += 1
        if offset + vendor_size != len(data):
            raise MalformedStructure(
                where, offset, f"vendorInfoSize {vendor_size} does not fill the event"
            )
        return cls(
            signature,
            platform_class,
            minor,
            major,
            errata,
            uintn,
            tuple(algorithms),
            data[offset:],
        )


class Event(NamedTuple):
    """One measurement: which PCR, what kind, the digest per bank, and the data measured.

    Immutable like the dataclasses elsewhere; a NamedTuple because logs hold
    hundreds of events and it is built several times faster.
    """

    number: int
    pcr: int
    type: int
    digests: tuple[tuple[int, bytes], ...]  # (TPM_ALG_ID, digest) in log order
    data: bytes
    offset: int = 0  # where the event starts in the log

    @property
    def type_name(self) -> str:
        return event_type_name(self.type)

    def digest(self, algorithm_id: int) -> bytes | None:
        for algorithm, value in self.digests:
            if algorithm == algorithm_id:
                return value
        return None


@dataclass(frozen=True)
class EventLog:
    """A parsed event log. ``spec_id`` is None for a legacy log without a Spec ID header."""

    crypto_agile: bool
    spec_id: SpecIdEvent | None
    events: tuple[Event, ...]

    @property
    def banks(self) -> tuple[int, ...]:
        """The TPM_ALG_IDs this log carries digests for."""
        if self.crypto_agile and self.spec_id is not None:
            return tuple(a.algorithm_id for a in self.spec_id.algorithms)
        return (SHA1_ALG,)

    def marshal(self) -> bytes:
        """The log's bytes; for a parsed log, exactly the bytes it was parsed from."""
        out = bytearray()
        for event in self.events:
            out += marshal_event(event, legacy=not self.crypto_agile or event.number == 0)
        return bytes(out)

    @classmethod
    def parse(cls, data: bytes) -> EventLog:
        return parse_event_log(data)


def marshal_event(event: Event, *, legacy: bool) -> bytes:
    """TCG_PCR_EVENT (legacy, one SHA-1 digest) or TCG_PCR_EVENT2 (PFP 10.2.1, 10.2.2)."""
    if legacy:
        digest = event.digest(SHA1_ALG) or bytes(SHA1_SIZE)
        return (
            struct.pack("<II", event.pcr, event.type)
            + digest
            + struct.pack("<I", len(event.data))
            + event.data
        )
    out = bytearray(struct.pack("<III", event.pcr, event.type, len(event.digests)))
    for algorithm, digest in event.digests:
        out += struct.pack("<H", algorithm) + digest
    out += struct.pack("<I", len(event.data)) + event.data
    return bytes(out)


_LEGACY_HEADER = struct.Struct("<II20sI")
_EVENT2_HEADER = struct.Struct("<III")
_U16 = struct.Struct("<H")
_U32 = struct.Struct("<I")


def _read_legacy(data: bytes, offset: int, number: int) -> tuple[Event, int]:
    if offset + _LEGACY_HEADER.size > len(data):
        raise MalformedStructure("TCG_PCR_EVENT", offset, f"event {number} header is truncated")
    pcr, event_type, digest, size = _LEGACY_HEADER.unpack_from(data, offset)
    start = offset + _LEGACY_HEADER.size
    if size > MAX_EVENT_DATA or start + size > len(data):
        raise MalformedStructure(
            "TCG_PCR_EVENT", offset + 28, f"event {number} claims {size} bytes of data"
        )
    event = Event(
        number, pcr, event_type, ((SHA1_ALG, digest),), data[start : start + size], offset
    )
    return event, start + size


def _fast_layout(spec_id: SpecIdEvent) -> tuple[struct.Struct, tuple[int, ...]]:
    """One struct for an event header carrying every declared bank, in declared order:
    the common case, parsed with a single unpack."""
    layout = "<III" + "".join(f"H{a.digest_size}s" for a in spec_id.algorithms) + "I"
    return struct.Struct(layout), tuple(a.algorithm_id for a in spec_id.algorithms)


def _read_event2(data: bytes, offset: int, number: int, sizes: dict[int, int]) -> tuple[Event, int]:
    where = "TCG_PCR_EVENT2"
    if offset + _EVENT2_HEADER.size > len(data):
        raise MalformedStructure(where, offset, f"event {number} header is truncated")
    pcr, event_type, count = _EVENT2_HEADER.unpack_from(data, offset)
    if count > MAX_DIGESTS:
        raise MalformedStructure(where, offset + 8, f"event {number} claims {count} digests")
    cursor = offset + _EVENT2_HEADER.size
    digests: list[tuple[int, bytes]] = []
    for _ in range(count):
        if cursor + 2 > len(data):
            raise MalformedStructure(where, cursor, f"event {number} digest list is truncated")
        (algorithm,) = _U16.unpack_from(data, cursor)
        size = sizes.get(algorithm)
        if size is None:
            raise MalformedStructure(
                where,
                cursor,
                f"event {number} has a digest for algorithm 0x{algorithm:04x}, "
                "which the Spec ID event does not declare",
            )
        if any(seen == algorithm for seen, _ in digests):
            raise MalformedStructure(
                where, cursor, f"event {number} carries two digests for algorithm 0x{algorithm:04x}"
            )
        cursor += 2
        if cursor + size > len(data):
            raise MalformedStructure(where, cursor, f"event {number} digest is truncated")
        digests.append((algorithm, data[cursor : cursor + size]))
        cursor += size
    if cursor + 4 > len(data):
        raise MalformedStructure(where, cursor, f"event {number} EventSize is truncated")
    (size,) = _U32.unpack_from(data, cursor)
    cursor += 4
    if size > MAX_EVENT_DATA or cursor + size > len(data):
        raise MalformedStructure(where, cursor - 4, f"event {number} claims {size} bytes of data")
    event = Event(number, pcr, event_type, tuple(digests), data[cursor : cursor + size], offset)
    return event, cursor + size


def parse_event_log(data: bytes) -> EventLog:
    """Parse a whole event log, as read from ``binary_bios_measurements``."""
    if not data:
        raise MalformedStructure("event log", 0, "the log is empty")
    first, offset = _read_legacy(data, 0, 0)
    spec_id: SpecIdEvent | None = None
    if first.type == EventType.EV_NO_ACTION and first.data[:16] in (
        SPEC_ID_SIGNATURE_AGILE,
        SPEC_ID_SIGNATURE_LEGACY,
    ):
        spec_id = SpecIdEvent.unmarshal(first.data)
    events = [first]
    if spec_id is not None and spec_id.is_crypto_agile:
        if first.pcr != 0 or first.digest(SHA1_ALG) != bytes(SHA1_SIZE):
            raise MalformedStructure(
                "TCG_PCR_EVENT", 0, "the Spec ID event must be in PCR 0 with a zero digest"
            )
        sizes = {a.algorithm_id: a.digest_size for a in spec_id.algorithms}
        fast, algorithms = _fast_layout(spec_id)
        new_event = tuple.__new__  # Event(...) minus its argument handling: the hot path
        bank_count = len(algorithms)
        end = len(data)
        while offset < end:
            number = len(events)
            if offset + fast.size <= end:
                fields = fast.unpack_from(data, offset)
                size = fields[-1]
                start = offset + fast.size
                if (
                    fields[2] == bank_count
                    and fields[3:-1:2] == algorithms
                    and size <= MAX_EVENT_DATA
                    and start + size <= end
                ):
                    if bank_count == 2:  # the usual sha1 + sha256 log, without a zip
                        digests: tuple[tuple[int, bytes], ...] = (
                            (algorithms[0], fields[4]),
                            (algorithms[1], fields[6]),
                        )
                    else:
                        digests = tuple(zip(algorithms, fields[4:-1:2], strict=True))
                    events.append(
                        new_event(
                            Event,
                            (
                                number,
                                fields[0],
                                fields[1],
                                digests,
                                data[start : start + size],
                                offset,
                            ),
                        )
                    )
                    offset = start + size
                    continue
            event, offset = _read_event2(data, offset, number, sizes)
            events.append(event)
        return EventLog(True, spec_id, tuple(events))
    while offset < len(data):
        event, offset = _read_legacy(data, offset, len(events))
        events.append(event)
    return EventLog(False, spec_id, tuple(events))


def bank_names(log: EventLog) -> list[str]:
    return [HASHES[a].name if a in HASHES else f"0x{a:04x}" for a in log.banks]
