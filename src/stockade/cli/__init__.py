"""The ``stockade`` command: one module per command group, each thin."""

from __future__ import annotations

import sys

import typer

from stockade.errors import StockadeError

app = typer.Typer(
    name="stockade",
    help="Distributed Trusted Computing: TPM-attested nodes and provable containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


def _register() -> None:
    from stockade.cli import demo, quote, tpm

    app.add_typer(tpm.app, name="tpm")
    app.add_typer(quote.app, name="quote")
    app.command("demo")(demo.run)


def main() -> None:
    """Console entry point: typed errors become one line on stderr and an exit code."""
    _register()
    try:
        app(standalone_mode=False)
    except StockadeError as error:
        print(f"stockade: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except typer.Exit as done:
        sys.exit(done.exit_code)
    except (typer.Abort, KeyboardInterrupt):
        print("stockade: aborted", file=sys.stderr)
        sys.exit(130)
    except Exception as usage:  # click's UsageError and friends
        import click

        if isinstance(usage, click.ClickException):
            usage.show()
            sys.exit(usage.exit_code)
        raise
