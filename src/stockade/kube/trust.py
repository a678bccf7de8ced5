"""Which nodes are trusted right now: the one question every Kubernetes door asks.

Kubernetes Node names are Stockade node names. A node is trusted only while the verifier
says ``trusted`` and its result's ``trusted_until`` is in the future; an unknown node, a
verifier that cannot be reached, or a malformed answer is "not trusted" (fail closed), with
a reason a person can act on.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol


@dataclass(frozen=True)
class NodeTrust:
    name: str
    node_id: str
    state: str
    trusted_until: datetime | None
    result_id: str | None

    def verdict(self, now: datetime) -> tuple[bool, str]:
        if self.state != "trusted":
            return False, f"node {self.name} is {self.state} at the Stockade verifier"
        if self.trusted_until is None or self.trusted_until <= now:
            return False, f"node {self.name}'s attestation result expired (stale)"
        return True, f"node {self.name} is trusted until {self.trusted_until.isoformat()}"


class TrustSource(Protocol):
    def snapshot(self) -> Mapping[str, NodeTrust]: ...


class TrustUnavailable(Exception):
    """The verifier's view could not be obtained: every decision is a refusal."""


def decide(source: TrustSource, node: str, now: datetime | None = None) -> tuple[bool, str]:
    """(trusted, reason) for Kubernetes node ``node``; never raises."""
    moment = now or datetime.now(UTC)
    try:
        nodes = source.snapshot()
    except TrustUnavailable as error:
        return False, f"Stockade cannot tell whether node {node} is trusted: {error}"
    found = nodes.get(node)
    if found is None:
        return False, f"node {node} is not enrolled with the Stockade verifier"
    return found.verdict(moment)


def parse_nodes(document: Any) -> dict[str, NodeTrust]:
    """``GET /v1/nodes`` -> {name: NodeTrust}; ``TrustUnavailable`` on anything malformed.
    Two enrolled nodes with one name are both dropped (ambiguous: not trusted)."""
    try:
        entries = document["nodes"] if isinstance(document, dict) else document
        nodes: dict[str, NodeTrust] = {}
        seen: set[str] = set()
        for entry in entries:
            until = entry.get("trusted_until")
            trust = NodeTrust(
                name=str(entry["name"]),
                node_id=str(entry["node_id"]),
                state=str(entry["state"]),
                trusted_until=datetime.fromisoformat(until.replace("Z", "+00:00"))
                if until
                else None,
                result_id=entry.get("latest_result_id"),
            )
            if trust.name in seen:
                nodes.pop(trust.name, None)
                continue
            seen.add(trust.name)
            nodes[trust.name] = trust
        return nodes
    except (KeyError, TypeError, ValueError, AttributeError) as error:
        raise TrustUnavailable(f"malformed node list from the verifier: {error}") from None


class CachedTrustSource:
    """Fetches ``GET /v1/nodes`` at most every ``ttl`` seconds (a webhook answers many
    requests per second); errors are not cached, and a stale cache is never used."""

    def __init__(self, fetch: Callable[[], Any], ttl: float = 1.0) -> None:
        self._fetch = fetch
        self._ttl = ttl
        self._lock = threading.Lock()
        self._cached: tuple[float, Mapping[str, NodeTrust]] | None = None

    def snapshot(self) -> Mapping[str, NodeTrust]:
        now = time.monotonic()
        with self._lock:
            if self._cached is not None and now - self._cached[0] < self._ttl:
                return self._cached[1]
        try:
            nodes = parse_nodes(self._fetch())
        except TrustUnavailable:
            raise
        except Exception as error:  # the verifier's client raises typed errors; any is fatal
            raise TrustUnavailable(str(error) or type(error).__name__) from None
        with self._lock:
            self._cached = (now, nodes)
        return nodes


def verifier_trust_source(
    verifier: str, ca: Any = None, ttl: float = 1.0, token_file: Path | None = None
) -> CachedTrustSource:
    """A cached trust source over the verifier's HTTPS API. The node list needs a reader
    token: ``token_file``, else ``$STOCKADE_OPERATOR_TOKEN``."""
    from stockade.agent.client import VerifierClient

    client = VerifierClient.from_options(verifier, ca, token_file)
    return CachedTrustSource(lambda: client.request("GET", "/v1/nodes"), ttl)
