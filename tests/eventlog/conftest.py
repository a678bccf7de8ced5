"""Fixtures: ``log_name`` (one test per fixture log, skipped when the logs are absent) and
``cli`` (every ``stockade eventlog`` command the tests check, run once, all at once)."""

from __future__ import annotations

import hashlib
import struct

import pytest
from eventlog_support import (
    BAD_KINDS,
    FIXTURES,
    LOG_NAMES,
    VERBS,
    require_fixtures,
    run_stockade_many,
)

from stockade.evidence.event_data import StartupLocalityData
from stockade.evidence.eventlog import AlgorithmSize, Event, EventLog, EventType, SpecIdEvent

SEPARATOR = b"\x00\x00\x00\x00"


@pytest.fixture(params=LOG_NAMES)
def log_name(request) -> str:
    require_fixtures()
    return request.param


def startup_locality_log() -> bytes:
    """sha1+sha256: StartupLocality 3, then a separator in PCR 7 (PCR 0 never extended)."""
    banks = (AlgorithmSize(0x0004, 20), AlgorithmSize(0x000B, 32))
    spec = SpecIdEvent(b"Spec ID Event03\x00", 0, 0, 2, 0, 2, banks, b"")
    digests = (
        (0x0004, hashlib.sha1(SEPARATOR).digest()),
        (0x000B, hashlib.sha256(SEPARATOR).digest()),
    )
    events = (
        Event(0, 0, EventType.EV_NO_ACTION, ((0x0004, bytes(20)),), spec.marshal()),
        Event(
            1, 0, EventType.EV_NO_ACTION, ((0x0004, bytes(20)), (0x000B, bytes(32))),
            StartupLocalityData(3).encode(),
        ),
        Event(2, 7, EventType.EV_SEPARATOR, digests, SEPARATOR),
    )  # fmt: skip
    return EventLog(True, spec, events).marshal()


def short_spec_id_log() -> bytes:
    """A Spec ID Event03 header cut to 25 bytes (fields past the signature missing)."""
    data = b"Spec ID Event03\x00" + bytes(9)
    return struct.pack("<II20sI", 0, EventType.EV_NO_ACTION, bytes(20), len(data)) + data


@pytest.fixture(scope="session")
def cli(tmp_path_factory):
    """Results of ``stockade eventlog ...`` by key. Each run is a Python start-up of about
    half a second, so they all run at once, on every core, the first time a test asks."""
    folder = tmp_path_factory.mktemp("eventlog-cli")
    files = {kind: folder / f"{kind}.bin" for kind in BAD_KINDS}
    files["empty"].write_bytes(b"")
    files["truncated"].write_bytes(startup_locality_log()[:-7])
    files["garbage"].write_bytes(b"\xff" * 100)
    (folder / "locality.bin").write_bytes(startup_locality_log())
    (folder / "short.bin").write_bytes(short_spec_id_log())
    commands = {}
    if FIXTURES.is_dir():  # tests of the fixture logs skip without them; the rest still run
        for name in LOG_NAMES:
            path = str(FIXTURES / f"{name}.bin")
            commands["show", name] = ["eventlog", "show", path, "--format", "json"]
            commands["replay", name] = ["eventlog", "replay", path, "--format", "json"]
        sd_boot = str(FIXTURES / "event-sd-boot-fedora37.bin")
        commands["show-text", "sd-boot"] = ["eventlog", "show", sd_boot]
        commands["replay-text", "sd-boot"] = ["eventlog", "replay", sd_boot]
    for verb in VERBS:
        for kind in BAD_KINDS:
            commands[verb, kind] = ["eventlog", verb, str(files[kind]), "--format", "json"]
    commands["replay", "locality"] = [
        "eventlog",
        "replay",
        str(folder / "locality.bin"),
        "--format",
        "json",
    ]
    commands["show", "short-spec-id"] = ["eventlog", "show", str(folder / "short.bin")]
    return run_stockade_many(commands)
