"""The CEL-TLV codec (stockade.evidence.cel) and Stockade execution records
(stockade.evidence.execution): byte layouts written out from the TCG Canonical Event Log
format, byte-exact round trips, strict parsing that names the record and the offset,
canonical JSON content, and the fuzz target driven without atheris."""

from __future__ import annotations

import hashlib
import importlib.util
import json
import random
import struct
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.evidence.cel import (
    CelRecord,
    MalformedCel,
    TruncatedCel,
    UnknownCelDigest,
    content_tlv,
    marshal_log,
    marshal_record,
    parse_cel,
    tlv,
)
from stockade.evidence.errors import EvidenceError
from stockade.evidence.execution import (
    CONTENT_TYPE,
    EXECUTION_PCR,
    ContainerStart,
    InvalidExecutionRecord,
    MalformedExecutionRecord,
    Mount,
    TrustPolicyLoaded,
    canonical_json,
    decode_record,
    encode_record,
)

SHA1, SHA256, SHA384, SM3 = 0x0004, 0x000B, 0x000C, 0x0012
DIGEST_A = "sha256:" + "ab" * 32
DIGEST_C = "sha256:" + "cd" * 32
FUZZ_TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_cel.py"


def start(number: int = 0, **changes) -> ContainerStart:
    fields = {
        "container_id": f"c{number:05d}",
        "image_reference": "registry.example/team/app:1.2",
        "manifest_digest": DIGEST_A,
        "config_digest": DIGEST_C,
        "args": ("/bin/app", "--port", "8080"),
        "env_names": ("PATH", "HOME"),
        "mounts": (Mount("/data", "/var/lib/app", "bind", ("rbind", "ro")),),
        "time": "2025-01-02T03:04:05Z",
        "trust_policy_digest": "sha256:" + "11" * 32,
    } | changes
    return ContainerStart(**fields)


def record_bytes(recnum: int, content: bytes, pcr: int = EXECUTION_PCR) -> bytes:
    digests = {SHA1: hashlib.sha1(content).digest(), SHA256: hashlib.sha256(content).digest()}
    return marshal_record(recnum, pcr, digests, content)


def sample_log(count: int = 3) -> bytes:
    return b"".join(record_bytes(n, encode_record(start(n))) for n in range(count))


# -- the TLV layout, byte by byte -------------------------------------------------------


def test_record_layout_is_the_cel_tlv_layout():
    content = content_tlv(CONTENT_TYPE, b'{"x":1}')
    sha1 = hashlib.sha1(content).digest()
    sha256 = hashlib.sha256(content).digest()
    expected = (
        bytes.fromhex("00 00000008 0000000000000007")  # recnum, 8 bytes (as go-tpm-tools)
        + bytes.fromhex("01 00000001 0d")  # pcr 13, 1 byte
        + bytes.fromhex("03 0000003e")  # digests: 5+20 + 5+32 = 62 bytes of nested TLVs
        + bytes.fromhex("04 00000014")
        + sha1  # TPM_ALG_SHA1
        + bytes.fromhex("0b 00000020")
        + sha256  # TPM_ALG_SHA256
        + bytes.fromhex("c5 00000007")
        + b'{"x":1}'
    )
    assert marshal_record(7, 13, {SHA1: sha1, SHA256: sha256}, content) == expected
    (record,) = parse_cel(expected)
    assert record == CelRecord(7, 13, None, ((SHA1, sha1), (SHA256, sha256)), content)
    assert record.content_type == CONTENT_TYPE
    assert record.content_value == b'{"x":1}'
    assert record.digest(SHA256) == sha256
    assert record.digest(SHA384) is None
    assert record.size == len(expected)


def test_minimal_width_integers_and_nv_index_round_trip_byte_for_byte():
    """Other writers encode integers in fewer bytes (1234 as 04d2); the record keeps the
    widths it was read with."""
    digest = hashlib.sha256(b"x").digest()
    data = (
        bytes.fromhex("00 00000002 04d2")
        + bytes.fromhex("02 00000004 01c00002")  # nv_index instead of pcr
        + tlv(3, tlv(SHA256, digest))
        + tlv(4, b"cel_mgt")
    )
    (record,) = parse_cel(data)
    assert (record.recnum, record.pcr, record.nv_index) == (1234, None, 0x01C00002)
    assert (record.recnum_size, record.index_size) == (2, 4)
    assert record.marshal() == data
    assert marshal_log(parse_cel(data * 1)) == data


