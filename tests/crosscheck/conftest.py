"""Helpers for driving tpm2-tools against a software TPM."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest

from support.cli import run_stockade

__all__ = ["Tools", "make_tools", "run_stockade"]


@pytest.fixture(scope="session", autouse=True)
def _require_tpm2_tools() -> None:
    if shutil.which("tpm2_checkquote") is None:
        pytest.skip("tpm2-tools not installed (Debian tpm2-tools; scripts/bootstrap.sh)")


Tools = Callable[..., subprocess.CompletedProcess[str]]


def make_tools(tcti: str, cwd: Path) -> Tools:
    """Run a tpm2-tools command against ``tcti`` in ``cwd``.

    swtpm has no resource manager, so after each command every transient
    object and session the tool left loaded is flushed.
    """

    def run(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
        result = subprocess.run(
            [args[0], "-T", tcti, *args[1:]], cwd=cwd, capture_output=True, text=True, check=False
        )
        for kind in ("-t", "-s"):
            subprocess.run(
                ["tpm2_flushcontext", "-T", tcti, kind], cwd=cwd, capture_output=True, check=False
            )
        if check and result.returncode != 0:
            raise AssertionError(f"{' '.join(args)} failed: {result.stderr.strip()}")
        return result

    return run
