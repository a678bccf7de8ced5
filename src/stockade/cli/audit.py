"""``stockade audit executions``: what ran where, each entry checked against its quote."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from stockade.cli._input import emit_json
from stockade.cli._text import cell, inline
from stockade.cli.options import (
    CaOption,
    FormatOption,
    OutputFormat,
    ReadTokenOption,
    VerifierKeyOption,
    VerifierOption,
    client,
    pinned_key_file,
)
from stockade.errors import VerificationFailed

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Audit what nodes ran, from their quotes.")


def _check(entry: Any, keys: Any) -> str | None:
    """None when the entry is proven (its result's EAR under the pinned key binds the node,
    AK and quote; the quote proves the record); else why not."""
    from stockade.appraisal.execution_proof import ExecutionProofInvalid, audit_execution

    try:
        audit_execution(entry, keys)
    except ExecutionProofInvalid as error:
        return str(error)
    return None


def _field(entry: Any, *path: str) -> Any:
    value = entry
    for name in path:
        value = value.get(name) if isinstance(value, dict) else None
    return value


@app.command("executions")
def executions(
    node: Annotated[str | None, typer.Option("--node", help="node id or name")] = None,
    since: Annotated[str | None, typer.Option("--since", help="RFC 3339 time")] = None,
    image: Annotated[
        str | None, typer.Option("--image", help="image reference or manifest digest")
    ] = None,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    verifier_key: VerifierKeyOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Every recorded execution with the quote that proved it. Each proof is checked here
    against the pinned verifier key, trusting nothing else the answer says: the proving
    result's EAR names the node, boot, AK and quote; the AK signed the quoted PCRs; PCR 13
    replays from the boot's execution log; the record is in that log. Exit 1 if any does
    not hold. Needs a reader token."""
    key_file = pinned_key_file(verifier_key, verifier)
    with client(verifier, ca, token_file) as api:
        entries = api.executions(node=node, since=since, image=image)
    keys = key_file.keys()
    failures = {index: _check(entry, keys) for index, entry in enumerate(entries)}
    failed = {index: why for index, why in failures.items() if why}
    if output is OutputFormat.JSON:
        emit_json(
            {
                "executions": [
                    {**entry, "proof_verified": failures[i] is None, "proof_error": failures[i]}
                    for i, entry in enumerate(entries)
                ]
            }
        )
    else:
        from rich.console import Console

        Console().print(execution_table(entries, failures))
    if failed:
        raise VerificationFailed(f"{len(failed)} executions are not proven by their quotes")


def execution_table(entries: list[Any], failures: dict[int, str | None]) -> Table:
    """Each execution with its proof's verdict (``failures``: why the entry at that index
    is not proven, or None)."""
    from rich.table import Table

    table = Table(title=f"{len(entries)} executions (proofs checked locally)")
    for column in ("recorded", "node", "boot/rec", "what", "image", "proved by"):
        table.add_column(column, overflow="fold")
    for index, entry in enumerate(entries):
        record = _field(entry, "record")
        record = record if isinstance(record, dict) else {}
        starts = _field(entry, "kind") == "container-start"
        if starts:
            what = f"container {inline(record.get('container_id')) or '-'}"
            digest = inline(record.get("manifest_digest"))[:19]
            image_text = f"{inline(record.get('image_reference')) or '-'}\n{digest}"
        else:
            what = "trust policy loaded"
            image_text = inline(record.get("digest"))[:19]
        why = failures.get(index)
        verdict = (
            f"[red]NOT PROVEN: {cell(why)}[/]"
            if why
            else f"[green]proven[/] {cell(inline(_field(entry, 'proof', 'result_id'))[:8])}"
        )
        boot = "/".join(
            inline(_field(entry, "boot", name)) or "-" for name in ("reset_count", "restart_count")
        )
        table.add_row(
            cell(_field(entry, "recorded_at"), "-"),
            cell(_field(entry, "node_name"), "-"),
            f"{boot} #{cell(_field(entry, 'recnum'), '-')}",
            cell(what),
            cell(image_text, "-"),
            verdict,
        )
    return table
