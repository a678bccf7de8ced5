"""CLI start-up: ``stockade --help`` and ``stockade --version`` wall time against
``python3 -c "import typer, rich"`` in the same run, median of 10 or more, as a ratio
(issue "one place for each rule", "Measure")."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from bench.timing import Row, median_seconds

STOCKADE = str(Path(sys.executable).with_name("stockade"))


def _run(*command: str) -> None:
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def run(rounds: int) -> list[Row]:
    rounds = max(rounds, 10)
    baseline = median_seconds(lambda: _run(sys.executable, "-c", "import typer, rich"), rounds)
    help_time = median_seconds(lambda: _run(STOCKADE, "--help"), rounds)
    version = median_seconds(lambda: _run(STOCKADE, "--version"), rounds)
    return [
        ('python3 -c "import typer, rich"', baseline * 1e3, "ms"),
        ("stockade --help", help_time * 1e3, "ms"),
        ("stockade --version", version * 1e3, "ms"),
        ("stockade --help / import typer, rich", help_time / baseline, "ratio"),
    ]
