"""Typed event data for TCG PC Client event logs (PFP 10.4 "Event Data Structures"
and UEFI structures the PFP references).

``decode(event)`` never raises: data that does not decode, or that would not
encode back to the very same bytes, is returned as ``RawData`` with the
reason. Every typed class can ``encode()`` itself, which is how the
development boot chain writes logs.
"""

from __future__ import annotations

import string
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from stockade.evidence.device_path import format_device_path
from stockade.evidence.efi_signatures import parse_signature_lists
from stockade.evidence.errors import EvidenceError
from stockade.evidence.eventlog import (
    SPEC_ID_SIGNATURE_AGILE,
    SPEC_ID_SIGNATURE_LEGACY,
    Event,
    EventType,
    SpecIdEvent,
)
from stockade.evidence.replay import STARTUP_LOCALITY_SIGNATURE

SP800_155_SIGNATURE = b"SP800-155 Event\x00"
SIGNATURE_LIST_VARIABLES = frozenset(
    {"PK", "KEK", "db", "dbx", "dbt", "dbr", "MokList", "MokListX", "Shim"}
)
BOOLEAN_VARIABLES = frozenset({"SecureBoot", "MokListTrusted", "DeployedMode", "AuditMode"})
_PRINTABLE = frozenset(string.printable)


class _Undecodable(Exception):
    """Internal: this data is not the structure its event type suggests."""


def _guid(data: bytes) -> uuid.UUID:
    if len(data) < 16:
        raise _Undecodable("GUID is truncated")
    return uuid.UUID(bytes_le=bytes(data[:16]))


def _unpack(layout: str, data: bytes, offset: int) -> tuple[Any, ...]:
    try:
        return struct.unpack_from(layout, data, offset)
    except struct.error as error:
        raise _Undecodable(str(error)) from None


# -- the data classes ----------------------------------------------------------


@dataclass(frozen=True)
class RawData:
    data: bytes
    reason: str = ""

    def encode(self) -> bytes:
        return self.data

    def to_json(self) -> Any:
        return self.data.hex()


@dataclass(frozen=True)
class SpecIdData:
    spec_id: SpecIdEvent

    def encode(self) -> bytes:
        return self.spec_id.marshal()

    def to_json(self) -> Any:
        spec = self.spec_id
        return {
            "Signature": spec.signature.rstrip(b"\x00").decode("ascii", errors="replace"),
            "platformClass": spec.platform_class,
            "specVersionMinor": spec.spec_version_minor,
            "specVersionMajor": spec.spec_version_major,
            "specErrata": spec.spec_errata,
            "uintnSize": spec.uintn_size,
            "numberOfAlgorithms": len(spec.algorithms),
            "Algorithms": [
                {"algorithmId": a.algorithm_id, "digestSize": a.digest_size}
                for a in spec.algorithms
            ],
            "vendorInfoSize": len(spec.vendor_info),
        }


@dataclass(frozen=True)
class StartupLocalityData:
    locality: int

    def encode(self) -> bytes:
        return STARTUP_LOCALITY_SIGNATURE + bytes([self.locality])

    def to_json(self) -> Any:
        return {"StartupLocality": self.locality}


@dataclass(frozen=True)
class Sp800155Data:
    """TCG_Sp800_155_PlatformId_Event2: a pointer to the platform's reference manifest."""

    vendor_id: int
    reference_manifest_guid: uuid.UUID
    platform_manufacturer: bytes
    platform_model: bytes
    platform_version: bytes
    firmware_manufacturer: bytes
    firmware_manufacturer_id: int
    firmware_version: bytes

    def encode(self) -> bytes:
        def sized(value: bytes) -> bytes:
            return bytes([len(value)]) + value

        return (
            SP800_155_SIGNATURE
            + struct.pack("<I", self.vendor_id)
            + self.reference_manifest_guid.bytes_le
            + sized(self.platform_manufacturer)
            + sized(self.platform_model)
            + sized(self.platform_version)
            + sized(self.firmware_manufacturer)
            + struct.pack("<I", self.firmware_manufacturer_id)
            + sized(self.firmware_version)
        )

    def to_json(self) -> Any:
        return {
            "VendorId": self.vendor_id,
            "ReferenceManifestGuid": str(self.reference_manifest_guid),
            "PlatformManufacturerStr": self.platform_manufacturer.decode(errors="replace"),
            "PlatformModel": self.platform_model.decode(errors="replace"),
            "PlatformVersion": self.platform_version.decode(errors="replace"),
            "FirmwareManufacturerStr": self.firmware_manufacturer.decode(errors="replace"),
            "FirmwareManufacturerId": self.firmware_manufacturer_id,
            "FirmwareVersion": self.firmware_version.decode(errors="replace"),
        }


