"""One HTTPS server for the Kubernetes doors: the validating admission webhook
(``POST /validate``), the scheduler extender (``POST /filter``) and ``GET /healthz``.

Bodies are parsed with :mod:`json` and answered by the pure functions of
:mod:`stockade.kube.admission` and :mod:`stockade.kube.extender`, in a worker thread (the
trust source may wait on the verifier). A body that is not JSON is answered like any
malformed document: a refusal (webhook) or ``Error`` (extender), with HTTP 200 so the
API server and the scheduler read the verdict rather than a transport error.
"""

from __future__ import annotations

import asyncio
import json
import ssl
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from starlette.requests import ClientDisconnect
from uvicorn.protocols.http.h11_impl import H11Protocol

from stockade.kube.admission import AdmissionPolicy, response, review
from stockade.kube.extender import filter_nodes
from stockade.kube.trust import TrustUnavailable

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


def _validate(raw: bytearray, policy: AdmissionPolicy) -> dict[str, Any]:
    document = _loads(raw)
    if document is None:
        return response("", False, 400, "Stockade refuses a body that is not JSON")
    return review(document, policy)


def _filter(raw: bytearray, policy: AdmissionPolicy) -> dict[str, Any]:
    return filter_nodes(_loads(raw), policy.trust, policy.clock)


def create_app(policy: AdmissionPolicy, limits: RequestLimits | None = None) -> FastAPI:
    limits = limits or RequestLimits()
    budget = _Budget(limits.budget_bytes)
    app = FastAPI(title="Stockade Kubernetes webhook and scheduler extender", docs_url=None)

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        try:
            async with _body(request, limits.review_bytes, limits, budget) as raw:
                answer = await run_in_threadpool(_validate, raw, policy)
        except _Refused as refused:
            return refused.response()
        return Response(_dumps(answer), media_type=JSON)

    @app.post("/filter")
    async def filter_(request: Request) -> Response:
        try:
            async with _body(request, limits.filter_bytes, limits, budget) as raw:
                document = _loads(raw)
                answer = await run_in_threadpool(filter_nodes, document, policy.trust, policy.clock)
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

    return app


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
        log_level="warning",
        timeout_graceful_shutdown=2,
        server_header=False,
        access_log=False,
    )


def serve_app(
    app: FastAPI, host: str, port: int, tls: ServerTls, limits: RequestLimits | None = None
) -> None:
    uvicorn.Server(uvicorn_config(app, host, port, tls, limits)).run()
