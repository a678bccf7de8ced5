"""``stockade verifier serve`` as a real process over TLS, verified against its printed CA."""

from __future__ import annotations

import json
import re
import signal
import socket
import ssl
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from verifier_support import DevAgent, reader_headers


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _wait_ready(process: subprocess.Popen, lines: list[str], url_pattern: str) -> dict[str, str]:
    deadline = time.monotonic() + 30
    printed: dict[str, str] = {}
    assert process.stdout is not None
    while "JWKS" not in printed:
        assert time.monotonic() < deadline, f"no startup banner: {lines}"
        line = process.stdout.readline()
        if not line:
            pytest.fail(f"verifier exited ({process.wait()}): {lines} {process.stderr.read()}")
        lines.append(line)
        if match := re.match(r"^([A-Za-z ]+):\s+(\S+)", line):
            printed[match.group(1).strip()] = match.group(2)
    return printed


@pytest.mark.swtpm
def test_serve_over_tls_enroll_and_stream_events(
    tmp_path: Path, ek_ca, software_tpm, database_url: str | None
):
    port = _free_port()
    data_dir = tmp_path / "data"
    command = [
        sys.executable,
        "-c",
        "from stockade.cli import main; main()",
        "verifier",
        "serve",
        "--data-dir",
        str(data_dir),
        "--port",
        str(port),
        "--ek-ca",
        str(ek_ca.root_cert_path),
        "--ek-ca",
        str(ek_ca.issuer_cert_path),
        "--enrollment-mode",
        "open",
    ]
    if database_url:  # the fixture emptied it: a clean database whatever ran before
        command += ["--database", database_url]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    lines: list[str] = []
    try:
        printed = _wait_ready(process, lines, "")
        url = printed["verifier"]
        assert url == f"https://127.0.0.1:{port}"
        ca_cert = Path(printed["TLS CA cert"])
        key_path = Path(printed["EAR signing key"])
        assert ca_cert.parent.parent == data_dir
        assert key_path.stat().st_mode & 0o777 == 0o600
        assert (data_dir / "tls" / "server-key.pem").stat().st_mode & 0o777 == 0o600

        context = ssl.create_default_context(cafile=str(ca_cert))
        reader = reader_headers(data_dir)
        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
            for _ in range(200):
                try:
                    if client.get("/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            keys = client.get("/v1/keys").json()["keys"]
            assert keys[0]["alg"] == "ES256" and keys[0]["crv"] == "P-256"

            agent = DevAgent.create(software_tpm)
            node_id = agent.enroll(client, "node-tls")
            assert client.get(f"/v1/nodes/{node_id}", headers=reader).json()["state"] == "enrolled"

            with client.stream("GET", "/v1/events", headers=reader, timeout=10) as stream:
                for line in stream.iter_lines():
                    if line.startswith("data: "):
                        event = json.loads(line[6:])
                        break
            assert event["node_id"] == node_id and event["to"] == "enrolled"

        # Plain HTTP and an unpinned client are both refused.
        with pytest.raises(httpx.TransportError):
            httpx.get(url.replace("https", "http") + "/v1/health", timeout=5)
        with pytest.raises(httpx.ConnectError):
            httpx.get(url + "/v1/health", timeout=5)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
    # uvicorn re-raises SIGTERM after its graceful shutdown.
    assert process.returncode in (0, -signal.SIGTERM), "".join(lines) + (
        process.stderr.read() if process.stderr else ""
    )

    # Second start: same keys, same CA, the node is still there.
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        again = _wait_ready(process, [], "")
        assert again["EAR signing key"] == printed["EAR signing key"]
        context = ssl.create_default_context(cafile=str(ca_cert))
        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
            for _ in range(200):
                try:
                    if client.get("/v1/health").status_code == 200:
                        break
                except httpx.TransportError:
                    time.sleep(0.05)
            assert client.get("/v1/keys").json()["keys"] == keys
            assert client.get(f"/v1/nodes/{node_id}", headers=reader).json()["name"] == "node-tls"
    finally:
        process.send_signal(signal.SIGTERM)
        process.wait(timeout=15)
