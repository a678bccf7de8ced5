"""Which nodes are trusted right now: the one question every Kubernetes door asks.

Kubernetes Node names are Stockade node names. A node is trusted only while the verifier's
signed fleet trust statement (``GET /v1/trust``, checked against the pinned verifier key)
says ``trusted`` and its result's ``trusted_until`` is in the future; an unknown node, a
verifier that cannot be reached, an unsigned, expired or malformed answer is "not trusted"
(fail closed), with a reason a person can act on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

from stockade.statements import StatementInvalid, VerifierKeys, verify_fleet_trust


@dataclass(frozen=True)
class NodeTrust:
    name: str
    node_id: str
    state: str
    trusted_until: datetime | None
    result_id: str | None

    def is_trusted(self, now: datetime) -> bool:
        """The rule itself: trusted at the verifier, and its result not yet expired."""
        return (
            self.state == "trusted" and self.trusted_until is not None and self.trusted_until > now
        )

    def verdict(self, now: datetime) -> tuple[bool, str]:
        if self.is_trusted(now):
            return True, f"node {self.name} is trusted until {_iso(self.trusted_until)}"
        if self.state != "trusted":
            return False, f"node {self.name} is {self.state} at the Stockade verifier"
        return False, f"node {self.name}'s attestation result expired (stale)"


def _iso(moment: datetime | None) -> str:
    return moment.isoformat() if moment is not None else "never"


class TrustSource(Protocol):
    def snapshot(self) -> Mapping[str, NodeTrust]: ...


class TrustUnavailable(Exception):
    """The verifier's view could not be obtained: every decision is a refusal."""


def refusal(nodes: Mapping[str, NodeTrust], name: str, now: datetime) -> str | None:
    """None when Kubernetes node ``name`` is trusted at ``now``, else why not: the one rule
    that admission, the scheduler extender, the node controller and the CSR approver ask."""
    found = nodes.get(name)
    if found is None:
        return f"node {name} is not enrolled with the Stockade verifier"
    if found.is_trusted(now):
        return None  # the common case, without formatting a reason nobody reads
    return found.verdict(now)[1]


def decide(source: TrustSource, node: str, now: datetime | None = None) -> tuple[bool, str]:
    """(trusted, reason) for Kubernetes node ``node``; never raises."""
    moment = now or datetime.now(UTC)
    try:
        nodes = source.snapshot()
    except TrustUnavailable as error:
        return False, f"Stockade cannot tell whether node {node} is trusted: {error}"
    why = refusal(nodes, node, moment)
    if why is not None:
        return False, why
    return nodes[node].verdict(moment)


def parse_fleet(answer: Any, keys: VerifierKeys, now: datetime) -> FleetView:
    """``GET /v1/trust`` -> the nodes its statement names, once the statement verifies under
    the pinned ``keys`` and is valid at ``now``; ``TrustUnavailable`` otherwise. Two nodes
    with one name are both dropped (ambiguous: not trusted)."""
    statement = answer.get("statement") if isinstance(answer, dict) else None
    if not isinstance(statement, str):
        raise TrustUnavailable("the verifier's answer carries no fleet trust statement")
    try:
        fleet = verify_fleet_trust(statement, keys, now)
    except StatementInvalid as error:
        raise TrustUnavailable(str(error)) from None
    nodes: dict[str, NodeTrust] = {}
    seen: set[str] = set()
    for entry in fleet.nodes:
        if entry.name in seen:
            nodes.pop(entry.name, None)
            continue
        seen.add(entry.name)
        nodes[entry.name] = NodeTrust(
            entry.name, entry.node_id, entry.state, entry.trusted_until, entry.result_id
        )
    return FleetView(nodes, fleet.expires_at)


@dataclass(frozen=True)
class FleetView:
    nodes: Mapping[str, NodeTrust]
    expires_at: datetime


class CachedTrustSource:
    """Fetches ``GET /v1/trust`` at most every ``ttl`` seconds (a webhook answers many
    requests per second) and never uses a statement past its expiry; errors are not cached,
    and a stale cache is never used.

    One refresh at a time: requests that find the cache stale while a refresh runs wait for
    it and use its outcome (its view, or its error), rather than each fetching and verifying
    the statement again (for thousands of nodes that costs ~0.1 s of CPU each, and many at
    once made the webhook's p99 about a second)."""

    def __init__(
        self,
        fetch: Callable[[], Any],
        keys: VerifierKeys,
        ttl: float = 1.0,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._fetch = fetch
        self._keys = keys
        self._ttl = ttl
        self._clock = clock
        self._lock = threading.Lock()
        self._refresh = threading.Lock()
        self._cached: tuple[float, FleetView] | None = None
        self._failed: tuple[float, str] | None = None

    def _usable(self, now: float) -> Mapping[str, NodeTrust] | None:
        with self._lock:
            cached = self._cached
        if (
            cached is not None
            and now - cached[0] < self._ttl
            and self._clock() < cached[1].expires_at
        ):
            return cached[1].nodes
        return None

    def snapshot(self) -> Mapping[str, NodeTrust]:
        asked = time.monotonic()
        nodes = self._usable(asked)
        if nodes is not None:
            return nodes
        with self._refresh:
            nodes = self._usable(time.monotonic())
            if nodes is not None:
                return nodes  # refreshed while this request waited
            with self._lock:
                failed = self._failed
            if failed is not None and failed[0] >= asked:
                raise TrustUnavailable(failed[1])  # failed while this request waited
            now = time.monotonic()
            try:
                view = parse_fleet(self._fetch(), self._keys, self._clock())
            except Exception as error:  # the verifier's client raises typed errors; any is fatal
                message = str(error) or type(error).__name__
                with self._lock:
                    self._failed = (time.monotonic(), message)
                if isinstance(error, TrustUnavailable):
                    raise
                raise TrustUnavailable(message) from None
            with self._lock:
                self._cached = (now, view)
            return view.nodes


def verifier_trust_source(
    verifier: str,
    ca: Any,
    keys: VerifierKeys,
    ttl: float = 1.0,
    token_file: Path | None = None,
) -> CachedTrustSource:
    """A cached trust source over the verifier's HTTPS API, believing only statements signed
    by the pinned ``keys``. The statement needs a reader token: ``token_file``, else
    ``$STOCKADE_OPERATOR_TOKEN``."""
    from stockade.verifier_client import VerifierClient

    client = VerifierClient.from_options(verifier, ca, token_file)
    return CachedTrustSource(lambda: client.request("GET", "/v1/trust"), keys, ttl)
