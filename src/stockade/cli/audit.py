"""``stockade audit executions|results|secret-releases|actions``: what ran where, each entry
checked against its quote; every attestation result of a time range with its
transparency-log receipt; every secret release; every operator action with its receipt.

Exports (``results``, ``secret-releases``, ``actions``) follow the verifier's pages
(``GET /v1/results``, ``GET /v1/secret-releases``, ``GET /v1/operator-actions``) to the end
and print one document: ``--format json`` a single JSON object (``stockade log verify``
checks a results or actions export offline as it is), ``--format
csv`` a header and one row per item (cells that a spreadsheet would run as a formula are
prefixed with ``'``), ``--format text`` a table.
"""

from __future__ import annotations

import json
import sys
from enum import StrEnum
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


class ExportFormat(StrEnum):
    TEXT = "text"
    JSON = "json"
    CSV = "csv"


ExportFormatOption = Annotated[ExportFormat, typer.Option("--format")]
SinceOption = Annotated[
    str | None, typer.Option("--since", help="RFC 3339 time, inclusive [default: the start]")
]
UntilOption = Annotated[
    str | None, typer.Option("--until", help="RFC 3339 time, exclusive [default: now]")
]
NodeFilterOption = Annotated[str | None, typer.Option("--node", help="node id or name")]
# A cell starting with one of these is a formula to a spreadsheet (CSV injection).
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


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


# -- exports -----------------------------------------------------------------------------


def _csv_cell(value: object) -> str:
    """A CSV cell: JSON for structures, ``'`` before text a spreadsheet would evaluate."""
    if value is None:
        return ""
    if isinstance(value, dict | list):
        return json.dumps(value, sort_keys=True, separators=(",", ":"))
    text = inline(value)
    return "'" + text if text.startswith(_FORMULA_START) else text


def _write_csv(columns: list[str], rows: list[dict[str, Any]]) -> None:
    import csv

    writer = csv.writer(sys.stdout, lineterminator="\n")
    writer.writerow(columns)
    for row in rows:
        writer.writerow([_csv_cell(row.get(column)) for column in columns])
    sys.stdout.flush()


RESULT_COLUMNS = [
    "result_id", "node_id", "node", "status", "policy", "issued_at", "not_after", "reasons",
    "log_index", "tree_size", "ear_signature", "ear", "inclusion_proof",
]  # fmt: skip


@app.command("results")
def results(
    since: SinceOption = None,
    until: UntilOption = None,
    node: NodeFilterOption = None,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, max=500, help="results per request")
    ] = 100,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    verifier_key: VerifierKeyOption = None,
    output: ExportFormatOption = ExportFormat.TEXT,
) -> None:
    """Every attestation result created in [--since, --until) (of --node), oldest log entry
    first, each with its log index and receipt (inclusion proof against a signed
    checkpoint). Each EAR is checked here under the pinned verifier key; the JSON export is
    what ``stockade log verify --key LOG_KEY --verifier-key KEY`` checks offline. Exit 1 if
    any EAR does not verify. Needs a reader token."""
    from stockade.cli.results import check_result

    key_file = pinned_key_file(verifier_key, verifier)
    with client(verifier, ca, token_file) as api:
        listed = list(api.all_results(since=since, until=until, node=node, page_size=page_size))
    keys = key_file.keys()
    checked = []
    for result in listed:
        row = check_result(result, None, keys)
        receipt = row.get("inclusion_proof")
        row["tree_size"] = receipt.get("tree_size") if isinstance(receipt, dict) else None
        if "node" not in row:
            row["node"] = result.get("node_name")
        checked.append(row)
    if output is ExportFormat.JSON:
        emit_json({"since": since, "until": until, "node": node, "results": checked})
    elif output is ExportFormat.CSV:
        _write_csv(RESULT_COLUMNS, checked)
    else:
        from rich.console import Console

        Console().print(results_table(checked))
    refused = [row for row in checked if row["ear_signature"] != "verified"]
    if refused:
        raise VerificationFailed(
            f"{len(refused)} of {len(checked)} results do not verify under the pinned verifier key"
        )


