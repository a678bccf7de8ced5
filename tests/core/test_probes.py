"""The probe listener of daemons without an HTTP server of their own: /livez follows the loop's
heartbeat, /readyz what the daemon last reported, /metrics its own registry; nothing else is
served and no request changes anything."""

from __future__ import annotations

import http.client
import socket
import time

import pytest
from prometheus_client import CollectorRegistry, Counter

from stockade.errors import InputError
from stockade.probes import Health, ProbeServer, parse_address


def _get(port: int, path: str, method: str = "GET") -> tuple[int, str]:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
    try:
        connection.request(method, path)
        response = connection.getresponse()
        return response.status, response.read().decode()
    finally:
        connection.close()


@pytest.fixture
def served():
    health = Health(stale_after=0.3)
    registry = CollectorRegistry()
    counter = Counter("stockade_test_rounds", "rounds", registry=registry)
    server = ProbeServer(("127.0.0.1", 0), health, registry).start()
    try:
        yield server, health, counter
    finally:
        server.stop()


def test_readiness_is_what_the_daemon_reported(served):
    server, health, _ = served
    assert _get(server.port, "/readyz") == (503, "starting\n")
    health.ready(True, "leading; verifier and API server reached")
    assert _get(server.port, "/readyz") == (200, "leading; verifier and API server reached\n")
    health.ready(False, "verifier unreachable: connection refused")
    status, body = _get(server.port, "/readyz")
    assert status == 503 and "verifier unreachable" in body


def test_liveness_fails_when_the_loop_stops_beating(served):
    server, health, _ = served
    health.beat()
    assert _get(server.port, "/livez")[0] == 200
    time.sleep(0.5)
    status, body = _get(server.port, "/livez")
    assert status == 503 and "has not run" in body
    health.beat()
    assert _get(server.port, "/livez")[0] == 200


def test_metrics_are_the_daemons_own_registry(served):
    server, _, counter = served
    counter.inc(3)
    status, body = _get(server.port, "/metrics")
    assert status == 200
    assert "stockade_test_rounds_total 3.0" in body
    assert "python_gc" not in body  # not prometheus_client's global registry


def test_nothing_else_is_served_and_nothing_changes(served):
    server, health, _ = served
    health.ready(True)
    assert _get(server.port, "/")[0] == 404
    assert _get(server.port, "/readyz/../livez")[0] == 404
    assert _get(server.port, "/readyz", method="POST")[0] == 501
    assert _get(server.port, "/readyz", method="DELETE")[0] == 501
    assert _get(server.port, "/readyz")[0] == 200


def test_an_oversized_request_line_is_refused_and_the_server_lives_on(served):
    server, health, _ = served
    health.ready(True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=5) as raw:
        raw.sendall(b"GET /" + b"a" * 70_000 + b" HTTP/1.1\r\n\r\n")
        answer = raw.recv(100)
    assert answer.startswith(b"HTTP/1.0 414")
    assert _get(server.port, "/readyz")[0] == 200


def test_a_silent_client_does_not_hold_the_server(served):
    server, health, _ = served
    health.ready(True)
    with socket.create_connection(("127.0.0.1", server.port), timeout=10):
        # Says nothing; others are still answered meanwhile.
        assert _get(server.port, "/readyz")[0] == 200


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:9102", ("127.0.0.1", 9102)),
        ("[::1]:80", ("::1", 80)),
        ("0.0.0.0:1", ("0.0.0.0", 1)),
    ],
)
def test_addresses_parse(text, expected):
    assert parse_address(text) == expected


@pytest.mark.parametrize("text", ["9102", ":9102", "host:", "host:0", "host:70000", "h:x"])
def test_bad_addresses_are_input_errors(text):
    with pytest.raises(InputError, match="HOST:PORT"):
        parse_address(text)


def test_an_ipv6_address_is_served():
    server = ProbeServer(("::1", 0), Health(), CollectorRegistry()).start()
    try:
        connection = http.client.HTTPConnection("::1", server.port, timeout=5)
        connection.request("GET", "/livez")
        assert connection.getresponse().status == 200
        connection.close()
    finally:
        server.stop()


def test_an_address_in_use_is_one_input_error_line():
    import contextlib

    from stockade.probes import serve_probes

    with contextlib.ExitStack() as stack:
        first = serve_probes(stack, ("127.0.0.1", 0), Health(), CollectorRegistry())
        with pytest.raises(InputError, match=rf"--probe-address 127.0.0.1:{first.port}: cannot"):
            serve_probes(stack, ("127.0.0.1", first.port), Health(), CollectorRegistry())
        assert _get(first.port, "/livez")[0] == 200
