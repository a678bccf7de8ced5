"""``stockade nodes list|show|revoke|allow|approve|replace``: the verifier's view of the nodes."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stockade.cli._input import emit_json
from stockade.cli._text import cell
from stockade.cli.options import (
    CaOption,
    FormatOption,
    NodeArgument,
    OutputFormat,
    ReadTokenOption,
    TokenFileOption,
    VerifierKeyOption,
    VerifierOption,
    client,
    pinned_key_file,
)

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Nodes known to a verifier, and their trust state.")


STATE_STYLES = {
    "trusted": "green",
    "pending": "blue",
    "enrolled": "cyan",
    "untrusted": "yellow",
    "failed": "red",
    "revoked": "magenta",
}


class Columns(StrEnum):
    """``nodes list -o``: the default columns, or ``wide`` with the booted release too."""

    DEFAULT = "default"
    WIDE = "wide"


ColumnsOption = Annotated[
    Columns,
    typer.Option(
        "-o",
        "--output",
        help="text columns: wide adds the release each node booted (JSON always has it)",
    ),
]
DIGEST_SHOWN = 12  # hex characters of a manifest digest in a table


def node_id(node: dict[str, Any]) -> str:
    return str(node.get("node_id", node.get("id", "")))


def styled_state(state: object) -> str:
    text = cell(state)
    style = STATE_STYLES.get(text)
    return f"[{style}]{text}[/]" if style else text


def print_rich(*renderables: Any) -> None:
    """Print to stdout with Rich (imported here: only text output pays for it)."""
    from rich.console import Console

    Console().print(*renderables)


def release_cells(release: object) -> tuple[str, str, str]:
    """A booted release (``release`` of a node or result) as three cells: ``name version``,
    security version, the manifest digest's start; ``-`` for what is not known."""
    if not isinstance(release, dict) or release.get("name") is None:
        return ("-", "-", "-")
    label = " ".join(str(part) for part in (release.get("name"), release.get("version")) if part)
    digest = release.get("digest")
    return (
        cell(label, "-"),
        cell(release.get("security_version"), "-"),
        cell(str(digest)[:DIGEST_SHOWN], "-") if digest else "-",
    )


def node_table(nodes: list[dict[str, Any]], columns: Columns = Columns.DEFAULT) -> Table:
    from rich.table import Table

    wide = columns is Columns.WIDE
    table = Table(title=f"{len(nodes)} nodes")
    names = ["name", "node id", "state"]
    if wide:
        names += ["release", "svn", "manifest"]
    names += ["trusted until", "latest result", "updated"]
    for column in names:
        table.add_column(column, no_wrap=wide and column in ("node id", "manifest"))
    for node in nodes:
        release = release_cells(node.get("release")) if wide else ()
        table.add_row(
            cell(node.get("name")),
            cell(node_id(node)),
            styled_state(node.get("state")),
            *release,
            cell(node.get("trusted_until")),
            cell(node.get("latest_result_id")),
            cell(node.get("updated_at")),
        )
    return table


def security_event_table(events: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title=f"{len(events)} security events")
    for column in ("id", "time", "kind", "node", "source", "count", "detail"):
        table.add_column(column, overflow="fold")
    for event in events:
        table.add_row(
            cell(event.get("id")),
            cell(event.get("time")),
            cell(event.get("kind")),
            cell(event.get("name") or event.get("node_id")),
            cell(event.get("source")),
            cell(event.get("count")),
            cell(event.get("detail")),
        )
    return table


def node_detail_table(node: dict[str, Any]) -> Table:
    """One node, a field a row: lists one item a line, mappings ``key: value``."""
    from rich.table import Table

    table = Table(show_header=False, title=f"node {cell(node.get('name'))}")
    table.add_column("field", style="bold")
    table.add_column("value", overflow="fold")
    for key, value in node.items():
        table.add_row(cell(key), styled_state(value) if key == "state" else cell(value, "-"))
    return table


@app.command("list")
def list_nodes(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
    columns: ColumnsOption = Columns.DEFAULT,
) -> None:
    """Every node the verifier knows, with its state and deadline (-o wide: and the release
    it booted). Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        nodes = api.nodes()
    if output is OutputFormat.JSON:
        emit_json({"nodes": nodes})
        return
    print_rich(node_table(nodes, columns))


@app.command("security-events")
def security_events(
    after: Annotated[int, typer.Option("--after", min=0, help="only events after this id")] = 0,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """What proved nothing and changed nothing: refused channel signatures, evidence that
    did not verify, enrollments under a name another TPM holds (rate-limited; ``count`` says
    how many each row stands for). Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        events = api.security_events(after)
    if output is OutputFormat.JSON:
        emit_json({"security_events": events})
        return
    print_rich(security_event_table(events))


