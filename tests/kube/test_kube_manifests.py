"""deploy/kubernetes: every manifest validates offline against the Kubernetes 1.37 OpenAPI
schema (kubernetes-validate, strict: unknown fields are errors), and the security-relevant
choices hold: the webhook fails closed, RBAC names every verb and resource (no wildcards)
and grants each component only what it uses, the agent gets the TPM device."""

from __future__ import annotations

from pathlib import Path

import kubernetes_validate
import pytest
import yaml

DEPLOY = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes"
KUBERNETES_VERSION = "1.37"


def documents() -> list[tuple[str, dict]]:
    found = []
    for path in sorted(DEPLOY.glob("*.yaml")):
        for document in yaml.safe_load_all(path.read_text()):
            if document is not None:
                found.append(
                    (f"{path.name}:{document['kind']}/{document['metadata']['name']}", document)
                )
    return found


ALL = documents()


def of_kind(kind: str) -> dict[str, dict]:
    return {doc["metadata"]["name"]: doc for _, doc in ALL if doc["kind"] == kind}


def test_the_manifests_are_there():
    kinds = {doc["kind"] for _, doc in ALL}
    assert {
        "Namespace",
        "Deployment",
        "DaemonSet",
        "Service",
        "ServiceAccount",
        "ClusterRole",
        "ClusterRoleBinding",
        "ValidatingWebhookConfiguration",
    } <= kinds


@pytest.mark.parametrize(("where", "document"), ALL, ids=[where for where, _ in ALL])
def test_validates_against_the_kubernetes_schema(where, document):
    kubernetes_validate.validate(document, KUBERNETES_VERSION, strict=True)


def test_the_schema_check_catches_mistakes():
    deployment = next(doc for _, doc in ALL if doc["kind"] == "Deployment")
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["replicas"] = "three"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)
    broken = yaml.safe_load(yaml.safe_dump(deployment))
    broken["spec"]["template"]["spec"]["containers"][0]["imagePullPolicyy"] = "Always"
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSION, strict=True)


def test_webhook_fails_closed_on_pod_creation_and_binding():
    (configuration,) = of_kind("ValidatingWebhookConfiguration").values()
    for webhook in configuration["webhooks"]:
        assert webhook["failurePolicy"] == "Fail"
        assert webhook["sideEffects"] == "None"
        assert webhook["admissionReviewVersions"] == ["v1"]
        assert webhook["clientConfig"]["service"]["path"] == "/validate"
        doors = {
            (operation, resource)
            for rule in webhook["rules"]
            for operation in rule["operations"]
            for resource in rule["resources"]
        }  # exactly the doors: tests/kube/test_kube_webhook_registration.py
        assert ("CREATE", "pods") in doors and ("CREATE", "pods/binding") in doors
        (exempt,) = webhook["namespaceSelector"]["matchExpressions"]
        assert exempt == {
            "key": "kubernetes.io/metadata.name",
            "operator": "NotIn",
            "values": ["stockade"],
        }


