"""The one way tests run the ``stockade`` command line: the entry point installed beside
this Python (``$STOCKADE_EXECUTABLE`` overrides it), as a child process whose output is
captured as text and whose exit code is the test's to check.

A test that runs it needs the installed tools, not only the code: ``tests/conftest.py``
marks it ``tools``, so ``make test-core`` leaves it out.
"""

from __future__ import annotations

import subprocess
from collections.abc import Mapping
from pathlib import Path

from stockade.demo.cluster import stockade_executable

__all__ = ["DEFAULT_TIMEOUT", "run_stockade", "stockade_command", "stockade_executable"]

# Long enough for the slowest command the tests run (a release build on a busy machine),
# short enough that a hung command fails the test rather than the whole run.
DEFAULT_TIMEOUT = 120.0


def stockade_command(*args: object) -> list[str]:
    """``[<stockade>, *args]``, each argument as text (paths included)."""
    return [stockade_executable(), *map(str, args)]


def run_stockade(
    *args: object,
    env: Mapping[str, str] | None = None,
    input: str | None = None,
    timeout: float | None = DEFAULT_TIMEOUT,
    cwd: Path | str | None = None,
) -> subprocess.CompletedProcess[str]:
    """Run ``stockade *args``: text, stdout and stderr captured, never raising on its exit.

    ``env`` replaces the environment, as in :func:`subprocess.run` (``None``: inherit it).
    """
    return subprocess.run(
        stockade_command(*args),
        env=None if env is None else dict(env),
        input=input,
        capture_output=True,
        text=True,
        check=False,
        timeout=timeout,
        cwd=cwd,
    )
