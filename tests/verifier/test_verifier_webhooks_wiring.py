"""``stockade verifier serve --webhook URL`` as a real process: an enrollment's event is
POSTed to a receiver in this test, retried after the receiver refuses it once, and its
``Stockade-Signature`` verifies with the key served at ``GET /v1/keys``."""

from __future__ import annotations

import base64
import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from verifier_support import DevAgent

from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import SoftwareTpm
from stockade.verifier.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER, verify_signature
from support.verifier_serve import ServedVerifier, ek_ca_files


class Receiver:
    """A webhook receiver on 127.0.0.1 that answers 503 to its first POST, then 204."""

    def __init__(self) -> None:
        self.deliveries: list[tuple[dict[str, str], bytes]] = []
        self.refused = 0
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                with receiver.lock:
                    if receiver.refused == 0:
                        receiver.refused += 1
                        status = 503
                    else:
                        receiver.deliveries.append((dict(self.headers.items()), body))
                        status = 204
                self.send_response(status)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(  # polling 0.05 s: shutdown() within that, not 0.5 s
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )

    def __enter__(self) -> Receiver:
        self.thread.start()
        return self

    def __exit__(self, *_: object) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[tuple[dict[str, str], bytes]]:
        with self.lock:
            return list(self.deliveries)


@pytest.fixture
def receiver() -> Iterator[Receiver]:
    with Receiver() as running:
        yield running


def _public_key(jwk: dict[str, str]) -> ec.EllipticCurvePublicKey:
    def number(field: str) -> int:
        text = jwk[field]
        return int.from_bytes(base64.urlsafe_b64decode(text + "=" * (-len(text) % 4)), "big")

    return ec.EllipticCurvePublicNumbers(number("x"), number("y"), ec.SECP256R1()).public_key()


@pytest.mark.swtpm
def test_serve_posts_signed_events_to_webhook(
    tmp_path: Path,
    ek_ca: EkCa,
    software_tpm: SoftwareTpm,
    receiver: Receiver,
    database_url: str | None,  # on PostgreSQL: reset, so only this test's events exist
) -> None:
    verifier = ServedVerifier(
        tmp_path / "data",
        ek_ca=ek_ca_files(ek_ca),
        database=database_url,
        extra=("--webhook", receiver.url, "--webhook", receiver.url),  # the same URL once
    )
    with verifier:
        url, context = verifier.url, verifier.ssl_context()
        assert f"webhook:          {receiver.url}" in verifier.stdout()

        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
            (jwk,) = client.get("/v1/keys").json()["keys"]
            node_id = DevAgent.create(software_tpm).enroll(client, "node-webhook")

        deadline = time.monotonic() + 15
        while not receiver.received():
            assert time.monotonic() < deadline, f"nothing delivered: {verifier.output()}"
            time.sleep(0.05)
        headers, body = receiver.received()[0]

    assert receiver.refused == 1  # the first attempt was refused and retried
    event = json.loads(body)
    assert event["node_id"] == node_id
    assert event["name"] == "node-webhook"
    assert event["to"] == "enrolled"
    assert headers[EVENT_ID_HEADER] == str(event["id"])
    assert headers["Content-Type"] == "application/json"
    key = _public_key(jwk)
    assert verify_signature(key, body, headers[SIGNATURE_HEADER])
    assert not verify_signature(key, body + b" ", headers[SIGNATURE_HEADER])
    # One URL given twice is one target: each event arrives once.
    assert len({h[EVENT_ID_HEADER] for h, _ in receiver.received()}) == len(receiver.received())