@dataclass(frozen=True)
class TextData:
    """A string event (EV_ACTION, EV_EFI_ACTION, EV_IPL, EV_S_CRTM_VERSION, ...)."""

    text: str
    utf16: bool = False
    nul_terminated: bool = False
    trailing: bytes = b""  # e.g. an odd zero byte after a UTF-16 string (systemd-boot)

    def encode(self) -> bytes:
        body = self.text + ("\x00" if self.nul_terminated else "")
        encoded = body.encode("utf-16-le") if self.utf16 else body.encode("utf-8")
        return encoded + self.trailing

    def to_json(self) -> Any:
        return {"String": self.text}


@dataclass(frozen=True)
class SeparatorData:
    """EV_SEPARATOR: 0 normally, 0xFFFFFFFF (or 1) when the firmware hit an error."""

    value: int

    def encode(self) -> bytes:
        return struct.pack("<I", self.value)

    def to_json(self) -> Any:
        return self.encode().hex()


@dataclass(frozen=True)
class LoadOption:
    """EFI_LOAD_OPTION (UEFI 2.10, 3.1.3): a Boot#### variable."""

    attributes: int
    description: str
    file_path_list: bytes
    optional_data: bytes

    def encode(self) -> bytes:
        return (
            struct.pack("<IH", self.attributes, len(self.file_path_list))
            + (self.description + "\x00").encode("utf-16-le")
            + self.file_path_list
            + self.optional_data
        )

    def to_json(self) -> Any:
        return {
            "Enabled": "Yes" if self.attributes & 1 else "No",
            "FilePathListLength": len(self.file_path_list),
            "Description": self.description,
            "DevicePath": format_device_path(self.file_path_list),
        }


