"""``verifier serve --workers N``: N processes serving one listening socket.

Python runs one thread at a time per process, so one verifier process uses about one core.
Here the parent binds the socket once, then forks N workers; each builds its own application
(``create_app`` with ``VerifierConfig.worker`` set), with its own database pool, result
committer and per-worker state directory, and accepts connections from the shared socket (the
kernel spreads them). The workers are replicas of one another on the shared database and keys:
everything replicas must agree on lives in the database (nonces, results, the log, the active
policy, leases for the sweeper and webhook deliveries).

The parent only supervises: SIGTERM or SIGINT is passed to every worker; when one worker
exits, the others are stopped and the parent exits with the first one's status, so a process
manager (Kubernetes, systemd) restarts the whole verifier rather than run it short-handed.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import sys
from collections.abc import Callable

from fastapi import FastAPI

from stockade.verifier.errors import ConfigurationError
from stockade.verifier.tls import TlsFiles

STOP_SECONDS = 15.0


def listening_socket(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    try:
        sock = socket.create_server((host, port), family=family, backlog=2048)
    except OSError as error:
        raise ConfigurationError(
            f"cannot listen on {host}:{port}: {error.strerror or error}"
        ) from None
    sock.set_inheritable(True)
    return sock


def serve_workers(
    build: Callable[[int], FastAPI],
    count: int,
    host: str,
    port: int,
    tls: TlsFiles,
    serve: Callable[[FastAPI, socket.socket, TlsFiles], None],
) -> int:
    """Fork ``count`` workers, each serving ``build(number)`` on one shared socket; the exit
    status of the first worker to exit (0 when stopped by a signal)."""
    sock = listening_socket(host, port)
    workers: list[int] = []
    for number in range(count):
        pid = os.fork()
        if pid == 0:  # the worker
            os._exit(_run_worker(build, number, sock, tls, serve))
        workers.append(pid)
    sock.close()
    stopping = False

    def stop(signum: int, _frame: object) -> None:
        nonlocal stopping
        stopping = True
        for pid in workers:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signum)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    pid, status = os.wait()
    first = os.waitstatus_to_exitcode(status)
    remaining = [other for other in workers if other != pid]
    if not stopping:
        print(f"verifier worker {pid} exited ({first}): stopping the others", file=sys.stderr)
        for other in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGTERM)

    def kill_remaining(_signum: int, _frame: object) -> None:
        for other in remaining:
            with contextlib.suppress(ProcessLookupError):
                os.kill(other, signal.SIGKILL)

    signal.signal(signal.SIGALRM, kill_remaining)
    signal.alarm(int(STOP_SECONDS))
    for other in remaining:
        with contextlib.suppress(ChildProcessError, InterruptedError):
            os.waitpid(other, 0)
    signal.alarm(0)
    return 0 if stopping else (first if first != 0 else 1)


def _run_worker(
    build: Callable[[int], FastAPI],
    number: int,
    sock: socket.socket,
    tls: TlsFiles,
    serve: Callable[[FastAPI, socket.socket, TlsFiles], None],
) -> int:
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    try:
        serve(build(number), sock, tls)
    except ConfigurationError as error:
        print(f"verifier worker {number}: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        return 0
    return 0
