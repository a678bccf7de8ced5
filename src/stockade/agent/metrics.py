"""What the agent tells its probe listener (``stockade agent run --probe-address``): its health
(:class:`stockade.probes.Health`) and its Prometheus metrics, in a registry of its own.

- ``/livez`` beats at every round of the attestation loop and while the loop waits between
  rounds (in slices of :data:`BEAT_SECONDS`), so it goes stale only when a round itself hangs
  (a TPM or an HTTP call that never returns), never because the verifier asked the agent to
  wait (``Retry-After`` may say five minutes). Stale after a few intervals, and never under
  ``DEFAULT_STALE_AFTER``.
- ``/readyz`` is 200 once the node is enrolled and the last round reached the verifier and was
  answered: a verdict, whatever it is (a node the verifier holds untrusted, or even revoked,
  still has a working agent, and the reason says so), and 503 with the reason while the
  verifier is unreachable, answers 5xx or refuses this agent's protocol (pending approval,
  channel key refused, ...), or the TPM cannot be used.
- ``/metrics``: attestations by verdict, their latency, errors by kind, the last attestation's
  time, the node's state at the verifier, secret releases and the OCI hook admission socket's
  decisions. Every label takes one of a few fixed values (never a node or secret name).
"""

from __future__ import annotations

import threading
import time

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stockade.probes import DEFAULT_STALE_AFTER, Health

# The node states the verifier reports (stockade.verifier.states.NodeState; not imported:
# the agent does not carry the verifier's modules).
NODE_STATES = ("pending", "enrolled", "trusted", "untrusted", "failed", "revoked")
BEAT_SECONDS = 5.0
_LATENCY_BUCKETS = (0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0)


def stale_after(interval: float, jitter: float) -> float:
    """Seconds without a beat before ``/livez`` fails: three intervals, at least the default."""
    return max(DEFAULT_STALE_AFTER, 3.0 * (interval + abs(jitter)))


class AgentMetrics:
    """The agent's metrics in its own ``CollectorRegistry`` (tests run several agents)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.attestations = Counter(
            "stockade_agent_attestations",
            "Attestations the verifier answered, by the result's status (affirming, warning, "
            "contraindicated)",
            ["status"],
            registry=registry,
        )
        self.attestation_seconds = Histogram(
            "stockade_agent_attestation_seconds",
            "One attestation: nonce, quote in the TPM, evidence sent, answer received",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.errors = Counter(
            "stockade_agent_errors",
            "Failed rounds and actions by kind: unreachable, tls, server-error, rate-limited, "
            "pending, unknown-node, revoked, refused, tpm, certificate, secret",
            ["kind"],
            registry=registry,
        )
        self.last_attestation = Gauge(
            "stockade_agent_last_attestation_timestamp_seconds",
            "When the verifier last answered an attestation of this node (Unix time)",
            registry=registry,
        )
        self.node_state = Gauge(
            "stockade_agent_node_state",
            "1 for the node's state at the verifier as last reported to this agent, else 0",
            ["state"],
            registry=registry,
        )
        for state in NODE_STATES:
            self.node_state.labels(state).set(0)
        self.secret_releases = Counter(
            "stockade_agent_secret_releases",
            "Secrets fetched after an affirming result, by outcome: released (a release "
            "verified under the pinned verifier key, kept sealed and delivered if asked), "
            "refused (its release did not verify: nothing kept), failed (the verifier or the "
            "TPM refused, e.g. no grant)",
            ["outcome"],
            registry=registry,
        )
        self.hook_decisions = Counter(
            "stockade_agent_hook_decisions",
            "Container starts the OCI hook admission socket decided: admitted or refused",
            ["decision"],
            registry=registry,
        )
        self._lock = threading.Lock()
        self._states = set(NODE_STATES)

    def attested(self, status: str, state: str, seconds: float) -> None:
        self.attestations.labels(status).inc()
        self.attestation_seconds.observe(seconds)
        self.last_attestation.set(time.time())
        self.in_state(state)

    def in_state(self, state: str) -> None:
        with self._lock:
            self._states.add(state)
            for known in self._states:
                self.node_state.labels(known).set(1 if known == state else 0)

    def error(self, kind: str) -> None:
        self.errors.labels(kind).inc()

    def secret(self, outcome: str) -> None:
        self.secret_releases.labels(outcome).inc()

    def hook_decision(self, admitted: bool) -> None:
        self.hook_decisions.labels("admitted" if admitted else "refused").inc()


class AgentTelemetry:
    """The health and the metrics one agent reports; the loop calls these, the probe
    listener serves them."""

    def __init__(self, stale_after: float = DEFAULT_STALE_AFTER) -> None:
        self.health = Health(stale_after=stale_after)
        self.health.ready(False, "not enrolled yet: no attestation round has ended")
        self.metrics = AgentMetrics()