def test_empty_log_is_no_records():
    assert parse_cel(b"") == ()
    assert marshal_log(()) == b""


def test_log_round_trips():
    log = sample_log(5)
    records = parse_cel(log)
    assert [r.recnum for r in records] == [0, 1, 2, 3, 4]
    assert marshal_log(records) == log
    assert all(r.pcr == 13 and r.nv_index is None for r in records)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.lists(
        st.tuples(
            st.integers(0, 2**64 - 1),
            st.integers(0, 255),
            st.lists(st.sampled_from([SHA1, SHA256, SHA384, SM3]), min_size=1, unique=True),
            st.integers(4, 255),
            st.binary(max_size=64),
        ),
        max_size=5,
    )
)
def test_any_log_round_trips(fields):
    sizes = {SHA1: 20, SHA256: 32, SHA384: 48, SM3: 32}
    log = b"".join(
        marshal_record(
            recnum,
            pcr,
            [(alg, bytes([alg]) * sizes[alg]) for alg in algs],
            tlv(content_type, value),
        )
        for recnum, pcr, algs, content_type, value in fields
    )
    records = parse_cel(log)
    assert [(r.recnum, r.pcr) for r in records] == [(f[0], f[1]) for f in fields]
    assert marshal_log(records) == log


# -- strict parsing: typed errors naming the record and the offset ----------------------


def second_record_offset(log: bytes) -> int:
    return parse_cel(log)[0].size


@pytest.mark.parametrize(
    ("mutate", "kind", "names", "reason"),
    [
        (lambda r: b"\x01" + r[1:], MalformedCel, "CEL record after record 0", "recnum field"),
        (lambda r: r[:1] + struct.pack(">I", 9) + r[5:], MalformedCel, "after record 0", "9 bytes"),
        (lambda r: r[:13] + b"\x03" + r[14:], MalformedCel, "CEL record 1", "pcr or nv_index"),
        (lambda r: r[:14] + struct.pack(">I", 5) + r[18:], MalformedCel, "record 1", "pcr is 5"),
        (lambda r: r[:19] + b"\x05" + r[20:], MalformedCel, "CEL record 1", "digests field"),
        (lambda r: r[:24] + b"\x07" + r[25:], UnknownCelDigest, "CEL record 1", "0x0007"),
        (lambda r: r[:24] + b"\x0b" + r[25:], MalformedCel, "CEL record 1", "sha256 digest is 20"),
        (
            lambda r: r[:19] + tlv(3, tlv(SHA1, bytes(20)) + tlv(SHA1, bytes(20))) + r[86:],
            MalformedCel,
            "CEL record 1",
            "second sha1",
        ),
        (lambda r: r[:19] + tlv(3, b"") + r[86:], MalformedCel, "CEL record 1", "empty"),
        (lambda r: r[:86] + b"\x03" + r[87:], MalformedCel, "CEL record 1", "content field"),
    ],
    ids=[
        "not-recnum",
        "recnum-too-wide",
        "not-pcr",
        "pcr-too-wide",
        "not-digests",
        "unknown-alg",
        "wrong-size",
        "duplicate-alg",
        "no-digests",
        "not-content",
    ],
)
def test_each_structural_error_is_typed_and_names_the_record(mutate, kind, names, reason):
    log = sample_log(2)
    offset = second_record_offset(log)
    bad = log[:offset] + mutate(log[offset:])
    with pytest.raises(kind) as caught:
        parse_cel(bad)
    error = caught.value
    assert isinstance(error, EvidenceError)
    assert names in str(error) and reason in str(error)
    assert error.position == 1
    assert offset <= error.offset < len(bad)
    assert f"at byte offset {error.offset}" in str(error)


