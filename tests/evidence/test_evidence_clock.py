"""Clock continuity between two quotes of one TPM (TPMS_CLOCK_INFO)."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.evidence import ClockInfo, ClockRollback, QuoteInvalid
from stockade.evidence.clock import check_clock_progression, is_new_boot

BEFORE = ClockInfo(clock=1_000_000, reset_count=10, restart_count=3, safe=True)


@pytest.mark.parametrize(
    ("after", "check"),
    [
        (ClockInfo(2_000_000, 9, 3, True), "resetCount"),
        (ClockInfo(2_000_000, 0, 0, True), "resetCount"),
        (ClockInfo(2_000_000, 10, 2, True), "restartCount"),
        (ClockInfo(1_000_000, 10, 3, True), "clock"),  # the same quote twice
        (ClockInfo(999_999, 10, 3, True), "clock"),
        (ClockInfo(0, 10, 3, False), "clock"),
    ],
)
def test_rollback_is_rejected_with_the_counter_that_went_back(after, check):
    with pytest.raises(ClockRollback) as caught:
        check_clock_progression(BEFORE, after)
    assert caught.value.check == check
    assert isinstance(caught.value, QuoteInvalid)
    assert caught.value.exit_code == 1
    assert not is_new_boot(BEFORE, after)


def test_rollback_messages_name_the_values():
    with pytest.raises(ClockRollback, match="went back from 10 to 9"):
        check_clock_progression(BEFORE, ClockInfo(2_000_000, 9, 3, True))
    with pytest.raises(ClockRollback, match="went back from 3 to 2 within resetCount 10"):
        check_clock_progression(BEFORE, ClockInfo(2_000_000, 10, 2, True))
    with pytest.raises(ClockRollback, match="1000000 ms then 999999 ms"):
        check_clock_progression(BEFORE, ClockInfo(999_999, 10, 3, True))


@pytest.mark.parametrize(
    "after",
    [
        ClockInfo(1_000_001, 10, 3, True),  # same boot, clock advanced
        ClockInfo(5_000, 11, 0, True),  # reboot: resetCount+1, clock smaller, restart reset
        ClockInfo(5_000, 11, 7, False),
        ClockInfo(5_000, 10, 4, True),  # resume from hibernate: restartCount+1
        ClockInfo(1_000_000, 10, 4, True),
    ],
)
def test_forward_progress_is_accepted(after):
    check_clock_progression(BEFORE, after)


def test_reboot_is_a_new_boot_and_restart_is_not():
    reboot = ClockInfo(5_000, 11, 0, True)
    check_clock_progression(BEFORE, reboot)
    assert is_new_boot(BEFORE, reboot)
    assert not is_new_boot(BEFORE, ClockInfo(5_000, 10, 4, True))
    assert not is_new_boot(BEFORE, ClockInfo(2_000_000, 10, 3, True))


counters = st.integers(0, 2**32 - 1)
clocks = st.builds(ClockInfo, st.integers(0, 2**64 - 1), counters, counters, st.booleans())


@settings(max_examples=300)
@given(clocks, clocks)
def test_exactly_one_order_of_two_distinct_boot_states_is_accepted(a, b):
    """Progression is a strict order on (resetCount, restartCount, clock)."""

    def accepted(previous, current):
        try:
            check_clock_progression(previous, current)
        except ClockRollback:
            return False
        return True

    key_a = (a.reset_count, a.restart_count, a.clock)
    key_b = (b.reset_count, b.restart_count, b.clock)
    assert accepted(a, b) == (key_a < key_b)
    assert accepted(b, a) == (key_b < key_a)
    assert is_new_boot(a, b) == (b.reset_count > a.reset_count)
