"""Time that cannot step back inside a process: every deadline the verifier keeps (trust,
nonces, status statements) is measured with it, so a wall-clock step back never extends one."""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

log = logging.getLogger(__name__)

# NTP slews the wall clock by at most 500 ppm; this is far above what slewing accumulates
# between two readings and far below a step anyone would make on purpose.
DEFAULT_TOLERANCE_SECONDS = 1.0


def _wall() -> datetime:
    return datetime.now(UTC)


class SteadyClock:
    """Wall time at start plus monotonic time elapsed since.

    A wall clock ahead of that by more than ``tolerance_seconds`` is adopted (a forward step
    fails closed: deadlines pass sooner); a wall clock behind it is ignored and the step is
    logged once. The time returned never decreases.
    """

    def __init__(
        self,
        wall: Callable[[], datetime] = _wall,
        monotonic: Callable[[], float] = time.monotonic,
        tolerance_seconds: float = DEFAULT_TOLERANCE_SECONDS,
    ) -> None:
        self._wall = wall
        self._monotonic = monotonic
        self._tolerance = timedelta(seconds=tolerance_seconds)
        self._lock = threading.Lock()
        self._base = wall()
        self._base_monotonic = monotonic()
        self._last = self._base
        self._behind = False

    def __call__(self) -> datetime:
        wall = self._wall()
        elapsed = self._monotonic() - self._base_monotonic
        with self._lock:
            steady = max(self._base + timedelta(seconds=elapsed), self._last)
            if wall > steady + self._tolerance:
                self._base, self._base_monotonic = wall, self._monotonic()
                steady = wall
                if self._behind:
                    log.warning("wall clock caught up; following it again")
                self._behind = False
            elif wall < steady - self._tolerance and not self._behind:
                self._behind = True
                log.warning(
                    "wall clock stepped back %.1f s; keeping monotonic time until it catches up",
                    (steady - wall).total_seconds(),
                )
            elif self._behind and wall >= steady - self._tolerance:
                self._behind = False
            self._last = steady
            return steady
