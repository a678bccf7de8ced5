"""Execution-log appraisal (stockade.appraisal.executions) over logs built the way a node
builds them: each record's content extended into PCR 13 of every bank as H_bank(content)
(simulated here as PCR = H(PCR || H(content)); one test does it with a real swtpm), the
record appended to a CEL log. Every way of tampering with the log is named."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field, replace

import pytest

from stockade.appraisal.executions import (
    ExecutionState,
    Forbidden,
    appraise_executions,
    image_repository,
)
from stockade.evidence.cel import marshal_record, parse_cel
from stockade.evidence.execution import (
    ABANDONED_CONTENT_TYPE,
    EXECUTION_PCR,
    PENDING_CONTENT_TYPE,
    ContainerStart,
    Mount,
    TrustPolicyLoaded,
    encode_record,
)

SHA1, SHA256 = 0x0004, 0x000B
HASHES = {SHA1: hashlib.sha1, SHA256: hashlib.sha256}
NOTHING = Forbidden()
POLICY = "sha256:" + "11" * 32


def container(number: int, image: str = "registry.example/team/app:1.2") -> ContainerStart:
    return ContainerStart(
        container_id=f"c{number:04d}",
        image_reference=image,
        manifest_digest="sha256:" + f"{number:064x}",
        config_digest="sha256:" + f"{number + 1_000_000:064x}",
        args=("/bin/app", f"--instance={number}"),
        env_names=("PATH", "HOME"),
        mounts=(Mount("/data", f"/var/lib/app/{number}", "bind", ("rbind", "ro")),),
        time=f"2025-01-02T03:{number // 60 % 60:02d}:{number % 60:02d}Z",
        trust_policy_digest=POLICY,
    )


@dataclass
class Node:
    """A node as the runtime hook drives it: extend PCR 13 in every bank, append."""

    reset_count: int = 1
    restart_count: int = 0
    pcr: dict[int, bytes] = field(
        default_factory=lambda: {alg: bytes(h().digest_size) for alg, h in HASHES.items()}
    )
    records: list[bytes] = field(default_factory=list)

    def run(self, record: ContainerStart | TrustPolicyLoaded, pcr: int = EXECUTION_PCR) -> None:
        content = encode_record(record)
        digests = {alg: h(content).digest() for alg, h in HASHES.items()}
        if pcr == EXECUTION_PCR:
            for alg, h in HASHES.items():
                self.pcr[alg] = h(self.pcr[alg] + digests[alg]).digest()
        self.records.append(marshal_record(len(self.records), pcr, digests, content))

    def start(self, count: int) -> Node:
        for _ in range(count):
            self.run(container(len(self.records)))
        return self

    def log(self, start: int = 0) -> bytes:
        return b"".join(self.records[start:])

    def cursor(self, previous: ExecutionState | None) -> int:
        """Where the agent sends the log from: the verifier's next record in this boot."""
        same_boot = previous is not None and (previous.reset_count, previous.restart_count) == (
            self.reset_count,
            self.restart_count,
        )
        return previous.next_recnum if previous is not None and same_boot else 0

    def quoted(self) -> dict[int, bytes]:
        return dict(self.pcr)

    def appraise(self, previous=None, log: bytes | None = None, forbidden=NOTHING):
        return appraise_executions(
            previous,
            self.reset_count,
            self.restart_count,
            self.log(self.cursor(previous)) if log is None else log,
            self.quoted(),
            forbidden,
        )


@pytest.fixture(scope="module")
def hundred() -> Node:
    return Node().start(100)


def failing(node: Node, log: bytes, quoted=None):
    result = appraise_executions(
        None, node.reset_count, node.restart_count, log, quoted or node.quoted(), NOTHING
    )
    assert not result.ok
    assert result.reasons
    return result


def content_of(record: bytes) -> tuple[int, int]:
    """(offset, length) of the content TLV in one record's bytes."""
    (parsed,) = parse_cel(record)
    return len(record) - len(parsed.content), len(parsed.content)


# -- a faithful log -----------------------------------------------------------------------


