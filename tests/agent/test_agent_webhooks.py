"""Webhook delivery against a real HTTP receiver on 127.0.0.1 that fails, then accepts:
every event arrives, in order, signed with the verifier's key, and a restarted worker
resumes from the durable cursor."""

from __future__ import annotations

import http.server
import json
import threading
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from sqlalchemy import create_engine
from sqlalchemy.orm import Session

from stockade.verifier.models import Base, Event, Node
from stockade.verifier.webhooks import (
    EVENT_ID_HEADER,
    SIGNATURE_HEADER,
    WebhookWorker,
    sign_body,
    verify_signature,
)

NOW = datetime(2026, 11, 1, tzinfo=UTC)


class Receiver(http.server.BaseHTTPRequestHandler):
    fail_first = 2
    attempts: list[int]
    received: list[tuple[bytes, str, str]]

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers["Content-Length"]))
        self.attempts.append(1)
        if len(self.attempts) <= self.fail_first:
            self.send_response(503)
        else:
            self.received.append(
                (body, self.headers[SIGNATURE_HEADER], self.headers[EVENT_ID_HEADER])
            )
            self.send_response(204)
        self.send_header("Content-Length", "0")
        self.end_headers()

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def receiver() -> Iterator[tuple[str, type[Receiver]]]:
    handler = type("Handler", (Receiver,), {"attempts": [], "received": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/hook", handler
    server.shutdown()
    server.server_close()


def _engine(tmp_path: Path):  # type: ignore[no-untyped-def]
    engine = create_engine(f"sqlite:///{tmp_path / 'verifier.db'}")
    Base.metadata.create_all(engine)
    with Session(engine) as session, session.begin():
        session.add(
            Node(
                id="n-1",
                name="good-1",
                ek_fingerprint="00" * 32,
                ek_public=b"e",
                ek_certificate=b"c",
                ak_public=b"a",
                state="trusted",
                revoked=False,
                allowed=True,
                created_at=NOW,
                updated_at=NOW,
            )
        )
    return engine


def _add_event(engine, to_state: str, reason: str) -> None:  # type: ignore[no-untyped-def]
    with Session(engine) as session, session.begin():
        session.add(
            Event(
                node_id="n-1",
                name="good-1",
                from_state="trusted",
                to_state=to_state,
                reason=reason,
                result_id=None,
                time=NOW,
            )
        )


def _wait_for(condition, timeout: float = 10.0) -> None:  # type: ignore[no-untyped-def]
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def test_signature_round_trip() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    header = sign_body(key, b'{"id":1}')
    assert verify_signature(key.public_key(), b'{"id":1}', header)
    assert not verify_signature(key.public_key(), b'{"id":2}', header)
    assert not verify_signature(key.public_key(), b'{"id":1}', "not base64!")
    other = ec.generate_private_key(ec.SECP256R1())
    assert not verify_signature(other.public_key(), b'{"id":1}', header)


def test_delivers_every_event_at_least_once_after_failures(
    tmp_path: Path, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    engine = _engine(tmp_path)
    for state in ("untrusted", "trusted", "failed"):
        _add_event(engine, state, f"to {state}")
    key = ec.generate_private_key(ec.SECP256R1())
    worker = WebhookWorker(
        engine, [url], key, poll_seconds=0.02, initial_backoff=0.05, max_backoff=0.2
    )
    worker.start()
    try:
        _wait_for(lambda: len(handler.received) == 3)
    finally:
        worker.stop()
    assert len(handler.attempts) == 5  # two refusals, then three deliveries
    documents = []
    for body, signature, event_id in handler.received:
        assert verify_signature(key.public_key(), body, signature)
        document = json.loads(body)
        assert str(document["id"]) == event_id
        documents.append(document)
    assert [d["id"] for d in documents] == [1, 2, 3]
    assert [d["to"] for d in documents] == ["untrusted", "trusted", "failed"]
    assert set(documents[0]) == {
        "id",
        "time",
        "node_id",
        "name",
        "from",
        "to",
        "reason",
        "result_id",
        "actor",
    }

    # A new worker (a restarted verifier) resumes after the last acknowledged event.
    _add_event(engine, "revoked", "operator")
    restarted = WebhookWorker(engine, [url], key, poll_seconds=0.02)
    restarted.start()
    try:
        _wait_for(lambda: len(handler.received) == 4)
        time.sleep(0.2)
    finally:
        restarted.stop()
    assert [json.loads(body)["id"] for body, _, _ in handler.received] == [1, 2, 3, 4]


def test_an_unreachable_url_does_not_hold_up_the_others(
    tmp_path: Path, receiver: tuple[str, type[Receiver]]
) -> None:
    url, handler = receiver
    handler.fail_first = 0
    engine = _engine(tmp_path)
    _add_event(engine, "failed", "pcr 4")
    dead = "http://127.0.0.1:9/nowhere"
    worker = WebhookWorker(
        engine, [dead, url], ec.generate_private_key(ec.SECP256R1()), initial_backoff=0.05
    )
    assert worker.deliver_pending() == 1
    assert len(handler.received) == 1
    assert worker.deliver_pending() == 0  # the dead URL is backing off, the live one is done
