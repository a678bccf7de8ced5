"""``stockade verifier serve`` as a real process over TLS, verified against its printed CA."""

from __future__ import annotations

import json
import signal
import ssl
from pathlib import Path

import httpx
import pytest
from verifier_support import DevAgent, reader_headers

from support.verifier_serve import ServedVerifier, ek_ca_files


@pytest.mark.swtpm
def test_serve_over_tls_enroll_and_stream_events(
    tmp_path: Path, ek_ca, software_tpm, database_url: str | None
):
    data_dir = tmp_path / "data"
    # database_url: the fixture emptied it, a clean database whatever ran before
    verifier = ServedVerifier(data_dir, ek_ca=ek_ca_files(ek_ca), database=database_url)
    with verifier:
        printed = verifier.banner()
        url = printed["verifier"]
        assert url == f"https://127.0.0.1:{verifier.port}"
        ca_cert = Path(printed["TLS CA cert"])
        key_path = Path(printed["EAR signing key"])
        assert ca_cert.parent.parent == data_dir
        assert key_path.stat().st_mode & 0o777 == 0o600
        assert (data_dir / "tls" / "server-key.pem").stat().st_mode & 0o777 == 0o600

        context = ssl.create_default_context(cafile=str(ca_cert))
        reader = reader_headers(data_dir)
        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
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
    # uvicorn re-raises SIGTERM after its graceful shutdown.
    assert verifier.process is not None
    assert verifier.process.returncode in (0, -signal.SIGTERM), verifier.stdout() + "".join(
        verifier.stderr_lines()
    )

    # Second start: same keys, same CA, the node is still there.
    with verifier:
        again = verifier.banner()
        assert again["EAR signing key"] == printed["EAR signing key"]
        context = ssl.create_default_context(cafile=str(ca_cert))
        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
            assert client.get("/v1/keys").json()["keys"] == keys
            assert client.get(f"/v1/nodes/{node_id}", headers=reader).json()["name"] == "node-tls"
