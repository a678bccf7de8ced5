"""What the node controller's and the CSR approver's loops report, and whom they ask before
acting: their metrics (a per-process ``CollectorRegistry``), their :class:`~stockade.probes.
Health` (``/livez`` beats each round; ``/readyz`` is ready when the last round reached both
the verifier and the API server, leader or standby) and the leader election (no write unless
:meth:`Supervision.may_act`)."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stockade.probes import Health

if TYPE_CHECKING:
    from stockade.kube.leader import LeaderElector


def describe(error: BaseException) -> str:
    """One line for a log or a probe: an ``ApiException`` by its status and the Status
    message (never its headers), anything else by its first line."""
    status = getattr(error, "status", None)
    if isinstance(status, int) and status:
        message = ""
        body = getattr(error, "body", None)
        if isinstance(body, bytes | str):
            try:
                document = json.loads(body)
            except ValueError:
                document = None
            if isinstance(document, dict) and isinstance(document.get("message"), str):
                message = document["message"]
        reason = getattr(error, "reason", "") or ""
        return " ".join(part for part in (str(status), str(reason), message) if part)[:500]
    reason = getattr(error, "reason", None)
    if status == 0 and isinstance(reason, str) and reason.strip():  # the client's "(0)"
        return reason.strip().splitlines()[0][:500]
    text = str(error).strip().splitlines()
    return (text[0] if text else type(error).__name__)[:500]


SYNC_BUCKETS = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


class ControllerMetrics:
    """The metrics of one daemon process (``controller`` or ``approver``)."""

    def __init__(self, daemon: str) -> None:
        self.registry = CollectorRegistry()
        self.leader = Gauge(
            "stockade_leader",
            "1 while this replica holds its leader-election lease (and acts), else 0",
            ["lease"],
            registry=self.registry,
        )
        self.sync_errors = Counter(
            "stockade_sync_errors",
            "Rounds that could not reach something: verifier, api (the Kubernetes API server)",
            ["kind"],
            registry=self.registry,
        )
        self.sync_seconds = Histogram(
            "stockade_sync_seconds",
            "Duration of one full round",
            buckets=SYNC_BUCKETS,
            registry=self.registry,
        )
        self.nodes: Gauge | None = None
        self.patches: Counter | None = None
        self.decisions: Counter | None = None
        if daemon == "controller":
            self.nodes = Gauge(
                "stockade_controller_nodes",
                "Nodes by the state the last round found (trusted, or why not)",
                ["state"],
                registry=self.registry,
            )
            self.patches = Counter(
                "stockade_controller_patches",
                "Node patches applied by this replica",
                registry=self.registry,
            )
        else:
            self.decisions = Counter(
                "stockade_csr_decisions",
                "Kubelet CSR decisions recorded by this replica (approve, deny) or deferred (wait)",
                ["action"],
                registry=self.registry,
            )
        for kind in ("verifier", "api"):
            self.sync_errors.labels(kind=kind)

    def node_states(self, states: Mapping[str, int]) -> None:
        if self.nodes is None:
            return
        self.nodes.clear()
        for state, count in states.items():
            self.nodes.labels(state=state).set(count)


@dataclass
class Round:
    """What one round reached: the verifier and the API server (an error each, or None)."""

    verifier_error: str | None = None
    api_error: str | None = None
    actions: int = 0


class Supervision:
    """Shared by a daemon's loop, its leader election and its probes."""

    def __init__(
        self,
        *,
        health: Health | None = None,
        metrics: ControllerMetrics | None = None,
        elector: LeaderElector | None = None,
    ) -> None:
        self.health = health
        self.metrics = metrics
        self.elector = elector
        # Held by the loop while it may write, and by the election before it releases the
        # lease: no write of this replica is in flight when the next leader starts.
        self.acting = threading.Lock()
        self._wake = threading.Event()

    @property
    def lease(self) -> str:
        if self.elector is None:
            return ""
        return f"{self.elector.config.namespace}/{self.elector.config.name}"

    def may_act(self) -> bool:
        """Ask right before each write: without an election always; with one only while this
        replica is certain it leads."""
        leading = self.elector is None or self.elector.is_leader()
        if self.metrics is not None and self.elector is not None:
            self.metrics.leader.labels(lease=self.lease).set(1 if leading else 0)
        return leading

    def leadership_changed(self, leading: bool) -> None:
        """The election's callback: a new leader starts its round at once."""
        if self.metrics is not None and self.elector is not None:
            self.metrics.leader.labels(lease=self.lease).set(1 if leading else 0)
        self._wake.set()

    def wake(self) -> None:
        self._wake.set()

    def wait(self, stop: threading.Event, seconds: float) -> None:
        """Until ``seconds`` pass, ``stop`` is set, or leadership changes."""
        deadline = time.monotonic() + seconds
        while not stop.is_set() and not self._wake.is_set():
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self._wake.wait(min(remaining, 0.2))
        self._wake.clear()

    def finished(self, outcome: Round, seconds: float) -> None:
        """Report a round: the heartbeat, readiness, and the metrics."""
        if self.metrics is not None:
            self.metrics.sync_seconds.observe(seconds)
            if outcome.verifier_error is not None:
                self.metrics.sync_errors.labels(kind="verifier").inc()
            if outcome.api_error is not None:
                self.metrics.sync_errors.labels(kind="api").inc()
        leading = self.may_act()
        if self.health is None:
            return
        self.health.beat()
        role = ""
        if self.elector is not None:
            holder = self.elector.holder
            role = (
                f"; leading lease {self.lease}"
                if leading
                else f"; standby (lease {self.lease} held by {holder or 'nobody'})"
            )
        problems = [
            f"verifier: {outcome.verifier_error}" if outcome.verifier_error is not None else "",
            f"API server: {outcome.api_error}" if outcome.api_error is not None else "",
        ]
        problems = [p for p in problems if p]
        if problems:
            self.health.ready(False, "not ready: " + "; ".join(problems) + role)
        else:
            self.health.ready(True, "ready: the verifier and the API server answer" + role)
