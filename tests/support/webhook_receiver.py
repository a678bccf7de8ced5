"""A webhook receiver for tests: an HTTP server on 127.0.0.1 recording every POST it gets
(answers 204), with the event id, body, signature, every header and arrival time of each.
``refuse=N`` answers 503 to the first N POSTs (recorded in ``refused``): redeliveries."""

from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from stockade.verifier.webhooks import EVENT_ID_HEADER, SIGNATURE_HEADER


@dataclass
class Delivery:
    event_id: int
    body: bytes
    signature: str
    at: float
    headers: dict[str, str] = field(default_factory=dict)  # names lower-cased


@dataclass
class Receiver:
    """An HTTP webhook receiver recording every POST (answers 204)."""

    deliveries: list[Delivery] = field(default_factory=list)
    refuse: int = 0  # answer 503 to this many POSTs first
    refused: list[Delivery] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def __post_init__(self) -> None:
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                delivery = Delivery(
                    int(self.headers[EVENT_ID_HEADER]),
                    body,
                    self.headers[SIGNATURE_HEADER],
                    time.monotonic(),
                    {name.lower(): value for name, value in self.headers.items()},
                )
                with receiver.lock:
                    refusing = len(receiver.refused) < receiver.refuse
                    (receiver.refused if refusing else receiver.deliveries).append(delivery)
                self.send_response(503 if refusing else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/"
        self.thread = threading.Thread(  # polling 0.05 s: shutdown() within that, not 0.5 s
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()

    def received(self) -> list[Delivery]:
        with self.lock:
            return list(self.deliveries)

    def ids(self) -> list[int]:
        return [delivery.event_id for delivery in self.received()]
