"""The ``stockade`` command: one module per command group, each thin, each imported only when
its command runs (``LazyGroup``), so that ``stockade --version`` or ``stockade nodes list``
never pays for the verifier's web and database stack or the TPM stack.

Start-up is kept near Typer's own import (``bench/cli_startup.py``): help is Click's plain
formatter (``rich_markup_mode=None``: Rich's help formatting alone costs more than Typer),
parameter values are converted without Pydantic (``cli/_params.py``), and the command
modules import Rich and the HTTP client only where they print or call.
"""

from __future__ import annotations

import os
import sys
from collections.abc import MutableMapping
from dataclasses import dataclass
from importlib import import_module
from typing import Annotated, Any

import typer
from typer import _click as click
from typer.core import TyperCommand, TyperGroup

from stockade.cli import _params
from stockade.errors import StockadeError


@dataclass(frozen=True)
class _Entry:
    """A top-level command: where it lives and its one-line help for the command list
    (``tests/cli/test_cli_startup.py`` checks it against the command's own help)."""

    module: str
    attribute: str  # a typer.Typer (a command group) or a command function
    short_help: str
    extra: tuple[tuple[str, str, str], ...] = ()  # (command name, module, function) added


COMMANDS: dict[str, _Entry] = {
    "demo": _Entry(
        "stockade.cli.demo",
        "run",
        "Start software TPMs, a verifier and agents; show attestation and attacks rejected.",
    ),
    "join": _Entry(
        "stockade.cli.join",
        "join",
        "Enroll (once), attest, and when the verifier affirms this node, obtain a certificate"
        " for a key that lives only in this TPM. Exit 1 with the reasons when the node is not"
        " trusted.",
    ),
    "run": _Entry(
        "stockade.cli.run",
        "run",
        "Unpack IMAGE with umoci into a bundle and run it with runc; the hook verifies the"
        " image's signature against the trust policy, extends PCR 13 and appends to the"
        " execution log before the container starts, or refuses it.",
    ),
    "tpm": _Entry(
        "stockade.cli.tpm",
        "app",
        "Software TPMs (swtpm) for development nodes, and TPM commands.",
        (("quote", "stockade.cli.tpm_quote", "quote"),),
    ),
    "quote": _Entry("stockade.cli.quote", "app", "Verify TPM quotes."),
    "eventlog": _Entry(
        "stockade.cli.eventlog", "app", "Parse and replay TCG PC Client event logs."
    ),
    "keys": _Entry("stockade.cli.keys", "app", "Organization signing keys."),
    "release": _Entry("stockade.cli.release", "app", "Build, sign and verify OS releases."),
    "boot": _Entry(
        "stockade.cli.boot",
        "app",
        "Verified, measured boot of development nodes on a software TPM; reference values.",
    ),
    "agent": _Entry("stockade.cli.agent", "app", "The node agent: enrollment and attestation."),
    "nodes": _Entry(
        "stockade.cli.nodes", "app", "Nodes known to a verifier, and their trust state."
    ),
    "results": _Entry("stockade.cli.results", "app", "Attestation results (EAR) of nodes."),
    "releases": _Entry(
        "stockade.cli.releases", "app", "The releases nodes run: the rollout's progress."
    ),
    "policy": _Entry("stockade.cli.policy", "app", "Appraisal policies (versioned documents)."),
    "appraise": _Entry(
        "stockade.cli.appraise",
        "appraise",
        "Appraise an event log offline against a captured golden-machine policy.",
    ),
    "secrets": _Entry("stockade.cli.secrets", "app", "Secrets released only to attested nodes."),
    "verifier": _Entry("stockade.cli.verifier", "app", "The verifier service."),
    "kube": _Entry(
        "stockade.cli.kube",
        "app",
        "Kubernetes: admission webhook, scheduler extender.",
        (
            ("controller", "stockade.cli.kube_controller", "controller"),
            ("approve-csrs", "stockade.cli.kube_controller", "approve_csrs"),
        ),
    ),
    "audit": _Entry("stockade.cli.audit", "app", "Audit what nodes ran, from their quotes."),
    "log": _Entry(
        "stockade.cli.log",
        "app",
        "The verifier's transparency log: checkpoints, receipts, monitor.",
    ),
    "image": _Entry("stockade.cli.image", "app", "Sign and verify container images (OCI layouts)."),
    "events": _Entry(
        "stockade.cli.events", "app", "Follow the verifier's event stream: node state transitions."
    ),
    "config": _Entry(
        "stockade.cli.config", "app", "Contexts: the verifiers this operator talks to, by name."
    ),
    "completion": _Entry(
        "stockade.cli.completion",
        "completion",
        'Print the shell completion script: eval "$(stockade completion bash)".',
    ),
}

