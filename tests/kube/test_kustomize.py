"""The kustomize base (deploy/kubernetes/Kustomization) and overlays (deploy/overlays/):
`kubectl kustomize` renders each with Debian 12's kubectl 1.20 (kustomize v2.0.3) and with a
newer kubectl alike, the output validates strictly against the Kubernetes OpenAPI schema
offline (kubernetes-validate: unknown fields and wrong types refused), and each overlay's
parameters land where the components read them (deploy/overlays/README.md)."""

from __future__ import annotations

import functools
import os
import re
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import kubernetes_validate
import pytest
import yaml

pytestmark = pytest.mark.tools

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
BASE = DEPLOY / "kubernetes"
OVERLAYS = DEPLOY / "overlays"
TARGETS = {"base": BASE} | {p.name: p for p in sorted(OVERLAYS.iterdir()) if p.is_dir()}

# The oldest and the newest schema kubernetes-validate ships.
SCHEMA_VERSIONS = ("1.25", "1.37")

# Where kubectl may be: $STOCKADE_KUBECTL (os.pathsep-separated), PATH, and Debian 12's
# kubernetes-client package (installed, or unpacked with dpkg-deb -x where /usr/bin/kubectl
# belongs to another package).
KUBECTL_CANDIDATES = (
    *filter(None, os.environ.get("STOCKADE_KUBECTL", "").split(os.pathsep)),
    shutil.which("kubectl"),
    "/usr/bin/kubectl",
    "/opt/debian-kubernetes-client/usr/bin/kubectl",
)

# What kustomize v2.0.3 understands; `resources` must name files, not directories.
V2_FIELDS = {
    "apiVersion",
    "kind",
    "bases",
    "resources",
    "namespace",
    "images",
    "patchesJson6902",
    "configMapGenerator",
    "generatorOptions",
}


@dataclass(frozen=True)
class Kubectl:
    path: str
    version: tuple[int, int]

    def __str__(self) -> str:
        return f"kubectl{self.version[0]}.{self.version[1]}"


@functools.cache
def kubectls() -> tuple[Kubectl, ...]:
    found: dict[str, Kubectl] = {}
    for candidate in KUBECTL_CANDIDATES:
        if not candidate or not os.access(candidate, os.X_OK):
            continue
        real = os.path.realpath(candidate)
        if real in found:
            continue
        answer = subprocess.run(
            [real, "version", "--client"], check=False, capture_output=True, text=True, timeout=60
        )
        match = re.search(r"v(\d+)\.(\d+)\.\d+", answer.stdout)
        if answer.returncode == 0 and match:
            found[real] = Kubectl(real, (int(match[1]), int(match[2])))
    # One binary per version: the google-cloud-sdk wrapper and its kubectl.1.NN are alike.
    return tuple({k.version: k for k in found.values()}.values())


def _kubectl_params() -> list:
    return [pytest.param(k, id=str(k)) for k in kubectls()] or [
        pytest.param(None, marks=pytest.mark.skip(reason="no kubectl on this machine"))
    ]


