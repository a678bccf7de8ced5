"""Every door into a cluster, judged by the real HTTPS webhook over real AdmissionReview v1
documents: ``kubectl set image`` (pods UPDATE), ``kubectl debug`` (pods/ephemeralcontainers
UPDATE), the scheduler's pods/binding and a hand-made core Binding, and requests the
webhook does not judge (refused). Image references in every Docker Hub alias form are one
repository for the signature and forbid decisions."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from kube_support import admission_review, binding, make_layout, pod, webhook_over_https

from stockade.images.policy import load_trust_policy, sign_trust_policy
from stockade.images.signature import sign_image
from stockade.kube.admission import SignedImageStore
from stockade.release.keys import public_pem


@pytest.fixture
def https(policy, tmp_path: Path) -> Iterator[httpx.Client]:
    yield from webhook_over_https(policy, tmp_path)


def _answer(client: httpx.Client, document: dict) -> dict:
    reply = client.post("/validate", json=document)
    assert reply.status_code == 200
    body = reply.json()
    assert body["apiVersion"] == "admission.k8s.io/v1" and body["kind"] == "AdmissionReview"
    assert body["response"]["uid"] == document["request"]["uid"]
    return body["response"]


def _set_image(before: dict, image: str, container: int = 0) -> dict:
    """What ``kubectl set image pod/web-0 cN=IMAGE`` makes the API server send as object."""
    after = pod(
        images=tuple(c["image"] for c in before["spec"]["containers"]),
        node_name=before["spec"].get("nodeName"),
    )
    after["metadata"] = dict(before["metadata"])
    after["spec"]["containers"][container]["image"] = image
    return after


def test_kubectl_set_image_to_an_unsigned_image_is_refused(https, images):
    before = pod(images=(images.signed, images.signed), node_name="node-good")
    for image in (images.unsigned, "registry.example/org/app:latest", "busybox"):
        after = _set_image(before, image, container=1)
        answer = _answer(https, admission_review(after, operation="UPDATE", old=before))
        assert answer["allowed"] is False, answer
        assert answer["status"]["code"] == 403
        assert answer["status"]["message"].startswith("pod update refused:")
    # to another spelling of the same signed image: judged (the string changed), allowed
    respelled = _set_image(before, images.signed.replace("@", ":v1@"))
    answer = _answer(https, admission_review(respelled, operation="UPDATE", old=before))
    assert answer["allowed"] is True, answer


def test_an_update_judges_each_container_against_its_own_old_image(https, images):
    """A container may not take another container's old (unjudged) image: the update
    restarts it with that image."""
    legacy = "registry.example/org/legacy:1.0"  # admitted before the image rule was on
    before = pod(images=(images.signed, legacy))
    relabelled = _set_image(before, images.signed)
    relabelled["metadata"]["labels"] = {"app": "web", "tier": "front"}
    answer = _answer(https, admission_review(relabelled, operation="UPDATE", old=before))
    assert answer["allowed"] is True, answer  # nothing restarts: nothing to judge
    swapped = _set_image(before, legacy, container=0)
    answer = _answer(https, admission_review(swapped, operation="UPDATE", old=before))
    assert answer["allowed"] is False
    assert "registry.example/org/legacy:1.0" in answer["status"]["message"]


def test_an_update_that_moves_the_pod_to_an_untrusted_node_is_refused(https, images):
    before = pod(images=(images.signed,), node_name="node-good")
    after = _set_image(before, images.signed)
    after["spec"]["nodeName"] = "node-bad"
    answer = _answer(https, admission_review(after, operation="UPDATE", old=before))
    assert answer["allowed"] is False
    assert "node-bad" in answer["status"]["message"]


def _debugged(target: dict, image: str) -> dict:
    """The Pod ``kubectl debug -it web-0 --image=IMAGE`` sends to the ephemeralcontainers
    subresource: the old pod plus one ephemeral container."""
    after = _set_image(target, target["spec"]["containers"][0]["image"])
    after["spec"]["ephemeralContainers"] = [
        {
            "name": "debugger-x7k2p",
            "image": image,
            "imagePullPolicy": "IfNotPresent",
            "stdin": True,
            "tty": True,
            "targetContainerName": "c0",
            "terminationMessagePolicy": "File",
        }
    ]
    return after


def test_kubectl_debug_with_an_unsigned_image_is_refused(https, images):
    target = pod(images=(images.signed,), node_name="node-good")
    for image in ("busybox:1.36", "docker.io/library/busybox", images.unsigned):
        document = admission_review(
            _debugged(target, image),
            operation="UPDATE",
            sub_resource="ephemeralcontainers",
            old=target,
        )
        answer = _answer(https, document)
        assert answer["allowed"] is False, answer
        assert answer["status"]["code"] == 403
    signed = admission_review(
        _debugged(target, images.signed),
        operation="UPDATE",
        sub_resource="ephemeralcontainers",
        old=target,
    )
    assert _answer(https, signed)["allowed"] is True


def _core_binding(pod_name: str, node: str) -> dict:
    """``POST /api/v1/namespaces/default/bindings`` with a Binding: resource ``bindings``,
    no subresource."""
    document = admission_review(binding(pod_name, node))
    request = document["request"]
    request["kind"] = request["requestKind"] = {"group": "", "version": "v1", "kind": "Binding"}
    resource = {"group": "", "version": "v1", "resource": "bindings"}
    request["resource"] = request["requestResource"] = resource
    return document


@pytest.mark.parametrize("door", ["pods/binding", "bindings"])
def test_a_binding_to_an_untrusted_node_is_refused_and_to_a_trusted_node_allowed(https, door):
    def make(node: str) -> dict:
        if door == "bindings":
            return _core_binding("web-0", node)
        return admission_review(binding("web-0", node), sub_resource="binding")

    for node, phrase in (("node-bad", "failed"), ("ghost", "not enrolled")):
        answer = _answer(https, make(node))
        assert answer["allowed"] is False, answer
        assert answer["status"]["code"] == 403
        assert f"binding of pod default/web-0 names node {node}" in answer["status"]["message"]
        assert phrase in answer["status"]["message"]
    answer = _answer(https, make("node-good"))
    assert answer["allowed"] is True, answer
    assert "trusted" in answer["status"]["message"]


def test_a_core_binding_with_the_verifier_down_is_refused(https, trust):
    trust.down = "verifier unreachable"
    answer = _answer(https, _core_binding("web-0", "node-good"))
    assert answer["allowed"] is False
    assert "unreachable" in answer["status"]["message"]


def _retarget(document: dict, group: str, version: str, resource: str) -> dict:
    document["request"]["resource"] = {"group": group, "version": version, "resource": resource}
    return document


def test_requests_the_webhook_does_not_judge_are_refused(https, images):
    signed = pod(images=(images.signed,))
    cases = {
        "pods DELETE": admission_review(None, operation="DELETE", old=signed),
        "pods/status UPDATE": admission_review(
            signed, operation="UPDATE", sub_resource="status", old=signed
        ),
        "pods/exec CONNECT": admission_review(
            {"kind": "PodExecOptions"}, operation="CONNECT", sub_resource="exec"
        ),
        "pods/eviction CREATE": admission_review(
            {"kind": "Eviction"}, operation="CREATE", sub_resource="eviction"
        ),
        "pods/ephemeralcontainers CREATE": admission_review(
            signed, operation="CREATE", sub_resource="ephemeralcontainers"
        ),
        "bindings UPDATE": _retarget(
            admission_review(binding("web-0", "node-good"), operation="UPDATE"),
            "",
            "v1",
            "bindings",
        ),
        "configmaps CREATE": _retarget(
            admission_review({"kind": "ConfigMap", "metadata": {}}), "", "v1", "configmaps"
        ),
        "apps/v1 deployments CREATE": _retarget(
            admission_review({"kind": "Deployment", "metadata": {}}), "apps", "v1", "deployments"
        ),
        "pods in another group": _retarget(admission_review(signed), "example.com", "v1", "pods"),
        "pods v2": _retarget(admission_review(signed), "", "v2", "pods"),
    }
    for what, document in cases.items():
        answer = _answer(https, document)
        assert answer["allowed"] is False, (what, answer)
        assert answer["status"]["code"] == 403, what
        assert "does not judge" in answer["status"]["message"], what


# -- every alias form of a Docker Hub reference is one repository --------------------------


@pytest.fixture(scope="module")
def hub(tmp_path_factory: pytest.TempPathFactory) -> tuple[SignedImageStore, str, str]:
    """A store with ``alpine`` (its scope allows the build key) and ``busybox`` (under
    ``docker.io/library``, whose scope allows no key: forbidden), both signed by the build
    key; returns the store and the two manifest digests."""
    root = tmp_path_factory.mktemp("hub")
    org = ed25519.Ed25519PrivateKey.generate()
    build = ec.generate_private_key(ec.SECP256R1())
    document = {
        "version": 1,
        "keys": {"build": public_pem(build.public_key()).decode()},
        "scopes": [
            {"prefix": "docker.io/library/alpine", "keys": ["build"]},
            {"prefix": "docker.io/library", "keys": []},
        ],
    }
    policy = load_trust_policy(sign_trust_policy(document, org), [org.public_key()])
    alpine, alpine_digest = make_layout(root / "alpine", b"alpine root filesystem")
    sign_image(alpine, "v1", "index.docker.io/alpine", build)  # written normalised
    busybox, busybox_digest = make_layout(root / "busybox", b"busybox root filesystem")
    sign_image(busybox, "v1", "busybox", build)
    return SignedImageStore(root, policy), alpine_digest, busybox_digest


def _aliases(name: str, digest: str) -> list[str]:
    return [
        f"{name}@{digest}",
        f"{name}:3.19@{digest}",
        f"library/{name}@{digest}",
        f"docker.io/{name}@{digest}",
        f"docker.io/library/{name}@{digest}",
        f"docker.io/library/{name}:latest@{digest}",
        f"index.docker.io/{name}@{digest}",
        f"index.docker.io/library/{name}@{digest}",
    ]


@pytest.fixture
def hub_https(policy, hub, tmp_path: Path) -> Iterator[httpx.Client]:
    from dataclasses import replace

    yield from webhook_over_https(replace(policy, images=hub[0]), tmp_path)


def test_every_docker_hub_alias_of_a_signed_image_is_admitted(hub_https, hub):
    _, alpine, _ = hub
    for image in _aliases("alpine", alpine):
        answer = _answer(hub_https, admission_review(pod(images=(image,))))
        assert answer["allowed"] is True, (image, answer)
        assert answer["status"]["message"] == "pod allowed (images signed)"


def test_every_docker_hub_alias_of_a_forbidden_image_is_refused(hub_https, hub):
    _, _, busybox = hub
    for image in _aliases("busybox", busybox):
        for document in (
            admission_review(pod(images=(image,))),
            admission_review(
                _debugged(pod(images=(f"alpine@{hub[1]}",)), image),
                operation="UPDATE",
                sub_resource="ephemeralcontainers",
                old=pod(images=(f"alpine@{hub[1]}",)),
            ),
        ):
            answer = _answer(hub_https, document)
            assert answer["allowed"] is False, (image, answer)
            message = answer["status"]["message"]
            assert "untrusted-key" in message, message
            assert "docker.io/library/busybox" in message, message


def test_tag_only_aliases_are_refused_and_other_repositories_are_not_aliases(hub_https, hub):
    _, alpine, _ = hub
    for image in (
        "alpine",
        "alpine:latest",
        "docker.io/library/alpine",
        "index.docker.io/library/alpine:3.19",
    ):
        answer = _answer(hub_https, admission_review(pod(images=(image,))))
        assert answer["allowed"] is False, image
        assert "not pinned by digest" in answer["status"]["message"]
        assert "docker.io/library/alpine@sha256:" in answer["status"]["message"]
    for image in (
        f"docker.io/alpine/alpine@{alpine}",  # the Docker Hub namespace alpine
        f"registry.example/library/alpine@{alpine}",  # another registry
        f"ghcr.io/alpine@{alpine}",
        f"Alpine@{alpine}",  # not a reference at all
    ):
        answer = _answer(hub_https, admission_review(pod(images=(image,))))
        assert answer["allowed"] is False, (image, answer)
