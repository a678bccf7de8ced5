"""Full-jitter retry delays (``agent/backoff.py``): each delay within its doubling, capped
ceiling; and a fleet that lost the verifier at one moment does not come back in lockstep,
which plain exponential backoff (every agent at 0.5, 1.5, 3.5 s...) would."""

from __future__ import annotations

import random
from collections import Counter

from stockade.agent.backoff import FullJitterBackoff

FLEET = 1000


def test_each_delay_is_within_its_capped_doubling():
    backoff = FullJitterBackoff(0.5, 30.0, random.Random(1))
    ceilings = [0.5, 1.0, 2.0, 4.0, 8.0, 16.0, 30.0, 30.0, 30.0]
    for ceiling in ceilings:
        assert backoff.ceiling() == ceiling
        assert 0.0 <= backoff.next_delay() <= ceiling
    backoff.reset()
    assert backoff.ceiling() == 0.5
    many = FullJitterBackoff(0.5, 30.0, random.Random(2), attempt=10_000)
    assert many.ceiling() == 30.0  # no overflow however long the outage


def test_delays_cover_the_whole_interval():
    rng = random.Random(3)
    delays = [FullJitterBackoff(1.0, 30.0, rng, attempt=3).next_delay() for _ in range(FLEET)]
    assert min(delays) < 0.5 and max(delays) > 7.5  # [0, 8]: not a fixed wait
    low = sum(delay < 4.0 for delay in delays) / FLEET
    assert 0.4 < low < 0.6  # uniform: half below the middle


def _arrivals(delays_of_one_agent) -> list[float]:
    """When one agent asks again: the running sum of its retry delays (first 5 retries)."""
    times, now = [], 0.0
    for delay in delays_of_one_agent:
        now += delay
        times.append(now)
    return times


def _busiest_window(arrivals: list[float]) -> int:
    """The most requests in one 100 ms window."""
    return Counter(int(t / 0.1) for t in arrivals).most_common(1)[0][1]


def test_a_fleet_does_not_come_back_in_lockstep():
    jittered: list[float] = []
    plain: list[float] = []
    for agent in range(FLEET):
        backoff = FullJitterBackoff(0.5, 30.0, random.Random(agent))
        jittered += _arrivals(backoff.next_delay() for _ in range(5))[2:]
        plain += _arrivals([0.5, 1.0, 2.0, 4.0, 8.0])[2:]  # every agent alike
    # Plain exponential backoff: from the third retry on, the whole fleet in one window each
    # time; with full jitter, no window holds a tenth of it.
    assert _busiest_window(plain) == FLEET
    assert _busiest_window(jittered) < FLEET * 0.1, _busiest_window(jittered)
