"""One HTTPS server for the Kubernetes doors: the validating admission webhook
(``POST /validate``), the scheduler extender (``POST /filter``), and its health and metrics:
``GET /livez`` (the server answers), ``GET /readyz`` (its trust view of the verifier is fresh
and, with the image rule on, its trust policy is loaded and current; 503 with the reason
otherwise), ``GET /metrics`` (:mod:`stockade.kube.metrics`, which says why it needs no
credential) and ``GET /healthz`` (the older JSON readiness answer).

Every refused AdmissionReview is one log record (``stockade.kube.admission``: ``admission
refused`` with the pod, namespace, node and reason), with the reason's message; admissions are
only counted.

Bodies are parsed with :mod:`json` and answered by the pure functions of
:mod:`stockade.kube.admission` and :mod:`stockade.kube.extender`, in a worker thread (the
trust source may wait on the verifier). A body that is not JSON is answered like any
malformed document: a refusal (webhook) or ``Error`` (extender), with HTTP 200 so the
API server and the scheduler read the verdict rather than a transport error.
"""

from __future__ import annotations

import asyncio
import json
import logging
import ssl
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, Request, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from stockade.kube.admission import (
    AdmissionPolicy,
    SignedImageStore,
    Verdict,
    decide_review,
    response,
)
from stockade.kube.extender import filter_nodes
from stockade.kube.metrics import KubeMetrics, WatchedTrust
from stockade.kube.trust import TrustUnavailable
from stockade.logs import fields

log = logging.getLogger("stockade.kube.admission")

JSON = "application/json"
MIB: Final = 1024 * 1024


@dataclass(frozen=True)
class RequestLimits:
    """How much of a request body the server ever holds, and for how long it waits."""

    review_bytes: int = 3 * MIB
    """``POST /validate``: the API server refuses requests over 3 MiB itself
    (``MaxRequestBodyBytes``), so no AdmissionReview it sends is larger."""
    filter_bytes: int = 16 * MIB
    """``POST /filter``: ``NodeNames`` for thousands of nodes is a few hundred KiB; full
    ``Nodes`` objects (``nodeCacheCapable: false``) are refused past this."""
    budget_bytes: int = 24 * MIB
    """All bodies being read at once, together."""
    timeout_seconds: float = 10.0
    """A whole body must arrive within this (the API server gives a webhook at most
    30 s, and the shipped registration 5 s)."""
    head_seconds: float = 10.0
    """A request's head must arrive within this, or the connection is closed."""


class _Budget:
    """Bytes held by bodies being read; used from the event loop thread only."""

    def __init__(self, total: int) -> None:
        self.total = total
        self.used = 0

    def take(self, count: int) -> bool:
        if self.used + count > self.total:
            return False
        self.used += count
        return True

    def give(self, count: int) -> None:
        self.used -= count


