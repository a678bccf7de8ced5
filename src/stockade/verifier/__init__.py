"""The verifier service: enrollment, attestation, results, node states and events.

A thin shell over ``stockade.evidence`` and ``stockade.appraisal``: it owns the
HTTP API, the database and the deadlines. Start it with ``stockade verifier
serve`` or build the app in-process with :func:`create_app`.

The app (FastAPI, SQLAlchemy, Alembic) is imported on first use, so commands that only need
``stockade.verifier.config`` or the client start quickly.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stockade.verifier.app import create_app
    from stockade.verifier.config import VerifierConfig

__all__ = ["VerifierConfig", "create_app"]


def __getattr__(name: str) -> Any:
    if name == "create_app":
        from stockade.verifier.app import create_app

        return create_app
    if name == "VerifierConfig":
        from stockade.verifier.config import VerifierConfig

        return VerifierConfig
    raise AttributeError(f"module 'stockade.verifier' has no attribute {name!r}")
