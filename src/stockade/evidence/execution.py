"""Execution records: what a node measures into its execution PCR before a container
starts (docs/execution-log.md).

- ``EXECUTION_PCR`` is 13. PCRs 8-15 belong to the OS and cannot be reset without a
  reboot; Stockade's boot uses 4, 7, 8, 9 and 12, shim uses 14, IMA 10; 13 is the PCR
  Google Confidential Space extends with container launch events; systemd-stub
  measures UKI sysexts into 13, which Stockade's boot path does not use. Never a
  resettable PCR (16, 23).
- Each record is a CEL content TLV of type ``CONTENT_TYPE`` (0xC5 = 197): a vendor
  value, outside the small TCG-assigned content types (4 cel_mgt, 5 pcclient_std,
  7 ima_template, 8 ima_tlv) and away from go-tpm-tools' 80 (Container-Optimized OS).
  Its value is canonical JSON: sorted keys, ``,``/``:`` separators, UTF-8 (no
  ``\\u`` escapes except the ones JSON requires), with a ``"type"`` field. The node
  extends H_bank(content TLV) into every active bank.
- ``decode_record`` accepts only the canonical encoding of a valid record (so
  ``encode_record(decode_record(b)) == b``); environment variable values are never
  accepted: a record carries their names only.
- Write-ahead status: the hook appends a record *before* extending it, with content type
  ``PENDING_CONTENT_TYPE`` (0xC6), extends H_bank of the *measured* content (type 0xC5),
  then rewrites that one type byte in place to 0xC5 ("done"). A pending record whose
  extend never happened is later rewritten to ``ABANDONED_CONTENT_TYPE`` (0xC7): it is
  never replayed. The CEL digests of every record are always of the measured (0xC5)
  content TLV; only the type byte says the status (docs/execution-log.md, "Write-ahead").

Pure: no I/O, no clock (``time`` is an RFC 3339 UTC string given by the caller).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from json.encoder import encode_basestring as _quote
from typing import Any

from stockade.evidence.cel import HEADER_SIZE, TLV_HEADER, content_tlv
from stockade.evidence.errors import EvidenceError
from stockade.strict_json import canonical_json as shared_canonical_json

EXECUTION_PCR = 13
CONTENT_TYPE = 0xC5
PENDING_CONTENT_TYPE = 0xC6  # appended, extend not yet confirmed
ABANDONED_CONTENT_TYPE = 0xC7  # appended, never extended: the container never started
STATUS_CONTENT_TYPES = frozenset((CONTENT_TYPE, PENDING_CONTENT_TYPE, ABANDONED_CONTENT_TYPE))

CONTAINER_START = "container_start"
TRUST_POLICY_LOADED = "trust_policy_loaded"

_DIGEST = re.compile(r"(sha256:[0-9a-f]{64}|sha384:[0-9a-f]{96}|sha512:[0-9a-f]{128})\Z")
_TIME = re.compile(r"\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d{1,9})?Z\Z")
_ENV_NAME = re.compile(r"[^=\x00]+\Z")

_DECODER = json.JSONDecoder()


class InvalidExecutionRecord(EvidenceError):
    """An execution record with a field that is not allowed (``field`` names it)."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"execution record field {field}: {reason}")
        self.field = field
        self.reason = reason


class MalformedExecutionRecord(EvidenceError):
    """Content bytes that are not the canonical encoding of an execution record."""

    def __init__(self, reason: str) -> None:
        super().__init__(f"execution record content: {reason}")
        self.reason = reason


def _string(field: str, value: object, *, empty: bool = False) -> None:
    if type(value) is not str:
        raise InvalidExecutionRecord(field, f"must be a string, not {type(value).__name__}")
    if not empty and not value:
        raise InvalidExecutionRecord(field, "must not be empty")


def _strings(field: str, value: object) -> None:
    if type(value) is not tuple:
        raise InvalidExecutionRecord(field, f"must be a tuple, not {type(value).__name__}")
    for item in value:
        _string(field, item, empty=True)


def _digest(field: str, value: object) -> None:
    _string(field, value)
    assert isinstance(value, str)
    if not _DIGEST.match(value):
        raise InvalidExecutionRecord(
            field, f"{value!r} is not sha256/sha384/sha512:<lowercase hex>"
        )


