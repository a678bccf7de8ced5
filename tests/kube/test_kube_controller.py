"""The node controller with the official ``kubernetes`` client against the in-process API
emulator (real REST paths: list/get/patch Nodes, strategic merge patches, resourceVersion
conflicts, watch): label, taints and annotations follow the verifier's view, fail closed,
NoExecute only after the grace, and nobody else's labels or taints are ever touched."""

from __future__ import annotations

import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from kube_support import PINNED, T0, FakeClock, fleet_answer, node_trust
from kubernetes import client
from prometheus_client import generate_latest

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
from stockade.kube.leader import LeaderElector, LeaseConfig
from stockade.kube.supervision import ControllerMetrics, Supervision
from stockade.probes import Health, ProbeServer
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


@pytest.fixture
def restore_logging():
    """The CLI configures the root logger onto the runner's stream, which closes after."""
    import logging

    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


def test_cli_once_with_a_kubeconfig_and_the_verifier_down(api, tmp_path, restore_logging):
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


# -- leader election, probes, metrics, logs -------------------------------------------------


class Leadership:
    """An election whose answer the test sets (``LeaderElector``'s face to the loop)."""

    def __init__(self, leading: bool) -> None:
        self.leading = leading
        self.asked = 0
        self.config = LeaseConfig("stockade-node-controller", "stockade", "me")
        self.holder = "me" if leading else "other"

    def is_leader(self) -> bool:
        self.asked += 1
        return self.leading


def patches_sent(api) -> list:
    return [r for r in api.requests if r[0] == "PATCH"]


def test_a_standby_reads_everything_and_patches_nothing(api, core):
    for name in ("good", "bad"):
        add(api, name)
    leadership = Leadership(False)
    supervision = Supervision(metrics=ControllerMetrics("controller"), elector=leadership)
    nodes = NodeController(core, Views(view(good="trusted", bad="failed")), supervision=supervision)
    assert nodes.sync() == []
    assert patches_sent(api) == []
    assert nodes.last_round.verifier_error is None and nodes.last_round.api_error is None
    assert TRUSTED_LABEL not in api.node("bad")["metadata"]["labels"]

    leadership.leading = True
    assert {p.node for p in nodes.sync()} == {"good", "bad"}
    assert len(patches_sent(api)) == 2


def test_leadership_lost_in_the_middle_of_a_round_stops_the_next_write(api, core):
    for name in ("n1", "n2", "n3"):
        add(api, name)

    class Losing(Leadership):
        def is_leader(self) -> bool:
            self.asked += 1
            return self.asked <= 1  # certain for the first write only

    supervision = Supervision(elector=Losing(True))
    nodes = NodeController(core, Views(view()), supervision=supervision)
    assert len(nodes.sync()) == 1
    assert len(patches_sent(api)) == 1


def test_a_real_election_gates_the_controller(api, core):
    """Two controllers, one Lease: only the one holding it patches; after it releases, the
    other does."""
    add(api, "bad")
    coordination = client.CoordinationV1Api(core.api_client)
    electors = [
        LeaderElector(coordination, LeaseConfig("stockade-node-controller", "stockade", name))
        for name in ("a", "b")
    ]
    controllers = [
        NodeController(core, Views(view(bad="failed")), supervision=Supervision(elector=elector))
        for elector in electors
    ]
    assert electors[0].step() and not electors[1].step()
    assert controllers[1].sync() == []
    assert [p.node for p in controllers[0].sync()] == ["bad"]
    api.update_node("bad", {"metadata": {"labels": {TRUSTED_LABEL: "true"}}})  # drifted
    assert controllers[1].sync() == []
    assert api.node("bad")["metadata"]["labels"][TRUSTED_LABEL] == "true"
    electors[0].release()
    assert controllers[0].sync() == []
    assert electors[1].step()
    assert [p.node for p in controllers[1].sync()] == ["bad"]
    assert api.node("bad")["metadata"]["labels"][TRUSTED_LABEL] == "false"


def get(port: int, path: str) -> tuple[int, str]:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}{path}", timeout=5) as answer:
            return answer.status, answer.read().decode()
    except urllib.error.HTTPError as error:
        return error.code, error.read().decode()


def wait_for(condition, timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.05)


def metric(text: str, name: str) -> float | None:
    for line in text.splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def patches_counted(port: int) -> float:
    return metric(get(port, "/metrics")[1], "stockade_controller_patches_total") or 0.0


