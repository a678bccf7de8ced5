"""The benchmarks (``bench/``, at the repository's root) are importable from these tests
however pytest is started (``python -m pytest`` puts the root on the path; ``pytest`` does not)."""

from __future__ import annotations

import sys
from pathlib import Path

ROOT = str(Path(__file__).resolve().parents[2])
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)