def test_error_in_the_first_record_and_trailing_bytes():
    with pytest.raises(MalformedCel, match="expected a recnum field") as caught:
        parse_cel(b"\x07\x00\x00\x00\x00")
    assert caught.value.offset == 0 and caught.value.recnum is None
    log = sample_log(2)
    with pytest.raises(TruncatedCel, match="after record 1") as caught:
        parse_cel(log + b"\x00\x00")
    assert caught.value.offset == len(log)


def test_every_truncation_is_a_prefix_or_a_truncated_record():
    log = sample_log(3)
    boundaries = {0}
    for record in parse_cel(log):
        boundaries.add(max(boundaries) + record.size)
    for length in range(len(log)):
        data = log[:length]
        if length in boundaries:
            assert len(parse_cel(data)) == sorted(boundaries).index(length)
            continue
        with pytest.raises(TruncatedCel) as caught:
            parse_cel(data)
        error = caught.value
        assert error.position == sum(1 for b in boundaries if b <= length) - 1
        assert error.offset <= length


def test_every_single_bit_flip_parses_and_round_trips_or_raises_a_typed_error():
    log = sample_log(2)
    for position in range(len(log)):
        for bit in range(8):
            mutated = bytearray(log)
            mutated[position] ^= 1 << bit
            try:
                records = parse_cel(bytes(mutated))
            except EvidenceError:
                continue
            assert marshal_log(records) == bytes(mutated)


@settings(max_examples=500, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(max_size=300))
def test_arbitrary_bytes_parse_or_raise_only_typed_errors(data):
    try:
        records = parse_cel(data)
    except EvidenceError:
        return
    assert marshal_log(records) == data


@settings(max_examples=300, suppress_health_check=[HealthCheck.too_slow])
@given(st.data())
def test_arbitrary_bytes_after_a_valid_prefix_only_typed_errors(data):
    log = sample_log(2)
    cut = data.draw(st.integers(0, len(log)))
    tail = data.draw(st.binary(max_size=120))
    try:
        records = parse_cel(log[:cut] + tail)
    except MalformedCel as error:
        assert isinstance(error, EvidenceError)
        return
    assert marshal_log(records) == log[:cut] + tail


def test_content_type_must_be_a_content_type():
    with pytest.raises(MalformedCel):
        content_tlv(3, b"")
    with pytest.raises(MalformedCel):
        content_tlv(256, b"")


# -- execution records: canonical JSON in a Stockade content TLV ------------------------


def test_content_type_and_pcr_are_the_documented_ones():
    assert CONTENT_TYPE == 0xC5 and EXECUTION_PCR == 13
    assert encode_record(start())[0] == 0xC5


def test_container_start_encodes_as_canonical_json_and_decodes_back():
    record = start()
    content = encode_record(record)
    value = content[5:]
    assert struct.unpack(">BI", content[:5]) == (CONTENT_TYPE, len(value))
    document = json.loads(value)
    assert document["type"] == "container_start"
    assert document["env_names"] == ["PATH", "HOME"]
    assert document["mounts"] == [
        {
            "destination": "/data",
            "options": ["rbind", "ro"],
            "source": "/var/lib/app",
            "type": "bind",
        }
    ]
    assert value == json.dumps(
        document, sort_keys=True, separators=(",", ":"), ensure_ascii=False
    ).encode("utf-8")
    assert value == canonical_json(record.to_json())
    assert decode_record(content) == record


def test_trust_policy_loaded_round_trips():
    record = TrustPolicyLoaded("sha256:" + "22" * 32, "2025-01-02T03:04:05.123456789Z", 7)
    content = encode_record(record)
    assert json.loads(content[5:]) == {
        "type": "trust_policy_loaded",
        "digest": record.digest,
        "serial": 7,
        "time": record.time,
    }
    assert decode_record(content) == record


def test_no_trust_policy_digest_is_null():
    record = start(trust_policy_digest=None)
    assert json.loads(encode_record(record)[5:])["trust_policy_digest"] is None
    assert decode_record(encode_record(record)) == record


text = st.text(st.characters(codec="utf-8"), max_size=12)
names = st.text(st.characters(codec="utf-8", exclude_characters="=\x00"), min_size=1, max_size=8)


