"""``stockade completion bash|zsh|fish``: the shell completion script, and the completion
protocol it speaks.

The script calls ``stockade`` back with ``_STOCKADE_COMPLETE`` set (``complete_bash`` and
``COMP_WORDS``/``COMP_CWORD`` for bash); ``LazyGroup._main_shell_completion`` hands that to
``complete`` here, which answers with Typer's completion classes. Completing a command name
imports no command module (``LazyGroup.shell_complete``); completing inside a group imports
that group's module only.
"""

from __future__ import annotations

from collections.abc import MutableMapping
from enum import StrEnum
from typing import Annotated, Any

import typer
from typer import _click as click

SHELLS = ("bash", "zsh", "fish")


class Shell(StrEnum):
    BASH = "bash"
    ZSH = "zsh"
    FISH = "fish"


def typer_instruction(instruction: str) -> str:
    """Typer's ``complete_bash`` from Click's ``bash_complete`` (``source`` likewise);
    anything else unchanged."""
    shell, _, action = instruction.partition("_")
    if shell in SHELLS and action in ("complete", "source"):
        return f"{action}_{shell}"
    return instruction


def complete(
    command: click.Command,
    ctx_args: MutableMapping[str, Any],
    prog_name: str,
    complete_var: str,
    instruction: str,
) -> int:
    """Answer one completion request (``instruction``, from ``complete_var``); the exit code."""
    from typer._completion_classes import completion_init
    from typer.completion import shell_complete

    completion_init()
    return shell_complete(
        command, ctx_args, prog_name, complete_var, typer_instruction(instruction)
    )


def completion(
    shell: Annotated[Shell, typer.Argument(help="bash, zsh or fish")],
) -> None:
    """Print the shell completion script: eval "$(stockade completion bash)".

    For zsh, ``eval "$(stockade completion zsh)"`` after ``compinit``; for fish,
    ``stockade completion fish | source``. Command names complete without loading any
    command; options and subcommands of a group load that group only.
    """
    from typer._completion_shared import get_completion_script

    from stockade.cli import COMPLETE_VAR

    typer.echo(get_completion_script(prog_name="stockade", complete_var=COMPLETE_VAR, shell=shell))