def _time(value: object) -> None:
    _string("time", value)
    assert isinstance(value, str)
    if not _TIME.match(value):
        raise InvalidExecutionRecord(
            "time", f"{value!r} is not RFC 3339 UTC (YYYY-MM-DDTHH:MM:SSZ)"
        )


def _is_strings(value: object) -> bool:
    return type(value) is tuple and set(map(type, value)) <= _STR_TYPE


def _are_env_names(names: tuple[str, ...]) -> bool:
    return all(name and "=" not in name and "\x00" not in name for name in names)


_STR_TYPE = frozenset((str,))


@dataclass(frozen=True, slots=True)
class Mount:
    destination: str
    source: str
    type: str
    options: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not (
            type(self.destination) is str
            and self.destination
            and type(self.source) is str
            and type(self.type) is str
            and _is_strings(self.options)
        ):
            _string("mounts.destination", self.destination)
            _string("mounts.source", self.source, empty=True)
            _string("mounts.type", self.type, empty=True)
            _strings("mounts.options", self.options)

    def to_json(self) -> dict[str, Any]:
        return {
            "destination": self.destination,
            "options": list(self.options),
            "source": self.source,
            "type": self.type,
        }


@dataclass(frozen=True, slots=True)
class ContainerStart:
    """A container about to start: what it runs and with what, never secret values."""

    container_id: str
    image_reference: str
    manifest_digest: str
    config_digest: str
    args: tuple[str, ...]
    env_names: tuple[str, ...]
    mounts: tuple[Mount, ...]
    time: str
    trust_policy_digest: str | None = None

    def __post_init__(self) -> None:
        # One fast test of everything; the slow path finds what failed and says so.
        match = _DIGEST.match
        policy = self.trust_policy_digest
        if not (
            type(self.container_id) is str
            and self.container_id
            and type(self.image_reference) is str
            and self.image_reference
            and type(self.manifest_digest) is str
            and match(self.manifest_digest)
            and type(self.config_digest) is str
            and match(self.config_digest)
            and _is_strings(self.args)
            and _is_strings(self.env_names)
            and _are_env_names(self.env_names)
            and type(self.mounts) is tuple
            and set(map(type, self.mounts)) <= _MOUNT_TYPE
            and type(self.time) is str
            and _TIME.match(self.time)
            and (policy is None or (type(policy) is str and match(policy)))
        ):
            self._explain()

    def _explain(self) -> None:
        _string("container_id", self.container_id)
        _string("image_reference", self.image_reference)
        _digest("manifest_digest", self.manifest_digest)
        _digest("config_digest", self.config_digest)
        _strings("args", self.args)
        _strings("env_names", self.env_names)
        for number, name in enumerate(self.env_names):
            if not _ENV_NAME.match(name):
                # Never echo it: it may be NAME=secret.
                raise InvalidExecutionRecord(
                    "env_names",
                    f"entry {number} is empty or holds '=' or NUL: names only, values are never"
                    " recorded",
                )
        if type(self.mounts) is not tuple or any(type(m) is not Mount for m in self.mounts):
            raise InvalidExecutionRecord("mounts", "must be a tuple of Mount")
        _time(self.time)
        if self.trust_policy_digest is not None:
            _digest("trust_policy_digest", self.trust_policy_digest)

    def to_json(self) -> dict[str, Any]:
        return {
            "type": CONTAINER_START,
            "args": list(self.args),
            "config_digest": self.config_digest,
            "container_id": self.container_id,
            "env_names": list(self.env_names),
            "image_reference": self.image_reference,
            "manifest_digest": self.manifest_digest,
            "mounts": [mount.to_json() for mount in self.mounts],
            "time": self.time,
            "trust_policy_digest": self.trust_policy_digest,
        }

    def describe(self) -> str:
        """How reasons name it: ``container abc, image X``."""
        return f"container {self.container_id}, image {self.image_reference}"


MAX_POLICY_SERIAL = 2**53 - 1  # stockade.images.policy.MAX_SERIAL


