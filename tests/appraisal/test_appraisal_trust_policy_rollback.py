"""The verifier's guard against a node whose image trust policy was rolled back: the appraisal
policy's ``executions.trust_policy`` (a minimum serial, or the exact digest), checked against
the ``TrustPolicyLoaded`` records of the node's execution log and the containers started under
them (docs/execution-log.md, "Appraisal"). Logs are built as a node builds them (PCR 13
simulated as H(PCR || H(content)) in two banks)."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

import pytest

from stockade.appraisal.executions import (
    ExecutionState,
    Forbidden,
    TrustPolicyRequirement,
    appraise_executions,
)
from stockade.appraisal.policy import PolicyInvalid, parse_executions, parse_policy
from stockade.evidence.cel import content_tlv, marshal_record
from stockade.evidence.execution import (
    ABANDONED_CONTENT_TYPE,
    CONTENT_TYPE,
    EXECUTION_PCR,
    ContainerStart,
    Mount,
    TrustPolicyLoaded,
    encode_record,
)

SHA1, SHA256 = 0x0004, 0x000B
HASHES = {SHA1: hashlib.sha1, SHA256: hashlib.sha256}
V1 = "sha256:" + "a1" * 32  # the org's trust policy serial 1: trusts old-ci
V2 = "sha256:" + "b2" * 32  # serial 2: revokes old-ci
TIME = "2026-12-06T08:00:00Z"
MIN_2 = Forbidden(trust_policy=TrustPolicyRequirement(min_serial=2))


def started(number: int, policy: str | None) -> ContainerStart:
    return ContainerStart(
        container_id=f"c{number}",
        image_reference="registry.example/org/app:1",
        manifest_digest="sha256:" + f"{number:064x}",
        config_digest="sha256:" + "cc" * 32,
        args=("/app",),
        env_names=("PATH",),
        mounts=(Mount("/data", "/srv", "bind", ("rbind",)),),
        time=TIME,
        trust_policy_digest=policy,
    )


def loaded(digest: str, serial: int) -> TrustPolicyLoaded:
    return TrustPolicyLoaded(digest, TIME, serial)


@dataclass
class Node:
    """A node as its hook drives it: each record extended into PCR 13, then appended."""

    pcr: dict[int, bytes] = field(
        default_factory=lambda: {alg: bytes(h().digest_size) for alg, h in HASHES.items()}
    )
    records: list[bytes] = field(default_factory=list)

    def run(self, record: ContainerStart | TrustPolicyLoaded) -> None:
        self.append(encode_record(record))

    def append(self, content: bytes, *, status: int = CONTENT_TYPE) -> None:
        digests = {alg: h(content).digest() for alg, h in HASHES.items()}
        if status != ABANDONED_CONTENT_TYPE:
            for alg, h in HASHES.items():
                self.pcr[alg] = h(self.pcr[alg] + digests[alg]).digest()
        stored = bytes((status,)) + content[1:]
        self.records.append(marshal_record(len(self.records), EXECUTION_PCR, digests, stored))

    def appraise(self, forbidden: Forbidden, previous: ExecutionState | None = None):
        start = previous.next_recnum if previous is not None else 0
        return appraise_executions(
            previous, 1, 0, b"".join(self.records[start:]), dict(self.pcr), forbidden
        )


def test_a_node_that_loaded_an_older_policy_than_the_minimum_is_contraindicated():
    """Across a reboot the node's hook cannot know serial 2 exists: it loads the rolled-back
    serial 1 and admits an old-ci image. Its records say so, and the verifier refuses it."""
    node = Node()
    node.run(loaded(V1, 1))
    node.run(started(1, V1))
    result = node.appraise(MIN_2)
    assert not result.ok
    assert result.refused_policy == (0, 1)
    assert result.reasons == (
        f"record 0 (trust policy {V1}, serial 1): loads an image trust policy serial 1 ({V1}),"
        " older than serial 2, the minimum the appraisal policy requires",
        "record 1 (container c1, image registry.example/org/app:1): started under an image"
        f" trust policy serial 1 ({V1}), older than serial 2, the minimum the appraisal policy"
        " requires",
    )


def test_the_required_serial_or_newer_is_affirmed():
    node = Node()
    for serial, digest in ((2, V2), (3, "sha256:" + "c3" * 32)):
        node.run(loaded(digest, serial))
        node.run(started(serial, digest))
    result = node.appraise(MIN_2)
    assert result.ok, result.reasons
    assert result.refused_policy == ()
    assert (result.state.policy_digest, result.state.policy_serial) == ("sha256:" + "c3" * 32, 3)


def test_without_a_requirement_any_serial_is_accepted():
    node = Node()
    node.run(loaded(V1, 0))  # a format version 1 policy
    node.run(started(1, V1))
    result = node.appraise(Forbidden())
    assert result.ok and result.state.policy_serial == 0


def test_a_rollback_later_in_the_boot_is_caught_across_attestations():
    """Serial 2 loaded and appraised; in a later attestation the node loads serial 1 again
    (a hook that did not refuse it: a tampered node) and starts a container under it."""
    node = Node()
    node.run(loaded(V2, 2))
    node.run(started(1, V2))
    first = node.appraise(MIN_2)
    assert first.ok, first.reasons
    assert first.state.policy_serial == 2
    kept = ExecutionState.from_json(first.state.to_json())
    assert kept == first.state
    node.run(started(2, V2))
    node.run(loaded(V1, 1))
    node.run(started(3, V1))
    second = node.appraise(MIN_2, kept)
    assert second.refused_policy == (3, 4)
    assert [reason.partition("): ")[0] + ")" for reason in second.reasons] == [
        f"record 3 (trust policy {V1}, serial 1)",
        "record 4 (container c3, image registry.example/org/app:1)",
    ]
    assert all("serial 1" in reason and "serial 2" in reason for reason in second.reasons)


def test_a_container_started_under_a_policy_loaded_in_an_earlier_attestation_is_judged():
    """The requirement rose after serial 1 was loaded and accepted: a container started under
    it since then is a finding, named with the serial kept from the earlier record."""
    node = Node()
    node.run(loaded(V1, 1))
    node.run(started(1, V1))
    first = node.appraise(Forbidden())
    assert first.ok
    node.run(started(2, V1))
    second = node.appraise(MIN_2, first.state)
    assert second.refused_policy == (2,)
    assert "started under an image trust policy serial 1" in second.reasons[0]


def test_the_exact_digest_requirement_names_both_digests():
    node = Node()
    node.run(loaded(V1, 5))
    node.run(started(1, V1))
    result = node.appraise(Forbidden(trust_policy=TrustPolicyRequirement(digest=V2)))
    assert result.refused_policy == (0, 1)
    assert result.reasons[0].endswith(
        f"loads an image trust policy {V1}, not {V2}, the one the appraisal policy requires"
    )
    node = Node()
    node.run(loaded(V2, 5))
    node.run(started(1, V2))
    assert node.appraise(Forbidden(trust_policy=TrustPolicyRequirement(2, V2))).ok


def test_a_container_naming_a_policy_no_record_loaded_has_an_unknown_serial():
    node = Node()
    node.run(loaded(V2, 2))
    node.run(started(1, V1))  # claims a policy this boot never loaded
    node.run(started(2, None))
    result = node.appraise(MIN_2)
    assert result.refused_policy == (1, 2)
    assert (
        f"trust policy {V1} of unknown serial (the last one this boot loaded is {V2})"
        in (result.reasons[0])
    )
    assert "trust policy (none) of unknown serial" in result.reasons[1]


def test_a_state_kept_before_serials_has_an_unknown_serial():
    """A state stored by an older verifier has no policy_serial: unknown, so a minimum is
    not met (fail closed) until the node loads a policy again."""
    node = Node()
    node.run(loaded(V2, 2))
    first = node.appraise(MIN_2)
    document = first.state.to_json()
    del document["policy_serial"]
    old = ExecutionState.from_json(document)
    assert old.policy_serial is None and old.policy_digest == V2
    node.run(started(1, V2))
    result = node.appraise(MIN_2, old)
    assert result.refused_policy == (1,)
    assert f"trust policy {V2} of unknown serial" in result.reasons[0]


def test_a_policy_load_that_never_took_effect_is_no_finding():
    node = Node()
    node.run(loaded(V2, 2))
    node.append(encode_record(loaded(V1, 1)), status=ABANDONED_CONTENT_TYPE)
    node.run(started(1, V2))
    result = node.appraise(MIN_2)
    assert result.ok, result.reasons
    assert result.not_started == (1,)


@pytest.mark.parametrize(
    "value",
    [
        b'{"digest":"' + V1.encode() + b'","time":"' + TIME.encode() + b'",'
        b'"type":"trust_policy_loaded"}',  # the old form, without serial
        b'{"digest":"' + V1.encode() + b'","serial":1.0,"time":"' + TIME.encode() + b'",'
        b'"type":"trust_policy_loaded"}',
        b'{"digest":"' + V1.encode() + b'","serial":-1,"time":"' + TIME.encode() + b'",'
        b'"type":"trust_policy_loaded"}',
        b'{"digest":"' + V1.encode() + b'","serial":true,"time":"' + TIME.encode() + b'",'
        b'"type":"trust_policy_loaded"}',
        b'{"digest":"'
        + V1.encode()
        + b'","serial":'
        + b"9" * 5000
        + b',"time":"'
        + TIME.encode()
        + b'","type":"trust_policy_loaded"}',
    ],
    ids=["no-serial", "float", "negative", "bool", "huge"],
)
def test_a_malformed_serial_is_a_reason_never_an_exception(value):
    node = Node()
    node.append(content_tlv(CONTENT_TYPE, value))
    result = node.appraise(MIN_2)
    assert not result.ok
    assert result.reasons[0].startswith("record 0: content is not an execution record")


def test_the_requirement_is_read_from_the_policy_document():
    assert parse_executions({"trust_policy": {"min_serial": 4}}).trust_policy == (
        TrustPolicyRequirement(4, None)
    )
    both = parse_executions(
        {"forbid": {"digests": [V1]}, "trust_policy": {"min_serial": 2, "digest": V2}}
    )
    assert both.trust_policy == TrustPolicyRequirement(2, V2)
    assert both.digests == frozenset({V1})
    assert not parse_executions({}).trust_policy.required


@pytest.mark.parametrize(
    ("section", "where"),
    [
        ({"min_serial": 0}, "executions.trust_policy.min_serial"),
        ({"min_serial": True}, "executions.trust_policy.min_serial"),
        ({"min_serial": "2"}, "executions.trust_policy.min_serial"),
        ({"digest": "sha256:" + "AB" * 32}, "executions.trust_policy.digest"),
        ({"digest": "b2" * 32}, "executions.trust_policy.digest"),
        ({"serial": 2}, "executions.trust_policy.serial"),
        ({}, None),
        ([2], "executions.trust_policy"),
    ],
)
def test_a_malformed_requirement_names_its_field(section, where):
    if section == {}:
        assert not parse_executions({"trust_policy": {}}).trust_policy.required
        return
    with pytest.raises(PolicyInvalid) as refused:
        parse_executions({"trust_policy": section})
    assert refused.value.field == where


def test_a_full_policy_carries_the_requirement(world):
    document = world.document(executions={"trust_policy": {"min_serial": 3}})
    policy = parse_policy(document, 1)
    assert policy.trust_policy == TrustPolicyRequirement(3, None)
    assert policy.forbidden.trust_policy is policy.trust_policy
