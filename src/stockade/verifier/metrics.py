"""Prometheus metrics of one verifier app: ``GET /metrics`` (text exposition format).

Every app has its own ``CollectorRegistry`` (never prometheus_client's global one), so several
apps in one process (the tests) do not share counters. The modules that count find the app's
:class:`Metrics` through the object they already hold (the service, its committer, its outage
log): :func:`attach` links them when the app is built, :func:`metrics_of` finds them, and an
object no app attached counts into a sink nobody scrapes.

``/metrics`` needs a reader (or operator) credential, like every other read of trust state:
node counts by state, attestation outcomes and webhook backlogs say which part of the fleet is
failing, and Prometheus sends a bearer token (``authorization: {credentials_file: ...}``) as
easily as none. A named reader credential for the scraper (``credentials_file``) keeps it apart
from people.

``serve --workers N`` forks N processes on one socket and each builds its own app, so each
worker counts only what it served, and a scrape is answered by whichever worker accepted the
connection (``stockade_verifier_info{worker,pid}`` says which). With N > 1, successive scrapes
of one address see different workers' counters, which Prometheus reads as resets: counters and
histograms are then only indicative. Where they matter, run ``--workers 1`` per pod and scale
with replicas (each pod is scraped on its own). The gauges read from the database
(``stockade_nodes``, ``stockade_webhook_backlog``) are the same from every worker.
Prometheus multiprocess mode was not used: its values live in files keyed by process and
metric name under one directory named before prometheus_client is imported, shared by every
registry in the process, so it cannot keep several apps in one process apart, and the
directory must be emptied on every start.
"""

from __future__ import annotations

import os
import threading
import time
import weakref
from collections.abc import Callable, Iterable, Sequence
from datetime import datetime

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from sqlalchemy import Engine, and_, case, func, literal, or_, select
from sqlalchemy.exc import SQLAlchemyError
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockade.verifier.models import Event, Node

# A node's state as GET /v1/nodes reports it (states.NodeState; not imported: states imports
# the service, which this module must not).
NODE_STATES = ("pending", "enrolled", "trusted", "untrusted", "failed", "revoked")
ATTESTATION_ROUTE = ("POST", "/v1/nodes/{node_id}/evidence")
SECRET_RELEASE_ROUTE = ("POST", "/v1/nodes/{node_id}/secrets/{name}")
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS"})
UNMATCHED = "unmatched"  # no route: 404s, 405s and bodies refused before routing
CACHE_SECONDS = 5.0

_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
_BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256)


