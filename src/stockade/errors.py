"""The root of every error Stockade raises on purpose.

Each error carries the exit code the CLI uses for it (DESIGN.md, "CLI"):
1 for a verification that failed, 2 for bad usage or unreadable input.
"""

from __future__ import annotations


class StockadeError(Exception):
    """Base class; ``exit_code`` tells the CLI how to exit."""

    exit_code: int = 2


class VerificationFailed(StockadeError):
    """Evidence was readable and checked, and it does not hold."""

    exit_code = 1


class InputError(StockadeError):
    """A file, argument or structure could not be read."""

    exit_code = 2


class TpmUnavailable(StockadeError):
    """The TPM named by a TCTI string cannot be reached or refused a command."""

    exit_code = 2
