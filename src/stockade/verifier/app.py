"""The FastAPI application: routers, body limit, JSON errors, database and key setup, health
(``/livez``, ``/readyz``) and metrics (``/metrics``, :mod:`stockade.verifier.metrics`)."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sqlite3
import sys
from collections.abc import AsyncIterator
from typing import Any

import anyio.to_thread
from fastapi import Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from prometheus_client.exposition import CONTENT_TYPE_PLAIN_0_0_4
from sqlalchemy import text
from sqlalchemy.exc import SQLAlchemyError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.responses import JSONResponse, Response
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from stockade.channel import ReplayCache
from stockade.verifier import (
    admission,
    attestation,
    boot_api,
    dashboard,
    enrollment,
    events,
    executions,
    fleet,
    log_api,
    membership,
    nodes,
    nonces,
    operator_audit,
    operator_auth,
    policies,
    releases,
    secrets,
    security_events,
    shared_keys,
)
from stockade.verifier.appraiser import Appraiser, default_appraiser
from stockade.verifier.committer import GroupCommitter
from stockade.verifier.config import VerifierConfig
from stockade.verifier.datadir import prepare_data_dir, prepare_database_file
from stockade.verifier.db import REQUEST_THREADS, make_engine, open_schema, session_factory
from stockade.verifier.errors import (
    ConfigurationError,
    DatabaseUnavailable,
    VerifierError,
    is_database_unavailable,
)
from stockade.verifier.metrics import Metrics, RequestTimer, attach, metrics_of
from stockade.verifier.operator_auth import require_reader
from stockade.verifier.rate_limit import ConcurrencySlots, enrollment_limiter
from stockade.verifier.results import jwks
from stockade.verifier.secrets import check_secrets_readable
from stockade.verifier.security_events import SecurityEventLimiter
from stockade.verifier.service import Service, service_of
from stockade.verifier.states import run_sweeper
from stockade.verifier.transparency import TransparencyLog
from stockade.verifier.webhooks import WebhookWorker, load_webhook_secrets

log = logging.getLogger(__name__)

_DEFAULT = object()
READY_TIMEOUT_SECONDS = 2.0
GIL_SWITCH_SECONDS = 0.0005
SWEEPER_STOP_SECONDS = 10.0


def error_body(code: str, detail: str) -> dict[str, str]:
    return {"error": code, "detail": detail}


class BodyLimit:
    """Refuse request bodies over ``limit`` bytes with 413 before any route reads them."""

    def __init__(self, app: ASGIApp, limit: int) -> None:
        self.app = app
        self.limit = limit

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length")
        if length is not None and (not length.isdigit() or int(length) > self.limit):
            await self._refuse(scope, receive, send)
            return
        chunks: list[bytes] = []
        size = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunk = message.get("body", b"")
            size += len(chunk)
            if size > self.limit:
                await self._refuse(scope, receive, send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        replayed = False

        async def replay() -> Message:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        await self.app(scope, replay, send)

    async def _refuse(self, scope: Scope, receive: Receive, send: Send) -> None:
        response = JSONResponse(
            error_body("too-large", f"request body exceeds {self.limit} bytes"), status_code=413
        )
        await response(scope, receive, send)


def _validation_detail(error: RequestValidationError) -> str:
    parts = []
    for item in error.errors()[:5]:
        location = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
        parts.append(f"{location or 'body'}: {item.get('msg', 'invalid')}")
    return "; ".join(parts) or "invalid request"


def _install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(VerifierError)
    async def verifier_error(request: Request, error: VerifierError) -> JSONResponse:
        metrics_of(service_of(request)).refused(request.scope, error.code)
        body: dict[str, Any] = error_body(error.code, error.detail)
        if error.reasons is not None:
            body["reasons"] = list(error.reasons)
        # Retry-After (429), WWW-Authenticate (401): errors that carry headers say so.
        headers: dict[str, str] | None = getattr(error, "headers", None)
        return JSONResponse(body, status_code=error.status, headers=headers)

    @app.exception_handler(RequestValidationError)
    async def invalid_request(request: Request, error: RequestValidationError) -> JSONResponse:
        metrics_of(service_of(request)).refused(request.scope, "invalid-request")
        return JSONResponse(
            error_body("invalid-request", _validation_detail(error)), status_code=422
        )

    @app.exception_handler(StarletteHTTPException)
    async def http_error(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        code = {400: "bad-request", 404: "not-found", 405: "method-not-allowed"}.get(
            error.status_code, "http"
        )
        return JSONResponse(
            error_body(code, str(error.detail)),
            status_code=error.status_code,
            headers=getattr(error, "headers", None),
        )

    # Handled here (not by the catch-all below, which Starlette re-raises to the server: a
    # traceback and a closed connection per request): 503 with Retry-After, one log line per
    # outage (service.outage).
    async def database_error(request: Request, error: Exception) -> JSONResponse:
        if not is_database_unavailable(error):
            metrics_of(service_of(request)).database_error()
            metrics_of(service_of(request)).refused(request.scope, "internal")
            log.error("%s %s failed", request.method, request.url.path, exc_info=error)
            return JSONResponse(
                error_body("internal", "internal error; see the verifier log"), status_code=500
            )
        service_of(request).outage.failed(error, f"{request.method} {request.url.path}")
        unavailable = DatabaseUnavailable("the database is unavailable; retry later")
        metrics_of(service_of(request)).refused(request.scope, unavailable.code)
        return JSONResponse(
            error_body(unavailable.code, unavailable.detail),
            status_code=unavailable.status,
            headers=unavailable.headers,
        )

    app.add_exception_handler(SQLAlchemyError, database_error)
    app.add_exception_handler(sqlite3.Error, database_error)

    @app.exception_handler(Exception)
    async def internal_error(request: Request, error: Exception) -> JSONResponse:
        log.error("%s %s failed", request.method, request.url.path, exc_info=error)
        return JSONResponse(
            error_body("internal", "internal error; see the verifier log"), status_code=500
        )


def _select_one(service: Service) -> None:
    with service.engine.connect() as connection:
        connection.execute(text("SELECT 1"))


def create_app(config: VerifierConfig, appraiser: Appraiser | Any | None = _DEFAULT) -> FastAPI:
    """Build the service: migrate the database, load or make the signing key, mount routes.

    ``appraiser`` defaults to the pure appraisal core; tests may pass their own. The stale
    sweeper, and the webhook worker when ``config.webhook_urls`` names a URL, run while the
    app's lifespan does (uvicorn, or ``with TestClient(app)``).
    """
    prepare_data_dir(config.data_dir)
    limits = (
        config.max_event_streams,
        config.max_event_streams_per_client,
        config.event_stream_max_seconds,
        config.enrollment_rate_per_minute,
    )
    if not all(limit > 0 for limit in limits):
        raise ConfigurationError(
            "max_event_streams, max_event_streams_per_client, event_stream_max_seconds and "
            "enrollment_rate_per_minute must be positive"
        )
    operator_token = config.operator_token or shared_keys.operator_token(config)
    authority = shared_keys.authority(config, operator_token)
    prepare_database_file(config.resolved_database_url)
    engine = make_engine(config.resolved_database_url)
    open_schema(engine, config.migrate_on_start)
    prepare_database_file(config.resolved_database_url)  # -wal/-shm made by the migration
    translog = TransparencyLog.open(
        engine,
        config.keys_directory,
        config.state_directory,
        config.log_origin,
        config.clock,
        read_only_keys=config.keys_read_only,
    )
    service = Service(
        config=config,
        engine=engine,
        sessions=session_factory(engine),
        signing_key=shared_keys.signing_key(config),
        appraiser=default_appraiser() if appraiser is _DEFAULT else appraiser,
        operator_token=operator_token,
        cluster_ca=shared_keys.cluster_ca(config),
        translog=translog,
        committer=GroupCommitter(engine, translog),
        replay_cache=ReplayCache(window=2 * config.channel_max_skew_seconds),
        security_limiter=SecurityEventLimiter(),
    )
    metrics = Metrics(build=config.verifier_build, worker=config.worker)
    attach(metrics, service, service.outage, service.committer)
    metrics.watch_database(engine, config.webhook_urls, service.now)
    webhook_secrets = load_webhook_secrets(config.webhook_secret_files, config.webhook_urls)
    check_secrets_readable(service)
    service.refresh_clock_floor()
    with contextlib.suppress(VerifierError):
        service.issuing_now()  # logs, once, a clock behind the newest stored time

    @contextlib.asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        anyio.to_thread.current_default_thread_limiter().total_tokens = REQUEST_THREADS
        # A thread back from the database (or OpenSSL) waits for the GIL up to the switch
        # interval behind busy threads: at the default 5 ms, the one writer of results waited
        # that long for each of its statements.
        sys.setswitchinterval(GIL_SWITCH_SECONDS)
        service.committer.start()
        stop_sweeper = asyncio.Event()
        sweeper = asyncio.create_task(run_sweeper(service, stop_sweeper))
        webhooks: WebhookWorker | None = None
        if config.webhook_urls:
            webhooks = WebhookWorker(
                service.engine,
                config.webhook_urls,
                service.signing_key.private_key,
                outage=service.outage,
                secrets=webhook_secrets,
            )
            webhooks.start()
        try:
            yield
        finally:
            stop_sweeper.set()
            try:
                await asyncio.wait_for(sweeper, SWEEPER_STOP_SECONDS)
            except TimeoutError:  # a sweep stuck on the database: leave it to its thread
                log.warning("the stale sweeper did not stop within %s s", SWEEPER_STOP_SECONDS)
            if webhooks is not None:
                await asyncio.to_thread(webhooks.stop)
            await asyncio.to_thread(service.committer.stop)
            engine.dispose()

    app = FastAPI(
        title="Stockade verifier",
        version=config.verifier_build,
        description="Enrollment, attestation and results (docs/verifier-protocol.md).",
        lifespan=lifespan,
        # No unauthenticated schema and no documentation pages that load scripts from a CDN:
        # the schema is GET /v1/openapi.json, for readers.
        docs_url=None,
        redoc_url=None,
        openapi_url=None,
    )
    app.state.service = service
    app.state.authority = authority
    app.state.enrollment_limiter = enrollment_limiter(config.enrollment_rate_per_minute)
    app.state.event_streams = ConcurrencySlots(
        config.max_event_streams, config.max_event_streams_per_client
    )
    app.state.metrics = metrics
    app.state.boot_references = boot_api.ReferenceCache()
    app.add_middleware(BodyLimit, limit=config.max_body_bytes)
    app.add_middleware(RequestTimer, metrics=metrics)  # outermost: times every answer
    _install_error_handlers(app)
    for module in (
        enrollment,
        admission,
        security_events,
        nonces,
        attestation,
        nodes,
        policies,
        events,
        membership,
        secrets,
        executions,
        releases,
    ):
        app.include_router(module.router)
    app.include_router(log_api.router)
    app.include_router(operator_audit.router)
    app.include_router(operator_auth.router)
    app.include_router(dashboard.router)
    app.include_router(fleet.router)
    app.include_router(boot_api.router)

    @app.get("/v1/openapi.json", tags=["operator"], dependencies=[Depends(require_reader)])
    def openapi() -> dict[str, Any]:
        """This service's OpenAPI document (a reader or operator credential)."""
        return app.openapi()

    @app.get("/v1/keys", tags=["results"])
    def keys(request: Request) -> dict[str, Any]:
        """The JWK set that verifies EARs offline."""
        return jwks(service_of(request).signing_key)

    @app.get("/v1/health", tags=["operator"])
    @app.get("/livez", tags=["operator"])
    def health() -> dict[str, str]:
        """Liveness: the process serves HTTP. It does not touch the database (see /readyz):
        a verifier whose database is down is alive, only not ready."""
        return {"status": "ok"}

    @app.get("/metrics", tags=["operator"], dependencies=[Depends(require_reader)])
    async def metrics_page() -> Response:
        """Prometheus metrics, text exposition format (a reader or operator credential: they
        tell which nodes fail; see :mod:`stockade.verifier.metrics`). The node and webhook
        gauges read the database at most every few seconds, in a worker thread, waited for
        up to READY_TIMEOUT_SECONDS: a hung database makes them old, not the scrape hang."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.to_thread(metrics.refresh), READY_TIMEOUT_SECONDS)
        body = metrics.exposition()
        return Response(body, headers={"Content-Type": CONTENT_TYPE_PLAIN_0_0_4})

    @app.get("/readyz", tags=["operator"])
    async def ready() -> JSONResponse:
        """Readiness: the database answers ``SELECT 1`` within READY_TIMEOUT_SECONDS and the
        clock is not behind the newest stored time; else 503 with Retry-After."""
        try:
            await asyncio.wait_for(asyncio.to_thread(_select_one, service), READY_TIMEOUT_SECONDS)
        except (TimeoutError, SQLAlchemyError, sqlite3.Error) as error:
            service.outage.failed(error, "GET /readyz")
            unavailable = DatabaseUnavailable("the database is unavailable")
            return JSONResponse(
                error_body(unavailable.code, unavailable.detail),
                status_code=unavailable.status,
                headers=unavailable.headers,
            )
        service.outage.succeeded()
        try:
            service.issuing_now()
        except VerifierError as error:
            return JSONResponse(
                error_body(error.code, error.detail),
                status_code=error.status,
                headers=getattr(error, "headers", None),
            )
        return JSONResponse({"status": "ready"})

    return app