class _Refused(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message

    def response(self) -> Response:
        return Response(
            _dumps({"error": self.message}),
            status_code=self.status,
            media_type=JSON,
            headers={"connection": "close"},
        )


@asynccontextmanager
async def _body(
    request: Request, limit: int, limits: RequestLimits, budget: _Budget
) -> AsyncIterator[bytearray]:
    """The request body, at most ``limit`` bytes, within ``limits.timeout_seconds``;
    ``_Refused`` otherwise. Its bytes stay charged to ``budget`` until the block ends."""
    too_large = f"request body over {limit} bytes refused"
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.isascii() or not declared.isdigit():
            raise _Refused(400, "Content-Length is not a number")
        if int(declared) > limit:
            raise _Refused(413, too_large)
    body = bytearray()
    try:
        try:
            async with asyncio.timeout(limits.timeout_seconds):
                async for chunk in request.stream():
                    if len(body) + len(chunk) > limit:
                        raise _Refused(413, too_large)
                    if not budget.take(len(chunk)):
                        raise _Refused(503, "too many request bodies in flight")
                    body += chunk
        except TimeoutError:
            raise _Refused(
                408, f"request body not complete in {limits.timeout_seconds} s"
            ) from None
        except ClientDisconnect:
            raise _Refused(400, "the client went away before its body was complete") from None
        yield body
    finally:
        budget.give(len(body))


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _loads(raw: bytes | bytearray) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def _validate(raw: bytearray, policy: AdmissionPolicy) -> tuple[dict[str, Any], Verdict]:
    document = _loads(raw)
    if document is None:
        message = "Stockade refuses a body that is not JSON"
        return response("", False, 400, message), Verdict(False, 400, message, "malformed")
    return decide_review(document, policy)


def _filter(document: Any, policy: AdmissionPolicy, metrics: KubeMetrics) -> dict[str, Any]:
    answer = filter_nodes(document, policy.trust, policy.clock)
    passed = answer.get("NodeNames")
    if passed is None and isinstance(answer.get("Nodes"), dict):
        passed = answer["Nodes"].get("items")
    metrics.filtered_nodes(
        len(passed or ()), len(answer.get("FailedNodes") or ()), bool(answer["Error"])
    )
    return answer


def _log_refusal(verdict: Verdict) -> None:
    log.info(
        "admission refused",
        extra=fields(
            pod=verdict.pod or None,
            namespace=verdict.namespace or None,
            node=verdict.node or None,
            reason=verdict.reason,
            code=verdict.code,
            detail=verdict.message,
        ),
    )


def readiness(policy: AdmissionPolicy, watched: WatchedTrust | None = None) -> tuple[bool, str]:
    """Ready when the verifier's trust view can be read now (fresh: a cached view is used
    only within its TTL and its statement's validity) and, with the image rule on, the trust
    policy is loaded and current. Blocks while the view is refreshed: call off the loop."""
    try:
        nodes = policy.trust.snapshot()
    except TrustUnavailable as error:
        return False, f"no fresh trust view of the verifier: {error}"
    parts = [f"trust view of {len(nodes)} nodes"]
    if watched is not None and watched.age() >= 0:
        parts[0] += f", {watched.age():.1f} s old"
    if isinstance(policy.images, SignedImageStore):
        ok, why = policy.images.readiness(datetime.now(UTC))
        if not ok:
            return False, why
        parts.append(why)
    elif policy.images is not None:
        parts.append("image rule on")
    else:
        parts.append("image rule off")
    return True, "; ".join(parts)


def create_app(
    policy: AdmissionPolicy,
    limits: RequestLimits | None = None,
    metrics: KubeMetrics | None = None,
) -> FastAPI:
    limits = limits or RequestLimits()
    budget = _Budget(limits.budget_bytes)
    metrics = metrics or KubeMetrics()
    watched = WatchedTrust(policy.trust)
    policy = replace(policy, trust=watched)
    metrics.trust_view_age.set_function(watched.age)
    app = FastAPI(title="Stockade Kubernetes webhook and scheduler extender", docs_url=None)
    app.state.metrics = metrics
    app.state.trust = watched

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        try:
            async with _body(request, limits.review_bytes, limits, budget) as raw:
                started = time.perf_counter()
                answer, verdict = await run_in_threadpool(_validate, raw, policy)
                metrics.reviewed(verdict.allowed, verdict.reason, time.perf_counter() - started)
        except _Refused as refused:
            return refused.response()
        if not verdict.allowed:
            _log_refusal(verdict)
        return Response(_dumps(answer), media_type=JSON)

    @app.post("/filter")
    async def filter_(request: Request) -> Response:
        try:
            async with _body(request, limits.filter_bytes, limits, budget) as raw:
                document = _loads(raw)
                answer = await run_in_threadpool(_filter, document, policy, metrics)
        except _Refused as refused:
            return refused.response()
        return Response(_dumps(answer), media_type=JSON)

    @app.get("/healthz")
    async def healthz() -> Response:
        try:
            nodes = await run_in_threadpool(policy.trust.snapshot)
        except TrustUnavailable as error:
            body = {"ok": False, "verifier": str(error)}
            return Response(_dumps(body), status_code=503, media_type=JSON)
        body = {"ok": True, "nodes": len(nodes), "images": policy.images is not None}
        return Response(_dumps(body), media_type=JSON)

    @app.get("/livez")
    async def livez() -> Response:
        """Alive while the server answers: an unreachable verifier never restarts it."""
        return _plain(200, "alive")

    @app.get("/readyz")
    async def readyz() -> Response:
        ok, reason = await run_in_threadpool(readiness, policy, watched)
        return _plain(200 if ok else 503, reason)

    @app.get("/metrics")
    async def metrics_() -> Response:
        """Unauthenticated: see :mod:`stockade.kube.metrics` for why."""
        body = generate_latest(metrics.registry)
        return Response(body, media_type=CONTENT_TYPE_LATEST, headers={"cache-control": "no-store"})

    return app


def _plain(status: int, text: str) -> Response:
    return Response(
        text + "\n",
        status_code=status,
        media_type="text/plain; charset=utf-8",
        headers={"cache-control": "no-store"},
    )


@dataclass(frozen=True)
class ServerTls:
    cert: Path
    key: Path
    client_ca: Path | None = None
    """When set, clients (the API server, the scheduler) must present a certificate it
    issued."""


class _HeadDeadlineProtocol(H11Protocol):
    """uvicorn's HTTP/1.1 protocol, closing a connection whose next request head is not
    complete ``head_seconds`` after the connection opened or the last response ended
    (uvicorn's own keep-alive timer restarts on every byte, so a client sending one byte
    at a time would hold the connection for ever)."""

    head_seconds: float = RequestLimits.head_seconds
    _head_timer: asyncio.TimerHandle | None = None
    _head_cycle: object = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        super().connection_made(transport)  # type: ignore[arg-type]
        self._arm_head_timer()

    def _arm_head_timer(self) -> None:
        self._disarm_head_timer()
        self._head_cycle = self.cycle
        self._head_timer = self.loop.call_later(self.head_seconds, self._head_expired)

    def _disarm_head_timer(self) -> None:
        if self._head_timer is not None:
            self._head_timer.cancel()
            self._head_timer = None

    def _head_expired(self) -> None:
        self._head_timer = None
        if not self.transport.is_closing():
            self.transport.close()

    def handle_events(self) -> None:
        super().handle_events()
        if self._head_timer is not None and self.cycle is not self._head_cycle:
            self._disarm_head_timer()  # a new request's head arrived

    def on_response_complete(self) -> None:
        if not self.transport.is_closing():
            self._arm_head_timer()
        super().on_response_complete()

    def connection_lost(self, exc: Exception | None) -> None:
        self._disarm_head_timer()
        super().connection_lost(exc)


def uvicorn_config(
    app: FastAPI, host: str, port: int, tls: ServerTls, limits: RequestLimits | None = None
) -> uvicorn.Config:
    head_seconds = (limits or RequestLimits()).head_seconds
    protocol = type(
        "HeadDeadlineProtocol", (_HeadDeadlineProtocol,), {"head_seconds": head_seconds}
    )
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        http=protocol,
        # The standard loop: its TLS transport stops reading when the protocol pauses, which
        # the body limits rely on (uvloop's read on past the limit of a chunked body).
        loop="asyncio",
        ssl_certfile=str(tls.cert),
        ssl_keyfile=str(tls.key),
        ssl_ca_certs=str(tls.client_ca) if tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE,
        log_config=None,  # stockade.logs.configure_logging routes uvicorn's loggers
        log_level="warning",
        timeout_graceful_shutdown=2,
        server_header=False,
        access_log=False,
    )


def serve_app(
    app: FastAPI, host: str, port: int, tls: ServerTls, limits: RequestLimits | None = None
) -> None:
    uvicorn.Server(uvicorn_config(app, host, port, tls, limits)).run()
