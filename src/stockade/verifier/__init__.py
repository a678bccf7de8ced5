"""The verifier service: enrollment, attestation, results, node states and events.

A thin shell over ``stockade.evidence`` and ``stockade.appraisal``: it owns the
HTTP API, the database and the deadlines. Start it with ``stockade verifier
serve`` or build the app in-process with :func:`create_app`.
"""

from stockade.verifier.app import create_app
from stockade.verifier.config import VerifierConfig

__all__ = ["VerifierConfig", "create_app"]
