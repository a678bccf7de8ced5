"""The webhook/extender server's own health and metrics, on its HTTPS port: ``/livez``,
``/readyz`` (a fresh trust view of the verifier and, with the image rule on, a current trust
policy) and ``/metrics`` counting real AdmissionReviews and extender calls; one log record per
refusal naming the pod, namespace, node and reason; and ``stockade kube serve`` as shipped
(``--log-format json``, ``--config``), its verifier down."""

from __future__ import annotations

import dataclasses
import datetime
import json
import logging
import ssl
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kube_support import (
    PINNED,
    StaticTrust,
    admission_review,
    binding,
    extender_args,
    pod,
    self_signed,
    webhook_over_https,
)

from stockade.kube.admission import AdmissionPolicy, SignedImageStore
from stockade.logs import JsonFormatter
from support.cli import stockade_command
from support.probe_servers import free_port, sample, serving_https


@pytest.fixture
def https(policy: AdmissionPolicy, tmp_path: Path) -> Iterator[httpx.Client]:
    yield from webhook_over_https(policy, tmp_path)


def test_livez_and_readyz(https: httpx.Client, trust: StaticTrust) -> None:
    assert https.get("/livez").status_code == 200
    ready = https.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert "trust view of 3 nodes" in ready.text and "image rule: trust policy" in ready.text
    trust.down = "verifier https://v unreachable: connection refused"
    ready = https.get("/readyz")
    assert ready.status_code == 503
    assert "no fresh trust view" in ready.text and "connection refused" in ready.text
    assert https.get("/livez").status_code == 200  # an unreachable verifier restarts nothing
    trust.down = None
    assert https.get("/readyz").status_code == 200


def test_readyz_refuses_an_expired_trust_policy(images, trust, clock, tmp_path: Path) -> None:
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = dataclasses.replace(images.store.policy, expires=past, serial=2, version=2)
    policy = AdmissionPolicy(trust=trust, images=SignedImageStore(images.directory, expired))
    for client in webhook_over_https(policy, tmp_path):
        ready = client.get("/readyz")
        assert ready.status_code == 503
        assert "image rule" in ready.text and "expired" in ready.text


def test_metrics_count_real_reviews_and_refusals_are_logged(
    https: httpx.Client, images, trust: StaticTrust, caplog: pytest.LogCaptureFixture
) -> None:
    refused = admission_review(pod("web-0", "shop", (images.signed,), node_name="node-bad"))
    allowed = admission_review(pod("web-1", "shop", (images.signed,), node_name="node-good"))
    unsigned = admission_review(pod("web-2", "shop", (images.unsigned,)))
    with caplog.at_level(logging.INFO, logger="stockade.kube.admission"):
        for document, verdict in ((refused, False), (allowed, True), (unsigned, False)):
            answer = https.post("/validate", json=document).json()["response"]
            assert answer["allowed"] is verdict, answer
        trust.down = "verifier unreachable"
        bound = admission_review(binding("web-3", "node-good"), sub_resource="binding")
        assert https.post("/validate", json=bound).json()["response"]["allowed"] is False
        trust.down = None
        https.post("/validate", content=b"{not json", headers={"content-type": "x"})

    text = https.get("/metrics")
    assert text.status_code == 200
    assert text.headers["content-type"].startswith("text/plain")
    metrics = text.text
    reviews = "stockade_admission_reviews_total"
    assert sample(metrics, reviews, decision="refused", reason="untrusted-node") == 1
    assert sample(metrics, reviews, decision="allowed", reason="trusted") == 1
    assert sample(metrics, reviews, decision="refused", reason="image") == 1
    assert sample(metrics, reviews, decision="refused", reason="trust-unavailable") == 1
    assert sample(metrics, reviews, decision="refused", reason="malformed") == 1
    assert sample(metrics, "stockade_admission_seconds_count") == 5
    age = sample(metrics, "stockade_trust_view_age_seconds")
    assert age is not None and 0 <= age < 60
    # No pod, namespace or node name is ever a label.
    assert "web-0" not in metrics and "node-bad" not in metrics and "shop" not in metrics

    # One record per refusal (four), none for the admission, each naming what it was about.
    records = [r for r in caplog.records if r.getMessage() == "admission refused"]
    assert len(records) == 4, [r.__dict__ for r in records]
    first = json.loads(JsonFormatter().format(records[0]))
    assert (first["pod"], first["namespace"], first["node"]) == ("web-0", "shop", "node-bad")
    assert first["reason"] == "untrusted-node" and "node-bad" in first["detail"]
    assert first["level"] == "info" and "traceback" not in first
    by_reason = {getattr(r, "reason", None): r for r in records}
    assert set(by_reason) == {"untrusted-node", "image", "trust-unavailable", "malformed"}
    assert getattr(by_reason["image"], "pod", None) == "web-2"
    assert getattr(by_reason["trust-unavailable"], "node", None) == "node-good"


