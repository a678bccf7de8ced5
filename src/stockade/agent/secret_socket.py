"""Secrets for local applications over a Unix socket, unsealed by the TPM on every read.

The socket is created mode 0600 in a 0700 directory, so only the agent's user (and root) can
connect. A request is one line, ``GET <name>\\n``; the answer is ``OK <length>\\n`` followed by
the bytes, or ``ERR <reason>\\n``. Nothing is cached: each read imports and unseals the sealed
copy in the TPM, so the moment the node's PCRs leave the attested values, reads fail.
"""

from __future__ import annotations

import contextlib
import socket
import socketserver
from collections.abc import Callable, Iterator
from pathlib import Path

from stockade.agent.unix_socket import ThreadingUnixServer, serving_unix_socket
from stockade.errors import StockadeError

MAX_REQUEST = 512


class SecretSocketError(StockadeError):
    """The agent answered ``ERR``, or the socket could not be used."""

    exit_code = 1


class _Handler(socketserver.StreamRequestHandler):
    server: _Server

    def handle(self) -> None:
        line = self.rfile.readline(MAX_REQUEST).decode("utf-8", "replace").strip()
        verb, _, name = line.partition(" ")
        if verb != "GET" or name not in self.server.names:
            self._error(f"unknown request or secret {name!r}" if verb == "GET" else "bad request")
            return
        try:
            value = self.server.unseal(name)
        except StockadeError as error:
            self._error(f"{name}: {error}")
            return
        self.wfile.write(b"OK %d\n" % len(value) + value)

    def _error(self, message: str) -> None:
        self.wfile.write(b"ERR " + message.replace("\n", " ").encode() + b"\n")


class _Server(ThreadingUnixServer):
    names: frozenset[str]
    unseal: Callable[[str], bytes]


@contextlib.contextmanager
def serving_secrets(
    path: Path, names: frozenset[str], unseal: Callable[[str], bytes]
) -> Iterator[Path]:
    """Serve ``names`` on ``path`` while the block runs; the socket is removed afterwards."""
    server_class = type(
        "SecretServer", (_Server,), {"names": names, "unseal": staticmethod(unseal)}
    )
    with serving_unix_socket(
        path, _Handler, name="secret-socket", server_class=server_class
    ) as served:
        yield served


def read_secret(path: Path, name: str, timeout: float = 30.0) -> bytes:
    """Ask the agent at ``path`` for ``name``; ``SecretSocketError`` with its reason if refused."""
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as client:
            client.settimeout(timeout)
            client.connect(str(path))
            client.sendall(f"GET {name}\n".encode())
            stream = client.makefile("rb")
            header = stream.readline(MAX_REQUEST).decode("utf-8", "replace").rstrip("\n")
            if header.startswith("ERR "):
                raise SecretSocketError(f"the agent refused: {header[4:]}")
            verb, _, length = header.partition(" ")
            if verb != "OK" or not length.isdigit():
                raise SecretSocketError(f"unexpected answer from {path}: {header[:80]!r}")
            value = stream.read(int(length))
    except OSError as error:
        raise SecretSocketError(f"cannot read from {path}: {error.strerror or error}") from None
    if len(value) != int(length):
        raise SecretSocketError(f"the answer from {path} was cut short")
    return value
