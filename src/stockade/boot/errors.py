"""Typed errors of the development boot chain."""

from __future__ import annotations

from stockade.errors import InputError, VerificationFailed


class BootInputError(InputError):
    """A platform, release or image that cannot be booted at all (missing, unreadable,
    malformed, a tool that is not installed): exit 2."""


class BootHalted(VerificationFailed):
    """Secure Boot refused a stage: the boot stopped before that image ran (exit 1).

    ``stage`` is the chain's name for the image ("shim", "grub", "kernel"), ``path``
    where it was loaded from on the ESP, ``reason`` why it was refused.
    """

    def __init__(self, stage: str, path: str, reason: str) -> None:
        super().__init__(f"Secure Boot halted the boot at {stage} ({path}): {reason}")
        self.stage = stage
        self.path = path
        self.reason = reason