def results_table(rows: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title=f"{len(rows)} results (EARs checked locally)")
    for column in ("log index", "issued", "node", "status", "policy", "result", "EAR"):
        table.add_column(column, overflow="fold")
    for row in rows:
        verified = row["ear_signature"] == "verified"
        table.add_row(
            cell(row.get("log_index"), "-"),
            cell(row.get("issued_at"), "-"),
            cell(row.get("node"), "-"),
            cell(row.get("status"), "-"),
            cell(row.get("policy"), "-"),
            cell(row.get("result_id"), "-"),
            "[green]verified[/]" if verified else f"[red]{cell(row['ear_signature'])}[/]",
        )
    return table


RELEASE_COLUMNS = [
    "release_id", "time", "secret", "version", "node_id", "node_name", "result_id",
]  # fmt: skip


@app.command("secret-releases")
def secret_releases(
    since: SinceOption = None,
    until: UntilOption = None,
    node: NodeFilterOption = None,
    secret: Annotated[str | None, typer.Option("--secret", help="secret name")] = None,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: ExportFormatOption = ExportFormat.TEXT,
) -> None:
    """Every secret release in [--since, --until) (of --node, of --secret): which version
    of which secret went to which node, under which attestation result, when. Never a
    value. Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        releases = list(api.all_secret_releases(since=since, until=until, node=node, secret=secret))
    if output is ExportFormat.JSON:
        emit_json(
            {"since": since, "until": until, "node": node, "secret": secret, "releases": releases}
        )
    elif output is ExportFormat.CSV:
        _write_csv(RELEASE_COLUMNS, releases)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(releases)} secret releases")
        for column in ("time", "secret", "version", "node", "result"):
            table.add_column(column, overflow="fold")
        for release in releases:
            table.add_row(
                cell(release.get("time"), "-"),
                cell(release.get("secret"), "-"),
                cell(release.get("version"), "-"),
                cell(release.get("node_name") or release.get("node_id"), "-"),
                cell(release.get("result_id"), "-"),
            )
        Console().print(table)


ACTION_COLUMNS = [
    "id", "time", "actor", "action", "subject", "detail", "log_index", "tree_size",
    "inclusion_proof",
]  # fmt: skip


@app.command("actions")
def actions(
    since: SinceOption = None,
    until: UntilOption = None,
    actor: Annotated[str | None, typer.Option("--actor", help="operator credential name")] = None,
    action: Annotated[
        str | None, typer.Option("--action", help="e.g. node.revoke, secret.put")
    ] = None,
    page_size: Annotated[
        int, typer.Option("--page-size", min=1, max=1000, help="actions per request")
    ] = 100,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: ExportFormatOption = ExportFormat.TEXT,
) -> None:
    """Every operator action in [--since, --until) (of --actor, of --action), oldest log
    entry first: who (the named operator credential), what, on what, when, with its log
    index and receipt. The JSON export is what ``stockade log verify --key LOG_KEY``
    checks offline. Never a secret value. Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        listed = list(
            api.all_operator_actions(
                since=since, until=until, actor=actor, action=action, page_size=page_size
            )
        )
    for row in listed:
        receipt = row.get("inclusion_proof")
        row["tree_size"] = receipt.get("tree_size") if isinstance(receipt, dict) else None
    if output is ExportFormat.JSON:
        emit_json(
            {"since": since, "until": until, "actor": actor, "action": action, "actions": listed}
        )
    elif output is ExportFormat.CSV:
        _write_csv(ACTION_COLUMNS, listed)
    else:
        from rich.console import Console
        from rich.table import Table

        table = Table(title=f"{len(listed)} operator actions")
        for column in ("log index", "time", "actor", "action", "subject", "detail"):
            table.add_column(column, overflow="fold")
        for row in listed:
            table.add_row(
                cell(row.get("log_index"), "-"),
                cell(row.get("time"), "-"),
                cell(row.get("actor"), "-"),
                cell(row.get("action"), "-"),
                cell(row.get("subject"), "-"),
                cell(row.get("detail"), "-"),
            )
        Console().print(table)
