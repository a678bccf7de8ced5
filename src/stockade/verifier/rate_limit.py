"""Bounds on what unauthenticated or cheap requests may cost: token buckets per key, and
concurrency slots per key and in total.

``TokenBucket`` is generic (enrollment per client address here; anything keyed by a string
elsewhere). ``limit_enrollment`` is the FastAPI dependency for the unauthenticated enrollment
routes: 429 ``rate-limited`` with ``Retry-After`` once an address spends its burst faster than
``VerifierConfig.enrollment_rate_per_minute`` refills it. Everything is in memory, per process:
a restart forgets it, and replicas count separately (each bound still holds per replica).
"""

from __future__ import annotations

import math
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field

from fastapi import Request

from stockade.verifier.errors import VerifierError

ENROLLMENT_BURST = 20
DEFAULT_MAX_KEYS = 10_000


class TooManyRequests(VerifierError):
    """429 with ``Retry-After`` (whole seconds, at least 1)."""

    status = 429
    code = "rate-limited"

    def __init__(self, detail: str, *, retry_after: float, code: str | None = None) -> None:
        super().__init__(detail, code=code)
        self.retry_after = max(1, math.ceil(retry_after))

    @property
    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


@dataclass
class _Bucket:
    tokens: float
    updated: float


@dataclass
class TokenBucket:
    """Per-key token buckets: each key holds at most ``burst`` tokens, refilled at
    ``rate_per_second``; a request costs one. At most ``max_keys`` buckets are kept: beyond,
    the least recently used goes (a key seen again starts full, so the bound on one key is
    exact only while fewer than ``max_keys`` keys are active)."""

    rate_per_second: float
    burst: float
    max_keys: int = DEFAULT_MAX_KEYS
    clock: Callable[[], float] = time.monotonic
    _buckets: OrderedDict[str, _Bucket] = field(default_factory=OrderedDict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def __post_init__(self) -> None:
        if not (self.rate_per_second > 0 and math.isfinite(self.rate_per_second)):
            raise ValueError(f"rate must be a positive number, not {self.rate_per_second!r}")
        if not (self.burst >= 1 and math.isfinite(self.burst)):
            raise ValueError(f"burst must be at least 1, not {self.burst!r}")
        if self.max_keys < 1:
            raise ValueError(f"max_keys must be at least 1, not {self.max_keys!r}")

    @classmethod
    def per_minute(
        cls,
        rate: float,
        burst: float,
        *,
        max_keys: int = DEFAULT_MAX_KEYS,
        clock: Callable[[], float] = time.monotonic,
    ) -> TokenBucket:
        return cls(rate / 60.0, burst, max_keys=max_keys, clock=clock)

    def take(self, key: str, cost: float = 1.0) -> float:
        """Spend ``cost`` tokens of ``key``'s bucket: 0.0 when allowed, else the seconds until
        enough tokens are back (nothing is spent then)."""
        now = self.clock()
        with self._lock:
            bucket = self._buckets.pop(key, None)
            if bucket is None:
                bucket = _Bucket(self.burst, now)
            else:
                elapsed = max(0.0, now - bucket.updated)
                bucket.tokens = min(self.burst, bucket.tokens + elapsed * self.rate_per_second)
                bucket.updated = now
            self._buckets[key] = bucket  # most recently used last
            while len(self._buckets) > self.max_keys:
                self._buckets.popitem(last=False)
            if bucket.tokens >= cost:
                bucket.tokens -= cost
                return 0.0
            return (cost - bucket.tokens) / self.rate_per_second

    def __len__(self) -> int:
        with self._lock:
            return len(self._buckets)


class SlotsExhausted(Exception):
    """No slot: ``scope`` is ``"client"`` (this key's) or ``"total"``."""

    def __init__(self, scope: str, limit: int) -> None:
        super().__init__(f"{scope} limit of {limit} reached")
        self.scope = scope
        self.limit = limit


@dataclass
class ConcurrencySlots:
    """At most ``per_key`` concurrent holders per key and ``total`` in all."""

    total: int
    per_key: int
    _held: dict[str, int] = field(default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def acquire(self, key: str) -> Callable[[], None]:
        """Take a slot for ``key`` or raise :class:`SlotsExhausted`; returns its release
        (idempotent: calling it twice frees one slot)."""
        with self._lock:
            held = self._held.get(key, 0)
            if held >= self.per_key:
                raise SlotsExhausted("client", self.per_key)
            if sum(self._held.values()) >= self.total:
                raise SlotsExhausted("total", self.total)
            self._held[key] = held + 1
        released = False

        def release() -> None:
            nonlocal released
            with self._lock:
                if released:
                    return
                released = True
                left = self._held.get(key, 0) - 1
                if left > 0:
                    self._held[key] = left
                else:
                    self._held.pop(key, None)

        return release

    @contextmanager
    def slot(self, key: str) -> Iterator[None]:
        release = self.acquire(key)
        try:
            yield
        finally:
            release()

    def in_use(self, key: str | None = None) -> int:
        with self._lock:
            return sum(self._held.values()) if key is None else self._held.get(key, 0)


def client_address(request: Request) -> str:
    """The peer's address as the server saw it (no forwarded headers: a client sets those)."""
    return request.client.host if request.client is not None else "unknown"


def enrollment_limiter(rate_per_minute: float) -> TokenBucket:
    """The enrollment limiter ``create_app`` keeps in ``app.state.enrollment_limiter``."""
    return TokenBucket.per_minute(rate_per_minute, ENROLLMENT_BURST)


def limit_enrollment(request: Request) -> None:
    """FastAPI dependency for ``POST /v1/enrollments`` and its activation: 429
    ``rate-limited`` (with ``Retry-After``) when this client address is over its budget."""
    limiter: TokenBucket = request.app.state.enrollment_limiter
    address = client_address(request)
    wait = limiter.take(address)
    if wait > 0:
        raise TooManyRequests(
            f"too many enrollment requests from {address}; retry in {math.ceil(wait)} s",
            retry_after=wait,
        )
