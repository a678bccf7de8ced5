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


def _version(show: bool) -> None:
    if show:
        from importlib.metadata import PackageNotFoundError, version

        try:
            print(f"stockade {version('stockade')}")
        except PackageNotFoundError:
            print("stockade (not installed as a package)")
        raise typer.Exit()


@app.callback()
def _options(
    show_version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print the version and exit."
    ),
) -> None:
    """Distributed Trusted Computing: TPM-attested nodes and provable containers."""


def _register() -> None:
    from stockade.cli import boot, demo, eventlog, keys, quote, release, tpm, tpm_quote

    tpm.app.command("quote")(tpm_quote.quote)
    app.add_typer(tpm.app, name="tpm")
    app.add_typer(quote.app, name="quote")
    app.add_typer(eventlog.app, name="eventlog")
    app.add_typer(keys.app, name="keys")
    app.add_typer(release.app, name="release")
    app.add_typer(boot.app, name="boot")
    app.command("demo")(demo.run)

    from stockade.cli import agent, nodes, policy, results

    app.add_typer(agent.app, name="agent")
    app.add_typer(nodes.app, name="nodes")
    app.add_typer(results.app, name="results")
    app.add_typer(policy.app, name="policy")

    from stockade.cli import join, secrets, verifier

    app.add_typer(secrets.app, name="secrets")
    app.command("join")(join.join)

    app.add_typer(verifier.app, name="verifier")

    from stockade.cli import audit, image, kube, kube_controller, log, run

    kube.app.command("controller")(kube_controller.controller)
    kube.app.command("approve-csrs")(kube_controller.approve_csrs)
    app.add_typer(kube.app, name="kube")

    app.add_typer(audit.app, name="audit")
    app.add_typer(log.app, name="log")
    app.add_typer(image.app, name="image")
    app.command("run")(run.run)


def main() -> None:
    """Console entry point: typed errors become one line on stderr and an exit code.

    Usage errors are Click's own (exit 2 with a usage line); anything Stockade
    raises on purpose is a ``StockadeError`` carrying its exit code.
    """
    _register()
    try:
        app()
    except StockadeError as error:
        print(f"stockade: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("stockade: interrupted", file=sys.stderr)
        sys.exit(130)
