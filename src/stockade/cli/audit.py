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
from collections.abc import Callable, Sequence
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
Row = dict[str, Any]  # one exported item, as JSON
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


def _export(
    output: ExportFormat,
    filters: dict[str, str | None],
    member: str,
    rows: list[Row],
    columns: list[str],
    table: Callable[[list[Row]], Table],
) -> None:
    """Print ``rows`` as ``output`` asks: JSON, the ``filters`` and the rows under
    ``member``; CSV, the ``columns`` of each row; text, ``table(rows)``."""
    if output is ExportFormat.JSON:
        emit_json({**filters, member: rows})
    elif output is ExportFormat.CSV:
        _write_csv(columns, rows)
    else:
        from rich.console import Console

        Console().print(table(rows))


def _table(
    title: str, headings: Sequence[str], rows: list[Row], cells: Callable[[Row], list[str]]
) -> Table:
    from rich.table import Table

    table = Table(title=title)
    for heading in headings:
        table.add_column(heading, overflow="fold")
    for row in rows:
        table.add_row(*cells(row))
    return table


def _add_tree_size(row: Row) -> Row:
    """``row`` with the size of the tree its receipt (``inclusion_proof``) proves against."""
    receipt = row.get("inclusion_proof")
    row["tree_size"] = receipt.get("tree_size") if isinstance(receipt, dict) else None
    return row


RESULT_COLUMNS = [
    "result_id", "node_id", "node", "status", "policy", "release", "issued_at", "not_after",
    "reasons",
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
        row = _add_tree_size(check_result(result, None, keys))
        if "node" not in row:
            row["node"] = result.get("node_name")
        checked.append(row)
    filters = {"since": since, "until": until, "node": node}
    _export(output, filters, "results", checked, RESULT_COLUMNS, results_table)
    refused = [row for row in checked if row["ear_signature"] != "verified"]
    if refused:
        raise VerificationFailed(
            f"{len(refused)} of {len(checked)} results do not verify under the pinned verifier key"
        )


def results_table(rows: list[dict[str, Any]]) -> Table:
    keys = ("log_index", "issued_at", "node", "status", "policy", "result_id")

    def cells(row: Row) -> list[str]:
        verified = row["ear_signature"] == "verified"
        ear = "[green]verified[/]" if verified else f"[red]{cell(row['ear_signature'])}[/]"
        return [*(cell(row.get(key), "-") for key in keys), ear]

    headings = ("log index", "issued", "node", "status", "policy", "result", "EAR")
    return _table(f"{len(rows)} results (EARs checked locally)", headings, rows, cells)


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
    filters = {"since": since, "until": until, "node": node, "secret": secret}
    _export(output, filters, "releases", releases, RELEASE_COLUMNS, _releases_table)


def _releases_table(rows: list[Row]) -> Table:
    def cells(release: Row) -> list[str]:
        return [
            *(cell(release.get(key), "-") for key in ("time", "secret", "version")),
            cell(release.get("node_name") or release.get("node_id"), "-"),
            cell(release.get("result_id"), "-"),
        ]

    headings = ("time", "secret", "version", "node", "result")
    return _table(f"{len(rows)} secret releases", headings, rows, cells)


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
    rows = [_add_tree_size(row) for row in listed]
    filters = {"since": since, "until": until, "actor": actor, "action": action}
    _export(output, filters, "actions", rows, ACTION_COLUMNS, _actions_table)


def _actions_table(rows: list[Row]) -> Table:
    keys = ("log_index", "time", "actor", "action", "subject", "detail")
    headings = ("log index", "time", "actor", "action", "subject", "detail")
    return _table(
        f"{len(rows)} operator actions",
        headings,
        rows,
        lambda row: [cell(row.get(key), "-") for key in keys],
    )