def test_a_hundred_container_starts_replay_to_the_quoted_pcr(hundred):
    result = hundred.appraise()
    assert result.ok, result.reasons
    assert result.reasons == () and result.forbidden == ()
    assert [recnum for recnum, _ in result.records] == list(range(100))
    assert result.records[7][1] == container(7)
    assert result.state == ExecutionState(1, 0, 100, hundred.quoted(), None)


def test_policy_loads_are_tracked_in_the_state():
    node = Node()
    node.run(TrustPolicyLoaded(POLICY, "2025-01-02T00:00:00Z"))
    node.start(3)
    result = node.appraise()
    assert result.ok, result.reasons
    assert result.state.policy_digest == POLICY
    assert isinstance(result.records[0][1], TrustPolicyLoaded)


def test_an_empty_log_is_fine_while_the_pcr_is_untouched():
    node = Node()
    assert node.appraise().ok
    result = node.start(4).appraise()
    again = node.appraise(result.state, log=b"")
    assert again.ok and again.records == () and again.state == result.state


# -- tampering, each named --------------------------------------------------------------


@pytest.mark.parametrize(
    ("deleted", "named"),
    [
        (0, "record 0 missing: log continues at 1"),
        (50, "record 50 missing: log continues at 51"),
        (99, "records end at 98 but PCR 13 sha1 quoted"),
    ],
    ids=["first", "middle", "last"],
)
def test_deleting_any_single_record_is_named(hundred, deleted, named):
    records = hundred.records[:deleted] + hundred.records[deleted + 1 :]
    result = failing(hundred, b"".join(records))
    assert any(named in reason for reason in result.reasons), result.reasons
    # ... and the replay no longer reaches the quoted value, in both banks
    replay = [reason for reason in result.reasons if "log replays to" in reason]
    assert len(replay) == 2
    assert "sha1" in replay[0] and "sha256" in replay[1]


def test_deleting_several_records_names_the_range(hundred):
    result = failing(hundred, b"".join(hundred.records[:10] + hundred.records[13:]))
    assert "records 10-12 missing: log continues at 13" in result.reasons


def test_swapping_two_records_is_named(hundred):
    records = list(hundred.records)
    records[10], records[11] = records[11], records[10]
    result = failing(hundred, b"".join(records))
    assert "record 10 missing: log continues at 11" in result.reasons
    assert "record 10 out of order: it follows record 11" in result.reasons
    assert any(r.startswith("records end at 99 but PCR 13 sha256") for r in result.reasons)


def test_editing_one_byte_of_content_is_named(hundred):
    records = list(hundred.records)
    offset, _ = content_of(records[42])
    record = bytearray(records[42])
    index = record.index(b"c0042", offset)
    record[index + 4] = ord("3")  # container c0043 instead of c0042: still a valid record
    records[42] = bytes(record)
    result = failing(hundred, b"".join(records))
    assert result.reasons == (
        "record 42 (container c0043, image registry.example/team/app:1.2):"
        " sha1 digest does not match its content",
        "record 42 (container c0043, image registry.example/team/app:1.2):"
        " sha256 digest does not match its content",
    )


def test_editing_any_byte_of_a_record_is_named():
    """Every single-byte change to a record (its fields, digests or content) fails the
    appraisal with a reason naming that record or the one the edit made it claim."""
    node = Node().start(6)
    target = node.records[3]
    for position in range(len(target)):
        record = bytearray(target)
        record[position] ^= 0x01
        log = b"".join([*node.records[:3], bytes(record), *node.records[4:]])
        result = failing(node, log)
        text = " | ".join(result.reasons)
        named = ("record 3", "records 3-", "after record 2", "records end at")
        assert any(name in text for name in named), (
            position,
            result.reasons,
        )


def test_editing_a_digest_is_named(hundred):
    records = list(hundred.records)
    record = bytearray(records[30])
    (parsed,) = parse_cel(bytes(record))
    sha256 = parsed.digest(SHA256)
    index = bytes(record).index(sha256)
    record[index] ^= 0xFF
    records[30] = bytes(record)
    result = failing(hundred, b"".join(records))
    label = "record 30 (container c0030, image registry.example/team/app:1.2)"
    assert result.reasons[0] == f"{label}: sha256 digest does not match its content"
    assert result.reasons[1].startswith("records end at 99 but PCR 13 sha256 quoted")
    assert len(result.reasons) == 2  # sha1 still replays


