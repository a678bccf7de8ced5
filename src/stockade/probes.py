"""Health and metrics of a daemon that serves no HTTP of its own (the agent, the node
controller, the CSR approver): ``GET /livez``, ``GET /readyz`` and ``GET /metrics`` on a small
plain-HTTP listener (``--probe-address HOST:PORT``).

- ``/livez`` is 200 while the daemon's loop keeps beating (:meth:`Health.beat`) and 503 once it
  has not beaten for ``stale_after`` seconds: a wedged loop gets the pod restarted.
- ``/readyz`` is what the daemon last reported (:meth:`Health.ready`): 200 or 503 with the
  reason as the body.
- ``/metrics`` is the daemon's own ``CollectorRegistry`` in the Prometheus text format.

The door: GET and HEAD of three fixed paths, nothing read from the request but its head (the
standard library's 64 KiB line limit; a 5 s socket timeout so a slow client cannot hold a
thread), nothing changed by any request. What it tells is counts and states of this daemon;
it listens on 127.0.0.1 unless told otherwise, and in a pod on the pod's address for the
kubelet and Prometheus.
"""

from __future__ import annotations

import contextlib
import socket
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest

from stockade.errors import InputError

DEFAULT_STALE_AFTER = 120.0


def parse_address(text: str) -> tuple[str, int]:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) as a bind address; a bad one is an InputError."""
    host, separator, port_text = text.rpartition(":")
    host = host.strip("[]")
    if not separator or not host or not port_text.isdigit() or not 0 < int(port_text) < 65536:
        raise InputError(f"--probe-address must be HOST:PORT, got '{text}'")
    return host, int(port_text)


@dataclass
class Health:
    """What a daemon's loop reports: a heartbeat, and whether it can do its job."""

    stale_after: float = DEFAULT_STALE_AFTER
    _last_beat: float = field(default_factory=time.monotonic)
    _ready: bool = False
    _reason: str = "starting"
    _lock: threading.Lock = field(default_factory=threading.Lock)

    def beat(self) -> None:
        with self._lock:
            self._last_beat = time.monotonic()

    def ready(self, ok: bool, reason: str = "") -> None:
        with self._lock:
            self._ready = ok
            self._reason = reason or ("ready" if ok else "not ready")

    def liveness(self) -> tuple[bool, str]:
        with self._lock:
            silent = time.monotonic() - self._last_beat
        if silent > self.stale_after:
            return False, f"the loop has not run for {silent:.0f} s"
        return True, "alive"

    def readiness(self) -> tuple[bool, str]:
        with self._lock:
            return self._ready, self._reason


class ProbeServer:
    """Serves :class:`Health` and ``registry`` on ``address`` from a background thread."""

    def __init__(
        self, address: tuple[str, int], health: Health, registry: CollectorRegistry
    ) -> None:
        handler = type("Handler", (_Handler,), {"health": health, "registry": registry})
        server_class = _ServerV6 if ":" in address[0] else ThreadingHTTPServer
        self._server = server_class(address, handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, name="probes", daemon=True
        )

    @property
    def port(self) -> int:
        return int(self._server.server_address[1])

    def start(self) -> ProbeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)


def serve_probes(
    stack: contextlib.ExitStack,
    address: tuple[str, int],
    health: Health,
    registry: CollectorRegistry,
) -> ProbeServer:
    """Listen on ``address`` (``--probe-address``; one that cannot be bound is one
    ``InputError`` line) and serve until ``stack`` closes."""
    try:
        probes = ProbeServer(address, health, registry)
    except OSError as error:
        host, port = address
        shown = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
        raise InputError(
            f"--probe-address {shown}: cannot listen: {error.strerror or error}"
        ) from None
    stack.callback(probes.stop)
    return probes.start()


class _ServerV6(ThreadingHTTPServer):
    """The listener on an IPv6 address (a pod IP on an IPv6 or dual-stack cluster)."""

    address_family = socket.AF_INET6


class _Handler(BaseHTTPRequestHandler):
    health: Health
    registry: CollectorRegistry
    timeout = 5
    server_version = "stockade-probes"
    sys_version = ""

    def log_message(self, format: str, *args: Any) -> None:
        """Probes every few seconds would drown the daemon's own log."""

    def do_HEAD(self) -> None:
        self._answer(with_body=False)

    def do_GET(self) -> None:
        self._answer(with_body=True)

    def _answer(self, with_body: bool) -> None:
        path = self.path.split("?", 1)[0]
        content_type = "text/plain; charset=utf-8"
        if path == "/livez":
            ok, detail = self.health.liveness()
            status, body = (200 if ok else 503), detail.encode() + b"\n"
        elif path == "/readyz":
            ok, detail = self.health.readiness()
            status, body = (200 if ok else 503), detail.encode() + b"\n"
        elif path == "/metrics":
            status, body, content_type = 200, generate_latest(self.registry), CONTENT_TYPE_LATEST
        else:
            status, body = 404, b"not found\n"
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.send_header("Cache-Control", "no-store")
        self.end_headers()
        if with_body:
            self.wfile.write(body)
