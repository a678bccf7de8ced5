"""The webhook and the extender over real HTTPS (self-signed certificate, keep-alive
client), with real AdmissionReview v1 and extender JSON documents."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from kube_support import (
    PINNED,
    admission_review,
    binding,
    extender_args,
    pod,
    self_signed,
    webhook_over_https,
)

from support.cli import stockade_command
from support.probe_servers import free_port, serving_https


@pytest.fixture
def https(policy, tmp_path: Path) -> Iterator[httpx.Client]:
    yield from webhook_over_https(policy, tmp_path)


def test_webhook_over_https(https, images, trust):
    cases = [
        (pod(images=(images.signed,), node_name="node-good"), None, True, "node-good"),
        (pod(images=(images.signed,), node_name="node-bad"), None, False, "node-bad"),
        (pod(images=(images.signed,), node_name="rogue-1"), None, False, "not enrolled"),
        (pod(images=("registry.example/org/app:v1",)), None, False, "pinned by digest"),
        (pod(images=(images.unsigned,)), None, False, "unsigned"),
        (binding("web-0", "node-bad"), "binding", False, "node-bad"),
        (binding("web-0", "node-good"), "binding", True, "trusted"),
        (pod(namespace="stockade-system", images=("x",), node_name="x"), None, True, "exempt"),
    ]
    for obj, sub, allowed, phrase in cases:
        document = admission_review(obj, sub_resource=sub)
        reply = https.post("/validate", json=document)
        assert reply.status_code == 200
        assert reply.headers["content-type"] == "application/json"
        body = reply.json()
        assert body["apiVersion"] == "admission.k8s.io/v1"
        assert body["kind"] == "AdmissionReview"
        assert body["response"]["uid"] == document["request"]["uid"]
        assert body["response"]["allowed"] is allowed, body
        assert phrase in body["response"]["status"]["message"]

    trust.down = "verifier unreachable"
    document = admission_review(pod(images=(images.signed,), node_name="node-good"))
    body = https.post("/validate", json=document).json()
    assert body["response"]["allowed"] is False


def test_webhook_refuses_a_body_that_is_not_json(https):
    reply = https.post(
        "/validate", content=b"{not json", headers={"content-type": "application/json"}
    )
    assert reply.status_code == 200
    assert reply.json()["response"]["allowed"] is False
    assert reply.json()["response"]["status"]["code"] == 400


@pytest.mark.parametrize("mode", ["names", "nodes"])
def test_extender_over_https(https, trust, mode):
    nodes = ["node-good", "node-bad", "rogue-1"]
    body = https.post("/filter", json=extender_args(nodes, mode)).json()
    passed = (
        body["NodeNames"]
        if mode == "names"
        else [n["metadata"]["name"] for n in body["Nodes"]["items"]]
    )
    assert passed == ["node-good"]
    assert set(body["FailedNodes"]) == {"node-bad", "rogue-1"}
    assert body["Error"] == ""
    trust.down = "verifier unreachable"
    body = https.post("/filter", json=extender_args(nodes, mode)).json()
    assert body["Error"]
    assert not (body["NodeNames"] or (body["Nodes"] or {}).get("items"))


def test_healthz(https, trust):
    reply = https.get("/healthz")
    assert reply.status_code == 200
    assert reply.json() == {"ok": True, "nodes": 3, "images": True}
    trust.down = "verifier unreachable"
    assert https.get("/healthz").status_code == 503


def test_plain_http_is_not_served(https):
    url = str(https.base_url).replace("https://", "http://")
    with httpx.Client(timeout=5) as plain, pytest.raises(httpx.HTTPError):
        plain.get(f"{url}/healthz").raise_for_status()


@pytest.mark.tools
def test_kube_serve_command_fails_closed_without_a_verifier(tmp_path: Path, images):
    cert, key = self_signed(tmp_path)
    pinned = tmp_path / "verifier-key.pem"
    pinned.write_bytes(PINNED.pem())
    port, dead = free_port(), free_port()  # nothing listens on `dead`: the verifier is down
    command = stockade_command(
        "kube", "serve",
        "--verifier", f"https://127.0.0.1:{dead}", "--tls-cert", cert, "--tls-key", key,
        "--image-store", images.directory, "--trust-policy", images.policy_path,
        "--org-pub", images.org_pub, "--exempt-namespace", "stockade-system",
        "--port", port, "--verifier-key", pinned,
    )  # fmt: skip
    with serving_https(command, cert, port, tmp_path / "stderr") as served:
        c = served.client
        health = served.first_get("/healthz", 20)
        assert health.status_code == 503
        document = admission_review(pod(images=(images.signed,), node_name="node-good"))
        answer = c.post("/validate", json=document).json()["response"]
        assert answer["allowed"] is False
        assert "unreachable" in answer["status"]["message"]
        exempt = admission_review(pod(namespace="stockade-system", images=("x",)))
        assert c.post("/validate", json=exempt).json()["response"]["allowed"] is True
        body = c.post("/filter", json=extender_args(["node-good"])).json()
        assert body["NodeNames"] == [] and "unreachable" in body["Error"]
