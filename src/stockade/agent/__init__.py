"""Shell: the node agent. Enrolls the node's TPM with a verifier and keeps attesting.

``client`` speaks the verifier protocol (docs/verifier-protocol.md) over HTTPS,
``source`` finds the TPM and boot log (hardware first, else a development TPM),
``state`` keeps the AK and node id across restarts, ``loop`` runs it all.

Names are imported on first use: the OCI hook lives in this package and is on the container
start path, so importing ``stockade.agent.oci_hook`` must not pull in httpx and the loop.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from stockade.agent.client import VerifierClient, VerifierRefused, VerifierUnavailable
    from stockade.agent.loop import Agent, AgentConfig
    from stockade.agent.source import NodeSource, resolve_source
    from stockade.agent.state import AgentState

_HOMES = {
    "Agent": "loop",
    "AgentConfig": "loop",
    "AgentState": "state",
    "NodeSource": "source",
    "VerifierClient": "client",
    "VerifierRefused": "client",
    "VerifierUnavailable": "client",
    "resolve_source": "source",
}

__all__ = [
    "Agent",
    "AgentConfig",
    "AgentState",
    "NodeSource",
    "VerifierClient",
    "VerifierRefused",
    "VerifierUnavailable",
    "resolve_source",
]


def __getattr__(name: str) -> Any:
    module = _HOMES.get(name)
    if module is None:
        raise AttributeError(f"module 'stockade.agent' has no attribute {name!r}")
    return getattr(importlib.import_module(f"stockade.agent.{module}"), name)
