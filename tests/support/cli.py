"""The one way tests run the ``stockade`` command line: the entry point installed beside
this Python (``$STOCKADE_EXECUTABLE`` overrides it), as a child process whose output is
captured as text and whose exit code is the test's to check.

A test that runs it needs the installed tools, not only the code: ``tests/conftest.py``
marks it ``tools``, so ``make test-core`` leaves it out.
"""

from __future__ import annotations

import json
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


def one_error_line(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The command failed cleanly with exit ``code``: one line on stderr and no traceback,
    ``stockade: <message>``, or with ``--format json`` one ``{"error", "detail"}`` object.
    The message, as ``stockade: <message>`` either way."""
    assert result.returncode == code, (result.stdout, result.stderr)
    assert "Traceback" not in result.stderr
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, result.stderr
    if lines[0].startswith("{"):
        document = json.loads(lines[0])
        assert set(document) == {"error", "detail"} and document["error"], document
        return f"stockade: {document['detail']}"
    assert lines[0].startswith("stockade: "), lines[0]
    return lines[0]