def test_metrics_count_extender_decisions(https: httpx.Client, trust: StaticTrust) -> None:
    https.post("/filter", json=extender_args(["node-good", "node-bad", "rogue-1"]))
    trust.down = "verifier unreachable"
    https.post("/filter", json=extender_args(["node-good"], "nodes"))
    metrics = https.get("/metrics").text
    assert sample(metrics, "stockade_extender_filter_total", decision="passed") == 1
    assert sample(metrics, "stockade_extender_filter_total", decision="refused") == 3
    assert sample(metrics, "stockade_extender_filter_errors_total") == 1


@pytest.mark.tools
def test_kube_serve_from_a_config_file_logs_json_and_counts_a_refusal(
    tmp_path: Path, images
) -> None:
    """As shipped: settings from --config, one JSON object per stderr line, the verifier down:
    not ready (and why), alive, and the refusal it makes counted and logged."""
    cert, key = self_signed(tmp_path)
    pinned = tmp_path / "verifier-key.pem"
    pinned.write_bytes(PINNED.pem())
    port, dead = free_port(), free_port()  # nothing listens on `dead`: the verifier is down
    config = tmp_path / "kube-serve.yaml"
    config.write_text(
        f"verifier: https://127.0.0.1:{dead}\n"
        f"tls-cert: {cert.name}\ntls-key: {key.name}\n"  # relative to the file
        f"image-store: {images.directory}\ntrust-policy: {images.policy_path}\n"
        f"org-pub: [{images.org_pub}]\nexempt-namespace: [stockade-system]\n"
        f"verifier-key: {pinned}\nhost: 127.0.0.1\nport: 1\nlog-format: json\n"
    )
    command = stockade_command("kube", "serve", "--config", config, "--port", port)
    stderr_path = tmp_path / "stderr"
    with serving_https(command, cert, port, stderr_path, cwd=tmp_path) as served:
        c = served.client
        ready = served.first_get("/readyz", 30)
        assert ready.status_code == 503
        assert "no fresh trust view" in ready.text and "unreachable" in ready.text
        assert c.get("/livez").status_code == 200
        document = admission_review(pod("db-0", "prod", (images.signed,), "node-good"))
        answer = c.post("/validate", json=document).json()["response"]
        assert answer["allowed"] is False
        metrics = c.get("/metrics").text
        assert (
            sample(
                metrics,
                "stockade_admission_reviews_total",
                decision="refused",
                reason="trust-unavailable",
            )
            == 1
        )
        assert sample(metrics, "stockade_trust_view_age_seconds") == -1  # never had one
    assert served.stdout == b""  # with --log-format json the start is a record, not loose text
    lines = stderr_path.read_text().splitlines()
    records = [json.loads(line) for line in lines]  # every line is one JSON object
    assert all({"time", "level", "logger", "event"} <= r.keys() for r in records), lines
    (started,) = [r for r in records if r["event"] == "kube serve started"]
    assert started["webhook"] == f"https://127.0.0.1:{port}/validate"  # the flag won
    (refusal,) = [r for r in records if r["event"] == "admission refused"]
    assert (refusal["pod"], refusal["namespace"], refusal["node"]) == ("db-0", "prod", "node-good")
    assert refusal["reason"] == "trust-unavailable"
    assert not any("traceback" in r for r in records)


