"""The shipped webhook (deploy/kubernetes/40-webhook.yaml) registers every door the
admission code judges and nothing else, and its Deployment runs with the image rule on:
the trust policy and the org key from a mounted ConfigMap, the signed images from a
mounted volume, each flag pointing into its mount."""

from __future__ import annotations

from pathlib import Path, PurePosixPath

import kubernetes_validate
import yaml

from stockade.kube.admission import DOORS

WEBHOOK = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "40-webhook.yaml"


def _documents() -> dict[tuple[str, str], dict]:
    found = {}
    for document in yaml.safe_load_all(WEBHOOK.read_text()):
        if document is not None:
            found[(document["kind"], document["metadata"]["name"])] = document
    return found


def test_the_registration_is_exactly_the_doors_admission_judges():
    configuration = _documents()[("ValidatingWebhookConfiguration", "stockade")]
    (webhook,) = configuration["webhooks"]
    registered = set()
    for rule in webhook["rules"]:
        assert rule["apiGroups"] == [""] and rule["apiVersions"] == ["v1"], rule
        assert rule["scope"] == "Namespaced"
        for operation in rule["operations"]:
            for resource in rule["resources"]:
                plural, _, sub = resource.partition("/")
                registered.add((operation, plural, sub))
    assert registered == set(DOORS)
    assert registered == {
        ("CREATE", "pods", ""),
        ("UPDATE", "pods", ""),  # kubectl set image
        ("UPDATE", "pods", "ephemeralcontainers"),  # kubectl debug
        ("CREATE", "pods", "binding"),  # the scheduler
        ("CREATE", "bindings", ""),  # POST /api/v1/namespaces/NS/bindings
    }
    assert webhook["failurePolicy"] == "Fail"
    assert webhook["matchPolicy"] == "Equivalent"
    assert webhook["timeoutSeconds"] <= 10


def test_the_deployment_turns_the_image_rule_on_with_mounted_roots():
    documents = _documents()
    spec = documents[("Deployment", "stockade-webhook")]["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    flags: dict[str, list[str]] = {}
    for argument in container["args"][2:]:
        name, _, value = argument.partition("=")
        flags.setdefault(name, []).append(value)
    assert container["args"][:2] == ["kube", "serve"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    volumes = {v["name"]: v for v in spec["volumes"]}

    def volume_of(path: str) -> dict:
        parents = [str(p) for p in PurePosixPath(path).parents]
        (mount,) = [mounts[p] for p in [path, *parents] if p in mounts]
        assert mount["readOnly"] is True
        return volumes[mount["name"]]

    (policy,) = flags["--trust-policy"]
    (org_pub,) = flags["--org-pub"]
    (store,) = flags["--image-store"]
    trust = volume_of(policy)
    assert volume_of(org_pub) == trust
    configmap = documents[("ConfigMap", trust["configMap"]["name"])]
    assert set(configmap["data"]) == {PurePosixPath(policy).name, PurePosixPath(org_pub).name}
    assert configmap["metadata"]["namespace"] == "stockade"
    claim = volume_of(store)["persistentVolumeClaim"]
    assert claim["claimName"] == "stockade-signed-images" and claim["readOnly"] is True

    # every flag is one `stockade kube serve` takes
    from typer.main import get_command

    from stockade.cli.kube import app

    command = get_command(app).commands["serve"]  # type: ignore[attr-defined]
    options = {option for parameter in command.params for option in parameter.opts}
    assert set(flags) <= options, set(flags) - options


def test_the_file_validates_against_the_kubernetes_schema():
    for document in _documents().values():
        kubernetes_validate.validate(document, "1.37", strict=True)
