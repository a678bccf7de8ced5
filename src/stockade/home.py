"""Where Stockade keeps local state: ``$STOCKADE_HOME``, or ``~/.stockade``."""

from __future__ import annotations

import os
from pathlib import Path


def stockade_home() -> Path:
    home = os.environ.get("STOCKADE_HOME")
    return Path(home) if home else Path.home() / ".stockade"