@dataclass(frozen=True, slots=True)
class TrustPolicyLoaded:
    """The image trust policy the runtime hook enforces from now on: its digest and its
    serial (the policy's release number; 0 for a format version 1 policy, which has none)."""

    digest: str
    time: str
    serial: int = 0

    def __post_init__(self) -> None:
        _digest("digest", self.digest)
        _time(self.time)
        if type(self.serial) is not int or not 0 <= self.serial <= MAX_POLICY_SERIAL:
            raise InvalidExecutionRecord(
                "serial", f"must be an integer from 0 to {MAX_POLICY_SERIAL}, not {self.serial!r}"
            )

    def to_json(self) -> dict[str, Any]:
        return {
            "type": TRUST_POLICY_LOADED,
            "digest": self.digest,
            "serial": self.serial,
            "time": self.time,
        }

    def describe(self) -> str:
        return f"trust policy {self.digest}, serial {self.serial}"


ExecutionRecord = ContainerStart | TrustPolicyLoaded
_MOUNT_TYPE = frozenset((Mount,))

_CONTAINER_KEYS = frozenset(
    (
        "type",
        "args",
        "config_digest",
        "container_id",
        "env_names",
        "image_reference",
        "manifest_digest",
        "mounts",
        "time",
        "trust_policy_digest",
    )
)
_MOUNT_KEYS = frozenset(("destination", "options", "source", "type"))
_POLICY_KEYS = frozenset(("type", "digest", "serial", "time"))


def canonical_json(document: dict[str, Any]) -> bytes:
    """``document`` as canonical JSON (sorted keys, compact, UTF-8): the reference the
    record writers below are tested against."""
    try:
        return shared_canonical_json(document)
    except (UnicodeEncodeError, ValueError) as error:
        raise MalformedExecutionRecord(f"cannot be encoded as UTF-8 JSON: {error}") from None


def _list(items: tuple[str, ...]) -> str:
    return "[" + ",".join(map(_quote, items)) + "]"


def _canonical(record: ExecutionRecord) -> bytes:
    """``canonical_json(record.to_json())``, written directly for the known shape: the
    verifier checks every record it decodes against it, and this is several times
    faster than the generic encoder."""
    q = _quote
    if type(record) is ContainerStart:
        mounts = ",".join(
            f'{{"destination":{q(m.destination)},"options":{_list(m.options)},'
            f'"source":{q(m.source)},"type":{q(m.type)}}}'
            for m in record.mounts
        )
        policy = "null" if record.trust_policy_digest is None else q(record.trust_policy_digest)
        text = (
            f'{{"args":{_list(record.args)},"config_digest":{q(record.config_digest)},'
            f'"container_id":{q(record.container_id)},"env_names":{_list(record.env_names)},'
            f'"image_reference":{q(record.image_reference)},'
            f'"manifest_digest":{q(record.manifest_digest)},"mounts":[{mounts}],'
            f'"time":{q(record.time)},"trust_policy_digest":{policy},'
            f'"type":"{CONTAINER_START}"}}'
        )
    else:
        assert type(record) is TrustPolicyLoaded
        text = (
            f'{{"digest":{q(record.digest)},"serial":{record.serial:d},"time":{q(record.time)},'
            f'"type":"{TRUST_POLICY_LOADED}"}}'
        )
    try:
        return text.encode("utf-8")
    except UnicodeEncodeError as error:
        raise MalformedExecutionRecord(f"cannot be encoded as UTF-8: {error}") from None


def encode_record(record: ExecutionRecord) -> bytes:
    """The content TLV the node measures and logs for ``record``."""
    return content_tlv(CONTENT_TYPE, _canonical(record))


def measured_content(content: bytes) -> bytes:
    """The content TLV as extended: a pending or abandoned record's content with its type
    byte set back to ``CONTENT_TYPE`` (any other content unchanged)."""
    if content[:1] in (_PENDING_BYTE, _ABANDONED_BYTE):
        return _DONE_BYTE + content[1:]
    return content


