"""Helpers for the event log tests: the fixture logs, tpm2_eventlog runs and their YAML,
and the comparison of Stockade's decoding with tpm2_eventlog's.

The logs live outside the repository (../shared/fixtures/eventlogs relative to the
project root); tests that need them skip with the reason when the folder is absent.
tpm2_eventlog is run once per log and YAML version per session.
"""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.evidence.algorithms import HASHES
from stockade.evidence.device_path import format_device_path
from stockade.evidence.event_data import (
    FirmwareBlobData,
    GptData,
    ImageLoadData,
    SeparatorData,
    SpecIdData,
    TextData,
    UefiVariableData,
    decode,
    decode_load_option,
)
from stockade.evidence.eventlog import Event, EventType
from support.cli import stockade_command
from support.fixtures import SHARED

PROJECT = Path(__file__).resolve().parents[2]
FIXTURES = SHARED / "eventlogs"

# Every log the fixtures README lists. A fixture folder that lost one of them is an error,
# not a smaller test.
LOG_NAMES = [
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


# The unreadable inputs and verbs the CLI tests try (see the ``cli`` fixture).
BAD_KINDS = ["missing", "empty", "truncated", "garbage"]
VERBS = ["show", "replay"]


def require_fixtures() -> Path:
    if not FIXTURES.is_dir():
        pytest.skip(f"event log fixtures not found at {FIXTURES} (they live outside the repo)")
    return FIXTURES


def require_tpm2_eventlog() -> None:
    if shutil.which("tpm2_eventlog") is None:
        pytest.skip("tpm2_eventlog not installed (Debian tpm2-tools; scripts/bootstrap.sh)")


@functools.cache
def log_bytes(name: str) -> bytes:
    return (require_fixtures() / f"{name}.bin").read_bytes()


# -- YAML as tpm2_eventlog writes it ------------------------------------------------------


class DuplicateKey(yaml.YAMLError):
    """The document maps one key twice: it is not valid YAML (YAML 1.2, 3.2.1.1)."""


class StrictLoader(yaml.SafeLoader):
    """SafeLoader that refuses duplicate keys (PyYAML would silently keep the last one)."""

    def construct_mapping(self, node, deep=False):
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise DuplicateKey(f"duplicate key {key!r} at {key_node.start_mark}")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_strict(text: str) -> Any:
    return yaml.load(text, Loader=StrictLoader)


@dataclass(frozen=True)
class Tpm2EventlogOutput:
    """What tpm2_eventlog printed, with the parts of it that are usable."""

    text: str
    stderr: str
    pcrs: dict[str, dict[int, str]]  # bank -> PCR -> lowercase hex, as printed
    events: list[dict[str, Any]] | None  # None when the events section is not valid YAML
    events_repaired: list[dict[str, Any]]  # the events, also when the section is malformed
    version: int


def _pcrs(document: dict[str, Any]) -> dict[str, dict[int, str]]:
    # "0  : 0x3dca..." loads as {0: int}; tpm2_eventlog prints every digest in full
    # hex, so the int's width is known from the bank.
    widths = {"sha1": 40, "sha256": 64, "sha384": 96, "sha512": 128, "sm3_256": 64}
    return {
        bank: {int(pcr): f"{value:0{widths[bank]}x}" for pcr, value in values.items()}
        for bank, values in (document.get("pcrs") or {}).items()
    }


def _repair_events(text: str) -> list[dict[str, Any]]:
    """The events of a legacy-log document, whose events section is one mapping with every
    event's keys repeated (tpm2_eventlog prints no "- EventNum" list items for TCG_PCR_EVENT
    logs). Each event starts at a "  PCRIndex:" line; each chunk is parsed on its own."""
    body = text.split("\nevents:\n", 1)[1].split("\npcrs:\n", 1)[0]
    if body.startswith("- "):
        raise AssertionError("repair called on a well-formed events list")
    chunks: list[list[str]] = []
    for line in body.splitlines():
        if line.startswith("  PCRIndex:"):
            chunks.append([])
        chunks[-1].append(line[2:])
    return [load_strict("\n".join(chunk)) for chunk in chunks]


def parse_tpm2_eventlog_yaml(text: str, stderr: str = "") -> Tpm2EventlogOutput:
    try:
        document = load_strict(text)
        events = document["events"]
        repaired = events
    except DuplicateKey:
        # only the pcrs section is usable as a YAML document; events need the repair
        document = yaml.safe_load(text)
        events = None
        repaired = _repair_events(text)
    return Tpm2EventlogOutput(
        text, stderr, _pcrs(document), events, repaired, int(document["version"])
    )


@functools.cache
def fixture_yaml(name: str) -> Tpm2EventlogOutput:
    """The YAML the fixtures ship: tpm2_eventlog 5.x built with libefivar (device paths as
    text), captured by the tpm2-tools project."""
    text = (require_fixtures() / f"{name}.tpm2_eventlog.yaml").read_text()
    return parse_tpm2_eventlog_yaml(text)


@functools.cache
def run_tpm2_eventlog(name: str, version: int | None = None) -> Tpm2EventlogOutput:
    """tpm2_eventlog on a fixture log, now (Debian's 5.4, without libefivar: device paths
    as hex). ``version`` is --eventlog-version; None runs the plain ``tpm2_eventlog FILE``."""
    require_tpm2_eventlog()
    command = ["tpm2_eventlog", str(require_fixtures() / f"{name}.bin")]
    if version is not None:
        command.insert(1, f"--eventlog-version={version}")
    result = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    assert result.returncode == 0, f"{' '.join(command)}: {result.stderr}"
    return parse_tpm2_eventlog_yaml(result.stdout, result.stderr)


# -- comparing Stockade's events with tpm2_eventlog's --------------------------------------

# tpm2_eventlog prints event data it does not decode as hex of at most 1024 bytes
# (EVENT_BUF_MAX in lib/tpm2_eventlog_yaml.c).
HEX_LIMIT = 1024
_HEX = re.compile(r"[0-9a-f]+")

# The event types tpm2_eventlog names (eventtype_to_string); it prints any other type as
# "Unknown event type".
TPM2_TOOLS_TYPE_NAMES = frozenset(EventType.__members__) - {
    "EV_POST_CODE2",
    "EV_EFI_EVENT_BASE",
    "EV_EFI_GPT_EVENT2",
    "EV_EFI_SPDM_FIRMWARE_BLOB",
    "EV_EFI_SPDM_FIRMWARE_CONFIG",
}

# Device path nodes where libefivar's text (in the fixtures' YAML) is not the UEFI 2.10
# section 10.6 text form: (efivar's text, the UEFI text form) for the same bytes.
# - IPv4 (messaging 0x0C): efivar prints "IPv4(local[:port]remote[:port],protocol,static)",
#   with no comma between the addresses; UEFI (and EDK2's DevicePathToText) print
#   "IPv4(remote,protocol,Static|DHCP,local,gateway,mask)". Node from event-postcode 38:
#   all addresses 0.0.0.0, protocol 0, not static, 27 bytes (with gateway and mask).
EFIVAR_DEVIATIONS = {
    "IPv4(0.0.0.00.0.0.0,0,0)": "IPv4(0.0.0.0,0x0,DHCP,0.0.0.0,0.0.0.0,0.0.0.0)",
}


def _hex_data(data: bytes) -> str:
    return data[:HEX_LIMIT].hex()


def is_tpm2_tools_54_string(value: str) -> bool:
    """tpm2-tools 5.4 print a string as a literal block of double-quoted, C-escaped lines."""
    lines = value.split("\n")
    return all(len(line) >= 2 and line[0] == '"' and line[-1] == '"' for line in lines)


def unescape_tpm2_string(value: str) -> bytes:
    """The bytes behind a tpm2_eventlog ``String:``.

    Newer tpm2-tools print a YAML double-quoted scalar (PyYAML has unescaped it already).
    5.4 prints a literal block with one C-escaped, double-quoted line per line of the
    string (the newlines themselves are the line breaks of the block, and a final newline
    is lost)."""
    if not is_tpm2_tools_54_string(value):
        return value.encode("utf-8")
    escapes = {
        "0": b"\x00", "a": b"\x07", "b": b"\x08", "t": b"\t", "v": b"\x0b", "f": b"\x0c",
        "n": b"\n", "r": b"\r", "e": b"\x1b", "\\": b"\\", '"': b'"', "'": b"'",
    }  # fmt: skip
    out = []
    for line in value.split("\n"):
        inner = line[1:-1]
        chunk = bytearray()
        index = 0
        while index < len(inner):
            char = inner[index]
            if char != "\\":
                chunk += char.encode("utf-8")
                index += 1
            elif inner.startswith("x20", index + 1):
                chunk += b" "
                index += 4
            else:
                chunk += escapes[inner[index + 1]]
                index += 2
        out.append(bytes(chunk))
    return b"\n".join(out)


def string_text(raw: bytes) -> str:
    """Independent reading of a measured string: UTF-16LE when every odd byte is zero,
    otherwise UTF-8; trailing NULs dropped."""
    if len(raw) >= 2 and all(b == 0 for b in raw[1::2]):
        raw = raw[: len(raw) - len(raw) % 2]
        return raw.decode("utf-16-le").rstrip("\x00")
    return raw.decode("utf-8").rstrip("\x00")


def _guid(data: bytes) -> str:
    return str(uuid.UUID(bytes_le=bytes(data[:16])))


@dataclass(frozen=True)
class Disagreement:
    event: int
    field: str
    ours: Any
    theirs: Any

    def __str__(self) -> str:
        return f"event {self.event} {self.field}: ours {self.ours!r} != theirs {self.theirs!r}"


class Comparison:
    """Compares one of our events with tpm2_eventlog's rendering of it: what disagrees,
    what was compared (``kinds``), and which efivar deviations were applied."""

    def __init__(self, event: Event) -> None:
        self.event = event
        self.decoded = decode(event)
        self.problems: list[Disagreement] = []
        self.kinds: set[str] = set()
        self.efivar_deviations_used: set[str] = set()

    def check(self, what: str, ours: Any, theirs: Any) -> None:
        if ours != theirs:
            self.problems.append(Disagreement(self.event.number, what, ours, theirs))

    def not_decoded(self, what: str) -> None:
        self.problems.append(Disagreement(self.event.number, what, self.decoded, "decoded"))

    def string_bytes(self, what: str, ours: bytes, theirs: str) -> None:
        expected = unescape_tpm2_string(theirs)
        if is_tpm2_tools_54_string(theirs) and ours == expected + b"\n":
            # tpm2-tools 5.4 print no line for what follows a final newline
            # (SbatLevel "sbat,1,2021030218\n" shows as "sbat,1,2021030218")
            expected = ours
        self.check(what, ours, expected)

    def device_path(self, what: str, raw: bytes, shown: bytes, theirs: str) -> None:
        """``raw``: the device path bytes; ``shown``: what tpm2_eventlog hex-dumps when it
        has no libefivar (the path and whatever follows it in the event)."""
        if _HEX.fullmatch(theirs):
            self.kinds.add("device path (hex)")
            self.check(f"{what} (hex)", shown.hex(), theirs)
            return
        self.kinds.add("device path (text)")
        for efivar_text, uefi_text in EFIVAR_DEVIATIONS.items():
            if efivar_text in theirs:
                theirs = theirs.replace(efivar_text, uefi_text)
                self.efivar_deviations_used.add(efivar_text)
        self.check(what, format_device_path(raw), theirs)


def _compare_variable(c: Comparison, theirs: dict[str, Any]) -> None:
    decoded = c.decoded
    if not isinstance(decoded, UefiVariableData):
        c.not_decoded("UEFI_VARIABLE_DATA")
        return
    c.kinds.add("variable")
    ours = decoded.to_json()
    for key in ("VariableName", "UnicodeNameLength", "VariableDataLength", "UnicodeName"):
        c.check(key, ours[key], theirs[key])
    data = decoded.variable_data
    if "VariableData" not in theirs:
        c.check("VariableData present", "VariableData" in ours, False)
        return
    value = theirs["VariableData"]
    if value is None:
        # newer tpm2-tools print an empty "VariableData:" for an empty signature database
        c.check("VariableData (empty)", data, b"")
    elif isinstance(value, str):
        c.kinds.add("variable (hex)")
        c.check("VariableData (hex)", data.hex(), value)
        if isinstance(ours["VariableData"], str):  # where we do not decode either
            c.check("VariableData (hex) in our JSON", ours["VariableData"], value)
    elif isinstance(value, dict) and set(value) == {"Enabled"}:
        c.kinds.add("variable (boolean)")
        enabled = "Yes" if data[:1].strip(b"\x00") else "No"
        c.check("VariableData Enabled", enabled, value["Enabled"])
        if data:
            c.check("VariableData", ours["VariableData"], value)
        else:
            # an empty SecureBoot: tpm2_eventlog says Enabled: 'No', we print no
            # VariableData at all (VariableDataLength 0 says it)
            c.check("VariableData absent when empty", "VariableData" in ours, False)
    elif isinstance(value, dict) and set(value) == {"String"}:
        c.kinds.add("variable (SbatLevel string)")
        c.string_bytes("VariableData String", data, value["String"])
    elif isinstance(value, dict):
        c.kinds.add("variable (load option)")
        option = decode_load_option(data)
        if option is None:
            c.not_decoded("EFI_LOAD_OPTION")
            return
        for key in ("Enabled", "FilePathListLength", "Description"):
            c.check(f"VariableData {key}", ours["VariableData"][key], value[key])
        c.device_path(
            "VariableData DevicePath",
            option.file_path_list,
            option.file_path_list + option.optional_data,
            value["DevicePath"],
        )
    elif isinstance(value, list) and all(isinstance(item, str) for item in value):
        c.kinds.add("variable (BootOrder)")
        order = [int.from_bytes(data[i : i + 2], "little") for i in range(0, len(data), 2)]
        c.check("VariableData BootOrder", [f"Boot{n:04x}" for n in order], value)
    elif isinstance(value, list) and value and "SignatureType" in value[0]:
        c.kinds.add("variable (signature lists)")
        c.check("VariableData signature lists", ours["VariableData"], value)
    elif isinstance(value, list) and len(value) == 1 and "SignatureOwner" in value[0]:
        # EV_EFI_VARIABLE_AUTHORITY db and Shim: tpm2_eventlog reads one EFI_SIGNATURE_DATA
        # (owner GUID, then the data); compared on the bytes (see the xfail test on db)
        c.kinds.add("variable (signature data)")
        c.check("VariableData SignatureOwner", _guid(data), value[0]["SignatureOwner"])
        c.check("VariableData SignatureData", data[16:].hex(), value[0]["SignatureData"])
    else:
        c.problems.append(Disagreement(c.event.number, "VariableData shape", None, value))


def _compare_image_load(c: Comparison, theirs: dict[str, Any]) -> None:
    decoded = c.decoded
    if not isinstance(decoded, ImageLoadData):
        c.not_decoded("UEFI_IMAGE_LOAD_EVENT")
        return
    c.kinds.add("image load")
    ours = decoded.to_json()
    for key in (
        "ImageLocationInMemory",
        "ImageLengthInMemory",
        "ImageLinkTimeAddress",
        "LengthOfDevicePath",
    ):
        c.check(key, ours[key], theirs[key])
    c.device_path(
        "DevicePath",
        decoded.device_path,
        decoded.device_path + decoded.trailing,
        theirs["DevicePath"],
    )


def _compare_spec_id(c: Comparison, theirs: dict[str, Any]) -> None:
    decoded = c.decoded
    if not isinstance(decoded, SpecIdData):
        c.not_decoded("TCG_EfiSpecIDEvent")
        return
    c.kinds.add("spec id")
    ours = decoded.to_json()
    for key in (
        "Signature",
        "platformClass",
        "specVersionMinor",
        "specVersionMajor",
        "specErrata",
        "uintnSize",
        "numberOfAlgorithms",
        "vendorInfoSize",
    ):
        c.check(f"SpecID {key}", ours[key], theirs[key])
    algorithms = [
        {"algorithmId": HASHES[a["algorithmId"]].name, "digestSize": a["digestSize"]}
        for a in ours["Algorithms"]
    ]
    their_algorithms = [
        {k: v for k, v in a.items() if not k.startswith("Algorithm[")} for a in theirs["Algorithms"]
    ]
    c.check("SpecID Algorithms", algorithms, their_algorithms)
    c.check("SpecID vendorInfo", decoded.spec_id.vendor_info.hex(), theirs.get("vendorInfo", ""))


def _compare_gpt(c: Comparison, theirs: Any) -> None:
    decoded = c.decoded
    if not isinstance(decoded, GptData):
        c.not_decoded("UEFI_GPT_DATA")
        return
    if isinstance(theirs, str):
        c.kinds.add("GPT (hex)")
        c.check("GPT (hex)", _hex_data(decoded.encode()), theirs)
        return
    c.kinds.add("GPT")
    ours = decoded.to_json()
    for key in ("Header", "NumberOfPartitions", "Partitions"):
        c.check(f"GPT {key}", ours[key], theirs[key])


def _compare_string(c: Comparison, theirs: str) -> None:
    decoded = c.decoded
    if not isinstance(decoded, TextData):
        c.not_decoded("string")
        return
    c.kinds.add("string")
    c.string_bytes("String bytes", decoded.encode(), theirs)
    raw = unescape_tpm2_string(theirs)
    # rstrip: tpm2-tools 5.4 lose a final newline (see Comparison.string_bytes)
    c.check("String text", decoded.text.rstrip("\n"), string_text(raw).rstrip("\n"))
    c.check("String JSON", decoded.to_json()["String"].rstrip("\n"), string_text(raw).rstrip("\n"))


def compare_payload(c: Comparison, their_event: dict[str, Any]) -> None:
    event = c.event
    if "SpecID" in their_event:
        _compare_spec_id(c, their_event["SpecID"][0])
        return
    if "Event" not in their_event:
        c.check("EventSize 0 when no Event", event.data, b"")
        return
    theirs = their_event["Event"]
    kind = event.type
    if kind in (
        EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
        EventType.EV_EFI_VARIABLE_BOOT,
        EventType.EV_EFI_VARIABLE_BOOT2,
        EventType.EV_EFI_VARIABLE_AUTHORITY,
    ):
        _compare_variable(c, theirs)
    elif kind in (
        EventType.EV_EFI_BOOT_SERVICES_APPLICATION,
        EventType.EV_EFI_BOOT_SERVICES_DRIVER,
        EventType.EV_EFI_RUNTIME_SERVICES_DRIVER,
    ):
        _compare_image_load(c, theirs)
    elif kind == EventType.EV_EFI_GPT_EVENT:
        _compare_gpt(c, theirs)
    elif kind == EventType.EV_IPL:
        _compare_string(c, theirs["String"])
    elif kind == EventType.EV_EFI_ACTION or (
        kind == EventType.EV_POST_CODE and len(event.data) != 16
    ):
        # printed raw with "%.*s" in a literal block: compared up to the first NUL
        decoded = c.decoded
        if not isinstance(decoded, TextData):
            c.not_decoded("string")
            return
        c.kinds.add("action string")
        c.check("action string", decoded.text, theirs)
        c.check("action bytes", decoded.encode().split(b"\x00", 1)[0], theirs.encode())
    elif kind in (EventType.EV_POST_CODE, EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB):
        if not isinstance(c.decoded, FirmwareBlobData):
            c.not_decoded("UEFI_PLATFORM_FIRMWARE_BLOB")
            return
        c.kinds.add("firmware blob")
        c.check("blob", c.decoded.to_json(), theirs)
    elif kind == EventType.EV_NO_ACTION and isinstance(theirs, dict):
        c.kinds.add("StartupLocality")
        c.check("EV_NO_ACTION", c.decoded.to_json(), theirs)
    else:
        # a type tpm2_eventlog does not decode: hex of the data
        c.kinds.add("hex")
        c.check("data (hex)", _hex_data(event.data), theirs)
        c.check("decoded data encoded (hex)", _hex_data(c.decoded.encode()), theirs)
        if isinstance(c.decoded, SeparatorData):
            c.kinds.add("separator")
            c.check("separator JSON", c.decoded.to_json(), theirs)


def compare_event(event: Event, their_event: dict[str, Any]) -> Comparison:
    c = Comparison(event)
    if "EventNum" in their_event:
        c.check("EventNum", event.number, their_event["EventNum"])
    c.check("PCRIndex", event.pcr, their_event["PCRIndex"])
    name = event.type_name if event.type_name in TPM2_TOOLS_TYPE_NAMES else "Unknown event type"
    c.check("EventType", name, their_event["EventType"])
    c.check("EventSize", len(event.data), their_event["EventSize"])
    if "Digests" in their_event:
        theirs = [(d["AlgorithmId"], d["Digest"]) for d in their_event["Digests"]]
        c.check("DigestCount", len(event.digests), their_event["DigestCount"])
    else:  # the first event, TCG_PCR_EVENT
        theirs = [("sha1", their_event["Digest"])]
    ours = [(HASHES[alg].name, digest.hex()) for alg, digest in event.digests]
    c.check("Digests", ours, theirs)
    compare_payload(c, their_event)
    return c


def run_stockade_many(
    commands: dict[Any, list[str]],
) -> dict[Any, subprocess.CompletedProcess[str]]:
    """Several ``stockade`` commands at once (each is a Python start-up of about half a
    second; together they use every core)."""
    processes = {
        key: subprocess.Popen(
            stockade_command(*args), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
        )
        for key, args in commands.items()
    }
    results = {}
    for key, process in processes.items():
        stdout, stderr = process.communicate(timeout=120)
        results[key] = subprocess.CompletedProcess(process.args, process.returncode, stdout, stderr)
    return results
