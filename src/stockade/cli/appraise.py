"""``stockade appraise``: an event log against a captured golden-machine policy, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml

from stockade.appraisal.captured import (
    CapturedAppraisal,
    CapturedPolicy,
    CapturedStatus,
    appraise_captured,
    parse_captured_policy,
    replay_failure,
    self_replayed,
)
from stockade.cli._input import emit_json, read_file
from stockade.cli.options import FormatOption, OutputFormat
from stockade.errors import InputError
from stockade.evidence.errors import EventLogMismatch, EvidenceError
from stockade.evidence.eventlog import parse_event_log
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.replay import verify_log
from stockade.strict_json import loads_strict

MAX_PCRS_FILE = 1024 * 1024


class _UniqueKeyLoader(yaml.CSafeLoader):
    """libyaml's SafeLoader refusing a key mapped twice (PyYAML would keep the last silently)."""

    def construct_mapping(self, node: Any, deep: bool = False) -> Any:
        seen = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=True)
            if key in seen:
                raise InputError(f"the key {key!r} appears twice ({key_node.start_mark})")
            seen.add(key)
        return super().construct_mapping(node, deep=deep)


def load_captured_policy(path: Path) -> CapturedPolicy:
    """A captured policy from a YAML (or JSON) file; ``InputError`` naming the file."""
    text = read_file(path, "policy").decode("utf-8", errors="replace")
    try:
        document = yaml.load(text, Loader=_UniqueKeyLoader)  # a safe loader
    except (yaml.YAMLError, InputError) as error:
        raise InputError(f"policy '{path}' is not YAML: {error}") from None
    try:
        return parse_captured_policy(document)
    except InputError as error:
        raise InputError(f"policy '{path}': {error}") from None


def _quoted(path: Path) -> PcrValues:
    document = loads_strict(
        read_file(path, "PCR values"), f"PCR values '{path}'", max_size=MAX_PCRS_FILE,
        error=InputError,
    )  # fmt: skip
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise InputError(
            f"PCR values '{path}' must map banks to {{PCR: hex}} "
            "(as `stockade eventlog replay --format json` prints)"
        )
    try:
        return PcrValues.from_json(document)
    except EvidenceError as error:
        raise InputError(f"PCR values '{path}': {error}") from None


def _print_text(result: CapturedAppraisal) -> None:
    print(f"{result.status}: policy {result.policy_id}")
    for finding in result.findings:
        print(f"  - {finding.reason}")


def appraise(
    policy: Annotated[
        Path, typer.Option("--policy", help="captured policy (YAML), from `policy capture`")
    ],
    event_log: Annotated[Path, typer.Option("--event-log", help="TCG event log to appraise")],
    pcrs: Annotated[
        Path | None,
        typer.Option(
            "--pcrs",
            help="PCR values the log must replay to (JSON of `stockade eventlog replay "
            "--format json`); without it, the log's own replay",
        ),
    ] = None,
    output: FormatOption = OutputFormat.JSON,
) -> None:
    """Appraise an event log offline against a captured golden-machine policy.

    Each PCR's trusted events are compared in order with the captured ones; every reason
    names the PCR and the event. Exit 0 when affirming, 1 when contraindicated, 2 when an
    input cannot be read.
    """
    captured = load_captured_policy(policy)
    log = parse_event_log(read_file(event_log, "event log"))
    quoted = _quoted(pcrs) if pcrs is not None else self_replayed(log)
    try:
        verified = verify_log(log, quoted)
    except EventLogMismatch as mismatch:
        result = replay_failure(captured, mismatch)
    else:
        result = appraise_captured(captured, verified)
    if output is OutputFormat.JSON:
        emit_json(result.to_json())
    else:
        _print_text(result)
    if result.status is not CapturedStatus.AFFIRMING:
        raise typer.Exit(1)