def test_probes_and_metrics_follow_the_rounds(api, core, caplog):
    caplog.set_level("INFO", logger="stockade.kube")
    add(api, "good")
    add(api, "bad")
    views = Views(view(good="trusted", bad="failed"))
    metrics = ControllerMetrics("controller")
    supervision = Supervision(health=Health(), metrics=metrics, elector=Leadership(True))
    nodes = NodeController(core, views, supervision=supervision)
    probes = ProbeServer(("127.0.0.1", 0), supervision.health, metrics.registry).start()
    stop = threading.Event()
    thread = threading.Thread(
        target=nodes.run, kwargs={"interval": 0.2, "stop": stop, "watch": False}
    )
    try:
        assert get(probes.port, "/readyz")[0] == 503  # no round yet
        thread.start()
        wait_for(lambda: get(probes.port, "/readyz")[0] == 200)
        _status, body = get(probes.port, "/readyz")
        assert "leading lease stockade/stockade-node-controller" in body
        assert get(probes.port, "/livez")[0] == 200
        text = get(probes.port, "/metrics")[1]
        assert metric(text, "stockade_controller_patches_total") == 2.0
        assert metric(text, 'stockade_controller_nodes{state="trusted"}') == 1.0
        assert metric(text, 'stockade_controller_nodes{state="failed"}') == 1.0
        assert metric(text, 'stockade_leader{lease="stockade/stockade-node-controller"}') == 1.0
        assert metric(text, "stockade_sync_seconds_count") >= 1

        views.current = TrustView(None, "verifier https://v unreachable: connection refused")
        wait_for(lambda: get(probes.port, "/readyz")[0] == 503)
        assert "verifier: verifier https://v unreachable" in get(probes.port, "/readyz")[1]
        assert get(probes.port, "/livez")[0] == 200  # alive: nothing to restart
        text = get(probes.port, "/metrics")[1]
        assert metric(text, 'stockade_sync_errors_total{kind="verifier"}') >= 1
        assert metric(text, 'stockade_controller_nodes{state="verifier-unavailable"}') == 2.0
        # both nodes are patched again: good loses its trust, bad's reason changes
        wait_for(lambda: patches_counted(probes.port) >= 4.0)
    finally:
        stop.set()
        thread.join(timeout=10)
        probes.stop()
    lines = [r for r in caplog.records if r.name == "stockade.kube.controller"]
    patched = [r for r in lines if r.getMessage() == "node patched"]
    assert {r.node for r in patched} == {"good", "bad"}
    assert all(r.action == "patch" and r.reason for r in patched)


def test_a_standby_is_ready_and_says_so(api, core):
    add(api, "good")
    supervision = Supervision(
        health=Health(), metrics=ControllerMetrics("controller"), elector=Leadership(False)
    )
    nodes = NodeController(core, Views(view(good="trusted")), supervision=supervision)
    stop = threading.Event()
    stop.set()
    nodes.sync()
    supervision.finished(nodes.last_round, 0.01)
    ready, reason = supervision.health.readiness()
    assert ready and "standby (lease stockade/stockade-node-controller held by other)" in reason
    text = generate_latest(supervision.metrics.registry).decode()
    assert metric(text, 'stockade_leader{lease="stockade/stockade-node-controller"}') == 0.0
    assert metric(text, "stockade_controller_patches_total") == 0.0


def test_an_unreachable_api_server_is_one_warning_and_not_ready(caplog):
    configuration = client.Configuration()
    configuration.host = "http://127.0.0.1:9"  # nothing listens
    configuration.retries = False
    with client.ApiClient(configuration) as api_client:
        supervision = Supervision(health=Health(), metrics=ControllerMetrics("controller"))
        nodes = NodeController(
            client.CoreV1Api(api_client), Views(view(good="trusted")), supervision=supervision
        )
        stop = threading.Event()
        thread = threading.Thread(
            target=nodes.run, kwargs={"interval": 0.1, "stop": stop, "watch": False}
        )
        thread.start()
        wait_for(lambda: supervision.health.readiness()[1] != "starting")
        stop.set()
        thread.join(timeout=10)
    ready, reason = supervision.health.readiness()
    assert not ready and "API server:" in reason
    failures = [r for r in caplog.records if r.getMessage() == "node controller round failed"]
    assert failures and all(r.exc_info is None for r in failures)
    assert all("\n" not in r.reason for r in failures)
    text = generate_latest(supervision.metrics.registry).decode()
    assert metric(text, 'stockade_sync_errors_total{kind="api"}') >= 1