class Metrics:
    """One app's metrics, in its own registry."""

    def __init__(self, build: str = "", worker: int = 0) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        registry = self.registry
        self.attestations = Counter(
            "stockade_attestations",
            "Evidence submissions by outcome: the result's status (affirming, warning, "
            "contraindicated), or refused-<error code> (refused-nonce, refused-evidence, "
            "refused-channel-signature, ...) when no result was stored",
            ["status"],
            registry=registry,
        )
        self.appraisal_seconds = Histogram(
            "stockade_appraisal_seconds",
            "Time to appraise one submission (quote, boot log, execution log) and sign its EAR",
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.request_seconds = Histogram(
            "stockade_request_seconds",
            "HTTP requests by route template, method and status, until the response started",
            ["route", "method", "status"],
            buckets=_LATENCY_BUCKETS,
            registry=registry,
        )
        self.database_errors = Counter(
            "stockade_database_errors",
            "Database failures: requests, readiness checks, the sweeper and webhook delivery",
            registry=registry,
        )
        self.secret_releases = Counter(
            "stockade_secret_releases",
            "Secret release requests by outcome: released, or refused-<error code>",
            ["outcome"],
            registry=registry,
        )
        self.result_batch_size = Histogram(
            "stockade_result_batch_size",
            "Writes stored per group-commit transaction (results and nonces)",
            buckets=_BATCH_BUCKETS,
            registry=registry,
        )
        info = Gauge(
            "stockade_verifier_info",
            "This verifier process (with serve --workers, the worker that answered)",
            ["build", "worker", "pid"],
            registry=registry,
        )
        info.labels(build, str(worker), str(os.getpid())).set(1)
        self.database_state: _DatabaseState | None = None  # watch_database

    # -- the hooks ---------------------------------------------------------------------------

    def attested(self, status: object) -> None:
        self.attestations.labels(str(status)).inc()

    def appraised(self, seconds: float) -> None:
        self.appraisal_seconds.observe(seconds)

    def secret_released(self) -> None:
        self.secret_releases.labels("released").inc()

    def database_error(self) -> None:
        self.database_errors.inc()

    def result_batch(self, size: int) -> None:
        self.result_batch_size.observe(size)

    def refused(self, scope: Scope, code: str) -> None:
        """A request answered with an error ``code``: counted if it was an attestation or a
        secret release (the route template, so before or after its dependencies ran)."""
        route = (scope.get("method", ""), route_template(scope))
        if route == ATTESTATION_ROUTE:
            self.attestations.labels(f"refused-{code}").inc()
        elif route == SECRET_RELEASE_ROUTE:
            self.secret_releases.labels(f"refused-{code}").inc()

    # -- state read from the database at scrape time ----------------------------------------

    def watch_database(
        self,
        engine: Engine,
        webhook_urls: Sequence[str],
        now: Callable[[], datetime],
        cache_seconds: float = CACHE_SECONDS,
    ) -> None:
        self.database_state = _DatabaseState(engine, webhook_urls, now, cache_seconds)
        self.registry.register(self.database_state)

    def refresh(self) -> None:
        """Read the database gauges again if they are older than their cache (blocking: the
        route runs it in a thread and stops waiting after a bound)."""
        if self.database_state is not None:
            self.database_state.refresh()

    def exposition(self) -> bytes:
        """The text exposition format, from memory: never waits for the database."""
        return generate_latest(self.registry)


def route_template(scope: Scope) -> str:
    """The matched route's path template (bounded cardinality), or ``unmatched``."""
    path = getattr(scope.get("route"), "path", None)
    return path if isinstance(path, str) else UNMATCHED


# -- finding an app's metrics from the objects it built ------------------------------------

_SINK = Metrics()
_attached: dict[int, Metrics] = {}


def attach(metrics: Metrics, *owners: object) -> None:
    """Count what ``owners`` report into ``metrics`` (for as long as each owner lives)."""
    for owner in owners:
        key = id(owner)
        _attached[key] = metrics
        weakref.finalize(owner, _attached.pop, key, None)


def metrics_of(owner: object) -> Metrics:
    """The metrics ``owner`` was attached to; a sink nobody scrapes if none."""
    return _attached.get(id(owner), _SINK)


# -- the request timer ------------------------------------------------------------------------


class RequestTimer:
    """Pure ASGI middleware: ``stockade_request_seconds`` per route template, method, status.

    Measured with ``time.perf_counter`` from the request's arrival until its response started
    (for an event stream, until the stream opened). A request that raised counts as 500.
    """

    def __init__(self, app: ASGIApp, metrics: Metrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = time.perf_counter()
        status: int | None = None
        elapsed = 0.0

        async def timed(message: Message) -> None:
            nonlocal status, elapsed
            if message["type"] == "http.response.start":
                status = int(message["status"])
                elapsed = time.perf_counter() - started
            await send(message)

        try:
            await self.app(scope, receive, timed)
        finally:
            if status is None:
                status, elapsed = 500, time.perf_counter() - started
            method = scope.get("method", "")
            self.metrics.request_seconds.labels(
                route_template(scope), method if method in METHODS else "other", str(status)
            ).observe(elapsed)


# -- gauges computed at scrape time -------------------------------------------------------------


class _DatabaseState(Collector):
    """``stockade_nodes{state}`` (one GROUP BY) and ``stockade_webhook_backlog{url}``, read
    by :meth:`refresh` at most every ``cache_seconds`` (one reader at a time; concurrent
    scrapes do not wait for it) and collected from memory, with
    ``stockade_database_state_age_seconds``: while the database does not answer, the last
    values grow old rather than the scrape hanging."""

    def __init__(
        self,
        engine: Engine,
        urls: Sequence[str],
        now: Callable[[], datetime],
        cache_seconds: float,
    ) -> None:
        self.engine = engine
        self.urls = tuple(dict.fromkeys(urls))
        self.now = now
        self.cache_seconds = cache_seconds
        self._lock = threading.Lock()
        self._refreshing = threading.Lock()
        self._read_at: float | None = None
        self._nodes: dict[str, int] = dict.fromkeys(NODE_STATES, 0)
        self._backlog: dict[str, int] = {}

    def describe(self) -> Iterable[Metric]:
        return []

    def refresh(self) -> None:
        if not self._refreshing.acquire(blocking=False):
            return  # another scrape is reading: this one shows the values it has
        try:
            if self._read_at is None or time.monotonic() - self._read_at >= self.cache_seconds:
                nodes = self._count_nodes()
                backlog = self._count_backlog() if self.urls else {}
                with self._lock:
                    self._nodes = {**dict.fromkeys(NODE_STATES, 0), **nodes}
                    self._backlog = backlog
                    self._read_at = time.monotonic()
        except SQLAlchemyError:
            pass  # the values grow old (the age gauge says so); /readyz reports the outage
        finally:
            self._refreshing.release()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            nodes, backlog, read_at = dict(self._nodes), dict(self._backlog), self._read_at
        if read_at is None:
            return  # never read: absent, not zero
        family = GaugeMetricFamily(
            "stockade_nodes",
            "Nodes by state (trust past its deadline counts as untrusted, as the API reads it)",
            labels=["state"],
        )
        for state, count in sorted(nodes.items()):
            family.add_metric([state], count)
        yield family
        if self.urls:
            pending = GaugeMetricFamily(
                "stockade_webhook_backlog",
                "Events not yet delivered to each webhook receiver (after its cursor)",
                labels=["url"],
            )
            for url in self.urls:
                if url in backlog:
                    pending.add_metric([url], backlog[url])
            yield pending
        yield GaugeMetricFamily(
            "stockade_database_state_age_seconds",
            "Seconds since stockade_nodes and stockade_webhook_backlog were read",
            value=time.monotonic() - read_at,
        )

    def _count_nodes(self) -> dict[str, int]:
        expired = and_(
            Node.state == "trusted",
            or_(Node.trusted_until.is_(None), Node.trusted_until <= self.now()),
        )
        effective = (
            select(case((expired, literal("untrusted")), else_=Node.state).label("state"))
        ).subquery()
        query = select(effective.c.state, func.count()).group_by(effective.c.state)
        with self.engine.connect() as connection:
            return {str(state): int(count) for state, count in connection.execute(query)}

    def _count_backlog(self) -> dict[str, int]:
        from stockade.verifier.webhooks import cursors

        counts: dict[str, int] = {}
        with self.engine.connect() as connection:
            for url in self.urls:
                cursor = (
                    select(cursors.c.last_event_id).where(cursors.c.url == url).scalar_subquery()
                )
                pending = (
                    select(func.count())
                    .select_from(Event)
                    .where(or_(Event.position.is_(None), Event.position > func.coalesce(cursor, 0)))
                )
                counts[url] = int(connection.execute(pending).scalar_one())
        return counts