@dataclass(frozen=True)
class UefiVariableData:
    """UEFI_VARIABLE_DATA (PFP 10.4.6): which variable, and its contents."""

    variable_name: uuid.UUID
    unicode_name: str
    variable_data: bytes
    trailing: bytes = b""  # bytes past VariableDataLength (seen from shim)

    def encode(self) -> bytes:
        name = self.unicode_name.encode("utf-16-le")
        return (
            self.variable_name.bytes_le
            + struct.pack("<QQ", len(name) // 2, len(self.variable_data))
            + name
            + self.variable_data
            + self.trailing
        )

    def decoded_value(self) -> Any:
        """The variable's contents, decoded where the name says what they are."""
        name, data = self.unicode_name, self.variable_data
        if name in BOOLEAN_VARIABLES and len(data) == 1:
            return {"Enabled": "Yes" if data[0] else "No"}
        if name in SIGNATURE_LIST_VARIABLES and data:
            try:
                return [signature_list.to_json() for signature_list in parse_signature_lists(data)]
            except EvidenceError:
                # EV_EFI_VARIABLE_AUTHORITY holds one EFI_SIGNATURE_DATA, not a list
                # (PFP 10.4.6): the owner GUID and the entry that verified an image.
                if len(data) > 16:
                    return [
                        {
                            "SignatureOwner": str(uuid.UUID(bytes_le=data[:16])),
                            "SignatureData": data[16:].hex(),
                        }
                    ]
                return data.hex()
        if len(name) == 8 and name.startswith("Boot") and name[4:] != "Order":
            option = decode_load_option(data)
            if option is not None:
                return option.to_json()
        return data.hex()

    def to_json(self) -> Any:
        document: dict[str, Any] = {
            "VariableName": str(self.variable_name),
            "UnicodeNameLength": len(self.unicode_name.encode("utf-16-le")) // 2,
            "VariableDataLength": len(self.variable_data),
            "UnicodeName": self.unicode_name,
        }
        if self.variable_data:
            document["VariableData"] = self.decoded_value()
        return document


@dataclass(frozen=True)
class ImageLoadData:
    """UEFI_IMAGE_LOAD_EVENT (PFP 10.4.5.3): an EFI image and where it came from."""

    location: int
    length: int
    link_time_address: int
    device_path: bytes
    trailing: bytes = b""  # bytes past LengthOfDevicePath (seen from firmware)

    def encode(self) -> bytes:
        return (
            struct.pack(
                "<QQQQ", self.location, self.length, self.link_time_address, len(self.device_path)
            )
            + self.device_path
            + self.trailing
        )

    def to_json(self) -> Any:
        return {
            "ImageLocationInMemory": self.location,
            "ImageLengthInMemory": self.length,
            "ImageLinkTimeAddress": self.link_time_address,
            "LengthOfDevicePath": len(self.device_path),
            "DevicePath": format_device_path(self.device_path),
        }


@dataclass(frozen=True)
class FirmwareBlobData:
    """UEFI_PLATFORM_FIRMWARE_BLOB, or BLOB2 when ``description`` is set."""

    base: int
    length: int
    description: bytes | None = None

    def encode(self) -> bytes:
        prefix = b"" if self.description is None else bytes([len(self.description)])
        prefix += self.description or b""
        return prefix + struct.pack("<QQ", self.base, self.length)

    def to_json(self) -> Any:
        document: dict[str, Any] = {"BlobBase": self.base, "BlobLength": self.length}
        if self.description is not None:
            document["BlobDescription"] = self.description.decode(errors="replace")
        return document


@dataclass(frozen=True)
class HandoffTablesData:
    """UEFI_HANDOFF_TABLE_POINTERS, or TABLE_POINTERS2 when ``description`` is set."""

    tables: tuple[tuple[uuid.UUID, int], ...]
    description: bytes | None = None

    def encode(self) -> bytes:
        prefix = b"" if self.description is None else bytes([len(self.description)])
        prefix += self.description or b""
        out = prefix + struct.pack("<Q", len(self.tables))
        for guid, address in self.tables:
            out += guid.bytes_le + struct.pack("<Q", address)
        return out

    def to_json(self) -> Any:
        document: dict[str, Any] = {
            "NumberOfTables": len(self.tables),
            "Tables": [{"VendorGuid": str(g), "VendorTable": a} for g, a in self.tables],
        }
        if self.description is not None:
            document["TableDescription"] = self.description.decode(errors="replace")
        return document


@dataclass(frozen=True)
class GptPartition:
    type_guid: uuid.UUID
    unique_guid: uuid.UUID
    starting_lba: int
    ending_lba: int
    attributes: int
    name: bytes  # 72 bytes of UTF-16LE, kept whole

    def to_json(self) -> Any:
        return {
            "PartitionTypeGUID": str(self.type_guid),
            "UniquePartitionGUID": str(self.unique_guid),
            "StartingLBA": self.starting_lba,
            "EndingLBA": self.ending_lba,
            "Attributes": self.attributes,
            "PartitionName": self.name.decode("utf-16-le", errors="replace").split("\x00")[0],
        }


_GPT_HEADER = struct.Struct("<8sIIIIQQQQ16sQIII")
_GPT_PARTITION = struct.Struct("<16s16sQQQ72s")


@dataclass(frozen=True)
class GptData:
    """UEFI_GPT_DATA (PFP 10.4.5.5): the GPT header and the partitions in use."""

    header: bytes  # the 92-byte EFI_PARTITION_TABLE_HEADER
    entry_size: int
    partitions: tuple[GptPartition, ...]
    partition_padding: tuple[bytes, ...]  # bytes past 128 in entries of a larger size

    def encode(self) -> bytes:
        out = bytearray(self.header + struct.pack("<Q", len(self.partitions)))
        for partition, padding in zip(self.partitions, self.partition_padding, strict=True):
            out += _GPT_PARTITION.pack(
                partition.type_guid.bytes_le,
                partition.unique_guid.bytes_le,
                partition.starting_lba,
                partition.ending_lba,
                partition.attributes,
                partition.name,
            )
            out += padding
        return bytes(out)

    def to_json(self) -> Any:
        fields = _GPT_HEADER.unpack(self.header)
        names = [
            "Signature",
            "Revision",
            "HeaderSize",
            "HeaderCRC32",
            "Reserved",
            "MyLBA",
            "AlternateLBA",
            "FirstUsableLBA",
            "LastUsableLBA",
            "DiskGUID",
            "PartitionEntryLBA",
            "NumberOfPartitionEntry",
            "SizeOfPartitionEntry",
            "PartitionEntryArrayCRC32",
        ]
        header: dict[str, Any] = dict(zip(names, fields, strict=True))
        header.pop("Reserved")
        header["Signature"] = fields[0].decode("ascii", errors="replace")
        header["DiskGUID"] = str(uuid.UUID(bytes_le=fields[9]))
        return {
            "Header": header,
            "NumberOfPartitions": len(self.partitions),
            "Partitions": [p.to_json() for p in self.partitions],
        }


@dataclass(frozen=True)
class TaggedEventData:
    """TCG_PCClientTaggedEvent (PFP 10.4.2)."""

    tag_id: int
    data: bytes

    def encode(self) -> bytes:
        return struct.pack("<II", self.tag_id, len(self.data)) + self.data

    def to_json(self) -> Any:
        return {"TaggedEventID": self.tag_id, "TaggedEventData": self.data.hex()}


EventData = (
    RawData
    | SpecIdData
    | StartupLocalityData
    | Sp800155Data
    | TextData
    | SeparatorData
    | UefiVariableData
    | ImageLoadData
    | FirmwareBlobData
    | HandoffTablesData
    | GptData
    | TaggedEventData
)


# -- decoders --------------------------------------------------------------------


def _text(data: bytes) -> TextData:
    if not data:
        raise _Undecodable("empty string")
    trailing = b""
    utf16 = len(data) >= 2 and data[1] == 0 and (data[0] != 0 or len(data) == 2)
    if utf16 and len(data) % 2:
        if data[-1] != 0:
            raise _Undecodable("odd-length UTF-16")
        data, trailing = data[:-1], data[-1:]
    try:
        decoded = data.decode("utf-16-le" if utf16 else "utf-8")
    except UnicodeDecodeError:
        raise _Undecodable("not a string") from None
    nul = decoded.endswith("\x00")
    text = decoded[:-1] if nul else decoded
    if any(ch not in _PRINTABLE and not ch.isprintable() for ch in text) or "\x00" in text:
        raise _Undecodable("not printable text")
    return TextData(text, utf16, nul, trailing)


def _variable(data: bytes) -> UefiVariableData:
    guid = _guid(data)
    name_length, data_length = _unpack("<QQ", data, 16)
    start = 32
    name_end = start + 2 * name_length
    if name_end + data_length > len(data):
        raise _Undecodable("UnicodeNameLength and VariableDataLength exceed the event")
    try:
        name = data[start:name_end].decode("utf-16-le")
    except UnicodeDecodeError:
        raise _Undecodable("UnicodeName is not UTF-16") from None
    end = name_end + data_length
    return UefiVariableData(guid, name, data[name_end:end], data[end:])


def decode_load_option(data: bytes) -> LoadOption | None:
    """An EFI_LOAD_OPTION, or None if ``data`` is not one."""
    if len(data) < 6:
        return None
    attributes, path_length = struct.unpack_from("<IH", data, 0)
    end = 6
    while end + 1 < len(data) and data[end : end + 2] != b"\x00\x00":
        end += 2
    if end + 2 + path_length > len(data):
        return None
    try:
        description = data[6:end].decode("utf-16-le")
    except UnicodeDecodeError:
        return None
    paths = data[end + 2 : end + 2 + path_length]
    return LoadOption(attributes, description, paths, data[end + 2 + path_length :])


def _image_load(data: bytes) -> ImageLoadData:
    location, length, link, path_length = _unpack("<QQQQ", data, 0)
    if 32 + path_length > len(data):
        raise _Undecodable("LengthOfDevicePath exceeds the event")
    end = 32 + path_length
    return ImageLoadData(location, length, link, data[32:end], data[end:])


def _blob(data: bytes, *, described: bool) -> FirmwareBlobData:
    description = None
    offset = 0
    if described:
        if not data:
            raise _Undecodable("BlobDescriptionSize is missing")
        description = data[1 : 1 + data[0]]
        offset = 1 + data[0]
    if offset + 16 != len(data):
        raise _Undecodable("a firmware blob is a base and a length")
    base, length = _unpack("<QQ", data, offset)
    return FirmwareBlobData(base, length, description)


def _handoff(data: bytes, *, described: bool) -> HandoffTablesData:
    description = None
    offset = 0
    if described:
        if not data:
            raise _Undecodable("TableDescriptionSize is missing")
        description = data[1 : 1 + data[0]]
        offset = 1 + data[0]
    (count,) = _unpack("<Q", data, offset)
    offset += 8
    if offset + 24 * count != len(data):
        raise _Undecodable("NumberOfTables does not fill the event")
    tables = tuple(
        (_guid(data[offset + 24 * i :]), _unpack("<Q", data, offset + 24 * i + 16)[0])
        for i in range(count)
    )
    return HandoffTablesData(tables, description)


def _gpt(data: bytes) -> GptData:
    if len(data) < _GPT_HEADER.size + 8:
        raise _Undecodable("too short for a GPT header")
    header = data[: _GPT_HEADER.size]
    entry_size = _GPT_HEADER.unpack(header)[12]
    (count,) = _unpack("<Q", data, _GPT_HEADER.size)
    offset = _GPT_HEADER.size + 8
    if entry_size < _GPT_PARTITION.size or offset + count * entry_size != len(data):
        raise _Undecodable("NumberOfPartitions and SizeOfPartitionEntry do not fill the event")
    partitions = []
    paddings = []
    for index in range(count):
        at = offset + index * entry_size
        type_guid, unique, start, end, attributes, name = _GPT_PARTITION.unpack_from(data, at)
        partitions.append(
            GptPartition(
                uuid.UUID(bytes_le=type_guid),
                uuid.UUID(bytes_le=unique),
                start,
                end,
                attributes,
                name,
            )
        )
        paddings.append(data[at + _GPT_PARTITION.size : at + entry_size])
    return GptData(header, entry_size, tuple(partitions), tuple(paddings))


def _sp800_155(data: bytes) -> Sp800155Data:
    offset = len(SP800_155_SIGNATURE)
    (vendor_id,) = _unpack("<I", data, offset)
    guid = _guid(data[offset + 4 :])
    offset += 20
    strings = []
    for _ in range(4):
        if offset >= len(data):
            raise _Undecodable("reference manifest strings are truncated")
        size = data[offset]
        strings.append(data[offset + 1 : offset + 1 + size])
        offset += 1 + size
    (firmware_id,) = _unpack("<I", data, offset)
    offset += 4
    if offset >= len(data):
        raise _Undecodable("FirmwareVersion is missing")
    version = data[offset + 1 : offset + 1 + data[offset]]
    manufacturer, model, platform_version, firmware_manufacturer = strings
    return Sp800155Data(
        vendor_id,
        guid,
        manufacturer,
        model,
        platform_version,
        firmware_manufacturer,
        firmware_id,
        version,
    )


def _no_action(data: bytes) -> EventData:
    if data[:16] in (SPEC_ID_SIGNATURE_AGILE, SPEC_ID_SIGNATURE_LEGACY):
        try:
            return SpecIdData(SpecIdEvent.unmarshal(data))
        except EvidenceError as error:
            raise _Undecodable(str(error)) from None
    if data.startswith(STARTUP_LOCALITY_SIGNATURE) and len(data) == 17:
        return StartupLocalityData(data[16])
    if data.startswith(SP800_155_SIGNATURE):
        return _sp800_155(data)
    raise _Undecodable("unknown EV_NO_ACTION event")


def _separator(data: bytes) -> SeparatorData:
    if len(data) != 4:
        raise _Undecodable("a separator is 4 bytes")
    return SeparatorData(_unpack("<I", data, 0)[0])


def _tagged(data: bytes) -> TaggedEventData:
    tag_id, size = _unpack("<II", data, 0)
    if 8 + size != len(data):
        raise _Undecodable("taggedEventDataSize does not fill the event")
    return TaggedEventData(tag_id, data[8:])


def _post_code(data: bytes) -> EventData:
    if len(data) == 16:
        return _blob(data, described=False)
    return _text(data)


_DECODERS: dict[int, Any] = {
    EventType.EV_NO_ACTION: _no_action,
    EventType.EV_SEPARATOR: _separator,
    EventType.EV_ACTION: _text,
    EventType.EV_EFI_ACTION: _text,
    EventType.EV_IPL: _text,
    EventType.EV_S_CRTM_VERSION: _text,
    EventType.EV_POST_CODE: _post_code,
    EventType.EV_EVENT_TAG: _tagged,
    EventType.EV_EFI_VARIABLE_DRIVER_CONFIG: _variable,
    EventType.EV_EFI_VARIABLE_BOOT: _variable,
    EventType.EV_EFI_VARIABLE_BOOT2: _variable,
    EventType.EV_EFI_VARIABLE_AUTHORITY: _variable,
    EventType.EV_EFI_BOOT_SERVICES_APPLICATION: _image_load,
    EventType.EV_EFI_BOOT_SERVICES_DRIVER: _image_load,
    EventType.EV_EFI_RUNTIME_SERVICES_DRIVER: _image_load,
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB: lambda d: _blob(d, described=False),
    EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB2: lambda d: _blob(d, described=True),
    EventType.EV_EFI_HANDOFF_TABLES: lambda d: _handoff(d, described=False),
    EventType.EV_EFI_HANDOFF_TABLES2: lambda d: _handoff(d, described=True),
    EventType.EV_EFI_GPT_EVENT: _gpt,
    EventType.EV_EFI_GPT_EVENT2: _gpt,
}


def decode(event: Event) -> EventData:
    """The typed data of ``event``; ``RawData`` (with a reason) when it does not decode."""
    decoder = _DECODERS.get(event.type)
    if decoder is None:
        return RawData(event.data)
    try:
        decoded: EventData = decoder(event.data)
    except _Undecodable as why:
        return RawData(event.data, str(why))
    if decoded.encode() != event.data:
        return RawData(event.data, "decoding would not preserve the bytes")
    return decoded
