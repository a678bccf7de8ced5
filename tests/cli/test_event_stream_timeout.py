"""An event stream whose connection dies silently (no FIN, no RST: a cable pulled, a NAT
entry dropped) ends in a typed error the follower reconnects from, instead of a read that
waits forever: the verifier sends a keepalive every 15 s, so a stream silent for
``STREAM_READ_TIMEOUT`` is dead."""

from __future__ import annotations

import socket
import threading
import time

import pytest

import stockade.verifier_client as verifier_client
from stockade.verifier.events import KEEPALIVE_SECONDS
from stockade.verifier_client import VerifierClient, VerifierUnavailable

HEAD = b"HTTP/1.1 200 OK\r\ncontent-type: text/event-stream\r\ntransfer-encoding: chunked\r\n\r\n"


def _silent_server() -> tuple[socket.socket, threading.Event]:
    """Answers the stream's head and one event, then says nothing, keeping the socket open."""
    listener = socket.create_server(("127.0.0.1", 0))
    done = threading.Event()

    def serve() -> None:
        connection, _ = listener.accept()
        with connection:
            connection.recv(65536)
            event = b'id: 1\ndata: {"id": 1}\n\n'
            connection.sendall(HEAD + f"{len(event):x}\r\n".encode() + event + b"\r\n")
            done.wait(30)

    threading.Thread(target=serve, daemon=True).start()
    return listener, done


def test_the_read_timeout_outlasts_several_keepalives():
    assert verifier_client.STREAM_READ_TIMEOUT >= 3 * KEEPALIVE_SECONDS


def test_a_silent_stream_ends_in_a_typed_error(monkeypatch: pytest.MonkeyPatch):
    monkeypatch.setattr(verifier_client, "STREAM_READ_TIMEOUT", 0.5)
    listener, done = _silent_server()
    port = listener.getsockname()[1]
    received = []
    started = time.monotonic()
    try:
        with (
            VerifierClient(f"http://127.0.0.1:{port}") as client,
            pytest.raises(VerifierUnavailable),
        ):
            for event in client.stream_events(follow=True):
                received.append(event)
    finally:
        done.set()
        listener.close()
    assert received == [{"id": 1}]
    assert time.monotonic() - started < 10
