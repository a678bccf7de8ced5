"""What every fuzz target shares: atheris when it is installed, nothing when it is not.

Targets import their code under ``instrumented()`` so atheris sees coverage, and
call ``fuzz(test_one_input)`` when run as a script. Without atheris the targets
still import, so tests/evidence/test_fuzz_targets.py drives them directly.
"""

from __future__ import annotations

import contextlib
import sys
from collections.abc import Callable
from contextlib import AbstractContextManager
from typing import Any

atheris: Any
try:
    import atheris
except ImportError:  # the tests import the targets without atheris
    atheris = None


def instrumented() -> AbstractContextManager[object]:
    return atheris.instrument_imports() if atheris else contextlib.nullcontext()


def fuzz(test_one_input: Callable[[bytes], None]) -> None:
    if atheris is None:
        sys.exit(f"{sys.argv[0]} needs atheris (pip install atheris)")
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()
