"""Freshness of a TPM's clock between two attestations (TPM 2.0 Part 1, 36 "Timing").

Within one TPM boot (same resetCount and restartCount) the clock only moves
forward. resetCount increases on every TPM Reset (reboot) and restartCount on
every Restart/Resume; neither may ever go back. A TPM whose counters move
backwards is replaying an old state or is not the same TPM.
"""

from __future__ import annotations

from stockade.evidence.attest import ClockInfo
from stockade.evidence.errors import ClockRollback


def is_new_boot(previous: ClockInfo, current: ClockInfo) -> bool:
    """True when ``current`` comes from a later TPM Reset than ``previous``."""
    return current.reset_count > previous.reset_count


def check_clock_progression(previous: ClockInfo, current: ClockInfo) -> None:
    """Raise ``ClockRollback`` unless ``current`` can follow ``previous`` on the same TPM."""
    if current.reset_count < previous.reset_count:
        raise ClockRollback(
            "resetCount",
            f"went back from {previous.reset_count} to {current.reset_count}",
        )
    if current.reset_count > previous.reset_count:
        return
    if current.restart_count < previous.restart_count:
        raise ClockRollback(
            "restartCount",
            f"went back from {previous.restart_count} to {current.restart_count} "
            f"within resetCount {current.reset_count}",
        )
    if current.restart_count > previous.restart_count:
        return
    if current.clock <= previous.clock:
        raise ClockRollback(
            "clock",
            f"did not advance within one boot: {previous.clock} ms then {current.clock} ms "
            f"(resetCount {current.reset_count}, restartCount {current.restart_count})",
        )