@pytest.mark.swtpm
def test_against_a_real_verifier_readyz_follows_it_and_metrics_count_a_refusal(
    tmp_path: Path, ek_ca, make_software_tpm
) -> None:
    """The webhook's trust view from a real verifier (HTTPS, pinned CA and statement key):
    ready while it can be read, the refusal of a node that only enrolled counted and logged,
    the view's age small; the verifier gone, not ready and the view ageing."""
    import sys

    from kube_support import ThreadedServer

    from stockade.kube.server import ServerTls, uvicorn_config
    from stockade.kube.trust import verifier_trust_source
    from stockade.statements import VerifierKeys
    from stockade.verifier import VerifierConfig
    from stockade.verifier import create_app as verifier_app
    from stockade.verifier.config import EnrollmentMode
    from stockade.verifier.tls import load_or_create_tls

    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "verifier"))
    from verifier_support import DevAgent, QuoteOnlyAppraiser, policy_document

    data_dir = tmp_path / "verifier"
    config = VerifierConfig(
        data_dir=data_dir,
        ek_roots=ek_ca.trusted_roots(),
        ek_intermediates=ek_ca.intermediates(),
        enrollment_mode=EnrollmentMode.OPEN,
    )
    app = verifier_app(config, appraiser=QuoteOnlyAppraiser())  # makes the data dir, 0700
    tls = load_or_create_tls(data_dir, "127.0.0.1")
    verifier = ThreadedServer(
        uvicorn_config(app, "127.0.0.1", 0, ServerTls(tls.server_cert, tls.server_key))
    )
    url = f"https://127.0.0.1:{verifier.port}"
    try:
        token = (data_dir / "operator-token").read_text().strip()
        context = ssl.create_default_context(cafile=str(tls.ca_cert))
        with httpx.Client(base_url=url, verify=context, timeout=10) as client:
            document = policy_document()
            put = client.put(
                f"/v1/policies/{document['id']}",
                json=document,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert put.status_code == 200, put.text
            good = DevAgent.create(make_software_tpm())
            good.enroll(client, "kube-good")
            assert good.attest(client).status_code == 200
            DevAgent.create(make_software_tpm()).enroll(client, "kube-enrolled-only")
        keys = VerifierKeys.load(data_dir / "keys" / "verifier-key.pub.pem")
        trust = verifier_trust_source(
            url, tls.ca_cert, keys, ttl=0.2, token_file=data_dir / "reader-token"
        )
        policy = AdmissionPolicy(trust=trust)
        for webhook in webhook_over_https(policy, tmp_path):
            ready = webhook.get("/readyz")
            assert ready.status_code == 200, ready.text
            assert "trust view of 2 nodes" in ready.text and "image rule off" in ready.text
            on_good = admission_review(binding("web-0", "kube-good"), sub_resource="binding")
            on_enrolled = admission_review(pod("web-1", "shop", ("x",), "kube-enrolled-only"))
            assert webhook.post("/validate", json=on_good).json()["response"]["allowed"]
            refused = webhook.post("/validate", json=on_enrolled).json()["response"]
            assert (
                refused["allowed"] is False
                and "enrolled at the Stockade" in refused["status"]["message"]
            )
            metrics = webhook.get("/metrics").text
            reviews = "stockade_admission_reviews_total"
            assert sample(metrics, reviews, decision="refused", reason="untrusted-node") == 1
            assert sample(metrics, reviews, decision="allowed", reason="trusted") == 1
            age = sample(metrics, "stockade_trust_view_age_seconds")
            assert age is not None and 0 <= age < 5

            verifier.stop()  # the verifier is gone
            time.sleep(0.3)  # past the cache's TTL
            down = webhook.get("/readyz")
            assert down.status_code == 503 and "unreachable" in down.text, down.text
            assert webhook.get("/livez").status_code == 200
            later = sample(webhook.get("/metrics").text, "stockade_trust_view_age_seconds")
            assert later is not None and later >= 0.3  # the last good view, ageing
    finally:
        verifier.stop()
