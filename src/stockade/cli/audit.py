"""``stockade audit executions``: what ran where, each entry checked against its quote."""

from __future__ import annotations

import base64
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stockade.cli._input import emit_json
from stockade.cli.nodes import CaOption, FormatOption, ReadTokenOption, VerifierOption, client
from stockade.cli.quote import OutputFormat
from stockade.errors import VerificationFailed

app = typer.Typer(no_args_is_help=True, help="Audit what nodes ran, from their quotes.")


def _check(entry: dict[str, Any]) -> str | None:
    """None when the entry's quote proves it; else why not."""
    from stockade.appraisal.execution_proof import ExecutionProofInvalid, verify_execution_proof

    proof = entry["proof"]
    if not proof.get("quote") or not proof.get("execution_log"):
        return "no quote stored for this execution"
    try:
        verify_execution_proof(
            ak_public=base64.b64decode(proof["ak_public"]),
            quote=base64.b64decode(proof["quote"]),
            signature=base64.b64decode(proof["signature"]),
            pcrs=proof["pcrs"],
            execution_log=base64.b64decode(proof["execution_log"]),
            recnum=int(entry["recnum"]),
            record=entry["record"],
        )
    except ExecutionProofInvalid as error:
        return str(error)
    except (KeyError, TypeError, ValueError) as error:
        return f"malformed proof: {error}"
    return None


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
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Every recorded execution with the quote that proved it. Each proof is checked here
    (the AK's signature over the quoted PCRs, PCR 13 replayed from the boot's execution log,
    the record in that log): exit 1 if any does not hold. Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        entries = api.executions(node=node, since=since, image=image)
    failures = {index: _check(entry) for index, entry in enumerate(entries)}
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
        table = Table(title=f"{len(entries)} executions (proofs checked locally)")
        for column in ("recorded", "node", "boot/rec", "what", "image", "proved by"):
            table.add_column(column, overflow="fold")
        for index, entry in enumerate(entries):
            record = entry["record"]
            what = (
                f"container {record.get('container_id')}"
                if entry["kind"] == "container-start"
                else "trust policy loaded"
            )
            image_text = (
                f"{record.get('image_reference')}\n{str(record.get('manifest_digest'))[:19]}"
                if entry["kind"] == "container-start"
                else str(record.get("digest", ""))[:19]
            )
            verdict = (
                f"[red]NOT PROVEN: {failures[index]}[/]"
                if failures[index]
                else f"[green]quote ok[/] {entry['proof']['result_id'][:8]}"
            )
            boot = entry["boot"]
            table.add_row(
                str(entry["recorded_at"]),
                str(entry["node_name"]),
                f"{boot['reset_count']}/{boot['restart_count']} #{entry['recnum']}",
                what,
                image_text,
                verdict,
            )
        Console().print(table)
    if failed:
        raise VerificationFailed(f"{len(failed)} executions are not proven by their quotes")
