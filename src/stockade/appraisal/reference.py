"""Reference values: the PCRs a platform must reach when it boots a given signed release,
predicted from reference inputs alone (the platform owner's description of its
firmware measurements and Secure Boot variables, the release manifest, the
Authenticode digests of the signed boot stages), never copied from a "golden"
machine. The same idea as systemd-pcrlock: PCR policy from components.

The prediction replays exactly the measurements ``stockade.appraisal.measured_boot``
defines, which are also the ones the development firmware extends into its TPM;
``predict`` also returns the predicted event log, so a mismatch can be traced to
the event that differs.
"""

from __future__ import annotations

import base64
import uuid
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from functools import partial
from typing import Any

from stockade.appraisal.measured_boot import (
    FirmwareBlob,
    Measurement,
    MeasurementInputError,
    PlatformReference,
    ReleaseReference,
    StageImage,
    event_log,
    measured_boot,
    signature_entry_fingerprint,
)
from stockade.evidence.algorithms import HASHES, HASHES_BY_NAME
from stockade.evidence.efi_signatures import (
    EFI_CERT_SHA256_GUID,
    EFI_CERT_X509_GUID,
    SignatureEntry,
    SignatureList,
)
from stockade.evidence.eventlog import EventLog
from stockade.evidence.pcr_values import PcrValues, bank_name
from stockade.evidence.replay import replay
from stockade.strict_json import (
    read_array,
    read_base64,
    read_hex,
    read_integer,
    read_object,
    read_string,
)

PLATFORM_SCHEMA = "stockade.platform-reference.v1"
_SIGNATURE_TYPES = {"x509": EFI_CERT_X509_GUID, "sha256": EFI_CERT_SHA256_GUID}
_SIGNATURE_TYPE_NAMES = {guid: name for name, guid in _SIGNATURE_TYPES.items()}


class ReferenceMalformed(MeasurementInputError):
    """A reference document that does not follow its schema; names the field."""


@dataclass(frozen=True)
class Prediction:
    """Predicted PCR values per bank, and the event log that produces them."""

    values: PcrValues
    log: EventLog

    @property
    def pcrs(self) -> tuple[int, ...]:
        return tuple(sorted({index for bank in self.values.banks.values() for index in bank}))


@dataclass(frozen=True)
class PcrDifference:
    bank: str
    pcr: int
    predicted: bytes
    actual: bytes | None

    def __str__(self) -> str:
        actual = self.actual.hex() if self.actual is not None else "(not read)"
        return f"PCR {self.pcr} {self.bank}: predicted {self.predicted.hex()}, actual {actual}"


def predict(
    platform: PlatformReference,
    release: ReleaseReference,
    banks: Sequence[int],
    kernel_authority: SignatureEntry | None = None,
) -> Prediction:
    """The PCRs (0-9 and the release PCR) that ``platform`` booting ``release`` produces.

    Under Secure Boot every stage must name the db entry that authorises it (the
    platform's stages in the reference, the kernel by ``kernel_authority``); a
    chain that would halt has no reference values and raises
    ``MeasurementInputError``.
    """

    def authorize(stage: StageImage) -> SignatureEntry:
        entry = kernel_authority if stage.name == "kernel" else stage.authority
        if entry is None:
            raise MeasurementInputError(
                f"Secure Boot is on but no db entry is named as the authority for {stage.name}"
            )
        if not _in_database(entry, platform.db):
            raise MeasurementInputError(
                f"the authority named for {stage.name} ({signature_entry_fingerprint(entry)}) "
                "is not in db: that image would not boot"
            )
        return entry

    measurements: list[Measurement] = list(measured_boot(platform, release, banks, authorize))
    log = event_log(banks, measurements)
    return Prediction(replay(log).values, log)


def compare(predicted: PcrValues, actual: PcrValues) -> tuple[PcrDifference, ...]:
    """Every predicted PCR whose actual value differs (or was not read), bank by bank."""
    differences = []
    for alg, values in predicted.banks.items():
        for index, value in sorted(values.items()):
            got = actual.get(alg, index)
            if got != value:
                differences.append(PcrDifference(bank_name(alg), index, value, got))
    return tuple(differences)


def _in_database(entry: SignatureEntry, database: Iterable[SignatureList]) -> bool:
    return any(entry in signature_list.entries for signature_list in database)


