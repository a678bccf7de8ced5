"""The admission webhook's decisions over real AdmissionReview v1 documents: preset
nodeName, Bindings, images pinned and signed, exemptions, fail closed."""

from __future__ import annotations

from kube_support import admission_review, binding, pod

from stockade.kube.admission import review


def _answer(policy, document) -> dict:
    result = review(document, policy)
    assert result["apiVersion"] == "admission.k8s.io/v1"
    assert result["kind"] == "AdmissionReview"
    assert set(result["response"]) == {"uid", "allowed", "status"}
    return result["response"]


def test_pod_with_preset_node_name_on_trusted_node_is_allowed(policy, images):
    document = admission_review(pod(images=(images.signed,), node_name="node-good"))
    answer = _answer(policy, document)
    assert answer["uid"] == document["request"]["uid"]
    assert answer["allowed"] is True, answer
    assert answer["status"]["code"] == 200
    assert "node-good" in answer["status"]["message"]


def test_pod_with_preset_node_name_on_untrusted_node_is_refused(policy, images):
    document = admission_review(pod(images=(images.signed,), node_name="node-bad"))
    answer = _answer(policy, document)
    assert answer["uid"] == document["request"]["uid"]
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    message = answer["status"]["message"]
    assert "spec.nodeName names node node-bad" in message
    assert "failed at the Stockade verifier" in message


def test_pod_with_preset_node_name_on_unknown_node_is_refused(policy, images):
    answer = _answer(policy, admission_review(pod(images=(images.signed,), node_name="rogue-1")))
    assert answer["allowed"] is False
    assert "not enrolled" in answer["status"]["message"]


def test_pod_without_node_name_is_left_to_the_scheduler(policy, images):
    answer = _answer(policy, admission_review(pod(images=(images.signed,))))
    assert answer["allowed"] is True, answer


def test_trusted_node_gone_stale_between_requests_is_refused(policy, images, clock):
    document = admission_review(pod(images=(images.signed,), node_name="node-good"))
    assert _answer(policy, document)["allowed"] is True
    clock.advance(61)  # node-good's result is valid for 60 s
    answer = _answer(policy, admission_review(pod(images=(images.signed,), node_name="node-good")))
    assert answer["allowed"] is False
    assert "expired (stale)" in answer["status"]["message"]
    # a node with a longer-lived result is still fine at the same moment
    other = admission_review(pod(images=(images.signed,), node_name="node-also-good"))
    assert _answer(policy, other)["allowed"] is True


def test_binding_to_untrusted_node_is_refused_and_to_trusted_allowed(policy):
    bad = admission_review(binding("web-0", "node-bad"), sub_resource="binding",
                           username="system:kube-scheduler")  # fmt: skip
    answer = _answer(policy, bad)
    assert answer["uid"] == bad["request"]["uid"]
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 403
    assert "binding of pod default/web-0 names node node-bad" in answer["status"]["message"]
    unknown = admission_review(binding("web-0", "ghost"), sub_resource="binding")
    assert _answer(policy, unknown)["allowed"] is False
    good = admission_review(binding("web-0", "node-good"), sub_resource="binding")
    assert _answer(policy, good)["allowed"] is True


def test_unsigned_image_digest_is_refused(policy, images):
    answer = _answer(policy, admission_review(pod(images=(images.unsigned,))))
    assert answer["allowed"] is False
    assert "(unsigned:" in answer["status"]["message"], answer


def test_digest_not_in_store_is_refused(policy):
    image = "registry.example/org/app@sha256:" + "ab" * 32
    answer = _answer(policy, admission_review(pod(images=(image,))))
    assert answer["allowed"] is False
    assert "not in the signed-image store" in answer["status"]["message"]


def test_tag_only_image_is_refused_with_pin_by_digest(policy):
    answer = _answer(policy, admission_review(pod(images=("registry.example/org/app:v1",))))
    assert answer["allowed"] is False
    message = answer["status"]["message"]
    assert "not pinned by digest" in message
    assert "registry.example/org/app@sha256:" in message


def test_image_signed_under_another_repository_is_refused(policy, images):
    stolen = f"registry.example/org/other@{images.signed_digest}"
    answer = _answer(policy, admission_review(pod(images=(stolen,))))
    assert answer["allowed"] is False
    assert "(reference:" in answer["status"]["message"], answer


def test_tag_and_digest_is_judged_by_digest(policy, images):
    image = images.signed.replace("@", ":v1@")
    assert _answer(policy, admission_review(pod(images=(image,))))["allowed"] is True


def test_every_container_list_is_checked(policy, images):
    document = admission_review(pod(images=(images.signed,), init_images=(images.unsigned,)))
    assert _answer(policy, document)["allowed"] is False


def test_node_and_image_refusals_are_both_named(policy, images):
    answer = _answer(policy, admission_review(pod(images=("nginx",), node_name="node-bad")))
    assert "node-bad" in answer["status"]["message"]
    assert "not pinned by digest" in answer["status"]["message"]


