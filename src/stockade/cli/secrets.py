"""``stockade secrets put|list|grant|revoke|delete|rekey``: the verifier's secret store.

Every call needs the operator token (``$STOCKADE_OPERATOR_TOKEN`` or ``--token-file``; the
verifier writes it to ``<data dir>/operator-token``). Values are read from a file or stdin,
never from the command line (where ``ps`` and shell history would see them), and never printed.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stockade.cli._input import emit_json
from stockade.cli._text import cell, inline
from stockade.cli.options import (
    CaOption,
    FormatOption,
    OutputFormat,
    TokenFileOption,
    VerifierOption,
    client,
)
from stockade.errors import InputError

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Secrets released only to attested nodes.")

TokenOption = TokenFileOption
NameArgument = Annotated[str, typer.Argument(help="secret name")]


def _read_value(source: str) -> bytes:
    if source == "-":
        return sys.stdin.buffer.read()
    try:
        return Path(source).read_bytes()
    except OSError as error:
        raise InputError(f"cannot read the secret value from {source}: {error}") from None


@app.command("put")
def put(
    name: NameArgument,
    value_from: Annotated[
        str, typer.Option("--from", help="file holding the value, or - for stdin")
    ],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Store a new version of a secret (encrypted at rest under the verifier's KEK)."""
    value = _read_value(value_from)
    with client(verifier, ca, token_file) as api:
        answer = api.put_secret(name, value)
    if output is OutputFormat.JSON:
        emit_json(answer)
        return
    grants = inline(answer.get("grants")) or "none yet (stockade secrets grant)"
    typer.echo(
        f"secret {inline(answer.get('name'))} version {inline(answer.get('version'))} stored; "
        f"grants: {grants}"
    )


@app.command("list")
def list_secrets(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Names, versions and grants (never values)."""
    with client(verifier, ca, token_file) as api:
        secrets = api.secrets()
    if output is OutputFormat.JSON:
        emit_json({"secrets": secrets})
        return
    from rich.console import Console

    Console().print(secret_table(secrets))


def secret_table(secrets: list[dict[str, Any]]) -> Table:
    from rich.table import Table

    table = Table(title=f"{len(secrets)} secrets")
    for column in ("name", "version", "grants", "KEK", "updated"):
        table.add_column(column)
    for secret in secrets:
        table.add_row(
            cell(secret.get("name")),
            cell(secret.get("version")),
            cell(secret.get("grants"), "-"),
            cell(secret.get("kek_id")),
            cell(secret.get("updated_at")),
        )
    return table


@app.command("grant")
def grant(
    name: NameArgument,
    selector: Annotated[str, typer.Argument(help="node:<name or id> or label:<key>=<value>")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Let the selected nodes receive the secret (while they are trusted)."""
    with client(verifier, ca, token_file) as api:
        answer = api.grant(name, selector)
    if output is OutputFormat.JSON:
        emit_json(answer)
        return
    typer.echo(f"secret {name}: granted to {inline(answer.get('grants')) or 'none'}")


@app.command("revoke")
def revoke(
    name: NameArgument,
    selector: Annotated[str, typer.Argument(help="the grant to remove")],
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Remove a grant: the selected nodes get no further releases."""
    with client(verifier, ca, token_file) as api:
        answer = api.revoke_grant(name, selector)
    if output is OutputFormat.JSON:
        emit_json(answer)
        return
    remaining = inline(answer.get("grants")) or "none"
    typer.echo(f"secret {name}: grant {selector} removed; remaining: {remaining}")


@app.command("delete")
def delete(
    name: NameArgument,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenOption = None,
) -> None:
    """Delete a secret and its grants."""
    with client(verifier, ca, token_file) as api:
        api.delete_secret(name)
    typer.echo(f"secret {name}: deleted")


@app.command("rekey")
def rekey(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: TokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Re-encrypt every secret under the verifier's current KEK (after a rotation)."""
    with client(verifier, ca, token_file) as api:
        answer = api.rekey_secrets()
    if output is OutputFormat.JSON:
        emit_json(answer)
        return
    typer.echo(
        f"{inline(answer.get('rekeyed'))} secrets re-encrypted under KEK "
        f"{inline(answer.get('kek_id'))}"
    )


@app.command("read")
def read(
    name: NameArgument,
    socket_path: Annotated[Path, typer.Option("--socket", help="the agent's --secrets-socket")],
    out: Annotated[
        Path | None, typer.Option("--out", help="write here (0600) instead of stdout")
    ] = None,
) -> None:
    """On a node: read a secret from the local agent (unsealed by the TPM for this read)."""
    from stockade.agent.secret_socket import read_secret
    from stockade.home import write_atomic

    value = read_secret(socket_path, name)
    if out is not None:
        write_atomic(out, value, mode=0o600)
        return
    sys.stdout.buffer.write(value)
    sys.stdout.buffer.flush()
