"""The verifier as shipped: started from deploy/config/verifier.yaml it serves /readyz,
/livez and /metrics, logs one JSON object per line (its start-up banner included), and logs
each stored result as one record naming the node and the result."""

from __future__ import annotations

import json
import logging
from pathlib import Path

import pytest
from verifier_support import DevAgent, policy_document

from stockade.logs import JsonFormatter
from support.verifier_serve import ServedVerifier

ROOT = Path(__file__).resolve().parents[2]
SHIPPED_CONFIG = ROOT / "deploy" / "config" / "verifier.yaml"


@pytest.mark.tools
def test_a_verifier_from_the_shipped_config_serves_probes_and_json_logs(tmp_path):
    with ServedVerifier(
        tmp_path / "verifier",
        enrollment_mode=None,
        extra=("--config", str(SHIPPED_CONFIG), "--host", "127.0.0.1"),
    ) as verifier, verifier.httpx_client() as client:  # fmt: skip
        assert client.get("/readyz").json() == {"status": "ready"}
        assert client.get("/livez").status_code == 200
        assert client.get("/metrics").status_code == 401
        token = verifier.reader_token_file.read_text().strip()
        metrics = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        assert metrics.status_code == 200 and "stockade_attestations_total" in metrics.text
        lines = verifier.stderr_lines()
        stdout = verifier.stdout()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    started = [record for record in records if record["event"] == "verifier started"]
    assert len(started) == 1, records
    assert started[0]["verifier"] == verifier.url
    assert started[0]["enrollment"] == "approve"  # from the file: no flag gave it
    assert stdout == ""  # the banner is a log record, not loose text
    assert all({"time", "level", "logger", "event"} <= record.keys() for record in records)


@pytest.mark.swtpm
def test_each_stored_result_is_one_record_with_node_and_result(
    make_client, verifier_config, make_software_tpm, caplog
):
    client = make_client(verifier_config, policy=policy_document())
    agent = DevAgent.create(make_software_tpm())
    agent.enroll(client, "logged-node")
    with caplog.at_level(logging.INFO, logger="stockade.verifier"):
        answer = agent.attest(client).json()
    (record,) = [r for r in caplog.records if r.getMessage() == "attestation result"]
    line = json.loads(JsonFormatter().format(record))
    assert line["node"] == agent.node_id
    assert line["result"] == answer["result_id"]
    assert line["status"] == answer["status"]
    assert line["log_index"] == answer["log_index"]
