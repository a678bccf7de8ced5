"""Shell: the node agent. Enrolls the node's TPM with a verifier and keeps attesting.

``client`` speaks the verifier protocol (docs/verifier-protocol.md) over HTTPS,
``source`` finds the TPM and boot log (hardware first, else a development TPM),
``state`` keeps the AK and node id across restarts, ``loop`` runs it all.
"""

from stockade.agent.client import VerifierClient, VerifierRefused, VerifierUnavailable
from stockade.agent.loop import Agent, AgentConfig
from stockade.agent.source import NodeSource, resolve_source
from stockade.agent.state import AgentState

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