@settings(max_examples=200, suppress_health_check=[HealthCheck.too_slow])
@given(
    st.builds(
        ContainerStart,
        container_id=text.filter(bool),
        image_reference=text.filter(bool),
        manifest_digest=st.just(DIGEST_A),
        config_digest=st.just(DIGEST_C),
        args=st.lists(text, max_size=4).map(tuple),
        env_names=st.lists(names, max_size=4).map(tuple),
        mounts=st.lists(
            st.builds(
                Mount,
                destination=text.filter(bool),
                source=text,
                type=text,
                options=st.lists(text, max_size=3).map(tuple),
            ),
            max_size=3,
        ).map(tuple),
        time=st.just("2025-01-02T03:04:05Z"),
        trust_policy_digest=st.one_of(st.none(), st.just(DIGEST_A)),
    )
)
def test_any_container_start_round_trips_and_matches_the_reference_encoder(record):
    content = encode_record(record)
    assert content[5:] == canonical_json(record.to_json())
    assert decode_record(content) == record


@pytest.mark.parametrize(
    ("changes", "field"),
    [
        ({"env_names": ("PATH", "TOKEN=hunter2")}, "env_names"),
        ({"env_names": ("",)}, "env_names"),
        ({"env_names": ["PATH"]}, "env_names"),
        ({"manifest_digest": "sha256:" + "AB" * 32}, "manifest_digest"),
        ({"config_digest": "md5:00"}, "config_digest"),
        ({"time": "2025-01-02 03:04:05"}, "time"),
        ({"time": "2025-01-02T03:04:05+01:00"}, "time"),
        ({"container_id": ""}, "container_id"),
        ({"args": ("ok", 3)}, "args"),
        ({"mounts": ("/data",)}, "mounts"),
        ({"trust_policy_digest": "sha256:xyz"}, "trust_policy_digest"),
    ],
)
def test_invalid_fields_are_refused_by_the_record_type(changes, field):
    with pytest.raises(InvalidExecutionRecord) as caught:
        start(**changes)
    assert caught.value.field == field
    assert "hunter2" not in str(caught.value)  # an environment value is never echoed


def test_mount_fields_are_checked():
    with pytest.raises(InvalidExecutionRecord, match=r"mounts\.destination"):
        Mount("", "/src", "bind")
    with pytest.raises(InvalidExecutionRecord, match=r"mounts\.options"):
        Mount("/d", "/s", "bind", ["ro"])  # type: ignore[arg-type]


def reencode(document: dict, **dumps) -> bytes:
    options = {"sort_keys": True, "separators": (",", ":"), "ensure_ascii": False} | dumps
    return content_tlv(CONTENT_TYPE, json.dumps(document, **options).encode("utf-8"))


def surrogate() -> bytes:
    value = encode_record(start())[5:].replace(b'"c00000"', b'"\\ud800"')
    return content_tlv(CONTENT_TYPE, value)


@pytest.mark.parametrize(
    ("content", "error"),
    [
        (lambda d: reencode(d, separators=(", ", ": ")), "canonical"),
        (lambda d: reencode(dict(sorted(d.items(), reverse=True)), sort_keys=False), "canonical"),
        (lambda d: reencode(d | {"container_id": "é"}, ensure_ascii=True), "canonical"),
        (lambda d: reencode(d | {"extra": 1}), "unexpected extra"),
        (lambda d: reencode({k: v for k, v in d.items() if k != "time"}), "missing time"),
        (lambda d: reencode(d | {"type": "container_stop"}), "unknown record type"),
        (lambda d: reencode(d | {"env_names": ["A=b"]}), "env_names"),
        (lambda d: reencode(d | {"args": "not-a-list"}), "args"),
        (lambda d: reencode(d | {"mounts": [{"destination": "/d"}]}), "mount fields"),
        (lambda d: reencode(d | {"manifest_digest": 5}), "manifest_digest"),
        (lambda d: reencode([d]), "one JSON object"),
        (lambda d: surrogate(), "UTF-8"),
        (lambda d: content_tlv(CONTENT_TYPE, b"\xff"), "not UTF-8 JSON"),
        (lambda d: content_tlv(CONTENT_TYPE, b"[" * 100000), "not UTF-8 JSON"),
        (lambda d: content_tlv(CONTENT_TYPE, b"{} {}"), "one JSON object"),
        (lambda d: content_tlv(80, b"{}"), "content type 80"),
        (lambda d: encode_record(start())[:-1], "TLV length"),
        (lambda d: b"\xc5\x00", "shorter than a TLV header"),
    ],
)
def test_decode_refuses_anything_but_a_canonical_valid_record(content, error):
    document = json.loads(encode_record(start())[5:])
    with pytest.raises(EvidenceError, match=error) as caught:
        decode_record(content(document))
    assert isinstance(caught.value, MalformedExecutionRecord | InvalidExecutionRecord)


