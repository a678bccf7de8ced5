"""Local services on a Unix socket only the owner can use: created mode 0600 (umask) in a 0700
directory, served by daemon threads while a block runs, and removed afterwards. Used by the
agent's secret socket and the OCI hook's admission server."""

from __future__ import annotations

import contextlib
import os
import socketserver
import threading
from collections.abc import Iterator
from pathlib import Path

from stockade.errors import InputError


class ThreadingUnixServer(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    daemon_threads = True


@contextlib.contextmanager
def serving_unix_socket(
    path: Path,
    handler: type[socketserver.BaseRequestHandler],
    *,
    name: str,
    server_class: type[ThreadingUnixServer] = ThreadingUnixServer,
) -> Iterator[Path]:
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    previous = os.umask(0o177)
    try:
        server = server_class(str(path), handler)
    except OSError as error:
        raise InputError(f"cannot listen on {path}: {error.strerror or error}") from None
    finally:
        os.umask(previous)
    thread = threading.Thread(target=server.serve_forever, name=name, daemon=True)
    thread.start()
    try:
        yield path
    finally:
        server.shutdown()
        server.server_close()
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
