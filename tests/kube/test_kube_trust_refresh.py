"""``CachedTrustSource`` refreshes once for everyone waiting: requests that find the cache
stale while a refresh runs use that refresh's view or error, instead of each fetching and
verifying the fleet statement again (which made the webhook's p99 about a second under
concurrent load, bench/kube.py). Errors are still not cached for later requests."""

from __future__ import annotations

import threading
import time

import pytest
from kube_support import PINNED, FakeClock, fleet_answer

from stockade.kube.trust import CachedTrustSource, TrustUnavailable
from stockade.statements import FleetEntry

WAITERS = 8


class SlowVerifier:
    def __init__(self, fail: bool = False) -> None:
        self.calls = 0
        self.fail = fail
        self.answer = fleet_answer([FleetEntry("id-a", "node-a", "trusted", None, "r-a")])

    def __call__(self) -> dict:
        self.calls += 1
        time.sleep(0.3)
        if self.fail:
            raise ConnectionError("verifier unreachable")
        return self.answer


def _all_at_once(source: CachedTrustSource) -> list[object]:
    outcomes: list[object] = []
    start = threading.Barrier(WAITERS)

    def ask() -> None:
        start.wait()
        try:
            outcomes.append(source.snapshot())
        except TrustUnavailable as error:
            outcomes.append(error)

    threads = [threading.Thread(target=ask) for _ in range(WAITERS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(10)
    assert len(outcomes) == WAITERS
    return outcomes


def test_concurrent_stale_requests_share_one_refresh():
    verifier = SlowVerifier()
    source = CachedTrustSource(verifier, PINNED, ttl=60.0, clock=FakeClock())
    outcomes = _all_at_once(source)
    assert verifier.calls == 1
    assert all(isinstance(nodes, dict) and "node-a" in nodes for nodes in outcomes), outcomes


def test_concurrent_requests_share_a_failed_refresh_and_later_ones_retry():
    verifier = SlowVerifier(fail=True)
    source = CachedTrustSource(verifier, PINNED, ttl=60.0, clock=FakeClock())
    outcomes = _all_at_once(source)
    assert verifier.calls == 1
    assert all(isinstance(error, TrustUnavailable) for error in outcomes), outcomes
    assert all("unreachable" in str(error) for error in outcomes)
    verifier.fail = False  # the next request, after the failure, asks again
    assert "node-a" in source.snapshot()
    assert verifier.calls == 2


def test_a_stale_cache_is_never_used_while_refreshing():
    verifier = SlowVerifier()
    source = CachedTrustSource(verifier, PINNED, ttl=0.0, clock=FakeClock())
    source.snapshot()
    verifier.fail = True
    with pytest.raises(TrustUnavailable):
        source.snapshot()