def test_duplicate_keys_are_refused():
    """Two parsers could disagree on which duplicate counts; canonical JSON has none."""
    value = encode_record(start())[5:]
    first = b'"manifest_digest":"sha256:' + b"00" * 32 + b'",'
    doubled = value.replace(b'"manifest_digest":', first + b'"manifest_digest":', 1)
    with pytest.raises(MalformedExecutionRecord, match="canonical"):
        decode_record(content_tlv(CONTENT_TYPE, doubled))


# -- the fuzz target, without atheris ---------------------------------------------------


@pytest.fixture(scope="module")
def fuzz_cel():
    spec = importlib.util.spec_from_file_location("fuzz_cel", FUZZ_TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_target_passes_its_seeds_their_truncations_and_mutations(fuzz_cel):
    rng = random.Random("fuzz_cel")
    for seed in fuzz_cel.seed_logs():
        fuzz_cel.test_one_input(seed)
        for length in range(0, len(seed), 7):
            fuzz_cel.test_one_input(seed[:length])
        for _ in range(300):
            mutated = bytearray(seed)
            mutated[rng.randrange(len(mutated))] ^= 1 << rng.randrange(8)
            fuzz_cel.test_one_input(bytes(mutated))


def test_fuzz_target_random_inputs(fuzz_cel):
    rng = random.Random("fuzz_cel random")
    prefix = fuzz_cel.seed_logs()[0][:30]
    for number in range(1000):
        body = rng.randbytes(rng.randrange(0, 300))
        fuzz_cel.test_one_input(prefix + body if number % 2 else body)


def test_fuzz_target_catches_a_broken_round_trip(fuzz_cel, monkeypatch):
    seed = fuzz_cel.seed_logs()[0]
    original = CelRecord.marshal
    monkeypatch.setattr(CelRecord, "marshal", lambda self: original(self) + b"\x00")
    with pytest.raises(AssertionError, match="does not marshal back"):
        fuzz_cel.test_one_input(seed)


def test_a_record_status_is_its_content_type_byte_and_digests_stay_of_the_measured_content():
    from stockade.evidence.execution import (
        ABANDONED_CONTENT_TYPE,
        CONTENT_TYPE,
        PENDING_CONTENT_TYPE,
        MalformedExecutionRecord,
        TrustPolicyLoaded,
        decode_record,
        encode_record,
        measured_content,
        with_status,
    )

    done = encode_record(TrustPolicyLoaded("sha256:" + "ab" * 32, "2026-12-06T06:00:00Z"))
    for status in (PENDING_CONTENT_TYPE, ABANDONED_CONTENT_TYPE):
        marked = with_status(done, status)
        assert marked[0] == status and marked[1:] == done[1:]
        assert measured_content(marked) == done
        record = marshal_record(0, 13, {0x0B: hashlib.sha256(done).digest()}, marked)
        (parsed,) = parse_cel(record)  # still well-formed CEL-TLV
        assert parsed.content_type == status and parsed.marshal() == record
        assert decode_record(measured_content(parsed.content)).to_json()["type"] == (
            "trust_policy_loaded"
        )
        with pytest.raises(MalformedExecutionRecord):
            decode_record(marked)  # only the measured form is a record
    assert with_status(with_status(done, PENDING_CONTENT_TYPE), CONTENT_TYPE) == done
    other = content_tlv(0x50, b"cos event")
    assert measured_content(other) == other
    with pytest.raises(MalformedExecutionRecord):
        with_status(other, PENDING_CONTENT_TYPE)
