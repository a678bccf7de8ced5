"""Appraisal of a node's execution log (docs/execution-log.md, "Appraisal").

Each attestation carries the part of the node's execution log the verifier has not
seen. ``appraise_executions`` checks only those records, against the state kept from
the node's last appraisal in the same boot (the next record number and the running
PCR 13 value per bank), and tells exactly what is wrong, naming the record:

- records are consecutive from the kept ``next_recnum`` (0 in a new boot): a gap, a
  repeat or a reorder is named;
- every record extends PCR 13 (the execution PCR) and carries, for every quoted bank,
  exactly H_bank(content);
- the content is a canonical Stockade execution record (``evidence.execution``);
- replaying every record from the kept running value gives exactly the quoted PCR 13
  in every quoted bank: records deleted at the end, or an extend without a record,
  show up here;
- no ``ContainerStart`` runs a forbidden image (by manifest or config digest, or by
  reference: the reference as recorded, without its digest, or its repository);
- with a trust-policy requirement (``TrustPolicyRequirement``: a minimum serial, or the
  exact digest), no ``TrustPolicyLoaded`` loads an older (or other) image trust policy and
  no ``ContainerStart`` starts under one: a node whose policy file was rolled back to an
  older, validly signed policy is named, with the serial or digest loaded and the one
  required;
- write-ahead status (``evidence.execution``): an abandoned record (0xC7) is never
  replayed; a pending record (0xC6) may only be the last one, and is replayed both with
  and without its digest: exactly one must give the quoted PCR 13 in every bank (with:
  it started; without: it never started). Its digests are always of the measured
  (0xC5) content. Records that never started are listed in ``not_started``, never
  forbidden.

A malformed log is a reason, never an exception. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any

from stockade.evidence.algorithms import HASHES, HASHES_BY_NAME
from stockade.evidence.cel import CelRecord, MalformedCel, iter_cel
from stockade.evidence.errors import EvidenceError, MalformedStructure
from stockade.evidence.execution import (
    ABANDONED_CONTENT_TYPE,
    EXECUTION_PCR,
    PENDING_CONTENT_TYPE,
    ContainerStart,
    ExecutionRecord,
    TrustPolicyLoaded,
    decode_record,
    measured_content,
)
from stockade.images.errors import ImageError
from stockade.images.reference import parse_reference

_STATUSES = frozenset((PENDING_CONTENT_TYPE, ABANDONED_CONTENT_TYPE))

# Reasons are capped: a log with a million bad records gets a readable result.
MAX_REASONS = 100


@dataclass(frozen=True)
class ExecutionState:
    """What the verifier keeps per node between attestations."""

    reset_count: int
    restart_count: int  # the boot (TPM clock info) the state belongs to
    next_recnum: int  # records < this were already appraised
    pcr: Mapping[int, bytes]  # running PCR 13 value per bank (TPM_ALG_ID -> digest)
    policy_digest: str | None  # last TrustPolicyLoaded seen in this boot
    # Its serial; None when none was loaded, or the state predates serials (unknown).
    policy_serial: int | None = None

    @classmethod
    def new_boot(cls, reset_count: int, restart_count: int, banks: Iterable[int]) -> ExecutionState:
        """The state before any record of a boot: recnum 0, PCR 13 all zeros in ``banks``
        (an iterable of TPM_ALG_IDs Stockade can hash)."""
        return cls(
            reset_count,
            restart_count,
            0,
            {alg: bytes(HASHES[alg].digest_size) for alg in banks if alg in HASHES},
            None,
        )

    def to_json(self) -> dict[str, Any]:
        return {
            "reset_count": self.reset_count,
            "restart_count": self.restart_count,
            "next_recnum": self.next_recnum,
            "pcr": {HASHES[alg].name: value.hex() for alg, value in sorted(self.pcr.items())},
            "policy_digest": self.policy_digest,
            "policy_serial": self.policy_serial,
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Any]) -> ExecutionState:
        """Inverse of ``to_json``; ``MalformedStructure`` for anything else."""
        where = "ExecutionState"
        try:
            counts = [document[key] for key in ("reset_count", "restart_count", "next_recnum")]
            if any(type(count) is not int or count < 0 for count in counts):
                raise MalformedStructure(where, 0, "counts must be non-negative integers")
            pcr: dict[int, bytes] = {}
            for name, value in document["pcr"].items():
                hash_ = HASHES_BY_NAME[name]
                digest = bytes.fromhex(value)
                if len(digest) != hash_.digest_size:
                    raise MalformedStructure(where, 0, f"{name} value is {len(digest)} bytes")
                pcr[hash_.alg] = digest
            policy = document["policy_digest"]
            if policy is not None and type(policy) is not str:
                raise MalformedStructure(where, 0, "policy_digest must be a string or null")
            # States kept before serials were recorded have none: unknown.
            serial = document.get("policy_serial")
            if serial is not None and (type(serial) is not int or serial < 0):
                raise MalformedStructure(
                    where, 0, "policy_serial must be a non-negative integer or null"
                )
        except (KeyError, TypeError, ValueError, AttributeError) as error:
            raise MalformedStructure(where, 0, f"not an execution state: {error!r}") from None
        return cls(counts[0], counts[1], counts[2], pcr, policy, serial)


@dataclass(frozen=True)
class TrustPolicyRequirement:
    """Which image trust policy a node's hook must enforce (the verifier's policy
    ``executions.trust_policy``): at least serial ``min_serial``, and/or exactly ``digest``.
    Neither set: no requirement."""

    min_serial: int | None = None
    digest: str | None = None  # "sha256:<hex>" of the policy payload

    @property
    def required(self) -> bool:
        return self.min_serial is not None or self.digest is not None

    def refusal(self, digest: str | None, serial: int | None) -> str | None:
        """Why a hook enforcing the policy (``digest``, ``serial``) does not meet the
        requirement (a phrase: ``trust policy serial 1 (sha256:...), older than ...``), or
        ``None``. ``serial`` ``None`` is unknown, which fails a minimum."""
        if self.digest is not None and digest != self.digest:
            return (
                f"trust policy {digest or '(none)'}, not {self.digest}, the one the appraisal"
                " policy requires"
            )
        if self.min_serial is not None:
            if serial is None:
                return (
                    f"trust policy {digest or '(none)'} of unknown serial; the appraisal policy"
                    f" requires serial {self.min_serial} or newer"
                )
            if serial < self.min_serial:
                return (
                    f"trust policy serial {serial} ({digest}), older than serial"
                    f" {self.min_serial}, the minimum the appraisal policy requires"
                )
        return None


@dataclass(frozen=True)
class Forbidden:
    """What the verifier's policy forbids a node to run: images, and (``trust_policy``)
    containers admitted under an image trust policy older than (or other than) required."""

    digests: frozenset[str] = frozenset()  # "sha256:<hex>": manifest or config digests
    references: frozenset[str] = frozenset()  # repository, or repository:tag, normal form
    trust_policy: TrustPolicyRequirement = field(default_factory=TrustPolicyRequirement)

    def match(self, record: ContainerStart) -> str | None:
        """What makes ``record`` forbidden (the digest or reference), or ``None``. The
        record's reference is compared in normal form (``images.reference``); one that
        does not parse is forbidden outright when references are forbidden (fail closed)."""
        if self.digests:
            for digest in (record.manifest_digest, record.config_digest):
                if digest in self.digests:
                    return digest
            reference_digest = record.image_reference.partition("@")[2]
            if reference_digest and reference_digest in self.digests:
                return reference_digest
        if self.references:
            try:
                reference = str(parse_reference(record.image_reference))
            except ImageError:
                return record.image_reference
            if reference in self.references:
                return reference
            name = reference.partition("@")[0]
            if name in self.references:
                return name
            repository = image_repository(reference)
            if repository in self.references:
                return repository
        return None


def image_repository(reference: str) -> str:
    """``registry.example/team/app`` for ``registry.example/team/app:1.2@sha256:...``
    (a ``:`` after the last ``/`` starts the tag; one before it is a registry port)."""
    name = reference.partition("@")[0]
    slash = name.rfind("/")
    colon = name.rfind(":")
    return name[:colon] if colon > slash else name


@dataclass(frozen=True)
class ExecutionAppraisal:
    ok: bool  # replay matched and nothing forbidden
    reasons: tuple[str, ...]  # each names the record number and what is wrong
    records: tuple[tuple[int, ExecutionRecord], ...]  # the new records, decoded
    state: ExecutionState  # the state to keep (only meaningful when ok)
    forbidden: tuple[int, ...] = field(default=())  # recnums that ran forbidden images
    not_started: tuple[int, ...] = field(default=())  # recnums never extended (abandoned)
    # recnums that loaded, or started a container under, a trust policy the requirement refuses
    refused_policy: tuple[int, ...] = field(default=())


@dataclass(frozen=True)
class ExecutionReplay:
    """The first half of an appraisal: numbering, PCR, digests and replay; no decoding.

    ``problems`` are ``(position, text)``: ``position`` is the record's index in
    ``records`` (its reason is then labelled with the record), ``-1`` for a problem
    before any record, ``len(records)`` for one after the last."""

    problems: tuple[tuple[int, str], ...]
    records: tuple[CelRecord, ...]  # in log order
    state: ExecutionState  # policy_digest/serial are the previous: only decoding updates them
    # Positions (in ``records``) of records never extended: abandoned ones, and a last
    # pending one when the quote shows it was not extended.
    not_started: frozenset[int] = frozenset()

    @property
    def ok(self) -> bool:
        return not self.problems


def replay_executions(
    previous: ExecutionState | None,
    reset_count: int,
    restart_count: int,
    new_log: bytes,
    quoted: Mapping[int, bytes],
) -> ExecutionReplay:
    """Parse ``new_log``, check numbering, PCR and digests, and replay it from the kept
    running value: the hot path, allocation-light (one tuple per record, hashlib)."""
    problems: list[tuple[int, str]] = []
    same_boot = (
        previous is not None
        and previous.reset_count == reset_count
        and previous.restart_count == restart_count
    )
    start = previous.next_recnum if previous is not None and same_boot else 0
    policy_digest = previous.policy_digest if previous is not None and same_boot else None
    policy_serial = previous.policy_serial if previous is not None and same_boot else None

    # Banks: (alg, name, hash constructor); the running value per bank.
    banks: list[tuple[int, str, Callable[[bytes], Any]]] = []
    running: dict[int, bytes] = {}
    if not quoted:
        problems.append((-1, f"no PCR {EXECUTION_PCR} value was quoted"))
    for alg, value in quoted.items():
        hash_ = HASHES.get(alg)
        if hash_ is None:
            problems.append(
                (-1, f"PCR {EXECUTION_PCR} quoted in bank 0x{alg:04x}, which cannot be replayed")
            )
            continue
        if len(value) != hash_.digest_size:
            problems.append(
                (
                    -1,
                    f"PCR {EXECUTION_PCR} {hash_.name} quoted value is {len(value)} bytes,"
                    f" not {hash_.digest_size}",
                )
            )
        kept = bytes(hash_.digest_size)
        if previous is not None and same_boot:
            kept_value = previous.pcr.get(alg)
            if kept_value is None or len(kept_value) != hash_.digest_size:
                problems.append(
                    (
                        -1,
                        f"no running PCR {EXECUTION_PCR} {hash_.name} value kept from record"
                        f" {start - 1}: the quoted banks changed within a boot",
                    )
                )
            else:
                kept = kept_value
        running[alg] = kept
        banks.append((alg, hash_.name, hash_.constructor))
    quoted_algs = frozenset(alg for alg, _, _ in banks)
    bank_count = len(banks)

    records: list[CelRecord] = []
    expected = start  # the record number the next record must have
    last: int | None = None  # the last record number read in this submission
    seen: set[int] = set()
    position = 0
    not_started: set[int] = set()
    pending: int | None = None  # position of a pending record
    before_pending: dict[int, bytes] = {}  # the running values before it
    try:
        for cel in iter_cel(new_log):
            if pending is not None:
                problems.append(
                    (
                        pending,
                        "is pending (its extend never confirmed) but is not the last record:"
                        " only the last record may be pending",
                    )
                )
                pending = None
            records.append(cel)
            recnum = cel.recnum
            # Numbering: consecutive from ``start``; the replay below follows log order
            # whatever the numbers say (it is what the TPM saw).
            if recnum != expected:
                problems.append((-2 - position, _numbering(recnum, expected, start, last, seen)))
            if recnum >= expected:
                expected = recnum + 1
            seen.add(recnum)
            last = recnum

            if cel.pcr == EXECUTION_PCR:
                content = cel.content
                digests = cel.digests
                status = content[0]
                replayed = True
                if status in _STATUSES:
                    content = measured_content(content)
                    if status == ABANDONED_CONTENT_TYPE:
                        not_started.add(position)
                        replayed = False
                    else:
                        pending, before_pending = position, dict(running)
                for alg, name, new in banks:
                    digest = None
                    for digest_alg, value in digests:
                        if digest_alg == alg:
                            digest = value
                            break
                    if digest is None:
                        problems.append(
                            (position, f"no {name} digest (PCR {EXECUTION_PCR} {name} is quoted)")
                        )
                        continue
                    if new(content).digest() != digest:
                        problems.append((position, f"{name} digest does not match its content"))
                    if replayed:
                        running[alg] = new(running[alg] + digest).digest()
                if len(digests) != bank_count:
                    for digest_alg, digest in digests:
                        hash_ = HASHES.get(digest_alg)
                        if (
                            digest_alg not in quoted_algs
                            and hash_
                            and hash_.digest(content) != digest
                        ):
                            problems.append(
                                (position, f"{hash_.name} digest does not match its content")
                            )
            else:
                # Not replayed into PCR 13; the node still claims it (kept and decoded).
                target = (
                    f"PCR {cel.pcr}" if cel.pcr is not None else f"NV index 0x{cel.nv_index:08x}"
                )
                problems.append(
                    (position, f"extends {target}, not the execution PCR {EXECUTION_PCR}")
                )
            position += 1
    except MalformedCel as error:
        problems.append((position, f"execution log is malformed: {error}"))

    if pending is not None and banks:
        # Exactly one of "extended" and "never extended" may match, in every bank.
        extended = all(running[alg] == quoted[alg] for alg, _, _ in banks)
        never = all(before_pending[alg] == quoted[alg] for alg, _, _ in banks)
        if extended and never:
            problems.append((pending, "is pending and PCR 13 matches both with and without it"))
        elif never:
            running = before_pending
            not_started.add(pending)
    for alg, name, _ in banks:
        value = quoted[alg]
        if running[alg] != value:
            if last is not None:
                where = f"records end at {last}"
            elif start:
                where = f"no records after record {start - 1}"
            else:
                where = "no records"
            problems.append(
                (
                    len(records),
                    f"{where} but PCR {EXECUTION_PCR} {name} quoted {value.hex()},"
                    f" log replays to {running[alg].hex()}",
                )
            )
    return ExecutionReplay(
        tuple(problems),
        tuple(records),
        ExecutionState(reset_count, restart_count, expected, running, policy_digest, policy_serial),
        frozenset(not_started),
    )


def appraise_executions(
    previous: ExecutionState | None,
    reset_count: int,
    restart_count: int,
    new_log: bytes,
    quoted: Mapping[int, bytes],
    forbidden: Forbidden,
) -> ExecutionAppraisal:
    """Appraise the records of ``new_log`` (the node's execution log from the record
    after the last appraised one) against PCR 13 as quoted (``quoted``: TPM_ALG_ID ->
    value) in boot (``reset_count``, ``restart_count``): ``replay_executions``, then
    every record decoded and checked against ``forbidden`` (images, and the trust policy
    each container started under)."""
    replay = replay_executions(previous, reset_count, restart_count, new_log, quoted)
    policy_digest = replay.state.policy_digest
    policy_serial = replay.state.policy_serial
    requirement = forbidden.trust_policy
    decoded: list[tuple[int, ExecutionRecord]] = []
    by_position: list[ExecutionRecord | None] = []
    forbidden_recnums: list[int] = []
    refused_policy: list[int] = []
    not_started = replay.not_started
    # (sort key, text): a record's reasons follow its position in the log.
    later: list[tuple[int, str]] = []
    for position, cel in enumerate(replay.records):
        recnum = cel.recnum
        try:
            record: ExecutionRecord | None = decode_record(measured_content(cel.content))
        except EvidenceError as error:
            record = None
            later.append(
                (position, f"record {recnum}: content is not an execution record: {error}")
            )
        by_position.append(record)
        if record is None:
            continue
        decoded.append((recnum, record))
        if position in not_started:
            continue  # never extended: it never took effect
        if type(record) is TrustPolicyLoaded:
            policy_digest, policy_serial = record.digest, record.serial
            if requirement.required:
                refusal = requirement.refusal(policy_digest, policy_serial)
                if refusal is not None:
                    refused_policy.append(recnum)
                    later.append((position, f"{_label(recnum, record)}: loads an image {refusal}"))
        elif type(record) is ContainerStart:
            if requirement.required:
                refusal = _started_under(requirement, record, policy_digest, policy_serial)
                if refusal is not None:
                    refused_policy.append(recnum)
                    later.append(
                        (position, f"{_label(recnum, record)}: started under an image {refusal}")
                    )
            matched = forbidden.match(record)
            if matched is not None:
                forbidden_recnums.append(recnum)
                later.append(
                    (
                        position,
                        f"record {recnum} runs forbidden image {matched} ({record.describe()})",
                    )
                )

    reasons = _Reasons()
    problems = sorted(
        [(_order(key), text, key) for key, text in replay.problems]
        + [(position, text, -1) for position, text in later],
        key=lambda item: item[0],
    )
    records = replay.records
    for _, text, key in problems:
        if 0 <= key < len(records):
            reasons.add(f"{_label(records[key].recnum, by_position[key])}: {text}")
        else:
            reasons.add(text)
    result = reasons.result()
    return ExecutionAppraisal(
        ok=not result,
        reasons=result,
        records=tuple(decoded),
        state=replace(replay.state, policy_digest=policy_digest, policy_serial=policy_serial),
        forbidden=tuple(forbidden_recnums),
        not_started=tuple(replay.records[p].recnum for p in sorted(not_started)),
        refused_policy=tuple(refused_policy),
    )


def _started_under(
    requirement: TrustPolicyRequirement,
    record: ContainerStart,
    loaded_digest: str | None,
    loaded_serial: int | None,
) -> str | None:
    """Why ``record`` started under a trust policy ``requirement`` refuses, or ``None``.
    It names its policy's digest; the serial is the one its boot's last
    ``TrustPolicyLoaded`` carried, when that loaded the same digest (else unknown)."""
    digest = record.trust_policy_digest
    serial = loaded_serial if digest is not None and digest == loaded_digest else None
    if digest != loaded_digest and requirement.min_serial is not None:
        return (
            f"trust policy {digest or '(none)'} of unknown serial (the last one this boot"
            f" loaded is {loaded_digest or '(none)'}); the appraisal policy requires serial"
            f" {requirement.min_serial} or newer"
        )
    return requirement.refusal(digest, serial)


def _order(key: int) -> int:
    """Sort position of a replay problem: numbering problems (``-2 - position``) come
    first among their record's reasons."""
    return -2 - key if key <= -2 else key


@dataclass
class _Reasons:
    items: list[str] = field(default_factory=list)
    dropped: int = 0

    def add(self, reason: str) -> None:
        if len(self.items) < MAX_REASONS:
            self.items.append(reason)
        else:
            self.dropped += 1

    def result(self) -> tuple[str, ...]:
        if self.dropped:
            return (*self.items, f"... and {self.dropped} more")
        return tuple(self.items)


def _label(recnum: int, record: ExecutionRecord | None) -> str:
    return f"record {recnum} ({record.describe()})" if record else f"record {recnum}"


def _numbering(recnum: int, expected: int, start: int, last: int | None, seen: set[int]) -> str:
    if recnum > expected:
        if recnum == expected + 1:
            return f"record {expected} missing: log continues at {recnum}"
        return f"records {expected}-{recnum - 1} missing: log continues at {recnum}"
    if recnum in seen:
        return f"record {recnum} appears twice (again after record {last})"
    if recnum < start:
        return (
            f"record {recnum} was already appraised (expected records from {start}):"
            " the log was rewritten or resent from the wrong place"
        )
    return f"record {recnum} out of order: it follows record {last}"
