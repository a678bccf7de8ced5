"""``stockade releases status``: the rollout as the verifier sees it, how many nodes run each
release and in which state."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

import typer

from stockade.cli._input import emit_json
from stockade.cli._text import cell
from stockade.cli.nodes import print_rich, release_cells, styled_state
from stockade.cli.options import (
    CaOption,
    FormatOption,
    OutputFormat,
    ReadTokenOption,
    VerifierOption,
    client,
)

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="The releases nodes run: the rollout's progress.")


def status_table(answer: dict[str, Any]) -> Table:
    """One row per release (``-`` for nodes that booted no known release), its node count
    and the count in each state."""
    from rich.table import Table

    releases: list[dict[str, Any]] = list(answer.get("releases") or [])
    table = Table(
        title=f"{cell(answer.get('nodes'), '0')} nodes, as of {cell(answer.get('as_of'))}"
    )
    for column in ("release", "svn", "manifest", "nodes", "states"):
        table.add_column(column)
    for entry in releases:
        states = entry.get("states") or {}
        shown = ", ".join(
            f"{styled_state(state)} {cell(count)}" for state, count in sorted(states.items())
        )
        table.add_row(*release_cells(entry.get("release")), cell(entry.get("nodes")), shown)
    return table


@app.command("status")
def status(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """How many nodes run each release (name, version, security version), per state, from
    each node's latest result. Nodes whose boot matched no release count under '-'. Needs a
    reader token."""
    with client(verifier, ca, token_file) as api:
        answer = api.release_status()
    if output is OutputFormat.JSON:
        emit_json(answer)
        return
    print_rich(status_table(answer))