def test_duplicating_a_record_is_named(hundred):
    records = list(hundred.records)
    records.insert(21, records[20])
    result = failing(hundred, b"".join(records))
    assert "record 20 appears twice (again after record 20)" in result.reasons
    assert any("log replays to" in reason for reason in result.reasons)


def test_a_record_for_another_pcr_is_named():
    node = Node().start(5)
    node.run(container(5), pcr=9)  # the hook did not extend PCR 13 for it
    node.start(2)
    result = node.appraise()
    assert not result.ok
    assert result.reasons == (
        "record 5 (container c0005, image registry.example/team/app:1.2):"
        " extends PCR 9, not the execution PCR 13",
    )


def test_an_extend_without_a_record_is_named():
    node = Node().start(5)
    node.pcr[SHA256] = hashlib.sha256(node.pcr[SHA256] + bytes(32)).digest()
    result = node.appraise()
    assert result.reasons == (
        f"records end at 4 but PCR 13 sha256 quoted {node.pcr[SHA256].hex()},"
        f" log replays to {Node().start(5).pcr[SHA256].hex()}",
    )


def test_a_record_without_a_quoted_bank_is_named():
    node = Node().start(2)
    content = encode_record(container(2))
    node.records.append(marshal_record(2, 13, {SHA256: hashlib.sha256(content).digest()}, content))
    for alg, h in HASHES.items():
        node.pcr[alg] = h(node.pcr[alg] + h(content).digest()).digest()
    result = node.appraise()
    assert result.reasons[0] == (
        "record 2 (container c0002, image registry.example/team/app:1.2):"
        " no sha1 digest (PCR 13 sha1 is quoted)"
    )


def test_content_that_is_not_an_execution_record_is_named():
    node = Node().start(2)
    content = b"\x50\x00\x00\x00\x02{}"  # a COS (type 80) content
    digests = {alg: h(content).digest() for alg, h in HASHES.items()}
    node.records.append(marshal_record(2, 13, digests, content))
    for alg, h in HASHES.items():
        node.pcr[alg] = h(node.pcr[alg] + digests[alg]).digest()
    result = node.appraise()
    assert len(result.reasons) == 1
    assert result.reasons[0].startswith("record 2: content is not an execution record")
    assert [recnum for recnum, _ in result.records] == [0, 1]


@pytest.mark.parametrize("cut", [1, 5, 40, 200])
def test_a_malformed_log_is_a_reason_not_an_exception(hundred, cut):
    log = hundred.log()[:-cut]
    result = failing(hundred, log)
    assert any(
        reason.startswith("execution log is malformed: CEL record 99:") for reason in result.reasons
    ), result.reasons
    assert len(result.records) == 99


def test_garbage_is_a_reason(hundred):
    result = failing(hundred, b"\xff" * 64)
    assert result.reasons[0].startswith("execution log is malformed")


def test_reasons_are_capped():
    node = Node().start(300)
    records = [r[:30] + bytes([r[30] ^ 1]) + r[31:] for r in node.records]  # every sha1 digest
    result = failing(node, b"".join(records))
    assert len(result.reasons) == 101
    assert result.reasons[-1].startswith("... and ")


def test_quoted_banks_that_cannot_be_replayed_are_named(hundred):
    result = failing(hundred, hundred.log(), {**hundred.quoted(), 0x0099: b"\x00" * 32})
    assert "PCR 13 quoted in bank 0x0099, which cannot be replayed" in result.reasons
    result = failing(hundred, hundred.log(), {SHA256: bytes(20)})
    assert "PCR 13 sha256 quoted value is 20 bytes, not 32" in result.reasons
    assert appraise_executions(None, 1, 0, b"", {}, NOTHING).reasons == (
        "no PCR 13 value was quoted",
    )


# -- incremental appraisal ----------------------------------------------------------------


def test_incremental_appraisal_equals_one_shot():
    node = Node()
    state = None
    records = []
    for count in (10, 0, 1, 39, 50):
        node.start(count)
        result = node.appraise(state)
        assert result.ok, result.reasons
        assert [r for r, _ in result.records] == list(range(len(records), len(node.records)))
        records += result.records
        state = result.state
    one_shot = node.appraise()
    assert one_shot.ok
    assert state == one_shot.state
    assert tuple(records) == one_shot.records


