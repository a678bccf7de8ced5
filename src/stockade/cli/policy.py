"""``stockade policy apply|show|list``: appraisal policy documents at the verifier;
``stockade policy capture``: a golden-machine policy from a known-good event log, offline;
``stockade policy merge``: the captured policies of several machines as one, offline."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stockade.cli._input import emit_json, read_document, read_file
from stockade.cli._text import cell, inline
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

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Appraisal policies (versioned documents).")


def read_policy(path: Path) -> dict[str, Any]:
    """A policy document from YAML or JSON (``strict_yaml``); it must name its ``id``."""
    return read_document(path, "policy", named_by="id")


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
    stored_id = inline(stored.get("id", document["id"]))
    typer.echo(f"policy {stored_id} version {inline(stored.get('version'))}")


def _write_captured(out: Path, document: dict[str, Any], *, force: bool) -> None:
    """Write a captured policy as YAML; never replace ``out`` without ``force``."""
    import yaml

    from stockade.home import create_exclusive, write_atomic

    text = yaml.dump(document, Dumper=yaml.CSafeDumper, sort_keys=False, width=100)
    try:
        if force:
            write_atomic(out, text)
        elif not create_exclusive(out, text.encode()):
            raise InputError(f"'{out}' exists; pass --force to replace it")
    except OSError as error:
        raise InputError(f"cannot write policy '{out}': {error.strerror or error}") from None


@app.command("capture")
def capture(
    event_log: Annotated[Path, typer.Option("--event-log", help="known-good TCG event log")],
    policy_id: Annotated[str, typer.Option("--id", help="the policy's id")],
    out: Annotated[Path, typer.Option("--out", help="where to write the policy (YAML)")],
    machine: Annotated[
        str | None,
        typer.Option("--machine", help="the machine the log is from (default: the --id)"),
    ] = None,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
) -> None:
    """Capture a golden-machine policy from a known-good event log (written as YAML).

    For each PCR the log measures (0-9, 11-14), its trusted events in order with their
    digests, what each measured, and the PCR's value; the dbx's revocations and shim's
    SbatLevel, so a later, stricter one is accepted. `stockade appraise` checks logs
    against it; `stockade policy merge` merges the captures of several machines.
    """
    from stockade.appraisal.captured import capture_policy, self_replayed
    from stockade.evidence.eventlog import parse_event_log
    from stockade.evidence.replay import verify_log

    if machine is not None and not machine:
        raise InputError("--machine is empty")
    log = parse_event_log(read_file(event_log, "event log"))
    captured = capture_policy(verify_log(log, self_replayed(log)), policy_id, machine=machine)
    _write_captured(out, captured.to_document(), force=force)
    events = sum(len(pcr.variants[0].events) for pcr in captured.pcrs.values())
    print(
        f"policy {policy_id}: {events} events in PCRs "
        f"{', '.join(map(str, sorted(captured.pcrs)))} written to {out}"
    )


class PerMachineOption(StrEnum):
    PER_NODE = "per-node"
    EXCLUDE = "exclude"


@app.command("merge")
def merge(
    captured: Annotated[
        list[Path], typer.Argument(help="captured (or merged) policies (YAML), one bank")
    ],
    policy_id: Annotated[str, typer.Option("--id", help="the merged policy's id")],
    out: Annotated[Path, typer.Option("--out", help="where to write the policy (YAML)")],
    per_machine: Annotated[
        PerMachineOption,
        typer.Option(
            "--per-machine",
            help="events that legitimately differ per machine (configuration PCRs 1, 3, 5, "
            "6): a digest per machine (per-node) or not compared (exclude)",
        ),
    ] = PerMachineOption.PER_NODE,
    force: Annotated[bool, typer.Option("--force", help="replace an existing --out")] = False,
) -> None:
    """Merge the captured policies of several machines into one fleet policy.

    Per PCR, machines with the same events share a variant; in the configuration PCRs
    (1, 3, 5, 6) events that differ where the event types are the same become per machine;
    anything else that differs (firmware, boot chain, Secure Boot: the code PCRs) becomes
    another accepted variant. A machine captured again (after a firmware update) and merged
    with the current policy keeps both captures; merge only the new captures to drop the
    old ones. Prints which PCRs got variants, which events became per machine and why, and
    which machines have several captures. Exit 2 for policies of different banks or that
    cannot be read.
    """
    from stockade.appraisal.captured_fleet import PerMachine, merge_captured
    from stockade.cli.appraise import load_captured_policy

    if not policy_id:
        raise InputError("--id is empty")
    policies = [(str(path), load_captured_policy(path)) for path in captured]
    result = merge_captured(policies, policy_id, per_machine=PerMachine(per_machine.value))
    _write_captured(out, result.policy.to_document(), force=force)
    machines = result.policy.machine_names
    print(
        f"policy {policy_id}: {len(machines)} machines ({', '.join(machines)}), PCRs "
        f"{', '.join(map(str, sorted(result.policy.pcrs)))} written to {out}"
    )
    for line in result.summary:
        print(f"  {line}")


@app.command("activate")
def activate(
    policy_id: Annotated[str, typer.Argument(help="a stored policy id")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Make a stored policy the one every replica appraises under. Needs the operator token."""
    with client(verifier, ca, token_file) as api:
        active = api.activate_policy(policy_id)
    if output is OutputFormat.JSON:
        emit_json(active)
        return
    typer.echo(f"active policy: {inline(active.get('id'))}@{inline(active.get('version'))}")


@app.command("delete")
def delete(
    policy_id: Annotated[str, typer.Argument(help="policy id (every version)")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
) -> None:
    """Delete every version of a policy that is not the active one. Needs the operator token."""
    with client(verifier, ca, token_file) as api:
        api.delete_policy(policy_id)
    typer.echo(f"policy {policy_id} deleted")


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
    from rich.console import Console
    from rich.syntax import Syntax

    Console().print(Syntax(policy_text(stored), "yaml", word_wrap=True))


def policy_text(stored: dict[str, Any]) -> str:
    """A stored policy as YAML (what ``policy apply`` reads)."""
    import yaml

    return yaml.safe_dump(stored, sort_keys=False, width=100)


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
    from rich.console import Console

    Console().print(policy_table(policies))


def _pcrs(policy: dict[str, Any]) -> str:
    """The PCRs a policy names: a list, or the keys of a mapping of PCRs to values."""
    document = policy.get("document")
    pcrs = policy.get("pcrs")
    if isinstance(document, dict):
        pcrs = document.get("pcrs", pcrs)
    if isinstance(pcrs, dict):
        pcrs = list(pcrs)
    return inline(pcrs)


def policy_table(policies: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title=f"{len(policies)} policies")
    for column in ("id", "version", "created", "PCRs"):
        table.add_column(column)
    for policy in policies:
        table.add_row(
            cell(policy.get("id")),
            cell(policy.get("version")),
            cell(policy.get("created_at")),
            cell(_pcrs(policy), "-"),
        )
    return table
