"""The evidence request's ``release_envelope`` (issue 18): base64 of the booted release's DSSE
envelope, at most 64 KiB. Longer base64 is 422, a decoded envelope over the bound 413, bad
base64 400, each before appraisal and without spending the nonce; one within the bound
reaches the appraiser as bytes. (What appraisal makes of it: tests/appraisal/
test_appraisal_signer_rule.py; end to end: tests/e2e/test_e2e_signer_rule.py.)"""

from __future__ import annotations

import base64
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from verifier_support import (
    DevAgent,
    QuoteOnlyAppraiser,
    operator_headers,
    policy_document,
    read,
)

from stockade.appraisal.appraise import MAX_RELEASE_ENVELOPE
from stockade.verifier import VerifierConfig, create_app


class RecordingAppraiser(QuoteOnlyAppraiser):
    """The quote-only appraiser, keeping each evidence's release envelope."""

    def __init__(self) -> None:
        self.envelopes: list[bytes | None] = []

    def appraise(
        self, policy: Any, references: Any, node: Any, evidence: Any, expected_nonce: bytes
    ) -> Any:
        self.envelopes.append(evidence.release_envelope)
        return super().appraise(policy, references, node, evidence, expected_nonce)


@pytest.fixture
def recording(verifier_config: VerifierConfig) -> Iterator[tuple[TestClient, RecordingAppraiser]]:
    appraiser = RecordingAppraiser()
    with TestClient(
        create_app(verifier_config, appraiser=appraiser), raise_server_exceptions=False
    ) as client:
        stored = client.put(
            "/v1/policies/test",
            json=policy_document(),
            headers=operator_headers(verifier_config.data_dir),
        )
        assert stored.status_code == 200, stored.text
        yield client, appraiser


def _error(response: Any, status: int, code: str) -> str:
    assert response.status_code == status, response.text
    assert response.json()["error"] == code, response.text
    return str(response.json()["detail"])


def test_the_release_envelope_is_bounded(
    recording: tuple[TestClient, RecordingAppraiser], software_tpm: Any
) -> None:
    client, appraiser = recording
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-envelope")
    url = f"/v1/nodes/{node_id}/evidence"
    nonce = agent.nonce(client)
    evidence = agent.evidence(nonce)

    def send(envelope: str) -> Any:
        return client.post(url, json={**evidence, "release_envelope": envelope}, auth=agent.auth)

    over = base64.b64encode(b"{" * (MAX_RELEASE_ENVELOPE + 3)).decode()
    assert "release_envelope" in _error(send(over), 422, "invalid-request")
    # Within the base64 length, one byte over the bound once decoded.
    one_over = base64.b64encode(b" " * (MAX_RELEASE_ENVELOPE + 1)).decode()
    assert "release_envelope" in _error(send(one_over), 413, "too-large")
    assert "release_envelope" in _error(send("%%%%"), 400, "base64")
    assert appraiser.envelopes == []  # refused before appraisal
    # The nonce was not spent by a refused body: the same evidence is appraised now.
    envelope = b'{"payload": "", "payloadType": "x", "signatures": []}'
    answer = send(base64.b64encode(envelope).decode())
    assert answer.status_code == 200, answer.text
    assert appraiser.envelopes == [envelope]
    # Without the field, the evidence is as it was.
    assert agent.attest(client).status_code == 200
    assert appraiser.envelopes == [envelope, None]
    assert len(read(client, f"/v1/nodes/{node_id}/results").json()["results"]) == 2


def test_the_bound_is_the_appraisal_bound() -> None:
    # The agent refuses the same size before sending (it does not import the appraisal core).
    from stockade.agent.loop import MAX_RELEASE_ENVELOPE as AGENT_BOUND

    assert AGENT_BOUND == MAX_RELEASE_ENVELOPE


def test_the_agent_refuses_an_oversized_envelope_file(tmp_path: Path) -> None:
    from stockade.agent.loop import read_release_envelope
    from stockade.errors import InputError

    fits = tmp_path / "fits.json"
    fits.write_bytes(b" " * MAX_RELEASE_ENVELOPE)
    assert len(read_release_envelope(fits)) == MAX_RELEASE_ENVELOPE
    big = tmp_path / "big.json"
    big.write_bytes(b" " * (MAX_RELEASE_ENVELOPE + 1))
    with pytest.raises(InputError, match="more than 65536 bytes"):
        read_release_envelope(big)
    with pytest.raises(InputError, match="--release-envelope"):
        read_release_envelope(tmp_path / "missing.json")
