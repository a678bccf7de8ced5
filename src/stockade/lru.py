"""A small thread-safe least-recently-used cache of values built on demand (pure: standard
library only). The build runs outside the lock, so a slow build for one key never makes
readers of another wait; two threads missing the same key may both build it, and the
second's value is kept (builds are deterministic)."""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Callable, Hashable
from typing import Generic, TypeVar

K = TypeVar("K", bound=Hashable)
V = TypeVar("V")


class LruCache(Generic[K, V]):
    """At most ``kept`` values; the least recently used is dropped first."""

    def __init__(self, kept: int) -> None:
        self.kept = kept
        self.built = 0  # how many values were built (tests read it)
        self._lock = threading.Lock()
        self._entries: OrderedDict[K, V] = OrderedDict()

    def get(self, key: K, build: Callable[[], V]) -> V:
        with self._lock:
            found = self._entries.get(key)
            if found is not None:
                self._entries.move_to_end(key)
                return found
        made = build()
        with self._lock:
            self.built += 1
            self._entries[key] = made
            self._entries.move_to_end(key)
            while len(self._entries) > self.kept:
                self._entries.popitem(last=False)
        return made

    def __len__(self) -> int:
        return len(self._entries)
