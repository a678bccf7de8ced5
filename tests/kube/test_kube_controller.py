"""The node controller with the official ``kubernetes`` client against the in-process API
emulator (real REST paths: list/get/patch Nodes, strategic merge patches, resourceVersion
conflicts, watch): label, taints and annotations follow the verifier's view, fail closed,
NoExecute only after the grace, and nobody else's labels or taints are ever touched."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from kube_support import PINNED, T0, FakeClock, fleet_answer, node_trust
from kubernetes import client

from stockade.kube.controller import (
    REASON_ANNOTATION,
    RESULT_ANNOTATION,
    SINCE_ANNOTATION,
    TRUSTED_LABEL,
    UNTRUSTED_TAINT,
    KubeNode,
    NodeController,
    TrustView,
    VerifierTrustView,
    reconcile,
)
from stockade.statements import FleetEntry
from support.kube_emulator import KubeEmulator

GRACE = timedelta(minutes=5)
OTHER_TAINT = {"key": "dedicated", "value": "gpu", "effect": "NoSchedule"}
OTHER_LABELS = {"team": "payments", "topology.kubernetes.io/zone": "z1"}
EAR = {name: f"eyJhbGciOiJFUzI1NiJ9.{name}.sig" for name in ("good", "bad", "flaky")}


@pytest.fixture
def api():
    with KubeEmulator() as emulator:
        yield emulator


@pytest.fixture
def core(api):
    configuration = client.Configuration()
    configuration.host = api.url
    with client.ApiClient(configuration) as api_client:
        yield client.CoreV1Api(api_client)


def view(valid_for: float = 3600.0, **states: str) -> TrustView:
    nodes = {name: node_trust(name, state, valid_for) for name, state in states.items()}
    return TrustView(nodes, "", {name: EAR.get(name) for name in nodes})


class Views:
    """The verifier as the controller sees it; ``current`` is swapped by the test."""

    def __init__(self, current: TrustView) -> None:
        self.current = current

    def __call__(self) -> TrustView:
        return self.current


def ours(node) -> list[dict]:
    return [t for t in node["spec"].get("taints") or [] if t["key"] == UNTRUSTED_TAINT]


def effects(node) -> set[str]:
    return {t["effect"] for t in ours(node)}


def others_intact(node) -> None:
    labels = node["metadata"]["labels"]
    assert {k: labels[k] for k in OTHER_LABELS} == OTHER_LABELS
    assert [t for t in node["spec"]["taints"] if t["key"] != UNTRUSTED_TAINT] == [OTHER_TAINT]


def add(api, name: str) -> None:
    api.add_node(name, labels=dict(OTHER_LABELS), taints=[dict(OTHER_TAINT)])


def controller(core, views, clock) -> NodeController:
    return NodeController(core, views, grace=GRACE, clock=clock)


def test_failed_node_tainted_noschedule_then_noexecute_after_grace(api, core):
    add(api, "bad")
    clock = FakeClock()
    views = Views(view(bad="failed"))
    nodes = controller(core, views, clock)

    applied = nodes.sync()
    node = api.node("bad")
    assert [p.node for p in applied] == ["bad"]
    assert node["metadata"]["labels"][TRUSTED_LABEL] == "false"
    assert effects(node) == {"NoSchedule"}
    assert ours(node)[0]["value"] == "failed"
    assert node["metadata"]["annotations"][SINCE_ANNOTATION] == "2030-01-01T12:00:00Z"
    assert "failed" in node["metadata"]["annotations"][REASON_ANNOTATION]
    assert node["metadata"]["annotations"][RESULT_ANNOTATION] == EAR["bad"]
    others_intact(node)
    # Strategic merge patches on the real path, carrying the resourceVersion.
    assert ("PATCH", "/api/v1/nodes/bad", "application/strategic-merge-patch+json") in api.requests

    clock.advance(GRACE.total_seconds() - 1)
    assert nodes.sync() == []
    assert effects(api.node("bad")) == {"NoSchedule"}

    clock.advance(1)
    nodes.sync()
    node = api.node("bad")
    assert effects(node) == {"NoSchedule", "NoExecute"}
    no_execute = next(t for t in ours(node) if t["effect"] == "NoExecute")
    assert no_execute["timeAdded"] == "2030-01-01T12:05:00Z"
    others_intact(node)


def test_grace_survives_a_controller_restart(api, core):
    add(api, "bad")
    clock = FakeClock()
    views = Views(view(bad="failed"))
    controller(core, views, clock).sync()
    clock.advance(GRACE.total_seconds())
    # A new controller process: the untrusted-since time comes from the node itself.
    controller(core, views, clock).sync()
    assert effects(api.node("bad")) == {"NoSchedule", "NoExecute"}


def test_trusted_again_removes_taints_and_keeps_everyone_elses(api, core):
    add(api, "flaky")
    clock = FakeClock()
    views = Views(view(flaky="trusted"))
    nodes = controller(core, views, clock)
    nodes.sync()
    node = api.node("flaky")
    assert node["metadata"]["labels"][TRUSTED_LABEL] == "true"
    assert ours(node) == []
    assert node["metadata"]["annotations"][RESULT_ANNOTATION] == EAR["flaky"]

    views.current = view(flaky="failed")
    nodes.sync()
    clock.advance(GRACE.total_seconds() + 1)
    nodes.sync()
    assert effects(api.node("flaky")) == {"NoSchedule", "NoExecute"}

    # Someone else labels and taints the node meanwhile; all of it must stay.
    api.update_node(
        "flaky",
        {
            "metadata": {"labels": {"extra": "yes"}},
            "spec": {
                "taints": [
                    *api.node("flaky")["spec"]["taints"],
                    {"key": "maintenance", "effect": "PreferNoSchedule"},
                ]
            },
        },
    )
    views.current = view(flaky="trusted")
    nodes.sync()
    node = api.node("flaky")
    assert node["metadata"]["labels"][TRUSTED_LABEL] == "true"
    assert node["metadata"]["labels"]["extra"] == "yes"
    assert ours(node) == []
    assert SINCE_ANNOTATION not in node["metadata"]["annotations"]
    assert {t["key"] for t in node["spec"]["taints"]} == {"dedicated", "maintenance"}
    others_intact_labels = {k: node["metadata"]["labels"][k] for k in OTHER_LABELS}
    assert others_intact_labels == OTHER_LABELS


def test_stale_result_is_untrusted(api, core):
    add(api, "good")
    clock = FakeClock()
    nodes = controller(core, Views(view(60, good="trusted")), clock)
    nodes.sync()
    assert api.node("good")["metadata"]["labels"][TRUSTED_LABEL] == "true"
    clock.advance(61)
    nodes.sync()
    node = api.node("good")
    assert node["metadata"]["labels"][TRUSTED_LABEL] == "false"
    assert ours(node)[0]["value"] == "stale"


def test_unknown_kubernetes_node_is_tainted_untrusted(api, core):
    add(api, "stranger")
    api.update_node("stranger", {"metadata": {"annotations": {RESULT_ANNOTATION: "old.jwt.x"}}})
    controller(core, Views(view(good="trusted")), FakeClock()).sync()
    node = api.node("stranger")
    assert node["metadata"]["labels"][TRUSTED_LABEL] == "false"
    assert ours(node) == [{"key": UNTRUSTED_TAINT, "value": "not-enrolled", "effect": "NoSchedule"}]
    assert RESULT_ANNOTATION not in node["metadata"]["annotations"]
    assert "not enrolled" in node["metadata"]["annotations"][REASON_ANNOTATION]
    others_intact(node)


def test_verifier_unreachable_fails_closed(api, core):
    add(api, "good")
    clock = FakeClock()
    views = Views(view(good="trusted"))
    nodes = controller(core, views, clock)
    nodes.sync()
    assert api.node("good")["metadata"]["labels"][TRUSTED_LABEL] == "true"

    views.current = TrustView(None, "verifier https://v:8443 unreachable: connection refused")
    nodes.sync()
    node = api.node("good")
    assert node["metadata"]["labels"][TRUSTED_LABEL] == "false"
    assert ours(node)[0]["value"] == "verifier-unavailable"
    assert "unreachable" in node["metadata"]["annotations"][REASON_ANNOTATION]
    # The last signed result stays: it is self-describing (its exp says when it lapses).
    assert node["metadata"]["annotations"][RESULT_ANNOTATION] == EAR["good"]
    clock.advance(GRACE.total_seconds())
    nodes.sync()
    assert effects(api.node("good")) == {"NoSchedule", "NoExecute"}
    others_intact(api.node("good"))


def test_a_converged_cluster_gets_no_writes(api, core):
    for name in ("good", "bad", "stranger"):
        add(api, name)
    nodes = controller(core, Views(view(good="trusted", bad="failed")), FakeClock())
    assert len(nodes.sync()) == 3
    before = len(api.requests)
    assert nodes.sync() == []
    assert [method for method, *_ in api.requests[before:]] == ["GET"]


def test_concurrent_change_conflicts_and_is_recomputed(api, core):
    add(api, "bad")

    class Racing:
        """Another controller adds a taint between our list and our patch."""

        def __init__(self, inner) -> None:
            self.inner = inner
            self.api_client = inner.api_client
            self.raced = False

        def list_node(self):
            return self.inner.list_node()

        def read_node(self, name):
            return self.inner.read_node(name)

        def patch_node(self, name, body):
            if not self.raced:
                self.raced = True
                taints = api.node(name)["spec"]["taints"]
                api.update_node(
                    name, {"spec": {"taints": [*taints, {"key": "late", "effect": "NoExecute"}]}}
                )
            return self.inner.patch_node(name, body)

    NodeController(Racing(core), Views(view(bad="failed")), grace=GRACE, clock=FakeClock()).sync()
    node = api.node("bad")
    assert {t["key"] for t in node["spec"]["taints"]} == {"dedicated", "late", UNTRUSTED_TAINT}
    conflicts = [r for r in api.requests if r[0] == "PATCH"]
    assert len(conflicts) == 2  # the first was refused with 409, the second applied


def test_reconcile_is_pure_and_names_its_changes():
    node = KubeNode("bad", "7", dict(OTHER_LABELS), {}, (dict(OTHER_TAINT),))
    (patch,) = reconcile([node], view(bad="revoked"), T0, GRACE)
    assert patch.trusted is False
    assert patch.body["metadata"]["resourceVersion"] == "7"
    assert patch.body["metadata"]["labels"] == {TRUSTED_LABEL: "false"}
    assert patch.body["spec"]["taints"] == [
        OTHER_TAINT,
        {"key": UNTRUSTED_TAINT, "value": "revoked", "effect": "NoSchedule"},
    ]
    assert f"taint {UNTRUSTED_TAINT}:NoSchedule added" in patch.changes
    assert (
        reconcile([node], view(bad="revoked"), T0, timedelta(0))[0].body["spec"]["taints"][-1][
            "effect"
        ]
        == "NoExecute"
    )


def test_verifier_trust_view_fetches_each_result_once():
    calls: list[tuple[str, dict]] = []
    fleet = fleet_answer(
        [
            FleetEntry("n1", "good", "trusted", T0 + timedelta(seconds=60), "r1"),
            FleetEntry("n2", "new", "enrolled", None, None),
        ]
    )

    def request(method: str, path: str, **params):
        calls.append((path, params))
        if path == "/v1/trust":
            return fleet
        assert path == "/v1/nodes/n1/results" and params == {"limit": 1}
        return {"results": [{"result_id": "r1", "ear": "a.b.c"}]}

    views = VerifierTrustView(request, PINNED, clock=lambda: T0)
    first = views()
    assert first.results == {"good": "a.b.c", "new": None}
    assert first.nodes is not None and first.nodes["good"].state == "trusted"
    views()
    assert [path for path, _ in calls].count("/v1/nodes/n1/results") == 1

    def down(method: str, path: str, **params):
        raise ConnectionError("connection refused")

    unavailable = VerifierTrustView(down, PINNED, clock=lambda: T0)()
    assert unavailable.nodes is None and "refused" in unavailable.error


@pytest.mark.parametrize(
    ("answer", "why"),
    [
        (lambda: {"nodes": [{"name": "good", "node_id": "n1", "state": "trusted"}]},
         "no fleet trust statement"),
        (lambda: fleet_answer([FleetEntry("n1", "good", "trusted", T0, "r1")],
                              key=ec.generate_private_key(ec.SECP256R1())),
         "not a pinned verifier key"),
        (lambda: fleet_answer([FleetEntry("n1", "good", "trusted", T0, "r1")],
                              issued_at=T0 - timedelta(seconds=120)),
         "not at"),
    ],
    ids=["unsigned-node-list", "impostor-key", "expired-statement"],
)  # fmt: skip
def test_the_controller_acts_only_on_a_pinned_key_statement(answer, why):
    """The review's case: the Kubernetes components decided from unsigned node state. An
    unsigned list, a statement signed by another key, or one replayed after its expiry, is
    "cannot tell": every node untrusted."""
    served = answer()
    view = VerifierTrustView(lambda method, path, **params: served, PINNED, clock=lambda: T0)()
    assert view.nodes is None and why in view.error
    node = KubeNode("good", "1", {TRUSTED_LABEL: "true"}, {}, ())
    patches = reconcile([node], view, T0, GRACE)
    assert patches and patches[0].body["metadata"]["labels"][TRUSTED_LABEL] == "false"


def test_watch_reacts_to_a_new_node(api, core):
    nodes = NodeController(core, Views(view(good="trusted")), grace=GRACE)
    stop = threading.Event()
    thread = threading.Thread(target=nodes.run, kwargs={"interval": 3, "stop": stop})
    thread.start()
    try:
        time.sleep(0.5)
        api.add_node("joined")
        deadline = time.monotonic() + 1.5  # well before the next full resync
        while time.monotonic() < deadline:
            if api.node("joined")["metadata"]["labels"].get(TRUSTED_LABEL) == "false":
                break
            time.sleep(0.05)
        assert api.node("joined")["metadata"]["labels"][TRUSTED_LABEL] == "false"
        assert effects(api.node("joined")) == {"NoSchedule"}
        assert any(r[0] == "GET" and r[1] == "/api/v1/nodes" for r in api.requests)
    finally:
        stop.set()
        thread.join(timeout=10)
    assert not thread.is_alive()


def test_emulator_json_patch_and_validation(api, core):
    add(api, "n")
    core.patch_node("n", [{"op": "add", "path": "/metadata/labels/x", "value": "1"}])
    assert api.node("n")["metadata"]["labels"]["x"] == "1"
    assert api.requests[-1][2] == "application/json-patch+json"
    with pytest.raises(client.ApiException) as refused:
        core.patch_node("n", {"spec": {"taints": [OTHER_TAINT, OTHER_TAINT]}})
    assert refused.value.status == 422
    with pytest.raises(client.ApiException) as missing:
        core.read_node("nope")
    assert missing.value.status == 404


def test_cli_once_with_a_kubeconfig_and_the_verifier_down(api, tmp_path):
    from typer.testing import CliRunner

    from stockade.cli.kube_controller import app

    add(api, "good")
    pinned_file = tmp_path / "verifier-key.pem"
    pinned_file.write_bytes(PINNED.pem())
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{api.url}'}}}}]\n"
        "users: [{name: nobody, user: {}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: nobody}}]\n"
    )
    result = CliRunner().invoke(
        app,
        [
            "controller",
            "--once",
            "--kubeconfig",
            str(kubeconfig),
            "--verifier",
            "https://127.0.0.1:9",  # nothing listens: fail closed
            "--verifier-key",
            str(pinned_file),
        ],
    )
    assert result.exit_code == 0, result.output
    assert "good:" in result.output
    node = api.node("good")
    assert node["metadata"]["labels"][TRUSTED_LABEL] == "false"
    assert effects(node) == {"NoSchedule"}
    others_intact(node)