def find_authority(database: Iterable[SignatureList], fingerprint: str) -> SignatureEntry | None:
    """The db entry whose data has SHA-256 ``fingerprint`` (hex), if any."""
    for signature_list in database:
        for entry in signature_list.entries:
            if signature_entry_fingerprint(entry) == fingerprint.lower():
                return entry
    return None


# -- JSON ----------------------------------------------------------------------------


def digests_to_json(digests: Mapping[int, bytes]) -> dict[str, str]:
    return {HASHES[alg].name: value.hex() for alg, value in sorted(digests.items())}


def digests_from_json(value: Any, where: str) -> dict[int, bytes]:
    fields = _object(value, where)
    digests = {}
    for name, text in fields.items():
        algorithm = HASHES_BY_NAME.get(name)
        if algorithm is None:
            raise ReferenceMalformed(f"{where}: unknown bank {name!r}")
        digest = _hex(text, f"{where}.{name}")
        if len(digest) != algorithm.digest_size:
            raise ReferenceMalformed(f"{where}.{name} is not a {name} digest")
        digests[int(algorithm.alg)] = digest
    return digests


def signature_lists_to_json(lists: Sequence[SignatureList]) -> list[dict[str, Any]]:
    return [
        {
            "signature_type": _SIGNATURE_TYPE_NAMES.get(
                signature_list.signature_type, str(signature_list.signature_type)
            ),
            "signature_size": signature_list.signature_size,
            "header": signature_list.header.hex(),
            "entries": [
                {"owner": str(entry.owner), "data": base64.b64encode(entry.data).decode()}
                for entry in signature_list.entries
            ],
        }
        for signature_list in lists
    ]


def signature_lists_from_json(value: Any, where: str) -> tuple[SignatureList, ...]:
    lists = []
    for index, item in enumerate(_array(value, where)):
        at = f"{where}[{index}]"
        fields = _object(item, at, {"signature_type", "signature_size", "header", "entries"})
        type_text = _string(fields["signature_type"], f"{at}.signature_type")
        signature_type = _SIGNATURE_TYPES.get(type_text) or _uuid(type_text, f"{at}.signature_type")
        size = _integer(fields["signature_size"], f"{at}.signature_size")
        entries = []
        for number, raw in enumerate(_array(fields["entries"], f"{at}.entries")):
            entry_at = f"{at}.entries[{number}]"
            entry = _object(raw, entry_at, {"owner", "data"})
            data = _base64(entry["data"], f"{entry_at}.data")
            if 16 + len(data) != size:
                raise ReferenceMalformed(f"{entry_at}: data does not fill signature_size {size}")
            entries.append(SignatureEntry(_uuid(entry["owner"], f"{entry_at}.owner"), data))
        header = _hex(fields["header"], f"{at}.header")
        lists.append(SignatureList(signature_type, header, size, tuple(entries)))
    return tuple(lists)


def platform_to_json(platform: PlatformReference) -> dict[str, Any]:
    return {
        "schema": PLATFORM_SCHEMA,
        "crtm_version": platform.crtm_version,
        "startup_locality": platform.startup_locality,
        "firmware_blobs": [
            {
                "description": blob.description.decode("ascii"),
                "base": blob.base,
                "length": blob.length,
                "digests": digests_to_json(blob.digests),
            }
            for blob in platform.firmware_blobs
        ],
        "secure_boot": platform.secure_boot,
        "pk": signature_lists_to_json(platform.pk),
        "kek": signature_lists_to_json(platform.kek),
        "db": signature_lists_to_json(platform.db),
        "dbx": signature_lists_to_json(platform.dbx),
        "boot_variables": [
            {"name": name, "data": data.hex()} for name, data in platform.boot_variables
        ],
        "gpt": platform.gpt.hex() if platform.gpt is not None else None,
        "esp_device_path": platform.esp_device_path.hex(),
        "stages": [
            {
                "name": stage.name,
                "esp_path": stage.esp_path,
                "device_path": stage.device_path.hex(),
                "length": stage.length,
                "authenticode": digests_to_json(stage.authenticode),
                "authority": (
                    signature_entry_fingerprint(stage.authority)
                    if stage.authority is not None
                    else None
                ),
            }
            for stage in platform.stages
        ],
    }


