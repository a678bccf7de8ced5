"""The root of every error Stockade raises on purpose.

Each error carries the exit code the CLI uses for it (DESIGN.md, "CLI"):
1 for a verification that failed, 2 for bad usage or unreadable input.
"""

from __future__ import annotations


class StockadeError(Exception):
    """Base class; ``exit_code`` tells the CLI how to exit, ``code`` names the kind of error
    (lower case, words joined by hyphens, as the verifier's ``error`` codes are) for output
    read by programs (``--format json``)."""

    exit_code: int = 2
    code: str = "error"


class VerificationFailed(StockadeError):
    """Evidence was readable and checked, and it does not hold."""

    exit_code = 1
    code = "verification-failed"


class InputError(StockadeError):
    """A file, argument or structure could not be read."""

    exit_code = 2
    code = "input"


class TpmUnavailable(StockadeError):
    """The TPM named by a TCTI string cannot be reached or refused a command."""

    exit_code = 2
    code = "tpm-unavailable"
