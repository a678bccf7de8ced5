"""One HTTPS server for the Kubernetes doors: the validating admission webhook
(``POST /validate``), the scheduler extender (``POST /filter``) and ``GET /healthz``.

Bodies are parsed with :mod:`json` and answered by the pure functions of
:mod:`stockade.kube.admission` and :mod:`stockade.kube.extender`, in a worker thread (the
trust source may wait on the verifier). A body that is not JSON is answered like any
malformed document: a refusal (webhook) or ``Error`` (extender), with HTTP 200 so the
API server and the scheduler read the verdict rather than a transport error.
"""

from __future__ import annotations

import json
import ssl
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import uvicorn
from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool

from stockade.kube.admission import AdmissionPolicy, response, review
from stockade.kube.extender import filter_nodes
from stockade.kube.trust import TrustUnavailable

JSON = "application/json"


def _dumps(document: Any) -> bytes:
    return json.dumps(document, separators=(",", ":")).encode("utf-8")


def _loads(raw: bytes) -> Any:
    try:
        return json.loads(raw)
    except (UnicodeDecodeError, json.JSONDecodeError, RecursionError):
        return None


def create_app(policy: AdmissionPolicy) -> FastAPI:
    app = FastAPI(title="Stockade Kubernetes webhook and scheduler extender", docs_url=None)

    @app.post("/validate")
    async def validate(request: Request) -> Response:
        raw = await request.body()
        document = _loads(raw)
        if document is None:
            answer = response("", False, 400, "Stockade refuses a body that is not JSON")
        else:
            answer = await run_in_threadpool(review, document, policy)
        return Response(_dumps(answer), media_type=JSON)

    @app.post("/filter")
    async def filter_(request: Request) -> Response:
        raw = await request.body()
        document = _loads(raw)
        answer = await run_in_threadpool(filter_nodes, document, policy.trust, policy.clock)
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


def uvicorn_config(app: FastAPI, host: str, port: int, tls: ServerTls) -> uvicorn.Config:
    return uvicorn.Config(
        app,
        host=host,
        port=port,
        ssl_certfile=str(tls.cert),
        ssl_keyfile=str(tls.key),
        ssl_ca_certs=str(tls.client_ca) if tls.client_ca else None,
        ssl_cert_reqs=ssl.CERT_REQUIRED if tls.client_ca else ssl.CERT_NONE,
        log_level="warning",
        timeout_graceful_shutdown=2,
        server_header=False,
        access_log=False,
    )


def serve_app(app: FastAPI, host: str, port: int, tls: ServerTls) -> None:
    uvicorn.Server(uvicorn_config(app, host, port, tls)).run()
