"""The verifier client as the agent's modules import it. The client itself is
:mod:`stockade.verifier_client`, shared by the agent, the operator CLI and the Kubernetes
components (none of which may import the agent)."""

from __future__ import annotations

from stockade.verifier_client import (
    ChannelAuth,
    Enrollment,
    Nonce,
    VerifierClient,
    VerifierRefused,
    VerifierUnavailable,
    b64,
    tls_context,
    unb64,
)

__all__ = [
    "ChannelAuth",
    "Enrollment",
    "Nonce",
    "VerifierClient",
    "VerifierRefused",
    "VerifierUnavailable",
    "b64",
    "tls_context",
    "unb64",
]
