"""TCG event log benchmarks (issue 3, "Measure").

- parse + replay of each fixture log (../shared/fixtures/eventlogs, when present), and
  ``tpm2_eventlog`` on the same log in the same run, as a ratio;
- parse + replay of a synthetic 100-event crypto-agile log (sha1 + sha256) built with the
  typed encoders: the target is <= 300 us. Parse and replay are also timed apart;
- golden-machine policies (``appraisal/captured.py``) on the 99-event real shim + GRUB log
  (../shared/fixtures/real-machines, when present): ``stockade appraise`` in process (parse,
  verify against the PCRs, compare), the comparison alone, the capture, and each fixture
  log's policy size as YAML; beside them the verifier's own ``appraise()`` under the same
  capture applied as a policy, on a quote over that log's PCRs (signed by a software key
  under the AK template: the quote's signature check is the TPM-independent part).
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable
from pathlib import Path

import yaml

from bench.timing import Row, median_seconds
from stockade.appraisal.captured import (
    appraise_captured,
    capture_policy,
    parse_captured_policy,
    self_replayed,
)
from stockade.evidence.algorithms import HASHES
from stockade.evidence.attest import TPM_GENERATED_VALUE, Attest, AttestType, ClockInfo, QuoteInfo
from stockade.evidence.event_data import (
    FirmwareBlobData,
    ImageLoadData,
    SeparatorData,
    TextData,
    UefiVariableData,
)
from stockade.evidence.eventlog import (
    AlgorithmSize,
    Event,
    EventLog,
    EventType,
    SpecIdEvent,
    parse_event_log,
)
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic
from stockade.evidence.replay import replay, verify_log

FIXTURES = Path(__file__).resolve().parents[1].parent / "shared" / "fixtures" / "eventlogs"
REAL_MACHINES = FIXTURES.parent / "real-machines"
GOLDEN_LOG = "keylime-shim-grub-secureboot"  # 99 events, sha256, PCRs 0-9 and 14
SHA1, SHA256 = 0x0004, 0x000B
TARGET_US = 300.0


def synthetic_log(events: int = 100) -> bytes:
    """A crypto-agile (sha1 + sha256) log with ``events`` events after the Spec ID event,
    cycling through the kinds a real boot records."""
    spec = SpecIdEvent(
        b"Spec ID Event03\x00",
        0,
        0,
        2,
        0,
        2,
        (AlgorithmSize(SHA1, 20), AlgorithmSize(SHA256, 32)),
        b"",
    )
    global_variable = uuid.UUID("8be4df61-93ca-11d2-aa0d-00e098032b8c")
    kinds: list[tuple[int, EventType, bytes]] = [
        (0, EventType.EV_S_CRTM_VERSION, TextData("1.0", utf16=True, nul_terminated=True).encode()),
        (
            0,
            EventType.EV_EFI_PLATFORM_FIRMWARE_BLOB,
            FirmwareBlobData(0xFFC00000, 0x400000).encode(),
        ),
        (
            7,
            EventType.EV_EFI_VARIABLE_DRIVER_CONFIG,
            UefiVariableData(global_variable, "SecureBoot", b"\x01").encode(),
        ),
        (7, EventType.EV_SEPARATOR, SeparatorData(0).encode()),
        (
            4,
            EventType.EV_EFI_BOOT_SERVICES_APPLICATION,
            ImageLoadData(0x7E000000, 0x100000, 0, bytes.fromhex("7fff0400")).encode(),
        ),
        (4, EventType.EV_EFI_ACTION, TextData("Calling EFI Application from Boot Option").encode()),
        (
            8,
            EventType.EV_IPL,
            TextData("grub_cmd: linux /vmlinuz root=/dev/sda1 ro", nul_terminated=True).encode(),
        ),
        (9, EventType.EV_IPL, TextData("/boot/initrd.img", nul_terminated=True).encode()),
    ]
    log_events = [Event(0, 0, EventType.EV_NO_ACTION, ((SHA1, bytes(20)),), spec.marshal())]
    for number in range(1, events + 1):
        pcr, kind, data = kinds[number % len(kinds)]
        digests = ((SHA1, hashlib.sha1(data).digest()), (SHA256, hashlib.sha256(data).digest()))
        log_events.append(Event(number, pcr, kind, digests, data))
    return EventLog(True, spec, tuple(log_events)).marshal()


def _inner(action: Callable[[], object], budget: float = 0.02) -> int:
    """How many back-to-back calls take about ``budget`` seconds (at least one)."""
    once = median_seconds(action, 3)
    return max(1, int(budget / max(once, 1e-9)))


def parse_and_replay_seconds(data: bytes, rounds: int) -> float:
    def action() -> None:
        replay(parse_event_log(data))

    return median_seconds(action, rounds, inner=_inner(action))


def tpm2_eventlog_seconds(path: Path, rounds: int) -> float:
    command = ["tpm2_eventlog", str(path)]

    def action() -> None:
        subprocess.run(command, check=True, capture_output=True)

    return median_seconds(action, rounds)


def captured_policy_rows(rounds: int) -> list[Row]:
    """``stockade appraise`` in process on the 99-event real log (200 rounds at least), its
    comparison alone, the capture (to YAML), and the policy's YAML size per fixture log."""
    if not REAL_MACHINES.is_dir():
        return []
    data = (REAL_MACHINES / f"{GOLDEN_LOG}.bin").read_bytes()
    log = parse_event_log(data)
    quoted = self_replayed(log)
    verified = verify_log(log, quoted)
    policy = capture_policy(verified, "golden")
    rounds = max(rounds, 200)

    def appraise_log() -> None:
        result = appraise_captured(policy, verify_log(parse_event_log(data), quoted))
        assert not result.findings

    def capture() -> str:
        parsed = parse_event_log(data)
        captured = capture_policy(verify_log(parsed, self_replayed(parsed)), "golden")
        return _yaml(captured.to_document())

    text = capture()

    def load_and_appraise() -> None:
        loaded = parse_captured_policy(yaml.load(text, Loader=yaml.CSafeLoader))
        assert not appraise_captured(loaded, verify_log(parse_event_log(data), quoted)).findings

    verifier_appraise = _verifier_appraisal(policy.to_document(), data, quoted)
    events = len(log.events)
    rows: list[Row] = [
        (
            f"stockade appraise {GOLDEN_LOG} ({events} events): parse+verify+compare",
            median_seconds(appraise_log, rounds, inner=_inner(appraise_log)) * 1e6,
            "us",
        ),
        (
            "  compare only (appraise_captured)",
            median_seconds(
                lambda: appraise_captured(policy, verified),
                rounds,
                inner=_inner(lambda: appraise_captured(policy, verified)),
            )
            * 1e6,
            "us",
        ),
        ("  with the policy's YAML loaded and read each time", median_seconds(
            load_and_appraise, max(rounds // 10, 20)) * 1e6, "us"),
        (f"policy capture {GOLDEN_LOG}: parse+verify+capture+YAML", median_seconds(
            capture, max(rounds // 10, 20)) * 1e6, "us"),
        ("verifier appraise() under the capture: quote+parse+verify+compare", median_seconds(
            verifier_appraise, rounds, inner=_inner(verifier_appraise)) * 1e6, "us"),
    ]  # fmt: skip
    paths = sorted(REAL_MACHINES.glob("*.bin"))
    if FIXTURES.is_dir():
        paths += sorted(FIXTURES.glob("*.bin"))
    for path in paths:
        parsed = parse_event_log(path.read_bytes())
        captured = capture_policy(verify_log(parsed, self_replayed(parsed)), path.stem)
        size = len(_yaml(captured.to_document()).encode())
        rows.append((f"  policy YAML {path.stem}", size / 1024, "KiB"))
    return rows + fleet_rows(log)


FLEET = 100  # machines merged in the fleet rows


def fleet_rows(log: EventLog) -> list[Row]:
    """``stockade policy merge`` of ``FLEET`` machines of one model (the golden log with each
    machine's own SMBIOS tables and boot options: every PCR 1 event made per machine): the
    merge time, the policy's YAML size per machine beyond the first, and appraising one
    machine's log against the fleet's policy."""
    from stockade.appraisal.captured_fleet import merge_captured

    per_machine = [e.number for e in log.events if e.pcr == 1 and e.type != EventType.EV_NO_ACTION]
    captures = []
    logs = {}
    for machine in range(FLEET):
        name = f"node-{machine:03d}"
        salt = name.encode()
        events = tuple(
            e._replace(digests=tuple((a, HASHES[a].digest(salt + d)) for a, d in e.digests))
            if e.number in per_machine else e
            for e in log.events
        )  # fmt: skip
        data = EventLog(log.crypto_agile, log.spec_id, events).marshal()
        parsed = parse_event_log(data)
        logs[name] = data
        captures.append((name, capture_policy(verify_log(parsed, self_replayed(parsed)), name)))
    merged = merge_captured(captures, "fleet").policy
    one = len(_yaml(captures[0][1].to_document()).encode())
    fleet = len(_yaml(merged.to_document()).encode())
    data = logs["node-042"]
    quoted = self_replayed(parse_event_log(data))

    def appraise_one() -> None:
        result = appraise_captured(
            merged, verify_log(parse_event_log(data), quoted), node="node-042"
        )
        assert not result.findings, result.findings

    return [
        (f"policy merge {FLEET} machines ({len(per_machine)} per-machine events each)",
         median_seconds(lambda: merge_captured(captures, "fleet"), 5) * 1e3, "ms"),
        (f"  fleet policy YAML per machine beyond the first ({FLEET} machines)",
         (fleet - one) / (FLEET - 1) / 1024, "KiB"),
        (f"  appraise one machine against the {FLEET}-machine policy", median_seconds(
            appraise_one, 200, inner=_inner(appraise_one)) * 1e6, "us"),
    ]  # fmt: skip


def _verifier_appraisal(
    document: dict[str, object], data: bytes, values: PcrValues
) -> Callable[[], object]:
    """``appraise()`` as the verifier calls it, under ``document`` applied as a policy."""
    from bench.verifier import software_ak
    from bench.verifier_load import sign_quote
    from stockade.appraisal import appraise as core
    from stockade.appraisal.policy import parse_policy

    policy = parse_policy(document, 1)
    references = core.build_references(policy)
    key, ak_public = software_ak()
    nonce = bytes(range(32))
    digest = values.composite_digest(policy.pcrs, HASHES[SHA256])
    message = Attest(
        TPM_GENERATED_VALUE, AttestType.QUOTE, b"bench", nonce, ClockInfo(1000, 1, 0, True), 0,
        QuoteInfo(policy.pcrs, digest),
    ).marshal()  # fmt: skip
    quoted = values.restricted_to(policy.pcrs)
    evidence = core.Evidence(nonce, message, sign_quote(key, message), quoted, data)
    node = core.NodeView("bench", "bench", TpmPublic.unmarshal_tpm2b(ak_public), None)

    def run() -> object:
        return core.appraise(policy, references, node, evidence, nonce)

    result = core.appraise(policy, references, node, evidence, nonce)
    if result.status != core.Status.AFFIRMING:
        raise RuntimeError(f"appraise() under the capture: {result.reasons}")
    return run


def _yaml(document: object) -> str:
    """As ``stockade policy capture`` writes it."""
    return yaml.dump(document, Dumper=yaml.CSafeDumper, sort_keys=False, width=100)


def run(rounds: int) -> list[Row]:
    rows: list[Row] = captured_policy_rows(rounds)
    data = synthetic_log(100)
    log = parse_event_log(data)
    both = parse_and_replay_seconds(data, rounds)
    parse_only = median_seconds(
        lambda: parse_event_log(data), rounds, inner=_inner(lambda: parse_event_log(data))
    )
    replay_only = median_seconds(lambda: replay(log), rounds, inner=_inner(lambda: replay(log)))
    rows += [
        ("eventlog 100 events sha1+sha256: parse+replay", both * 1e6, "us"),
        ("  parse only", parse_only * 1e6, "us"),
        ("  replay only", replay_only * 1e6, "us"),
        (f"  parse+replay / target {TARGET_US:.0f} us", both * 1e6 / TARGET_US, "x"),
    ]
    have_tool = shutil.which("tpm2_eventlog") is not None
    with tempfile.TemporaryDirectory(prefix="stockade-bench-") as scratch:
        synthetic = Path(scratch) / "synthetic-100.bin"
        synthetic.write_bytes(data)
        logs = [("synthetic-100", synthetic)]
        if FIXTURES.is_dir():
            logs += [(path.stem, path) for path in sorted(FIXTURES.glob("*.bin"))]
        for name, path in logs:
            ours = (
                both
                if name == "synthetic-100"
                else parse_and_replay_seconds(path.read_bytes(), rounds)
            )
            if name != "synthetic-100":
                rows.append((f"eventlog {name}: parse+replay (stockade)", ours * 1e6, "us"))
            if have_tool:
                theirs = tpm2_eventlog_seconds(path, rounds)
                rows.append((f"eventlog {name}: tpm2_eventlog", theirs * 1e6, "us"))
                rows.append((f"  tpm2_eventlog / stockade ({name})", theirs / ours, "x"))
    return rows
