"""The operator CLI's transport (``VerifierClient(..., plain_http=True)``: the standard
library's ``http.client``) answers as the httpx one does: the same requests on the wire,
the same values and the same typed errors, a keep-alive connection the server dropped
opened again."""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

import pytest

from stockade.verifier_client import VerifierClient, VerifierRefused, VerifierUnavailable


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    seen: list[dict[str, Any]]

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def _answer(self) -> None:
        length = int(self.headers.get("Content-Length") or 0)
        body = self.rfile.read(length) if length else b""
        self.seen.append(
            {
                "method": self.command,
                "path": self.path,
                "body": body,
                "type": self.headers.get("Content-Type"),
                "auth": self.headers.get("Authorization"),
                "peer": self.client_address[1],
            }
        )
        route = self.path.split("?")[0].removeprefix("/base")
        status, headers, content = ROUTES.get(route, (404, {}, b'{"error": "not-found"}'))
        if route == "/echo":
            content = json.dumps({"path": self.path, "body": body.decode()}).encode()
        self.send_response(status)
        for name, value in headers.items():
            self.send_header(name, value)
        if status != 204:
            self.send_header("Content-Length", str(len(content)))
        self.end_headers()
        if status != 204:
            self.wfile.write(content)
        if route == "/close":
            self.close_connection = True

    do_GET = do_POST = do_PUT = do_DELETE = _answer


ROUTES: dict[str, tuple[int, dict[str, str], bytes]] = {
    "/json": (200, {"Content-Type": "application/json"}, b'{"nodes": [{"name": "a"}]}'),
    "/echo": (200, {}, b""),
    "/close": (200, {"Connection": "close"}, b'{"ok": true}'),
    "/empty": (204, {}, b""),
    "/text": (200, {}, b"not json"),
    "/refused": (403, {}, b'{"error": "forbidden", "detail": "a reader token is needed"}'),
    "/slow-down": (429, {"Retry-After": "7"}, b'{"error": "rate-limited", "detail": "later"}'),
    "/fastapi": (422, {}, b'{"detail": [{"loc": ["body"], "msg": "field required"}]}'),
    "/down": (503, {}, b'{"error": "unavailable", "detail": "database"}'),
}


@pytest.fixture
def server() -> Iterator[tuple[str, list[dict[str, Any]]]]:
    seen: list[dict[str, Any]] = []
    handler = type("Handler", (_Handler,), {"seen": seen})
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    thread = threading.Thread(target=httpd.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}", seen
    finally:
        httpd.shutdown()
        httpd.server_close()


def _both(url: str, **options: Any) -> list[VerifierClient]:
    return [VerifierClient(url, plain_http=plain, **options) for plain in (True, False)]


def _outcome(client: VerifierClient, method: str, path: str, body: Any = None, **params: Any):
    try:
        return ("answer", client.request(method, path, body, **params))
    except VerifierRefused as error:
        return ("refused", error.status, error.code, error.detail, error.retry_after)
    except VerifierUnavailable as error:
        return ("unavailable", type(error).__name__, str(error))


@pytest.mark.parametrize(
    ("method", "path", "body", "params"),
    [
        ("GET", "/json", None, {}),
        ("GET", "/echo", None, {"after": 3, "node": "n a/b", "since": None, "flag": True}),
        ("POST", "/echo", {"name": "ü", "list": [1, 2]}, {}),
        ("PUT", "/empty", {"id": "p"}, {}),
        ("DELETE", "/text", None, {}),
        ("GET", "/refused", None, {}),
        ("GET", "/slow-down", None, {}),
        ("GET", "/fastapi", None, {}),
        ("GET", "/down", None, {}),
        ("GET", "/nowhere", None, {}),
        ("GET", "/policies/ü x", None, {"image": "registry/ö:1 2"}),
    ],
)
def test_the_plain_transport_answers_as_httpx_does(server, method, path, body, params):
    url, seen = server
    plain, pooled = _both(url, operator_token="t0k")
    with plain, pooled:
        assert _outcome(plain, method, path, body, **params) == _outcome(
            pooled, method, path, body, **params
        )
    ours, theirs = seen
    for key in ("method", "path", "body", "auth"):
        assert ours[key] == theirs[key], key
    assert ours["auth"] == "Bearer t0k"
    if body is not None:
        assert ours["type"] == theirs["type"] == "application/json"


def test_one_connection_is_kept_and_opened_again_when_the_server_closes_it(server):
    url, seen = server
    with VerifierClient(url, plain_http=True) as client:
        assert client.request("GET", "/json") == {"nodes": [{"name": "a"}]}
        assert client.request("GET", "/json") == {"nodes": [{"name": "a"}]}
        assert client.request("GET", "/close") == {"ok": True}
        assert client.request("GET", "/json") == {"nodes": [{"name": "a"}]}
    peers = [request["peer"] for request in seen]
    assert peers[0] == peers[1] == peers[2] != peers[3]


def test_a_connection_dropped_while_idle_is_opened_again(server):
    url, seen = server
    with VerifierClient(url, plain_http=True) as client:
        client.request("GET", "/json")
        assert client._plain is not None and client._plain._connection is not None
        sock = client._plain._connection.sock
        assert sock is not None
        sock.shutdown(socket.SHUT_RDWR)  # as a server closing an idle keep-alive would
        assert client.request("GET", "/json") == {"nodes": [{"name": "a"}]}
    assert len(seen) == 2


def test_a_base_path_is_kept(server):
    url, seen = server
    with VerifierClient(url + "/base/", plain_http=True) as client:
        assert client.request("GET", "/json") == {"nodes": [{"name": "a"}]}
    assert seen[0]["path"] == "/base/json"


def test_a_refused_connection_is_unavailable():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    plain, pooled = _both(f"http://127.0.0.1:{port}")
    with plain, pooled:
        ours, theirs = _outcome(plain, "GET", "/v1/nodes"), _outcome(pooled, "GET", "/v1/nodes")
    assert ours[0] == theirs[0] == "unavailable"
    assert f"http://127.0.0.1:{port} unreachable" in ours[2]


def test_streams_and_node_calls_of_a_plain_client_use_httpx(server):
    url, _ = server
    with VerifierClient(url, plain_http=True) as client:
        assert client._client is None
        client.as_node("node", lambda digest: bytes(64))
        with pytest.raises(VerifierRefused):
            client.nonce("node")  # signed: through httpx, made now
        assert client._client is not None
