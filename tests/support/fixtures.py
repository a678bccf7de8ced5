"""The real evidence in ``../shared/fixtures`` (never copied into the repository): where it is,
and which event logs it holds. Tests skip with a reason when the folder is absent."""

from __future__ import annotations

from pathlib import Path

SHARED = Path(__file__).resolve().parents[2].parent / "shared" / "fixtures"

# Every real event log, by name, with the folder it is in.
EVENT_LOGS = {
    "event-arch-linux": "eventlogs",
    "event-bootorder": "eventlogs",
    "event-gce-ubuntu-2104-log": "eventlogs",
    "event-moklisttrusted": "eventlogs",
    "event-postcode": "eventlogs",
    "event-sd-boot-fedora37": "eventlogs",
    "event-uefi-sha1-log": "eventlogs",
    "event-uefiaction": "eventlogs",
    "event-uefiservices": "eventlogs",
    "event-uefivar": "eventlogs",
    "keylime-shim-grub": "real-machines",
    "keylime-shim-grub-secureboot": "real-machines",
}


def event_log_path(name: str) -> Path:
    """``<shared>/fixtures/<folder>/<name>.bin``."""
    return SHARED / EVENT_LOGS[name] / f"{name}.bin"