def test_rbac_has_no_wildcards_and_least_privilege():
    roles = of_kind("ClusterRole") | of_kind("Role")
    for role in roles.values():
        for rule in role["rules"]:
            for field in ("verbs", "resources", "apiGroups", "resourceNames"):
                assert "*" not in rule.get(field, []), (role["metadata"]["name"], field)
            assert "nonResourceURLs" not in rule
    grants = {
        name: {
            (group, resource, verb, tuple(rule.get("resourceNames", ())))
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        for name, role in roles.items()
    }
    assert grants["stockade-node-controller"] == {
        ("", "nodes", verb, ()) for verb in ("get", "list", "watch", "patch")
    }
    signers = ("kubernetes.io/kube-apiserver-client-kubelet", "kubernetes.io/kubelet-serving")
    assert grants["stockade-csr-approver"] == {
        ("certificates.k8s.io", "certificatesigningrequests", "get", ()),
        ("certificates.k8s.io", "certificatesigningrequests", "list", ()),
        ("certificates.k8s.io", "certificatesigningrequests", "watch", ()),
        ("certificates.k8s.io", "certificatesigningrequests/approval", "update", ()),
        ("certificates.k8s.io", "signers", "approve", signers),
        ("", "nodes", "get", ()),
    }
    # Every binding binds one of these roles to the service account that uses it.
    for binding in of_kind("ClusterRoleBinding").values():
        (subject,) = binding["subjects"]
        assert subject["kind"] == "ServiceAccount"
        assert subject["name"] == binding["roleRef"]["name"] == binding["metadata"]["name"]
        assert binding["roleRef"]["name"] in roles


def test_components_without_api_access_get_no_token():
    for name in ("stockade-verifier", "stockade-agent", "stockade-webhook"):
        account = of_kind("ServiceAccount")[name]
        assert account["automountServiceAccountToken"] is False


def _pod_spec(kind: str, name: str) -> dict:
    return of_kind(kind)[name]["spec"]["template"]["spec"]


def test_agent_daemonset_mounts_the_tpm_and_event_log():
    spec = _pod_spec("DaemonSet", "stockade-agent")
    volumes = {v["name"]: v for v in spec["volumes"]}
    (container,) = spec["containers"]
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert volumes[mounts["/dev/tpmrm0"]["name"]]["hostPath"] == {
        "path": "/dev/tpmrm0",
        "type": "CharDevice",
    }
    securityfs = mounts["/sys/kernel/security"]
    assert securityfs["readOnly"] is True
    assert volumes[securityfs["name"]]["hostPath"]["path"] == "/sys/kernel/security"
    assert volumes[mounts["/run/stockade"]["name"]]["hostPath"]["path"] == "/run/stockade"
    assert "--tcti=device:/dev/tpmrm0" in container["args"]
    # No more host than the mounts: no host network, PID or IPC namespace.
    assert not any(spec.get(k) for k in ("hostNetwork", "hostPID", "hostIPC"))
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    # The agent must keep attesting on an untrusted node, or the node never recovers.
    assert {"key": "stockade.dev/untrusted", "operator": "Exists"} in spec["tolerations"]


def test_verifier_deployment_is_replicated_over_postgresql():
    deployment = of_kind("Deployment")["stockade-verifier"]
    assert deployment["spec"]["replicas"] == 3
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    (database,) = [e for e in container["env"] if e["name"] == "STOCKADE_DATABASE_URL"]
    assert database["valueFrom"]["secretKeyRef"]["name"] == "stockade-verifier-db"
    assert "--database=$(STOCKADE_DATABASE_URL)" in container["args"]
    assert any(a.startswith("--kek-file=") for a in container["args"])
    kek = {v["name"]: v for v in spec["volumes"]}["kek"]
    assert kek["secret"]["secretName"] == "stockade-verifier-kek"
    # The EK CA bundle is mounted and read: without it no real TPM could enroll.
    assert "--ek-ca-dir=/etc/stockade/ek-roots" in container["args"]
    roots = {v["name"]: v for v in spec["volumes"]}["ek-roots"]
    assert roots["configMap"]["name"] == "stockade-ek-roots"
    mounts = {m["name"]: m for m in container["volumeMounts"]}
    assert mounts["ek-roots"]["mountPath"] == "/etc/stockade/ek-roots"
    assert mounts["ek-roots"]["readOnly"] is True
    # Ready only while the database answers; alive while the process serves HTTP.
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"


def test_non_agent_containers_are_unprivileged():
    for kind, name in (
        ("Deployment", "stockade-verifier"),
        ("Deployment", "stockade-node-controller"),
        ("Deployment", "stockade-csr-approver"),
        ("Deployment", "stockade-webhook"),
    ):
        spec = _pod_spec(kind, name)
        assert spec["securityContext"]["runAsNonRoot"] is True
        for container in spec["containers"] + spec.get("initContainers", []):
            context = container["securityContext"]
            assert context["allowPrivilegeEscalation"] is False
            assert context["capabilities"]["drop"] == ["ALL"]
            assert not context.get("privileged")


def test_controller_commands_match_the_cli():
    from typer.main import get_command

    from stockade.cli.kube_controller import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    for name, command in (
        ("stockade-node-controller", "controller"),
        ("stockade-csr-approver", "approve-csrs"),
    ):
        (container,) = _pod_spec("Deployment", name)["containers"]
        assert container["args"][:2] == ["kube", command]
        options = {o for p in commands[command].params for o in p.opts}
        for argument in container["args"][2:]:
            assert argument.split("=")[0] in options, argument


def test_scheduler_extender_configuration():
    config = yaml.safe_load((DEPLOY / "scheduler" / "kube-scheduler-config.yaml").read_text())
    assert config["apiVersion"] == "kubescheduler.config.k8s.io/v1"
    assert config["kind"] == "KubeSchedulerConfiguration"
    (extender,) = config["extenders"]
    assert extender["filterVerb"] == "filter"
    assert extender["enableHTTPS"] is True
    assert extender["ignorable"] is False  # an unreachable extender stops scheduling
    assert extender["nodeCacheCapable"] is True
    allowed = {
        "urlPrefix",
        "filterVerb",
        "preemptVerb",
        "prioritizeVerb",
        "weight",
        "bindVerb",
        "enableHTTPS",
        "tlsConfig",
        "httpTimeout",
        "nodeCacheCapable",
        "managedResources",
        "ignorable",
    }
    assert set(extender) <= allowed
    assert set(extender["tlsConfig"]) <= {
        "insecure",
        "serverName",
        "certFile",
        "keyFile",
        "caFile",
        "certData",
        "keyData",
        "caData",
    }


def test_components_read_the_verifier_with_the_reader_token():
    """The verifier refuses anonymous reads of trust state: the node controller, the CSR
    approver and the webhook/extender each pass the reader token from its own Secret."""
    for name in ("stockade-node-controller", "stockade-csr-approver", "stockade-webhook"):
        spec = _pod_spec("Deployment", name)
        (container,) = spec["containers"]
        (argument,) = [a for a in container["args"] if a.startswith("--token-file=")]
        path = Path(argument.split("=", 1)[1])
        (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(path.parent)]
        assert mount["readOnly"] is True
        volume = {v["name"]: v for v in spec["volumes"]}[mount["name"]]
        assert volume["secret"]["secretName"] == "stockade-verifier-reader"
        assert volume["secret"]["defaultMode"] == 0o440  # its group (fsGroup) reads it
        assert spec["securityContext"]["fsGroup"] == spec["securityContext"]["runAsUser"]
        assert path.name == "token"


def test_verifier_data_dir_is_owner_only_and_shares_the_reader_and_session_keys():
    spec = _pod_spec("Deployment", "stockade-verifier")
    inits = {container["name"]: container for container in spec["initContainers"]}
    script = inits["keys"]["command"][-1]
    (container,) = spec["containers"]
    args = dict(a.split("=", 1) for a in container["args"] if a.startswith("--") and "=" in a)
    data_dir, keys_dir = args["--data-dir"], args["--keys-dir"]
    mount = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}["data"]
    # An emptyDir is world-writable: the data and keys directories are subdirectories 0700.
    for directory in (data_dir, keys_dir):
        assert directory != mount and directory.startswith(mount + "/")
    assert "umask 077" in script and f"d={data_dir}" in script and f"k={keys_dir}" in script
    assert "chmod 700 $d $k" in script and "cp /keys/$f $k/$f" in script
    # Every replica reads the same shared keys (cookies and statements verify anywhere),
    # and serves the operator's certificate for the Service name.
    from stockade.verifier.shared_keys import REQUIRED

    for name in (*REQUIRED, "tls-server.pem", "tls-server-key.pem"):
        assert f" {name}" in script.replace("\\\n", " "), name
    assert args["--tls-cert"] == f"{keys_dir}/tls-server.pem"
    assert args["--tls-key"] == f"{keys_dir}/tls-server-key.pem"
    # The schema is migrated once, before serving; the replicas never migrate.
    assert "--no-migrate" in container["args"]
    assert inits["migrate"]["args"][:2] == ["verifier", "migrate"]
    assert "--database=$(STOCKADE_DATABASE_URL)" in inits["migrate"]["args"]