def with_status(content: bytes, content_type: int) -> bytes:
    """A Stockade content TLV with its type byte set to ``content_type`` (one of
    ``STATUS_CONTENT_TYPES``)."""
    if content_type not in STATUS_CONTENT_TYPES or content[:1] not in _STATUS_BYTES:
        raise MalformedExecutionRecord(f"content type {content[:1].hex()} has no status")
    return bytes((content_type,)) + content[1:]


_DONE_BYTE = bytes((CONTENT_TYPE,))
_PENDING_BYTE = bytes((PENDING_CONTENT_TYPE,))
_ABANDONED_BYTE = bytes((ABANDONED_CONTENT_TYPE,))
_STATUS_BYTES = frozenset((_DONE_BYTE, _PENDING_BYTE, _ABANDONED_BYTE))


def decode_record(content: bytes) -> ExecutionRecord:
    """The record in a content TLV; ``MalformedExecutionRecord`` unless ``content`` is
    exactly ``encode_record`` of a valid record, ``InvalidExecutionRecord`` for a field
    that no record may hold (e.g. an environment variable with its value)."""
    if len(content) < HEADER_SIZE:
        raise MalformedExecutionRecord(f"{len(content)} bytes is shorter than a TLV header")
    content_type, length = TLV_HEADER.unpack_from(content)
    if content_type != CONTENT_TYPE:
        raise MalformedExecutionRecord(
            f"content type {content_type} is not Stockade's execution record type {CONTENT_TYPE}"
        )
    if length != len(content) - HEADER_SIZE:
        raise MalformedExecutionRecord(
            f"TLV length {length} does not match its {len(content) - HEADER_SIZE} value bytes"
        )
    value = content[HEADER_SIZE:]
    try:
        text = value.decode("utf-8")
        document, end = _DECODER.raw_decode(text)
    except (UnicodeDecodeError, ValueError, RecursionError) as error:
        raise MalformedExecutionRecord(f"not UTF-8 JSON: {error}") from None
    if end != len(text) or type(document) is not dict:
        raise MalformedExecutionRecord("not one JSON object")
    record = _from_json(document)
    if _canonical(record) != value:
        raise MalformedExecutionRecord(
            "JSON is not in canonical form (sorted keys, compact, UTF-8)"
        )
    return record


def _from_json(document: dict[str, Any]) -> ExecutionRecord:
    kind = document.get("type")
    if kind == CONTAINER_START:
        if document.keys() != _CONTAINER_KEYS:
            raise MalformedExecutionRecord(_key_difference(document, _CONTAINER_KEYS))
        mounts = document["mounts"]
        if type(mounts) is not list:
            raise InvalidExecutionRecord("mounts", "must be a list")
        return ContainerStart(
            document["container_id"],
            document["image_reference"],
            document["manifest_digest"],
            document["config_digest"],
            _tuple("args", document["args"]),
            _tuple("env_names", document["env_names"]),
            tuple(_mount(mount) for mount in mounts),
            document["time"],
            document["trust_policy_digest"],
        )
    if kind == TRUST_POLICY_LOADED:
        if document.keys() != _POLICY_KEYS:
            raise MalformedExecutionRecord(_key_difference(document, _POLICY_KEYS))
        return TrustPolicyLoaded(document["digest"], document["time"], document["serial"])
    raise MalformedExecutionRecord(f"unknown record type {kind!r}")


def _tuple(field: str, value: object) -> tuple[Any, ...]:
    if type(value) is not list:
        raise InvalidExecutionRecord(field, "must be a list")
    return tuple(value)


def _mount(value: object) -> Mount:
    if type(value) is not dict:
        raise InvalidExecutionRecord("mounts", "each mount must be an object")
    if value.keys() != _MOUNT_KEYS:
        raise MalformedExecutionRecord("mount " + _key_difference(value, _MOUNT_KEYS))
    return Mount(
        value["destination"],
        value["source"],
        value["type"],
        _tuple("mounts.options", value["options"]),
    )


def _key_difference(document: dict[str, Any], wanted: frozenset[str]) -> str:
    missing = sorted(wanted - document.keys())
    extra = sorted(document.keys() - wanted)
    parts = []
    if missing:
        parts.append("missing " + ", ".join(missing))
    if extra:
        parts.append("unexpected " + ", ".join(str(key) for key in extra))
    return "fields: " + "; ".join(parts)