def test_incremental_appraisal_detects_a_rewritten_earlier_record():
    node = Node().start(10)
    state = node.appraise().state
    node.start(5)
    result = node.appraise(state, log=node.log(8))  # resent from 8: 8 and 9 again
    assert not result.ok
    assert result.reasons[0].startswith("record 8 was already appraised (expected records from 10)")


def test_incremental_appraisal_after_a_gap_is_named():
    node = Node().start(10)
    state = node.appraise().state
    node.start(5)
    result = node.appraise(state, log=node.log(11))
    assert result.reasons[0] == "record 10 missing: log continues at 11"


def test_a_new_boot_starts_from_record_zero_and_a_zero_pcr():
    node = Node().start(20)
    state = node.appraise().state
    rebooted = Node(reset_count=2).start(3)
    result = rebooted.appraise(state)
    assert result.ok, result.reasons
    assert result.state.next_recnum == 3 and result.state.reset_count == 2
    # a TPM restart (restartCount) is a new boot for PCR 13 as well
    resumed = Node(restart_count=1).start(2)
    assert resumed.appraise(state).ok
    # while in the same boot, a log from 0 again is a repeat
    again = Node().start(3)
    assert not again.appraise(state, log=again.log()).ok


def test_policy_digest_carries_over_within_a_boot_and_not_across():
    node = Node()
    node.run(TrustPolicyLoaded(POLICY, "2025-01-02T00:00:00Z"))
    state = node.appraise().state
    node.start(2)
    assert node.appraise(state).state.policy_digest == POLICY
    assert Node(reset_count=5).start(1).appraise(state).state.policy_digest is None


def test_a_bank_missing_from_the_kept_state_is_named():
    node = Node().start(3)
    state = node.appraise().state
    state = replace(state, pcr={SHA256: state.pcr[SHA256]})
    node.start(1)
    result = node.appraise(state)
    assert any("no running PCR 13 sha1 value kept from record 2" in r for r in result.reasons)


def test_state_json_round_trips():
    state = Node().start(3).appraise().state
    state = replace(state, policy_digest=POLICY)
    assert ExecutionState.from_json(state.to_json()) == state
    assert ExecutionState.new_boot(4, 1, [SHA1, SHA256]) == ExecutionState(
        4, 1, 0, {SHA1: bytes(20), SHA256: bytes(32)}, None
    )


@pytest.mark.parametrize(
    "broken",
    [
        {},
        {"reset_count": -1},
        {"pcr": {"sha256": "00"}},
        {"pcr": {"md5": "00"}},
        {"policy_digest": 3},
        {"next_recnum": "1"},
    ],
)
def test_state_json_refuses_anything_else(broken):
    from stockade.evidence.errors import MalformedStructure

    document = Node().appraise().state.to_json() | broken if broken else {}
    with pytest.raises(MalformedStructure):
        ExecutionState.from_json(document)


# -- forbidden images ---------------------------------------------------------------------


def test_forbidden_manifest_digest():
    node = Node().start(10)
    bad = container(5).manifest_digest
    result = node.appraise(forbidden=Forbidden(digests=frozenset({bad})))
    assert not result.ok
    assert result.forbidden == (5,)
    assert result.reasons == (
        f"record 5 runs forbidden image {bad} (container c0005, image"
        " registry.example/team/app:1.2)",
    )
    assert len(result.records) == 10  # everything is still decoded and kept


def test_forbidden_config_digest():
    node = Node().start(4)
    bad = container(2).config_digest
    assert node.appraise(forbidden=Forbidden(digests=frozenset({bad}))).forbidden == (2,)


