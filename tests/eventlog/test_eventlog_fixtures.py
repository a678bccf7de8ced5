"""Every fixture log (real firmware logs, ../shared/fixtures/eventlogs): byte-exact
round trip, replay against tpm2_eventlog (the fixture's YAML and a run now) and against
an independent replay written here from the raw bytes, the replay CLI's JSON contract,
and the digest checks against tpm2_eventlog's warnings."""

from __future__ import annotations

import hashlib
import json
import re
import struct

import pytest
from eventlog_support import (
    FIXTURES,
    LOG_NAMES,
    fixture_yaml,
    log_bytes,
    require_fixtures,
    run_tpm2_eventlog,
)

from stockade.evidence.event_digests import digest_mismatches
from stockade.evidence.eventlog import EventLog, marshal_event, parse_event_log
from stockade.evidence.replay import replay

# Independent of stockade.evidence.algorithms: TPM_ALG_ID -> hashlib name.
ALGORITHMS = {0x0004: "sha1", 0x000B: "sha256", 0x000C: "sha384", 0x000D: "sha512"}
EV_NO_ACTION = 0x00000003

# What tpm2_eventlog warns about, per the fixtures README: only event 24 of the Arch log.
EXPECTED_MISMATCHES = {name: set() for name in LOG_NAMES} | {"event-arch-linux": {24}}


def test_the_fixture_folder_holds_exactly_the_listed_logs():
    require_fixtures()
    assert sorted(path.stem for path in FIXTURES.glob("*.bin")) == sorted(LOG_NAMES)
    for name in LOG_NAMES:
        assert (FIXTURES / f"{name}.tpm2_eventlog.yaml").is_file()


# -- (a) byte-exact round trip --------------------------------------------------------------


def test_parse_then_marshal_is_byte_identical(log_name):
    raw = log_bytes(log_name)
    log = parse_event_log(raw)
    assert log.marshal() == raw
    assert EventLog.parse(raw) == log
    assert parse_event_log(log.marshal()) == log


def test_events_are_numbered_in_order_and_know_their_offsets(log_name):
    raw = log_bytes(log_name)
    log = parse_event_log(raw)
    offset = 0
    for number, event in enumerate(log.events):
        assert event.number == number
        assert event.offset == offset
        encoded = marshal_event(event, legacy=not log.crypto_agile or number == 0)
        assert raw[offset : offset + len(encoded)] == encoded
        offset += len(encoded)
    assert offset == len(raw)


def test_only_the_sha1_log_is_legacy():
    legacy = {name for name in LOG_NAMES if not parse_event_log(log_bytes(name)).crypto_agile}
    assert legacy == {"event-uefi-sha1-log"}


# -- (b) replay -------------------------------------------------------------------------------


def walk_legacy(raw: bytes) -> list[tuple[int, int, dict[str, bytes], bytes]]:
    """TCG_PCR_EVENT after TCG_PCR_EVENT: PCRIndex u32, EventType u32, SHA1[20],
    EventSize u32, data (all little-endian)."""
    events = []
    offset = 0
    while offset < len(raw):
        pcr, event_type, digest, size = struct.unpack_from("<II20sI", raw, offset)
        data = raw[offset + 32 : offset + 32 + size]
        assert len(data) == size
        events.append((pcr, event_type, {"sha1": digest}, data))
        offset += 32 + size
    return events


def walk_agile(raw: bytes) -> list[tuple[int, int, dict[str, bytes], bytes]]:
    """A TCG_PCR_EVENT holding the Spec ID event, then TCG_PCR_EVENT2s: PCRIndex u32,
    EventType u32, digest count u32, (algorithm u16, digest)*, EventSize u32, data."""
    first = walk_legacy(raw[: 32 + struct.unpack_from("<I", raw, 28)[0]])[0]
    spec = first[3]
    assert spec[:16] == b"Spec ID Event03\x00"
    (count,) = struct.unpack_from("<I", spec, 24)
    sizes = dict(struct.unpack_from("<HH", spec, 28 + 4 * i) for i in range(count))
    events = [first]
    offset = 32 + len(spec)
    while offset < len(raw):
        pcr, event_type, count = struct.unpack_from("<III", raw, offset)
        offset += 12
        digests = {}
        for _ in range(count):
            (algorithm,) = struct.unpack_from("<H", raw, offset)
            digests[ALGORITHMS[algorithm]] = raw[offset + 2 : offset + 2 + sizes[algorithm]]
            offset += 2 + sizes[algorithm]
        (size,) = struct.unpack_from("<I", raw, offset)
        events.append((pcr, event_type, digests, raw[offset + 4 : offset + 4 + size]))
        offset += 4 + size
    return events


def independent_replay(events) -> dict[str, dict[str, str]]:
    """PCRs start at zero; every event but EV_NO_ACTION extends PCR := H(PCR || digest)."""
    pcrs: dict[str, dict[int, bytes]] = {}
    for pcr, event_type, digests, _data in events:
        if event_type == EV_NO_ACTION:
            continue
        for bank, digest in digests.items():
            size = hashlib.new(bank).digest_size
            old = pcrs.setdefault(bank, {}).get(pcr, bytes(size))
            pcrs[bank][pcr] = hashlib.new(bank, old + digest).digest()
    return {
        bank: {str(pcr): value.hex() for pcr, value in sorted(values.items())}
        for bank, values in pcrs.items()
    }


def independent_events(raw: bytes):
    agile = raw[32:47] == b"Spec ID Event03"
    return walk_agile(raw) if agile else walk_legacy(raw)


def as_json(pcrs: dict[str, dict[int, str]]) -> dict[str, dict[str, str]]:
    return {
        bank: {str(pcr): value for pcr, value in values.items()} for bank, values in pcrs.items()
    }