def _kubeconfig(tmp_path, url: str):
    path = tmp_path / "kubeconfig"
    path.write_text(
        "apiVersion: v1\nkind: Config\ncurrent-context: emulator\n"
        f"clusters: [{{name: emulator, cluster: {{server: '{url}'}}}}]\n"
        "users: [{name: nobody, user: {}}]\n"
        "contexts: [{name: emulator, context: {cluster: emulator, user: nobody}}]\n"
    )
    return path


def test_cli_once_with_election_acts_only_with_the_lease(api, tmp_path, restore_logging):
    """``--once --leader-elect``: a round only after taking the Lease, released after; with
    the Lease held by another replica, nothing is patched and the exit status says so."""
    from typer.testing import CliRunner

    from stockade.cli.kube_controller import app

    add(api, "good")
    pinned_file = tmp_path / "verifier-key.pem"
    pinned_file.write_bytes(PINNED.pem())
    config = tmp_path / "controller.yaml"  # the settings from a --config file
    config.write_text(
        f"kubeconfig: {_kubeconfig(tmp_path, api.url).name}\n"
        "verifier: https://127.0.0.1:9\n"
        f"verifier-key: {pinned_file}\n"
        "lease-namespace: stockade\n"
        "lease-duration: 1.5\nrenew-deadline: 1\nretry-period: 0.2\n"
    )
    arguments = ["controller", "--config", str(config), "--once", "--leader-elect"]
    configuration = client.Configuration()
    configuration.host = api.url
    other = LeaderElector(
        client.CoordinationV1Api(client.ApiClient(configuration)),
        LeaseConfig("stockade-node-controller", "stockade", "other-replica", 1.5, 1, 0.2),
    )
    stop = threading.Event()
    thread = other.start(stop)  # another replica, renewing
    try:
        wait_for(other.is_leader)
        held = CliRunner().invoke(app, [*arguments, "--identity", "me"])
    finally:
        stop.set()
        thread.join(timeout=10)  # it releases the Lease
    assert held.exit_code == 1, held.output
    assert "held by other-replica" in held.output
    assert patches_sent(api) == []

    result = CliRunner().invoke(app, [*arguments, "--identity", "me"])
    assert result.exit_code == 0, result.output
    assert "good:" in result.output
    assert api.node("good")["metadata"]["labels"][TRUSTED_LABEL] == "false"
    lease = api.lease("stockade-node-controller", "stockade")["spec"]
    assert lease["holderIdentity"] == "" and lease["leaseTransitions"] == 1  # released again


def test_cli_rejects_timings_without_a_margin(api, tmp_path, restore_logging):
    from typer.testing import CliRunner

    from stockade.cli.kube_controller import app

    pinned_file = tmp_path / "verifier-key.pem"
    pinned_file.write_bytes(PINNED.pem())
    result = CliRunner().invoke(
        app,
        [
            "controller",
            "--kubeconfig", str(_kubeconfig(tmp_path, api.url)),
            "--verifier", "https://127.0.0.1:9",
            "--verifier-key", str(pinned_file),
            "--lease-duration", "10", "--renew-deadline", "10",
        ],
    )  # fmt: skip
    assert result.exit_code != 0
    assert "--lease-duration > --renew-deadline" in str(result.exception)


def test_cli_reads_kubeconfig_from_the_environment(api, tmp_path, restore_logging):
    """``--kubeconfig`` defaults to ``$KUBECONFIG`` (as kubectl), not the in-cluster account."""
    from typer.testing import CliRunner

    from stockade.cli.kube_controller import app

    add(api, "good")
    pinned_file = tmp_path / "verifier-key.pem"
    pinned_file.write_bytes(PINNED.pem())
    result = CliRunner().invoke(
        app,
        ["controller", "--once", "--verifier", "https://127.0.0.1:9",
         "--verifier-key", str(pinned_file)],
        env={"KUBECONFIG": str(_kubeconfig(tmp_path, api.url))},
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert api.node("good")["metadata"]["labels"][TRUSTED_LABEL] == "false"