@pytest.mark.parametrize(
    ("image", "forbidden"),
    [
        ("registry.example/bad:1.0", "registry.example/bad:1.0"),
        ("registry.example/bad:1.0", "registry.example/bad"),
        ("registry.example/bad", "registry.example/bad"),
        ("registry.example:5000/bad:2", "registry.example:5000/bad"),
        ("registry.example/bad:1.0@sha256:" + "ee" * 32, "registry.example/bad:1.0"),
        ("registry.example/bad@sha256:" + "ee" * 32, "registry.example/bad"),
        ("registry.example/bad@sha256:" + "ee" * 32, "sha256:" + "ee" * 32),
    ],
)
def test_forbidden_reference(image, forbidden):
    node = Node().start(3)
    node.run(container(3, image=image))
    node.start(1)
    policy = (
        Forbidden(digests=frozenset({forbidden}))
        if forbidden.startswith("sha256:")
        else Forbidden(references=frozenset({forbidden}))
    )
    result = node.appraise(forbidden=policy)
    assert result.forbidden == (3,)
    assert result.reasons == (
        f"record 3 runs forbidden image {forbidden} (container c0003, image {image})",
    )


def test_other_tags_and_repositories_are_not_forbidden():
    node = Node()
    node.run(container(0, image="registry.example/bad-not:1.0"))
    node.run(container(1, image="registry.example/bad:2.0"))
    node.run(container(2, image="registry.example:5000/bad"))
    policy = Forbidden(references=frozenset({"registry.example/bad:1.0", "registry.example/ba"}))
    assert node.appraise(forbidden=policy).ok


def test_image_repository():
    assert image_repository("a/b:1") == "a/b"
    assert image_repository("host:5000/a/b") == "host:5000/a/b"
    assert image_repository("host:5000/a/b:tag@sha256:00") == "host:5000/a/b"
    assert image_repository("b") == "b"


# -- against a real TPM -------------------------------------------------------------------


@pytest.mark.swtpm
def test_software_replay_equals_a_real_tpm_after_twenty_records(software_tpm):
    from stockade.evidence.pcr_selection import PcrSelection
    from stockade.tpm.device import Tpm

    node = Node()
    with Tpm(software_tpm.tcti) as tpm:
        before = tpm.read_pcrs(PcrSelection.parse("sha1:13+sha256:13"))
        assert before.get(SHA256, 13) == bytes(32)
        for number in range(20):
            record = (
                container(number)
                if number % 5
                else TrustPolicyLoaded(POLICY, "2025-01-02T00:00:00Z")
            )
            tpm.extend_pcr(EXECUTION_PCR, encode_record(record))
            node.run(record)
        values = tpm.read_pcrs(PcrSelection.parse("sha1:13+sha256:13"))
    quoted = {alg: values.get(alg, 13) for alg in (SHA1, SHA256)}
    assert quoted == node.quoted()
    result = appraise_executions(None, 1, 0, node.log(), quoted, NOTHING)
    assert result.ok, result.reasons
    assert len(result.records) == 20


@pytest.mark.parametrize(
    "written",
    ["xmrig", "docker.io/xmrig", "index.docker.io/library/xmrig", "docker.io/library/xmrig"],
)
@pytest.mark.parametrize(
    "ran",
    ["xmrig:6", "index.docker.io/library/xmrig:6", "docker.io/xmrig@sha256:" + "ee" * 32],
)
def test_a_forbidden_docker_hub_image_is_caught_in_any_spelling(written, ran):
    """The review's alias: `forbid: docker.io/library/xmrig` let `index.docker.io/...` run.
    Forbid entries are normalised when the policy is parsed, records when compared."""
    from stockade.appraisal.policy import _forbidden

    forbidden = _forbidden({"forbid": {"references": [written]}})
    assert forbidden.references == frozenset({"docker.io/library/xmrig"})
    node = Node()
    node.run(container(0, image=ran))
    assert node.appraise(forbidden=forbidden).forbidden == (0,)


def test_a_record_whose_reference_does_not_parse_is_forbidden_when_references_are():
    node = Node()
    node.run(container(0, image="Registry.Example/UPPER:1"))
    policy = Forbidden(references=frozenset({"registry.example/other"}))
    assert node.appraise(forbidden=policy).forbidden == (0,)
    assert node.appraise(forbidden=Forbidden()).ok


def test_a_forbid_entry_that_is_not_a_reference_is_a_policy_error():
    from stockade.appraisal.policy import PolicyInvalid, _forbidden

    with pytest.raises(PolicyInvalid, match=r"executions\.forbid\.references"):
        _forbidden({"forbid": {"references": ["Not A Reference"]}})


