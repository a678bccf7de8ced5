"""GET /metrics: a reader's door; counters and histograms move by exactly what happened, the
node gauge follows the states, the webhook backlog counts what was not delivered."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import func, select
from verifier_support import ZERO_PCR_7, DevAgent, operator_headers, policy_document, read

from stockade.cluster.secret_store import KeyEncryptionKey, KeyRing
from stockade.tpm.device import Tpm
from stockade.verifier import VerifierConfig
from stockade.verifier.models import Event

EVIDENCE = "/v1/nodes/{node_id}/evidence"
Samples = dict[tuple[str, frozenset[tuple[str, str]]], float]


def scrape(client: TestClient) -> Samples:
    response = read(client, "/metrics")
    assert response.status_code == 200, response.text
    assert response.headers["content-type"].startswith("text/plain; version=0.0.4")
    return {
        (sample.name, frozenset(sample.labels.items())): sample.value
        for family in text_string_to_metric_families(response.text)
        for sample in family.samples
    }


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, frozenset(labels.items())), 0.0)


def moved(before: Samples, after: Samples, name: str, **labels: str) -> float:
    return value(after, name, **labels) - value(before, name, **labels)


@pytest.fixture
def config(verifier_config: VerifierConfig) -> VerifierConfig:
    return dataclasses.replace(verifier_config, key_ring=KeyRing(KeyEncryptionKey.generate()))


@pytest.fixture
def api(make_client: Callable[..., TestClient], config: VerifierConfig) -> TestClient:
    return make_client(config, policy=policy_document(reference=ZERO_PCR_7))


def test_metrics_need_a_reader_and_parse(api: TestClient, config: VerifierConfig) -> None:
    refused = api.get("/metrics")
    assert refused.status_code == 401 and refused.json()["error"] == "read-token"
    wrong = api.get("/metrics", headers={"Authorization": "Bearer " + "x" * 43})
    assert wrong.status_code == 401
    assert api.get("/metrics", headers=operator_headers(config.data_dir)).status_code == 200
    samples = scrape(api)
    names = {name for name, _ in samples}
    assert {"stockade_nodes", "stockade_verifier_info", "stockade_request_seconds_count"} <= names
    # Liveness needs no credential and no database.
    assert api.get("/livez").json() == {"status": "ok"}
    assert api.get("/readyz").status_code == 200


@pytest.mark.swtpm
def test_attestations_and_releases_move_the_counters_exactly(
    api: TestClient, config: VerifierConfig, make_software_tpm: Callable[..., object]
) -> None:
    good, bad = DevAgent.create(make_software_tpm()), DevAgent.create(make_software_tpm())
    good.enroll(api, "web-1")
    bad.enroll(api, "web-2")
    stored = api.put(
        "/v1/secrets/db", json={"value": "c2VjcmV0"}, headers=operator_headers(config.data_dir)
    )
    assert stored.status_code == 200, stored.text
    granted = api.post(
        "/v1/secrets/db/grants",
        json={"selector": "node:web-1"},
        headers=operator_headers(config.data_dir),
    )
    assert granted.status_code == 200, granted.text
    before = scrape(api)

    # Two affirming results, one nonce replayed (409), one contraindicated (PCR 7 changed),
    # one quote that does not verify (another TPM's over this node's nonce: 403).
    assert good.attest(api).json()["status"] == "affirming"
    nonce = good.nonce(api)
    evidence = good.evidence(nonce)
    path = f"/v1/nodes/{good.node_id}/evidence"
    assert api.post(path, json=evidence, auth=good.auth).json()["status"] == "affirming"
    replayed = api.post(path, json=evidence, auth=good.auth)
    assert replayed.status_code == 409 and replayed.json()["error"] == "nonce"
    with Tpm(bad.tpm.tcti) as tpm:  # type: ignore[attr-defined]
        tpm.extend_pcr(7, b"runtime change")
    assert bad.attest(api).json()["status"] == "contraindicated"
    relayed = api.post(
        f"/v1/nodes/{bad.node_id}/evidence", json=good.evidence(bad.nonce(api)), auth=bad.auth
    )
    assert relayed.status_code == 403 and relayed.json()["error"] == "evidence"
    released = api.post(f"/v1/nodes/{good.node_id}/secrets/db", auth=good.auth)
    assert released.status_code == 200, released.text
    refused = api.post(f"/v1/nodes/{bad.node_id}/secrets/db", auth=bad.auth)
    assert refused.status_code == 403
    refusal = refused.json()["error"]

    after = scrape(api)
    attestations = "stockade_attestations_total"
    assert moved(before, after, attestations, status="affirming") == 2
    assert moved(before, after, attestations, status="contraindicated") == 1
    assert moved(before, after, attestations, status="warning") == 0
    assert moved(before, after, attestations, status="refused-nonce") == 1
    assert moved(before, after, attestations, status="refused-evidence") == 1
    # Appraised: three stored results and the quote that did not verify (the replay is
    # refused before any appraisal).
    assert moved(before, after, "stockade_appraisal_seconds_count") == 4
    assert moved(before, after, "stockade_appraisal_seconds_sum") > 0
    timed = "stockade_request_seconds_count"
    assert moved(before, after, timed, route=EVIDENCE, method="POST", status="200") == 3
    assert moved(before, after, timed, route=EVIDENCE, method="POST", status="409") == 1
    assert moved(before, after, timed, route=EVIDENCE, method="POST", status="403") == 1
    # The route template, never the raw path: one series per route, not per node.
    routes = {dict(labels).get("route") for name, labels in after if name == timed}
    assert not any(good.node_id in (route or "") for route in routes)
    releases = "stockade_secret_releases_total"
    assert moved(before, after, releases, outcome="released") == 1
    assert moved(before, after, releases, outcome=f"refused-{refusal}") == 1
    # One write per batch (requests one at a time): four nonces issued, three results.
    assert moved(before, after, "stockade_result_batch_size_count") == 7
    assert moved(before, after, "stockade_result_batch_size_sum") == 7
    assert moved(before, after, "stockade_database_errors_total") == 0

    # The node gauge is read at scrape time, cached for a few seconds.
    assert value(after, "stockade_nodes", state="enrolled") == 2  # cached from `before`
    assert api.app.state.metrics.database_state is not None  # type: ignore[attr-defined]
    api.app.state.metrics.database_state.cache_seconds = 0  # type: ignore[attr-defined]
    fresh = scrape(api)
    assert value(fresh, "stockade_nodes", state="trusted") == 1
    assert value(fresh, "stockade_nodes", state="failed") == 1
    assert value(fresh, "stockade_nodes", state="enrolled") == 0
    assert value(fresh, "stockade_nodes", state="revoked") == 0


@pytest.mark.swtpm
def test_webhook_backlog_counts_undelivered_events(
    make_client: Callable[..., TestClient],
    verifier_config: VerifierConfig,
    software_tpm: object,
) -> None:
    url = "http://127.0.0.1:9/never-answers"  # discard port: nothing is delivered
    config = dataclasses.replace(verifier_config, webhook_urls=(url,))
    client = make_client(config, policy=policy_document())
    agent = DevAgent.create(software_tpm)  # type: ignore[arg-type]
    agent.enroll(client, "node-w")
    assert agent.attest(client).json()["status"] == "affirming"
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        events = connection.execute(select(func.count()).select_from(Event)).scalar_one()
    assert events >= 2
    samples = scrape(client)
    assert value(samples, "stockade_webhook_backlog", url=url) == events


def test_request_labels_stay_bounded_whatever_the_path_or_method(api: TestClient) -> None:
    before = scrape(api)
    for index in range(5):
        api.get(f"/v1/nodes/not-a-node-{index}", headers={"Authorization": "Bearer x"})
        api.get(f"/no-such-page-{index}")
        api.request(f"BREW{index}", "/v1/nodes")
    after = scrape(api)
    series = {labels for name, labels in after if name == "stockade_request_seconds_count"}
    labels = {value for pairs in series for _, value in pairs}
    assert not any("not-a-node" in label or "no-such-page" in label for label in labels)
    assert not any(label.startswith("BREW") for label in labels)
    timed = "stockade_request_seconds_count"
    assert moved(before, after, timed, route="/v1/nodes/{node_id}", method="GET", status="401") == 5
    assert moved(before, after, timed, route="unmatched", method="GET", status="404") == 5
    assert (
        sum(
            moved(before, after, timed, **dict(labels))
            for labels in series
            if dict(labels)["method"] == "other"
        )
        == 5
    )
