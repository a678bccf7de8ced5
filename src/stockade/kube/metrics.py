"""Health and Prometheus metrics of the admission webhook and scheduler extender
(``stockade kube serve``), served on its own HTTPS port: ``GET /livez``, ``GET /readyz`` and
``GET /metrics`` beside ``POST /validate`` and ``POST /filter``.

Each app has its own ``CollectorRegistry`` (never prometheus_client's global one), so several
servers in one process (the tests) do not share counters. Every label takes one of a few fixed
values (:data:`REVIEW_REASONS`, the extender's decisions): no pod, namespace, node or image
name is ever a label, so a scrape says how many and why, never who.

``/metrics`` needs no credential, unlike the verifier's. The port is the kube-apiserver's
webhook endpoint: whoever can reach it can already ``POST /validate`` an AdmissionReview
naming any node and read in the answer whether Stockade trusts it, and why; the counters tell
less than that (how many reviews were refused, for which kind of reason, how old the trust
view is) and nothing a reader could not count by watching the API server's own admission
metrics. A bearer token here would be one more secret to mount into Prometheus and to rotate,
protecting nothing the door beside it does not already give away. Where the server is run with
``--client-ca``, the TLS handshake requires a client certificate for every path, ``/metrics``
included (the scraper then needs one too). ``/livez`` and ``/readyz`` tell even less (up, and
why not ready) and are asked by the kubelet, which sends no credential.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

from stockade.kube.trust import NodeTrust, TrustSource, TrustUnavailable

# Why a review was decided as it was (stockade.kube.admission.Verdict.reason).
REVIEW_REASONS = (
    "trusted",  # allowed: every judged node trusted, every judged image signed (or rule off)
    "exempt",  # allowed: an exempt namespace or user (Stockade's own components)
    "untrusted-node",  # refused: a named node is not trusted now
    "trust-unavailable",  # refused: the verifier's view could not be read (fail closed)
    "image",  # refused: an image not pinned, not signed, or the trust policy expired
    "unjudged",  # refused: a request the webhook is not registered to judge
    "malformed",  # refused: not an AdmissionReview (or not JSON)
    "error",  # refused: an unforeseen failure (fail closed)
)
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5)


class KubeMetrics:
    """One webhook/extender app's metrics, in its own registry."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.reviews = Counter(
            "stockade_admission_reviews",
            "AdmissionReviews answered, by decision (allowed, refused) and reason ("
            + ", ".join(REVIEW_REASONS)
            + ")",
            ["decision", "reason"],
            registry=registry,
        )
        self.review_seconds = Histogram(
            "stockade_admission_seconds",
            "Time to decide one AdmissionReview, from its whole body to the answer",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.filtered = Counter(
            "stockade_extender_filter",
            "Candidate nodes the scheduler extender judged, by decision (passed, refused); "
            "when the verifier's view cannot be read every candidate is refused",
            ["decision"],
            registry=registry,
        )
        self.filter_errors = Counter(
            "stockade_extender_filter_errors",
            "Filter calls answered with Error (malformed ExtenderArgs, or no trust view)",
            registry=registry,
        )
        self.trust_view_age = Gauge(
            "stockade_trust_view_age_seconds",
            "Age of the verifier's signed fleet trust view in use (since it was fetched); "
            "-1 before the first one. It grows while the verifier cannot be read",
            registry=registry,
        )

    def reviewed(self, allowed: bool, reason: str, seconds: float) -> None:
        self.reviews.labels("allowed" if allowed else "refused", reason).inc()
        self.review_seconds.observe(seconds)

    def filtered_nodes(self, passed: int, refused: int, error: bool) -> None:
        if passed:
            self.filtered.labels("passed").inc(passed)
        if refused:
            self.filtered.labels("refused").inc(refused)
        if error:
            self.filter_errors.inc()


class WatchedTrust:
    """A :class:`TrustSource` that remembers when the view it hands out was fetched, and why
    the last read failed: the ``stockade_trust_view_age_seconds`` gauge and ``/readyz``.

    A cached source (:class:`stockade.kube.trust.CachedTrustSource`) hands out the same
    mapping until it fetches a new view, so a mapping not seen before is a new view."""

    def __init__(self, source: TrustSource, clock: Callable[[], float] = time.monotonic) -> None:
        self.source = source
        self._clock = clock
        self._lock = threading.Lock()
        self._view: Mapping[str, NodeTrust] | None = None
        self._since: float | None = None
        self._failure: str | None = None

    def snapshot(self) -> Mapping[str, NodeTrust]:
        try:
            nodes = self.source.snapshot()
        except TrustUnavailable as error:
            with self._lock:
                self._failure = str(error) or type(error).__name__
            raise
        with self._lock:
            if nodes is not self._view:
                self._view, self._since = nodes, self._clock()
            self._failure = None
        return nodes

    def age(self) -> float:
        """Seconds since the view in use was fetched; -1 before the first."""
        with self._lock:
            since = self._since
        return -1.0 if since is None else max(0.0, self._clock() - since)

    def failure(self) -> str | None:
        """Why the last read failed, or None when it succeeded."""
        with self._lock:
            return self._failure