@functools.cache
def render(kubectl: Kubectl, target: str) -> tuple[dict, ...]:
    answer = subprocess.run(
        [kubectl.path, "kustomize", str(TARGETS[target])],
        check=False,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert answer.returncode == 0, answer.stderr
    return tuple(d for d in yaml.safe_load_all(answer.stdout) if d is not None)


def newest() -> Kubectl:
    if not kubectls():
        pytest.skip("no kubectl on this machine")
    return max(kubectls(), key=lambda k: k.version)


def identity(document: dict) -> tuple[str, str, str | None, str]:
    meta = document["metadata"]
    return (document["apiVersion"], document["kind"], meta.get("namespace"), meta["name"])


def by_identity(documents: tuple[dict, ...]) -> dict[tuple, dict]:
    keyed = {identity(d): d for d in documents}
    assert len(keyed) == len(documents), "two objects with one identity"
    return keyed


def find(documents: tuple[dict, ...], kind: str, name: str) -> dict:
    (document,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


def container(documents: tuple[dict, ...], kind: str, name: str) -> dict:
    return find(documents, kind, name)["spec"]["template"]["spec"]["containers"][0]


def option(arguments: list[str], name: str) -> list[str]:
    return [a.split("=", 1)[1] for a in arguments if a.startswith(f"{name}=")]


# -- the kustomizations themselves -------------------------------------------------------


@pytest.mark.parametrize("target", TARGETS)
def test_kustomizations_use_only_kustomize_v2_0_3_syntax(target):
    directory = TARGETS[target]
    (path,) = [
        directory / name
        for name in ("kustomization.yaml", "kustomization.yml", "Kustomization")
        if (directory / name).exists()
    ]
    kustomization = yaml.safe_load(path.read_text())
    assert set(kustomization) <= V2_FIELDS, set(kustomization) - V2_FIELDS
    for resource in kustomization.get("resources", []):
        assert (directory / resource).is_file(), resource
    for base in kustomization.get("bases", []):
        assert (directory / base).is_dir(), base
    for patch in kustomization.get("patchesJson6902", []):
        assert set(patch) == {"target", "path"}
        assert (directory / patch["path"]).is_file()


def test_the_base_lists_every_manifest():
    kustomization = yaml.safe_load((BASE / "Kustomization").read_text())
    assert kustomization["resources"] == sorted(p.name for p in BASE.glob("*.yaml"))


def test_the_base_does_not_break_kubectl_apply_of_the_directory():
    """`kubectl apply -f deploy/kubernetes/` reads *.yaml, *.yml and *.json: the
    kustomization there has no such extension, so the manifests apply as they did."""
    assert (BASE / "Kustomization").is_file()
    assert not list(BASE.glob("kustomization.*"))


# -- rendering ---------------------------------------------------------------------------


@pytest.mark.parametrize("kubectl", _kubectl_params())
@pytest.mark.parametrize("target", TARGETS)
def test_renders(kubectl, target):
    documents = render(kubectl, target)
    kinds = {d["kind"] for d in documents}
    assert {"Namespace", "Deployment", "DaemonSet", "ValidatingWebhookConfiguration"} <= kinds
    base = {(d["kind"], d["metadata"]["name"]) for d in render(kubectl, "base")}
    # An overlay keeps every object of the base (and only adds its generated ConfigMaps).
    rendered = {(d["kind"], d["metadata"]["name"]) for d in documents}
    assert {k for k in base if k[0] != "Namespace"} <= rendered


@pytest.mark.parametrize("target", TARGETS)
def test_every_kubectl_renders_the_same(target):
    versions = kubectls()
    if len(versions) < 2:
        pytest.skip(f"only {', '.join(map(str, versions)) or 'no kubectl'} here")
    first, *others = sorted(versions, key=lambda k: k.version)
    expected = by_identity(render(first, target))
    for other in others:
        # Order differs (each version sorts kinds its own way); the objects may not.
        assert by_identity(render(other, target)) == expected, (str(first), str(other))


def test_debian_kubectl_1_20_is_among_those_tried():
    """Informational unless Debian's kubectl is present: then it must be 1.20 (v2.0.3)."""
    versions = {k.version for k in kubectls()}
    if not any(v[:1] == (1,) and v[1] <= 20 for v in versions):
        pytest.skip(f"no kubectl 1.20 here (found {sorted(versions)})")
    assert (1, 20) in versions


# -- strict schema validation ------------------------------------------------------------


def validate(document: dict) -> None:
    for version in SCHEMA_VERSIONS:
        kubernetes_validate.validate(document, version, strict=True)


@pytest.mark.parametrize("target", TARGETS)
def test_rendered_output_validates_strictly(target):
    documents = render(newest(), target)
    for document in documents:
        validate(document)


def test_the_validator_refuses_typos_and_wrong_types():
    deployment = find(render(newest(), "production"), "Deployment", "stockade-verifier")
    validate(deployment)

    def broken(change) -> dict:
        copy = yaml.safe_load(yaml.safe_dump(deployment))
        change(copy)
        return copy

    def typo(d: dict) -> None:
        pod = d["spec"]["template"]["spec"]
        pod["contianers"] = pod.pop("containers")

    def port_as_list(d: dict) -> None:
        probe = d["spec"]["template"]["spec"]["containers"][0]["readinessProbe"]
        probe["httpGet"]["port"] = ["https"]  # an int-or-string

    mistakes = {
        "typo": typo,
        "unknown field": lambda d: d["spec"].update(replica=5),
        "wrong type": lambda d: d["spec"].update(replicas="five"),
        "list for an object": lambda d: d["spec"]["template"].update(metadata=[]),
        "int-or-string": port_as_list,
    }
    for change in mistakes.values():
        with pytest.raises(kubernetes_validate.ValidationError):
            validate(broken(change))


# -- the overlays' parameters ------------------------------------------------------------

EXPECTED = {
    "production": {
        "namespace": "stockade",
        "image": "registry.example.com/stockade:0.1.0",
        "replicas": {"stockade-verifier": 5, "stockade-webhook": 3},
        "min_available": 3,
        "verifier": "https://stockade-verifier.stockade.svc",
        "grace": "600",
        "webhooks": [
            "https://siem.example.com/stockade/events",
            "https://oncall.example.com/hooks/stockade",
        ],
        "policy_id": "production",
    },
    "development": {
        "namespace": "stockade-dev",
        "image": "localhost:5000/stockade:0.1.0-dev",
        "replicas": {"stockade-verifier": 1, "stockade-webhook": 1},
        "min_available": 0,
        "verifier": "https://stockade-verifier.stockade-dev.svc",
        "grace": "30",
        "webhooks": ["https://receiver.stockade-dev.svc/stockade"],
        "policy_id": "development",
    },
}


def test_every_overlay_has_expectations():
    assert set(TARGETS) - {"base"} == set(EXPECTED)


@pytest.mark.parametrize("overlay", EXPECTED)
def test_overlay_parameters_land(overlay):
    expected = EXPECTED[overlay]
    documents = render(newest(), overlay)
    namespace = expected["namespace"]

    # Namespace: the object, every namespaced object, and everything naming it.
    assert find(documents, "Namespace", namespace)
    for document in documents:
        if document["kind"] not in {"Namespace", "ClusterRole", "ClusterRoleBinding"}:
            assert document["metadata"]["namespace"] == namespace, identity(document)
    for binding in (d for d in documents if d["kind"] == "ClusterRoleBinding"):
        assert {s["namespace"] for s in binding["subjects"]} == {namespace}
    (hook,) = find(documents, "ValidatingWebhookConfiguration", "stockade")["webhooks"]
    assert hook["clientConfig"]["service"]["namespace"] == namespace
    assert hook["namespaceSelector"]["matchExpressions"][0]["values"] == [namespace]
    webhook = container(documents, "Deployment", "stockade-webhook")
    assert option(webhook["args"], "--exempt-namespace") == [namespace]

    # Image: every container and init container.
    for document in documents:
        if document["kind"] in {"Deployment", "DaemonSet"}:
            pod = document["spec"]["template"]["spec"]
            for each in pod["containers"] + pod.get("initContainers", []):
                assert each["image"] == expected["image"], identity(document)

    # Replicas.
    for name, replicas in expected["replicas"].items():
        assert find(documents, "Deployment", name)["spec"]["replicas"] == replicas
    budget = find(documents, "PodDisruptionBudget", "stockade-verifier")
    assert budget["spec"]["minAvailable"] == expected["min_available"]
    # A budget of every replica would block each node drain.
    assert budget["spec"]["minAvailable"] < expected["replicas"]["stockade-verifier"]

    # Verifier URL: the agent, the controllers and the webhook.
    for kind, name in (
        ("DaemonSet", "stockade-agent"),
        ("Deployment", "stockade-node-controller"),
        ("Deployment", "stockade-csr-approver"),
        ("Deployment", "stockade-webhook"),
    ):
        assert option(container(documents, kind, name)["args"], "--verifier") == [
            expected["verifier"]
        ]

    # Grace.
    controller = container(documents, "Deployment", "stockade-node-controller")
    assert option(controller["args"], "--grace") == [expected["grace"]]

    # The verifier: webhook receivers, policy, EK CA bundle; the base's arguments kept.
    verifier_deployment = find(documents, "Deployment", "stockade-verifier")
    verifier = verifier_deployment["spec"]["template"]["spec"]["containers"][0]
    base_args = container(render(newest(), "base"), "Deployment", "stockade-verifier")["args"]
    assert verifier["args"][: len(base_args)] == base_args
    assert option(verifier["args"], "--webhook") == expected["webhooks"]
    volumes = {v["name"]: v for v in verifier_deployment["spec"]["template"]["spec"]["volumes"]}
    mounts = {m["name"]: m["mountPath"] for m in verifier["volumeMounts"]}
    (policy_path,) = option(verifier["args"], "--policy")
    assert str(Path(policy_path).parent) == mounts["policy"]
    policy_map = find(documents, "ConfigMap", volumes["policy"]["configMap"]["name"])
    policy = yaml.safe_load(policy_map["data"][Path(policy_path).name])
    assert policy["id"] == expected["policy_id"]
    shipped_policy = (TARGETS[overlay] / "policy.yaml").read_text()
    assert policy_map["data"][Path(policy_path).name] == shipped_policy
    (ek_dir,) = option(verifier["args"], "--ek-ca-dir")
    assert mounts["ek-roots"] == ek_dir
    roots = find(documents, "ConfigMap", volumes["ek-roots"]["configMap"]["name"])
    shipped = {p.name: p.read_text() for p in (TARGETS[overlay] / "ek-roots").iterdir()}
    assert roots["data"] == shipped

    # Nothing still names the base's namespace in a URL or an option.
    if namespace != "stockade":
        text = yaml.safe_dump_all(documents)
        assert ".stockade.svc" not in text
        assert "=stockade\n" not in text


# -- probes ------------------------------------------------------------------------------


def test_servers_have_probes_on_their_health_endpoints():
    documents = render(newest(), "base")
    verifier = container(documents, "Deployment", "stockade-verifier")
    assert verifier["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert verifier["livenessProbe"]["httpGet"]["path"] == "/livez"
    webhook = container(documents, "Deployment", "stockade-webhook")
    assert webhook["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert webhook["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    # /readyz fails while the verifier is unreachable: the liveness check is /livez.
    assert webhook["livenessProbe"]["httpGet"]["path"] == "/livez"
    agent = container(documents, "DaemonSet", "stockade-agent")
    assert agent["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert agent["livenessProbe"]["httpGet"]["path"] == "/livez"
    (address,) = option(agent["args"], "--probe-address")
    assert address.endswith(f":{agent['ports'][0]['containerPort']}")
    for each in (verifier, webhook, agent):
        for probe in ("readinessProbe", "livenessProbe"):
            port = each[probe].get("httpGet", each[probe].get("tcpSocket"))["port"]
            assert port in {p["name"] for p in each["ports"]}


def test_the_probed_paths_are_served():
    from stockade.kube import server
    from stockade.verifier import app

    assert '@app.get("/readyz"' in Path(app.__file__).read_text()
    assert '@app.get("/livez"' in Path(app.__file__).read_text()
    for path in ("/healthz", "/livez", "/readyz", "/metrics"):
        assert f'@app.get("{path}")' in Path(server.__file__).read_text(), path