COMPLETE_VAR = "_STOCKADE_COMPLETE"


def _plain_help(target: typer.Typer) -> None:
    """Click's help formatter for ``target`` and its groups, not Rich's."""
    target.rich_markup_mode = None
    for group in target.registered_groups:
        if group.typer_instance is not None:
            _plain_help(group.typer_instance)


def load_command(name: str) -> click.Command:
    """Import command ``name``'s module and build its Click command."""
    entry = COMMANDS[name]
    target: Any = getattr(import_module(entry.module), entry.attribute)
    if isinstance(target, typer.Typer):
        for command, module, function in entry.extra:
            if not any(info.name == command for info in target.registered_commands):
                target.command(command)(getattr(import_module(module), function))
        _plain_help(target)
        built: click.Command = typer.main.get_group(target)
    else:
        single = typer.Typer(add_completion=False, rich_markup_mode=None)
        single.command(name)(target)
        built = typer.main.get_command(single)
    _params.install(built)
    return built


class LazyGroup(TyperGroup):
    """The top-level group: commands are imported when they run; the command list in
    ``--help`` comes from ``COMMANDS`` without importing any of them."""

    _listing = False

    def list_commands(self, ctx: click.Context) -> list[str]:
        return list(COMMANDS)

    def get_command(self, ctx: click.Context, cmd_name: str) -> click.Command | None:
        if cmd_name not in COMMANDS:
            return None
        if self._listing:
            return TyperCommand(cmd_name, help=COMMANDS[cmd_name].short_help)
        if cmd_name not in self.commands:
            self.commands[cmd_name] = load_command(cmd_name)
        return self.commands[cmd_name]

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        self._listing = True
        try:
            super().format_help(ctx, formatter)
        finally:
            self._listing = False

    def make_context(
        self,
        info_name: str | None,
        args: list[str],
        parent: click.Context | None = None,
        **extra: Any,
    ) -> click.Context:
        _params.install(self)  # the root's own options: --context
        return super().make_context(info_name, args, parent, **extra)

    def shell_complete(self, ctx: click.Context, incomplete: str) -> list[Any]:
        """The command names, each with its help from ``COMMANDS``, importing none."""
        self._listing = True
        try:
            return super().shell_complete(ctx, incomplete)
        finally:
            self._listing = False

    def _main_shell_completion(
        self,
        ctx_args: MutableMapping[str, Any],
        prog_name: str,
        complete_var: str | None = None,
    ) -> None:
        """The shell completion protocol: ``_STOCKADE_COMPLETE`` set to ``bash_complete`` or
        ``bash_source`` (Click's order) or ``complete_bash`` (Typer's, which the scripts of
        ``stockade completion`` use), likewise for zsh and fish."""
        instruction = os.environ.get(complete_var or COMPLETE_VAR)
        if not instruction:
            return
        from stockade.cli.completion import complete

        sys.exit(complete(self, ctx_args, "stockade", complete_var or COMPLETE_VAR, instruction))


app = typer.Typer(
    name="stockade",
    cls=LazyGroup,
    help="Distributed Trusted Computing: TPM-attested nodes and provable containers.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
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
    ctx: typer.Context,
    show_version: bool = typer.Option(
        False, "--version", is_eager=True, callback=_version, help="Print the version and exit."
    ),
    context: Annotated[
        str | None,
        typer.Option(
            "--context",
            envvar="STOCKADE_CONTEXT",
            metavar="NAME",
            help="reach the verifier of this context (stockade config) for this command "
            "[default: the current context]",
        ),
    ] = None,
) -> None:
    """Distributed Trusted Computing: TPM-attested nodes and provable containers."""
    if context is not None:
        from stockade.cli.contexts import META_KEY

        ctx.meta[META_KEY] = context


def _json_requested(arguments: list[str]) -> bool:
    """``--format json`` (or ``--format=json``) on the command line: errors are JSON too."""
    for index, argument in enumerate(arguments):
        if argument == "--format=json":
            return True
        if argument == "--format" and arguments[index + 1 : index + 2] == ["json"]:
            return True
    return False


def main() -> None:
    """Console entry point: typed errors become one line on stderr and an exit code.

    Usage errors are Click's own (exit 2 with a usage line); anything Stockade
    raises on purpose is a ``StockadeError`` carrying its exit code.
    """
    try:
        app()
    except StockadeError as error:
        if _json_requested(sys.argv[1:]):
            import json

            document = {"error": error.code, "detail": str(error)}
            print(json.dumps(document), file=sys.stderr)
        else:
            print(f"stockade: {error}", file=sys.stderr)
        sys.exit(error.exit_code)
    except KeyboardInterrupt:
        print("stockade: interrupted", file=sys.stderr)
        sys.exit(130)
