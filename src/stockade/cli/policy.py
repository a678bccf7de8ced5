"""``stockade policy apply|show|list``: appraisal policy documents at the verifier;
``stockade policy capture``: a golden-machine policy from a known-good event log, offline."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
import yaml
from rich.console import Console
from rich.syntax import Syntax
from rich.table import Table

from stockade.cli._input import emit_json, read_file
from stockade.cli.options import (
    CaOption,
    FormatOption,
    OutputFormat,
    ReadTokenOption,
    TokenFileOption,
    VerifierOption,
    client,
)
from stockade.errors import InputError

app = typer.Typer(no_args_is_help=True, help="Appraisal policies (versioned documents).")


def read_policy(path: Path) -> dict[str, Any]:
    """A policy document from YAML or JSON; it must name its ``id``."""
    text = read_file(path, "policy").decode("utf-8", errors="replace")
    try:
        document = yaml.safe_load(text)
    except yaml.YAMLError as error:
        raise InputError(f"policy '{path}' is neither YAML nor JSON: {error}") from None
    if not isinstance(document, dict) or not isinstance(document.get("id"), str):
        raise InputError(f"policy '{path}' must be a mapping with a string 'id'")
    return document


@app.command("apply")
def apply(
    file: Annotated[Path, typer.Argument(help="policy document (YAML or JSON)")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Store the document as a new version of its policy. Needs the operator token."""
    document = read_policy(file)
    with client(verifier, ca, token_file) as api:
        stored = api.apply_policy(document["id"], document)
    if output is OutputFormat.JSON:
        emit_json(stored)
        return
    Console().print(f"policy {stored.get('id', document['id'])} version {stored.get('version')}")


@app.command("capture")
def capture(
    event_log: Annotated[Path, typer.Option("--event-log", help="known-good TCG event log")],
    policy_id: Annotated[str, typer.Option("--id", help="the policy's id")],
    out: Annotated[Path, typer.Option("--out", help="where to write the policy (YAML)")],
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
) -> None:
    """Capture a golden-machine policy from a known-good event log (written as YAML).

    For each PCR the log measures (0-9, 11-14), its trusted events in order with their
    digests, what each measured, and the PCR's value. `stockade appraise` checks logs
    against it.
    """
    from stockade.appraisal.captured import capture_policy, self_replayed
    from stockade.evidence.eventlog import parse_event_log
    from stockade.evidence.replay import verify_log
    from stockade.home import create_exclusive, write_atomic

    log = parse_event_log(read_file(event_log, "event log"))
    captured = capture_policy(verify_log(log, self_replayed(log)), policy_id)
    text = yaml.dump(captured.to_document(), Dumper=yaml.CSafeDumper, sort_keys=False, width=100)
    try:
        if force:
            write_atomic(out, text)
        elif not create_exclusive(out, text.encode()):
            raise InputError(f"'{out}' exists; pass --force to replace it")
    except OSError as error:
        raise InputError(f"cannot write policy '{out}': {error.strerror or error}") from None
    events = sum(len(pcr.events) for pcr in captured.pcrs.values())
    print(
        f"policy {policy_id}: {events} events in PCRs "
        f"{', '.join(map(str, sorted(captured.pcrs)))} written to {out}"
    )


@app.command("show")
def show(
    policy_id: Annotated[str, typer.Argument(help="policy id")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """The latest version of a policy. Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        stored = api.policy(policy_id)
    if output is OutputFormat.JSON:
        emit_json(stored)
        return
    text = yaml.safe_dump(stored, sort_keys=False, width=100)
    Console().print(Syntax(text, "yaml", word_wrap=True))


@app.command("list")
def list_policies(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Every policy with its latest version. Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        policies = api.policies()
    if output is OutputFormat.JSON:
        emit_json({"policies": policies})
        return
    table = Table(title=f"{len(policies)} policies")
    for column in ("id", "version", "created", "PCRs"):
        table.add_column(column)
    for policy in policies:
        document = policy.get("document", {}) if isinstance(policy.get("document"), dict) else {}
        table.add_row(
            str(policy.get("id", "")),
            str(policy.get("version", "")),
            str(policy.get("created_at", "")),
            str(document.get("pcrs", policy.get("pcrs", ""))),
        )
    Console().print(table)
