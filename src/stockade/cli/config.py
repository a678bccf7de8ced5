"""``stockade config set-context|use-context|get-contexts|current-context|delete-context``:
the verifiers this operator talks to, by name (``cli/contexts.py``).

Every command that reaches a verifier takes what its options leave empty from the current
context (``--context NAME`` or ``$STOCKADE_CONTEXT`` for another): ``--verifier``, ``--ca``,
``--token-file`` and ``--verifier-key``, each option and its environment variable first.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._input import emit_json
from stockade.cli.contexts import (
    META_KEY,
    Config,
    Context,
    absolute,
    check_name,
    check_verifier_url,
    config_path,
    load_config,
    save_config,
    with_context,
    without_context,
)
from stockade.cli.options import FormatOption, OutputFormat
from stockade.errors import InputError

app = typer.Typer(
    no_args_is_help=True, help="Contexts: the verifiers this operator talks to, by name."
)

NameArgument = Annotated[str, typer.Argument(help="context name")]


def _load() -> tuple[Path, Config]:
    path = config_path()
    return path, load_config(path) or Config()


def _file_option(path: Path | None, what: str) -> Path | None:
    """``path`` as the context stores it (absolute); a warning when it is not a file yet."""
    if path is None:
        return None
    stored = absolute(path)
    if not stored.is_file():
        print(f"stockade: warning: {what} '{stored}' is not a file (yet)", file=sys.stderr)
    return stored


@app.command("set-context")
def set_context(
    name: NameArgument,
    verifier: Annotated[
        str | None,
        typer.Option("--verifier", help="verifier base URL (needed for a new context)"),
    ] = None,
    ca: Annotated[
        Path | None, typer.Option("--ca", help="CA certificate of the verifier's TLS")
    ] = None,
    token_file: Annotated[
        Path | None, typer.Option("--token-file", help="reader or operator token file")
    ] = None,
    verifier_key: Annotated[
        Path | None,
        typer.Option(
            "--verifier-key",
            help="the verifier's statement key to pin (its keys/verifier-key.pub.pem)",
        ),
    ] = None,
) -> None:
    """Create a context, or change the fields given of an existing one. Paths are stored
    absolute; the first context becomes the current one."""
    check_name(name)
    path, config = _load()
    existing = config.contexts.get(name)
    if verifier is None and existing is None:
        raise InputError(f"context {name!r} is new: pass --verifier URL")
    url = check_verifier_url(verifier) if verifier is not None else None
    context = Context(
        name,
        url or (existing.verifier if existing else ""),
        _file_option(ca, "--ca") or (existing.ca if existing else None),
        _file_option(token_file, "--token-file") or (existing.token_file if existing else None),
        _file_option(verifier_key, "--verifier-key")
        or (existing.verifier_key if existing else None),
    )
    updated = with_context(config, context)
    save_config(path, updated)
    current = " (current)" if updated.current == name else ""
    typer.echo(f"context {name} {'changed' if existing else 'created'}{current} in {path}")


@app.command("use-context")
def use_context(name: NameArgument) -> None:
    """Make NAME the current context."""
    path, config = _load()
    if name not in config.contexts:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise InputError(f"no context {name!r} in contexts file '{path}' (contexts: {known})")
    save_config(path, Config(config.contexts, name))
    typer.echo(f"current context: {name}")


def _selected(ctx: typer.Context, config: Config) -> str | None:
    """The context commands use now: ``--context``/``$STOCKADE_CONTEXT``, else the current."""
    chosen = ctx.meta.get(META_KEY)
    return chosen if isinstance(chosen, str) else config.current


@app.command("get-contexts")
def get_contexts(ctx: typer.Context, output: FormatOption = OutputFormat.TEXT) -> None:
    """List the contexts; the one in use is marked *."""
    path, config = _load()
    selected = _selected(ctx, config)
    rows = [config.contexts[name] for name in sorted(config.contexts)]
    if output is OutputFormat.JSON:
        emit_json(
            {
                "file": str(path),
                "current": config.current,
                "contexts": [
                    {
                        "name": context.name,
                        "current": context.name == selected,
                        "verifier": context.verifier,
                        "ca": _or_none(context.ca),
                        "token_file": _or_none(context.token_file),
                        "verifier_key": _or_none(context.verifier_key),
                    }
                    for context in rows
                ],
            }
        )
        return
    if not rows:
        typer.echo(f"no contexts in {path} (stockade config set-context NAME --verifier URL)")
        return
    table = [("", "NAME", "VERIFIER", "CA", "TOKEN FILE", "VERIFIER KEY")]
    for context in rows:
        table.append(
            (
                "*" if context.name == selected else "",
                context.name,
                context.verifier,
                _or_dash(context.ca),
                _or_dash(context.token_file),
                _or_dash(context.verifier_key),
            )
        )
    widths = [max(len(row[column]) for row in table) for column in range(len(table[0]))]
    for row in table:
        cells = (text.ljust(width) for text, width in zip(row, widths, strict=True))
        typer.echo("  ".join(cells).rstrip())


def _or_none(path: Path | None) -> str | None:
    return None if path is None else str(path)


def _or_dash(path: Path | None) -> str:
    return "-" if path is None else str(path)


@app.command("current-context")
def current_context(ctx: typer.Context) -> None:
    """Print the context commands use now: --context or $STOCKADE_CONTEXT, else the
    current one."""
    path, config = _load()
    selected = _selected(ctx, config)
    if selected is None:
        raise InputError(f"no current context in '{path}' (stockade config use-context NAME)")
    if selected not in config.contexts:
        raise InputError(f"no context {selected!r} in contexts file '{path}'")
    typer.echo(selected)


@app.command("delete-context")
def delete_context(name: NameArgument) -> None:
    """Delete a context (the files it names are left alone). Deleting the current context
    leaves none current."""
    path, config = _load()
    if name not in config.contexts:
        raise InputError(f"no context {name!r} in contexts file '{path}'")
    save_config(path, without_context(config, name))
    note = "; no context is current now" if config.current == name else ""
    typer.echo(f"context {name} deleted{note}")