def test_verifier_arguments_are_options_of_the_cli():
    from typer.main import get_command

    from stockade.cli.verifier import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    spec = _pod_spec("Deployment", "stockade-verifier")
    inits = {container["name"]: container for container in spec["initContainers"]}
    (container,) = spec["containers"]
    for arguments in (container["args"], inits["migrate"]["args"]):
        command = commands[arguments[1]]
        options = {o for p in command.params for o in (*p.opts, *p.secondary_opts)}
        for argument in arguments[2:]:
            assert argument.split("=")[0] in options, argument


CONTROLLERS = (
    ("stockade-node-controller", "controller"),
    ("stockade-csr-approver", "approve-csrs"),
)


def _lease_name(command: str) -> str:
    """The Lease a command elects with by default (the manifests do not override it)."""
    from typer.main import get_command

    from stockade.cli.kube_controller import app

    commands = get_command(app).commands  # type: ignore[attr-defined]
    (param,) = [p for p in commands[command].params if "--lease-name" in p.opts]
    return str(param.default)


def test_controllers_run_two_replicas_that_elect_a_leader():
    """Two replicas, one acting: each may touch exactly its own Lease (create; get and
    update by name), in its own namespace, through a Role bound to its service account."""
    roles = of_kind("Role")
    bindings = of_kind("RoleBinding")
    for name, command in CONTROLLERS:
        deployment = of_kind("Deployment")[name]
        assert deployment["spec"]["replicas"] == 2
        # A rollout never leaves no replica: one new pod first, then one old one goes.
        assert deployment["spec"]["strategy"]["rollingUpdate"] == {
            "maxSurge": 1,
            "maxUnavailable": 0,
        }
        (container,) = _pod_spec("Deployment", name)["containers"]
        assert not any(a.startswith("--no-leader-elect") for a in container["args"])
        lease = _lease_name(command)
        assert lease == name
        role = roles[f"{name}-lease"]
        grants = {
            (group, resource, verb, tuple(rule.get("resourceNames", ())))
            for rule in role["rules"]
            for group in rule["apiGroups"]
            for resource in rule["resources"]
            for verb in rule["verbs"]
        }
        assert grants == {
            ("coordination.k8s.io", "leases", "create", ()),
            ("coordination.k8s.io", "leases", "get", (lease,)),
            ("coordination.k8s.io", "leases", "update", (lease,)),
        }
        binding = bindings[f"{name}-lease"]
        namespace = deployment["metadata"]["namespace"]
        assert role["metadata"]["namespace"] == binding["metadata"]["namespace"] == namespace
        assert binding["roleRef"] == {
            "apiGroup": "rbac.authorization.k8s.io",
            "kind": "Role",
            "name": f"{name}-lease",
        }
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": name, "namespace": namespace}
        ]
        # The election's namespace is the pod's (the service account's): the token is mounted.
        assert deployment["spec"]["template"]["spec"].get("automountServiceAccountToken", True)


