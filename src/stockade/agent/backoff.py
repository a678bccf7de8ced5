"""Retry delays with full jitter (the AWS Architecture Blog's "Exponential Backoff And
Jitter", 2015): the n-th retry waits a uniformly random time in ``[0, min(cap, base * 2**n)]``.

Plain exponential backoff keeps a fleet in lockstep: every agent that lost the verifier at the
same moment asks again at the same moments, and a recovering verifier meets the whole fleet at
once, again and again. Drawing each delay from the whole interval spreads them; the expected
wait is half the plain backoff's, and the ceiling still doubles to ``cap``.
"""

from __future__ import annotations

import random
from dataclasses import dataclass, field

MAX_EXPONENT = 62  # 2**62 * any sane base is past every cap; no float overflow


@dataclass
class FullJitterBackoff:
    """The delays of one agent's consecutive failures; :meth:`reset` after a success."""

    base: float
    cap: float
    rng: random.Random = field(default_factory=random.Random)
    attempt: int = 0

    def ceiling(self) -> float:
        """The longest the next delay may be."""
        growth = float(2 ** min(self.attempt, MAX_EXPONENT))
        return min(self.cap, self.base * growth)

    def next_delay(self) -> float:
        delay = self.rng.uniform(0.0, self.ceiling())
        self.attempt += 1
        return delay

    def reset(self) -> None:
        self.attempt = 0