# -- write-ahead status: pending (0xC6) and abandoned (0xC7) records ----------------------


def _with_status(record: bytes, status: int) -> bytes:
    offset, _ = content_of(record)
    return record[:offset] + bytes((status,)) + record[offset + 1 :]


def _pending(node: Node, extended: bool) -> Node:
    """A crash mid-admission: the record appended as pending; extended or not."""
    content = encode_record(container(len(node.records)))
    digests = {alg: h(content).digest() for alg, h in HASHES.items()}
    if extended:
        for alg, h in HASHES.items():
            node.pcr[alg] = h(node.pcr[alg] + digests[alg]).digest()
    record = marshal_record(len(node.records), EXECUTION_PCR, digests, content)
    node.records.append(_with_status(record, PENDING_CONTENT_TYPE))
    return node


def test_a_last_pending_record_without_its_extend_never_started():
    node = _pending(Node().start(3), extended=False)
    result = node.appraise()
    assert result.ok, result.reasons
    assert result.not_started == (3,)
    assert result.state.next_recnum == 4  # judged for good: its status can no longer change
    assert [recnum for recnum, _ in result.records] == [0, 1, 2, 3]


def test_a_last_pending_record_with_its_extend_started():
    node = _pending(Node().start(3), extended=True)
    result = node.appraise()
    assert result.ok, result.reasons
    assert result.not_started == ()
    assert result.state.pcr == node.quoted()


def test_an_abandoned_record_is_never_replayed_and_never_forbidden():
    node = _pending(Node().start(2), extended=False)
    node.records[-1] = _with_status(node.records[-1], ABANDONED_CONTENT_TYPE)
    node.start(2)
    forbidden = Forbidden(digests=frozenset({container(2).manifest_digest}))
    result = node.appraise(forbidden=forbidden)
    assert result.ok, result.reasons
    assert result.not_started == (2,) and result.forbidden == ()


def test_incremental_appraisal_after_a_record_that_never_started():
    node = _pending(Node().start(2), extended=False)
    first = node.appraise()
    assert first.ok and first.not_started == (2,)
    node.records[-1] = _with_status(node.records[-1], ABANDONED_CONTENT_TYPE)  # the next hook
    node.start(2)
    second = node.appraise(first.state)
    assert second.ok, second.reasons
    assert [recnum for recnum, _ in second.records] == [3, 4]


def test_a_pending_record_that_is_not_the_last_is_named():
    node = _pending(Node().start(2), extended=True).start(2)
    result = failing(node, node.log())
    assert (
        "record 2 (container c0002, image registry.example/team/app:1.2): is pending"
        in (result.reasons[0])
    )


def test_marking_an_extended_record_abandoned_does_not_hide_it():
    """The forbidden image ran (extended); calling it abandoned leaves PCR 13 unexplained."""
    node = Node().start(2)
    node.run(container(2, image="registry.example/evil/miner:1"))
    node.records[2] = _with_status(node.records[2], ABANDONED_CONTENT_TYPE)
    result = failing(node, node.log())
    assert any("records end at 2 but PCR 13" in reason for reason in result.reasons)


@pytest.mark.parametrize("status", [PENDING_CONTENT_TYPE, ABANDONED_CONTENT_TYPE])
def test_a_status_record_whose_digest_is_not_of_its_content_is_named(status):
    node = Node().start(2)
    forged = marshal_record(2, EXECUTION_PCR, {SHA1: bytes(20), SHA256: bytes(32)},
                            encode_record(container(2)))  # fmt: skip
    node.records.append(_with_status(forged, status))
    result = failing(node, node.log())
    assert any("record 2" in r and "digest does not match" in r for r in result.reasons)


def test_a_pending_record_cannot_make_pcr_13_match_either_way():
    """Both replays (with and without the pending record) are compared with the quote; a
    quote matching neither (here: an extend of something else) is a finding."""
    node = _pending(Node().start(2), extended=False)
    for alg, h in HASHES.items():
        node.pcr[alg] = h(node.pcr[alg] + h(b"something else").digest()).digest()
    result = failing(node, node.log())
    assert any("records end at 2 but PCR 13" in reason for reason in result.reasons)