def test_controllers_have_probes_metrics_and_json_logs():
    for name, _command in CONTROLLERS:
        (container,) = _pod_spec("Deployment", name)["containers"]
        arguments = container["args"]
        (address,) = [a.split("=", 1)[1] for a in arguments if a.startswith("--probe-address=")]
        host, port = address.rsplit(":", 1)
        assert host == "0.0.0.0"  # the kubelet probes the pod's address
        ports = {p["name"]: p["containerPort"] for p in container["ports"]}
        assert ports["probes"] == int(port)
        assert container["livenessProbe"]["httpGet"] == {"path": "/livez", "port": "probes"}
        assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "probes"}
        assert "--log-format=json" in container["args"]


@pytest.mark.tools
def test_overlays_bind_the_lease_role_in_their_own_namespace():
    """Rendered by kustomize, each overlay's lease RoleBinding names the service account in
    the overlay's namespace (else no replica could ever lead: nothing would act)."""
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from test_kustomize import EXPECTED, newest, render

    for overlay, expected in EXPECTED.items():
        documents = render(newest(), overlay)
        bindings = [d for d in documents if d["kind"] == "RoleBinding"]
        assert {b["metadata"]["name"] for b in bindings} >= {
            "stockade-node-controller-lease",
            "stockade-csr-approver-lease",
        }
        for binding in bindings:
            assert binding["metadata"]["namespace"] == expected["namespace"]
            assert {s["namespace"] for s in binding["subjects"]} == {expected["namespace"]}