@app.command("show")
def show(
    node: NodeArgument,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """One node: identity (EK fingerprint), state, deadline, latest result. Needs a reader
    token."""
    with client(verifier, ca, token_file) as api:
        document = api.node(node)
    if output is OutputFormat.JSON:
        emit_json(document)
        return
    print_rich(node_detail_table(document))


def _is_node_id(text: str) -> bool:
    """Node ids are UUIDs; node names never are."""
    import uuid

    try:
        return str(uuid.UUID(text)) == text
    except ValueError:
        return False


def _report_state(document: dict[str, Any], node: str, output: OutputFormat) -> None:
    """A node's state after an operator action, as one JSON document or one line."""
    if output is OutputFormat.JSON:
        emit_json(document)
        return
    print_rich(f"{cell(document.get('name') or node)}: {styled_state(document.get('state'))}")


@app.command("revoke")
def revoke(
    node: NodeArgument,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Revoke a node: it can neither attest nor enroll again until allowed. Needs the
    operator token."""
    with client(verifier, ca, token_file) as api:
        document = api.revoke(node)
    _report_state(document, node, output)


@app.command("allow")
def allow(
    node: NodeArgument,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Lift a revocation: the node may enroll and attest again. Needs the operator token."""
    with client(verifier, ca, token_file) as api:
        document = api.allow(node)
    _report_state(document, node, output)


@app.command("approve")
def approve(
    node: NodeArgument,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Admit a pending node (enrollment mode approve): it may attest from now on. Needs the
    operator token."""
    with client(verifier, ca, token_file) as api:
        document = api.approve(node)
    _report_state(document, node, output)


@app.command("replace")
def replace(
    node: NodeArgument,
    ek: Annotated[
        str | None,
        typer.Option(
            "--ek",
            help="only this EK may take the node: sha256 hex of its certificate or of its "
            "SubjectPublicKeyInfo, or serial:<hex>",
        ),
    ] = None,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Board swap: open the node's name to new hardware. The next TPM (or the one --ek
    names) that enrolls under this name becomes this node: same id, history, grants and
    labels; the old TPM is no longer it. Needs the operator token."""
    with client(verifier, ca, token_file) as api:
        document = api.replace(node, ek)
    _report_state(document, node, output)


@app.command("label")
def label(
    node: NodeArgument,
    labels: Annotated[list[str], typer.Argument(help="key=value ... (replaces all labels)")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file", help="operator token file [default: $STOCKADE_OPERATOR_TOKEN]"
        ),
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Set a node's labels (secret grants select nodes by label). Needs the operator token."""
    from stockade.cluster.grants import parse_labels

    wanted = parse_labels(labels)
    with client(verifier, ca, token_file) as api:
        document = api.set_labels(node, wanted)
    if output is OutputFormat.JSON:
        emit_json(document)
        return
    shown = ", ".join(f"{k}={v}" for k, v in sorted((document.get("labels") or {}).items()))
    typer.echo(f"{document.get('name', node)}: labels {shown or 'none'}")


@app.command("status")
def status(
    node: NodeArgument,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    verifier_key: VerifierKeyOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """The verifier's signed, short-lived statement of a node's standing, checked against
    the pinned verifier key. Exit 1 when the node is not trusted. By node id no credential
    is needed (the statement is public); a name is looked up in the node list: a reader
    token."""
    from datetime import UTC, datetime

    from stockade.errors import VerificationFailed

    key_file = pinned_key_file(verifier_key, verifier)
    with client(verifier, ca, token_file) as api:
        asked = node if _is_node_id(node) else api.resolve(node)
        answer = api.request("GET", f"/v1/nodes/{asked}/status")
    from stockade.cluster.status import verify_status

    keys = key_file.keys()
    # Bound to the node asked for (its id, and its name when asked by name): a statement
    # about any other node does not verify.
    checked = verify_status(str(answer.get("statement")), keys, asked, datetime.now(UTC))
    if node not in (checked.name, checked.node_id):
        raise VerificationFailed(f"the status statement is about {checked.name}, not {node}")
    if output is OutputFormat.JSON:
        emit_json({**answer, "verified": True})
    else:
        verdict = "[green]trusted[/]" if checked.trusted else "[red]not trusted[/]"
        print_rich(
            f"{cell(checked.name)} ({checked.node_id}): {verdict}, "
            f"state {styled_state(checked.state)}, "
            f"statement valid until {checked.expires_at.isoformat()} (signature checked)"
        )
    if not checked.trusted:
        raise VerificationFailed(
            f"node {checked.name} is not trusted: {answer.get('reason') or checked.state}"
        )