def test_exempt_namespace_and_service_account_are_allowed(policy):
    document = admission_review(
        pod(namespace="stockade-system", images=("nginx",), node_name="node-bad")
    )
    answer = _answer(policy, document)
    assert answer["allowed"] is True
    assert "exempt" in answer["status"]["message"]
    by_user = admission_review(
        binding("x", "node-bad", namespace="apps"),
        sub_resource="binding",
        username="system:serviceaccount:stockade-system:stockade-controller",
    )
    assert _answer(policy, by_user)["allowed"] is True
    other_user = admission_review(
        binding("x", "node-bad", namespace="apps"),
        sub_resource="binding",
        username="system:serviceaccount:apps:stockade-controller",
    )
    assert _answer(policy, other_user)["allowed"] is False


def test_verifier_unreachable_refuses_every_judged_request(policy, trust, images):
    trust.down = "verifier https://verifier:8443 unreachable: connection refused"
    for document in (
        admission_review(pod(images=(images.signed,), node_name="node-good")),
        admission_review(binding("web-0", "node-good"), sub_resource="binding"),
    ):
        answer = _answer(policy, document)
        assert answer["allowed"] is False
        assert "cannot tell whether node node-good is trusted" in answer["status"]["message"]
        assert "unreachable" in answer["status"]["message"]


def test_requests_the_webhook_does_not_judge_are_refused(policy):
    """Registered for more than it understands: fail closed, not allowed unjudged."""
    deleted = admission_review(None, operation="DELETE", old=pod(node_name="node-bad"))
    assert _answer(policy, deleted)["allowed"] is False
    status = admission_review(pod(node_name="node-bad"), operation="UPDATE",
                              sub_resource="status", old=pod(node_name="node-bad"))  # fmt: skip
    assert _answer(policy, status)["allowed"] is False
    configmap = admission_review({"apiVersion": "v1", "kind": "ConfigMap", "metadata": {}})
    configmap["request"]["resource"] = {"group": "", "version": "v1", "resource": "configmaps"}
    answer = _answer(policy, configmap)
    assert answer["allowed"] is False
    assert "does not judge" in answer["status"]["message"]


def test_update_that_swaps_in_an_unsigned_image_is_refused(policy, images):
    before = pod(images=(images.signed,), node_name="node-good")
    after = pod(images=("registry.example/org/app:latest",), node_name="node-good")
    answer = _answer(policy, admission_review(after, operation="UPDATE", old=before))
    assert answer["allowed"] is False
    unchanged = admission_review(before, operation="UPDATE", old=before)
    assert _answer(policy, unchanged)["allowed"] is True
    debug = pod(images=(images.signed,))
    debug["spec"]["ephemeralContainers"] = [{"name": "debugger", "image": "busybox"}]
    ephemeral = admission_review(
        debug,
        operation="UPDATE",
        sub_resource="ephemeralcontainers",
        old=pod(images=(images.signed,)),
    )
    assert _answer(policy, ephemeral)["allowed"] is False


def test_malformed_reviews_are_refused_with_400(policy, images):
    good = admission_review(pod(images=(images.signed,)))
    cases = []
    wrong_version = dict(good, apiVersion="admission.k8s.io/v1beta1")
    cases.append(wrong_version)
    no_request = {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview"}
    cases.append(no_request)
    no_spec = admission_review(pod(images=(images.signed,)))
    del no_spec["request"]["object"]["spec"]
    cases.append(no_spec)
    bad_containers = admission_review(pod(images=(images.signed,)))
    bad_containers["request"]["object"]["spec"]["containers"] = "nginx"
    cases.append(bad_containers)
    binding_without_target = admission_review(binding("p", "n"), sub_resource="binding")
    del binding_without_target["request"]["object"]["target"]
    cases.append(binding_without_target)
    node_name_not_string = admission_review(pod(images=(images.signed,)))
    node_name_not_string["request"]["object"]["spec"]["nodeName"] = 7
    cases.append(node_name_not_string)
    cases += [None, [], "AdmissionReview", {"request": "x"}]
    for document in cases:
        answer = _answer(policy, document)
        assert answer["allowed"] is False, document
        assert answer["status"]["code"] == 400, answer
        assert "malformed" in answer["status"]["message"]
    assert _answer(policy, wrong_version)["uid"] == good["request"]["uid"]


def test_unexpected_failure_inside_is_a_refusal(policy, trust, images):
    class Broken:
        def snapshot(self):
            raise RuntimeError("boom")

    from dataclasses import replace

    broken = replace(policy, trust=Broken())
    answer = _answer(broken, admission_review(pod(images=(images.signed,), node_name="node-good")))
    assert answer["allowed"] is False
    assert answer["status"]["code"] == 500


def test_image_rule_off_without_a_store(policy):
    from dataclasses import replace

    answer = _answer(replace(policy, images=None), admission_review(pod(images=("nginx",))))
    assert answer["allowed"] is True
    assert "image rule off" in answer["status"]["message"]