def extended(document: dict[str, dict[str, str]]) -> dict[str, dict[str, str]]:
    """Our replay JSON without the declared banks no event extends, which tpm2_eventlog
    leaves out (ours lists every bank the log declares, per DESIGN.md)."""
    return {bank: values for bank, values in document.items() if values}


def test_replay_equals_the_pcrs_in_the_fixture_yaml(log_name):
    result = replay(parse_event_log(log_bytes(log_name)))
    assert result.uncomputable_banks == ()
    expected = as_json(fixture_yaml(log_name).pcrs)
    assert expected, "the fixture YAML has a pcrs section"
    assert extended(result.values.to_json()) == expected


@pytest.mark.crosscheck
def test_replay_equals_what_tpm2_eventlog_prints_now(log_name):
    result = replay(parse_event_log(log_bytes(log_name)))
    assert extended(result.values.to_json()) == as_json(run_tpm2_eventlog(log_name).pcrs)


def test_parsed_events_and_replay_equal_an_independent_walk_of_the_raw_bytes(log_name):
    raw = log_bytes(log_name)
    log = parse_event_log(raw)
    walked = independent_events(raw)
    ours = [
        (e.pcr, e.type, {ALGORITHMS[alg]: digest for alg, digest in e.digests}, e.data)
        for e in log.events
    ]
    assert ours == walked
    assert extended(replay(log).values.to_json()) == independent_replay(walked)


def test_the_sha1_only_log_replays_like_hashlib_over_its_raw_bytes():
    """tpm2_eventlog's YAML for this log is malformed (see test_eventlog_tpm2_tools), so
    the PCR section is checked three ways: the fixture's, a hashlib replay of our parsed
    digests, and a hashlib replay of a walk of the raw bytes."""
    raw = log_bytes("event-uefi-sha1-log")
    log = parse_event_log(raw)
    assert not log.crypto_agile
    assert log.spec_id is None
    assert [alg for e in log.events for alg, _ in e.digests] == [0x0004] * len(log.events)
    from_parsed = {}
    for event in log.events:
        if event.type == EV_NO_ACTION:
            continue
        old = from_parsed.get(event.pcr, bytes(20))
        from_parsed[event.pcr] = hashlib.sha1(old + event.digest(0x0004)).digest()
    expected = {"sha1": {str(p): v.hex() for p, v in sorted(from_parsed.items())}}
    assert replay(log).values.to_json() == expected
    assert independent_replay(walk_legacy(raw)) == expected
    assert as_json(fixture_yaml("event-uefi-sha1-log").pcrs) == expected
    assert len(expected["sha1"]) == 8  # PCRs 0-7


# -- (c) the replay CLI -----------------------------------------------------------------------


@pytest.fixture
def cli_replays(cli):
    """``stockade eventlog replay FILE --format json`` per log (run by the ``cli`` fixture)."""
    require_fixtures()
    return {
        name: (
            cli["replay", name].returncode,
            cli["replay", name].stdout,
            cli["replay", name].stderr,
        )
        for name in LOG_NAMES
    }


def test_replay_cli_prints_the_design_contract(log_name, cli_replays):
    code, stdout, stderr = cli_replays[log_name]
    assert code == 0, stderr
    document = json.loads(stdout)
    log = parse_event_log(log_bytes(log_name))
    expected = as_json(fixture_yaml(log_name).pcrs)
    assert extended(document) == expected
    # {"<bank>": {"<pcr index>": "<lowercase hex>"}} for every bank the log declares
    assert set(document) == {ALGORITHMS[alg] for alg in log.banks}
    for bank, values in document.items():
        size = hashlib.new(bank).digest_size
        for index, value in values.items():
            assert re.fullmatch(r"[0-9]|1[0-9]|2[0-3]", index), index
            assert re.fullmatch(f"[0-9a-f]{{{2 * size}}}", value), value


def test_replay_json_has_every_bank_the_log_declares():
    # event-uefiaction declares sha1, sha256, sha384 and sha512; its one measured event
    # carries sha1 and sha256 digests only
    log = parse_event_log(log_bytes("event-uefiaction"))
    assert [ALGORITHMS[alg] for alg in log.banks] == ["sha1", "sha256", "sha384", "sha512"]
    document = replay(log).values.to_json()
    assert set(document) == {"sha1", "sha256", "sha384", "sha512"}


def test_replay_cli_warns_on_stderr_only_for_digest_mismatches(log_name, cli_replays):
    _, _, stderr = cli_replays[log_name]
    lines = stderr.splitlines()
    events = {int(re.match(r"stockade: warning: event (\d+) ", line)[1]) for line in lines}
    assert events == EXPECTED_MISMATCHES[log_name]
    assert all(line.startswith("stockade: warning: ") for line in lines)


# -- (e) digests that must be the hash of the data --------------------------------------------


def test_digest_mismatches_flag_what_the_fixtures_readme_says(log_name):
    log = parse_event_log(log_bytes(log_name))
    mismatches = digest_mismatches(log)
    assert {m.event_number for m in mismatches} == EXPECTED_MISMATCHES[log_name]
    if log_name == "event-arch-linux":
        assert sorted((m.bank, m.pcr, m.event_type) for m in mismatches) == [
            ("sha1", 8, "EV_IPL"),
            ("sha256", 8, "EV_IPL"),
        ]


@pytest.mark.crosscheck
def test_digest_mismatches_flag_exactly_what_tpm2_eventlog_warns_about(log_name):
    warned = {
        int(number)
        for number in re.findall(
            r"WARN: Event (\d+)'s digest does not match its payload",
            run_tpm2_eventlog(log_name).stderr,
        )
    }
    ours = {m.event_number for m in digest_mismatches(parse_event_log(log_bytes(log_name)))}
    assert ours == warned