def platform_from_json(document: Any) -> PlatformReference:
    """A platform reference from its JSON form; ``ReferenceMalformed`` names the bad field."""
    keys = {
        "schema", "crtm_version", "startup_locality", "firmware_blobs", "secure_boot",
        "pk", "kek", "db", "dbx", "boot_variables", "gpt", "esp_device_path", "stages",
    }  # fmt: skip
    fields = _object(document, "platform", keys)
    if fields["schema"] != PLATFORM_SCHEMA:
        raise ReferenceMalformed(f"platform.schema {fields['schema']!r} is not {PLATFORM_SCHEMA}")
    blobs = []
    for index, raw in enumerate(_array(fields["firmware_blobs"], "firmware_blobs")):
        at = f"firmware_blobs[{index}]"
        blob = _object(raw, at, {"description", "base", "length", "digests"})
        description = _string(blob["description"], f"{at}.description")
        if not description.isascii() or len(description) > 255:
            raise ReferenceMalformed(f"{at}.description must be ASCII, at most 255 characters")
        blobs.append(
            FirmwareBlob(
                description.encode("ascii"),
                _integer(blob["base"], f"{at}.base"),
                _integer(blob["length"], f"{at}.length"),
                digests_from_json(blob["digests"], f"{at}.digests"),
            )
        )
    db = signature_lists_from_json(fields["db"], "db")
    boot_variables = []
    for index, raw in enumerate(_array(fields["boot_variables"], "boot_variables")):
        variable = _object(raw, f"boot_variables[{index}]", {"name", "data"})
        boot_variables.append(
            (
                _string(variable["name"], f"boot_variables[{index}].name"),
                _hex(variable["data"], f"boot_variables[{index}].data"),
            )
        )
    stages = []
    for index, raw in enumerate(_array(fields["stages"], "stages")):
        at = f"stages[{index}]"
        stage = _object(
            raw, at, {"name", "esp_path", "device_path", "length", "authenticode", "authority"}
        )
        authority = None
        if stage["authority"] is not None:
            fingerprint = _string(stage["authority"], f"{at}.authority")
            authority = find_authority(db, fingerprint)
            if authority is None:
                raise ReferenceMalformed(f"{at}.authority {fingerprint} is not an entry of db")
        stages.append(
            StageImage(
                name=_string(stage["name"], f"{at}.name"),
                esp_path=_string(stage["esp_path"], f"{at}.esp_path"),
                device_path=_hex(stage["device_path"], f"{at}.device_path"),
                length=_integer(stage["length"], f"{at}.length"),
                authenticode=digests_from_json(stage["authenticode"], f"{at}.authenticode"),
                authority=authority,
            )
        )
    secure_boot = fields["secure_boot"]
    if not isinstance(secure_boot, bool):
        raise ReferenceMalformed("secure_boot is not true or false")
    gpt = fields["gpt"]
    return PlatformReference(
        crtm_version=_string(fields["crtm_version"], "crtm_version"),
        firmware_blobs=tuple(blobs),
        secure_boot=secure_boot,
        pk=signature_lists_from_json(fields["pk"], "pk"),
        kek=signature_lists_from_json(fields["kek"], "kek"),
        db=db,
        dbx=signature_lists_from_json(fields["dbx"], "dbx"),
        boot_variables=tuple(boot_variables),
        gpt=_hex(gpt, "gpt") if gpt is not None else None,
        esp_device_path=_hex(fields["esp_device_path"], "esp_device_path"),
        stages=tuple(stages),
        startup_locality=_integer(fields["startup_locality"], "startup_locality"),
    )


# The strict readers (stockade.strict_json), raising this module's error. Hex may be any
# case: platform references are captured from machines, not signed by us.
_object = partial(read_object, error=ReferenceMalformed)
_array = partial(read_array, error=ReferenceMalformed)
_string = partial(read_string, error=ReferenceMalformed, empty=True)
_integer = partial(read_integer, error=ReferenceMalformed)
_hex = partial(read_hex, error=ReferenceMalformed, lowercase=False)
_base64 = partial(read_base64, error=ReferenceMalformed)


def _uuid(value: Any, where: str) -> uuid.UUID:
    try:
        return uuid.UUID(_string(value, where))
    except ValueError:
        raise ReferenceMalformed(f"{where} is not a GUID") from None
