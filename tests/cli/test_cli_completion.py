"""Shell completion: the protocol the scripts speak (``_STOCKADE_COMPLETE`` with
``COMP_WORDS``/``COMP_CWORD``), run against the installed ``stockade``; the scripts
``stockade completion bash|zsh|fish`` print, and bash sourcing and using its own."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest

from stockade.cli.completion import typer_instruction
from support.cli import run_stockade, stockade_executable

pytestmark = pytest.mark.tools


def _complete(words: str, instruction: str = "bash_complete") -> list[str]:
    """What ``stockade`` answers bash for the command line ``words`` (the cursor on its
    last word, empty after a trailing space)."""
    split = words.split()
    cword = len(split) if words.endswith(" ") else len(split) - 1
    env = {
        **os.environ,
        "_STOCKADE_COMPLETE": instruction,
        "COMP_WORDS": words,
        "COMP_CWORD": str(cword),
    }
    done = run_stockade(env=env)
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr
    return done.stdout.split()


def test_a_command_name_completes():
    assert _complete("stockade no") == ["nodes"]
    assert _complete("stockade con") == ["config"]
    assert {"nodes", "results", "log", "config", "completion"} <= set(_complete("stockade "))


def test_subcommands_of_a_lazily_loaded_group_complete():
    assert _complete("stockade nodes l") == ["list", "label"]
    assert _complete("stockade config use") == ["use-context"]
    assert _complete("stockade log ") == ["checkpoint", "verify", "monitor"]


def test_options_and_choices_complete():
    assert "--format" in _complete("stockade nodes list --f")
    assert _complete("stockade nodes list --format ") == ["text", "json"]
    assert _complete("stockade completion ") == ["bash", "zsh", "fish"]


def test_typers_instruction_order_is_accepted_too():
    assert _complete("stockade no", "complete_bash") == ["nodes"]
    assert typer_instruction("bash_complete") == "complete_bash"
    assert typer_instruction("zsh_source") == "source_zsh"
    assert typer_instruction("complete_fish") == "complete_fish"


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_the_script_calls_stockade_back(shell: str):
    done = run_stockade("completion", shell)
    assert done.returncode == 0, done.stderr
    assert f"_STOCKADE_COMPLETE=complete_{shell}" in done.stdout
    assert "stockade" in done.stdout


def test_an_unknown_shell_is_a_usage_error():
    done = run_stockade("completion", "tcsh")
    assert done.returncode == 2 and "Traceback" not in done.stderr


def test_the_bash_script_sources_and_completes():
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash")
    directory = os.path.dirname(stockade_executable())
    script = """
set -e
eval "$(stockade completion bash)"
complete -p stockade
COMP_WORDS=(stockade no); COMP_CWORD=1
_stockade_completion stockade
echo "reply: ${COMPREPLY[*]}"
COMP_WORDS=(stockade nodes l); COMP_CWORD=2
_stockade_completion stockade
echo "reply: ${COMPREPLY[*]}"
"""
    done = subprocess.run(
        [bash, "--norc", "--noprofile", "-c", script],
        env={**os.environ, "PATH": f"{directory}{os.pathsep}{os.environ.get('PATH', '')}"},
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    lines = done.stdout.splitlines()
    assert lines[0] == "complete -o default -F _stockade_completion stockade"
    assert lines[1:] == ["reply: nodes", "reply: list label"]
