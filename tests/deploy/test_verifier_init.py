"""``stockade verifier init``: the shared keys, the Services' TLS certificates issued by the
shared TLS CA for exactly the Service names, the Secrets and ConfigMaps that
deploy/kubernetes/*.yaml name (each key they read present), and the caBundle patch: the
overlay with it renders alike with every kubectl (kustomize v2.0.3 and newer), validates
strictly and carries the CA that issued the webhook's certificate. A real ``verifier serve``
started from the output answers over TLS under the Service's name. Nothing is replaced."""

from __future__ import annotations

import base64
import os
import re
import shutil
import ssl
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import yaml
from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID
from typer.testing import CliRunner

from stockade.cli.verifier_init import init
from stockade.verifier import service_bundle
from stockade.verifier.errors import ConfigurationError
from support.cli import stockade_command
from support.verifier_serve import free_port

REPO = Path(__file__).resolve().parents[2]
BASE = REPO / "deploy" / "kubernetes"
PRODUCTION = REPO / "deploy" / "overlays" / "production"


def _manifest(name: str) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all((BASE / name).read_text()) if d]


def _find(documents: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (document,) = [d for d in documents if d["kind"] == kind and d["metadata"]["name"] == name]
    return document


def _run_init(*args: str) -> tuple[int, str]:
    """``stockade verifier init`` as the CLI will register it: a command of ``verifier``."""
    import typer

    app = typer.Typer()
    app.command("init")(init)
    app.command("other")(lambda: None)  # a group, as under `stockade verifier`
    result = CliRunner().invoke(app, ["init", *args])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.output


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("init") / "bundle"
    code, output = _run_init(
        "--out", str(out), "--service-name", "stockade-verifier",
        "--service-name", "verifier", "--namespace", "stockade",
    )  # fmt: skip
    assert code == 0, output
    return out


def _cert(path: Path) -> x509.Certificate:
    return x509.load_pem_x509_certificate(path.read_bytes())


def _dns_names(certificate: x509.Certificate) -> list[str]:
    names = certificate.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert not names.get_values_for_type(x509.IPAddress)
    return list(names.get_values_for_type(x509.DNSName))


def _service_names(service: str, namespace: str = "stockade") -> list[str]:
    return [
        service,
        f"{service}.{namespace}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}.svc.cluster.local",
    ]


def test_certificates_chain_to_the_tls_ca_with_exactly_the_service_names(bundle: Path) -> None:
    ca = _cert(bundle / "tls-ca.pem")
    for file, names in (
        ("tls-server.pem", _service_names("stockade-verifier") + _service_names("verifier")),
        ("webhook-tls.pem", _service_names("stockade-webhook")),
    ):
        certificate = _cert(bundle / file)
        certificate.verify_directly_issued_by(ca)  # raises unless the CA signed it
        assert _dns_names(certificate) == names
        usage = certificate.extensions.get_extension_for_class(x509.ExtendedKeyUsage).value
        assert list(usage) == [ExtendedKeyUsageOID.SERVER_AUTH]
        assert not certificate.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    # Another CA's certificate does not chain (the check above can fail).
    other = _cert(bundle / "cluster-ca.pem")
    with pytest.raises(Exception):  # noqa: B017 - InvalidSignature or ValueError
        _cert(bundle / "tls-server.pem").verify_directly_issued_by(other)


def test_private_material_is_owner_only(bundle: Path) -> None:
    for name in (
        "tls-server-key.pem", "webhook-tls-key.pem", "tls-ca-key.pem", "ear-signing-key.pem",
        "cluster-ca-key.pem", "operator-token", "reader-token", "session-key",
        "log-signing-key", "kubernetes/secrets.yaml",
    ):  # fmt: skip
        assert (bundle / name).stat().st_mode & 0o077 == 0, name
    assert (bundle / "kubernetes").stat().st_mode & 0o077 == 0


def _documents(bundle: Path) -> dict[tuple[str, str], dict[str, Any]]:
    documents = [
        d
        for file in ("secrets.yaml", "configmaps.yaml")
        for d in yaml.safe_load_all((bundle / "kubernetes" / file).read_text())
    ]
    return {(d["kind"], d["metadata"]["name"]): d for d in documents}


def _decoded(secret: dict[str, Any]) -> dict[str, bytes]:
    return {key: base64.b64decode(value) for key, value in secret["data"].items()}


def test_the_secrets_hold_what_the_manifests_read(bundle: Path) -> None:
    documents = _documents(bundle)
    for document in documents.values():
        assert document["metadata"]["namespace"] == "stockade"

    # The verifier: its init container copies these files of the Secret it mounts.
    verifier = _find(_manifest("10-verifier.yaml"), "Deployment", "stockade-verifier")
    pod = verifier["spec"]["template"]["spec"]
    (keys_volume,) = [v for v in pod["volumes"] if v["name"] == "keys"]
    (copy,) = [c for c in pod["initContainers"] if c["name"] == "keys"]
    script = " ".join(copy["command"])
    match = re.search(r"for f in (.*?); do", script.replace("\\\n", " "), re.S)
    assert match is not None
    copied = set(match.group(1).split())
    keys = _decoded(documents[("Secret", keys_volume["secret"]["secretName"])])
    assert set(keys) == copied
    for name, content in keys.items():
        assert content == (bundle / name).read_bytes(), name
    assert "tls-ca-key.pem" not in keys  # the TLS CA key stays with the operator
    args = pod["containers"][0]["args"]
    assert "--tls-cert=/var/lib/stockade/keys/tls-server.pem" in args

    # The webhook: a kubernetes.io/tls Secret for --tls-cert/--tls-key; the reader token.
    webhook_manifests = _manifest("40-webhook.yaml")
    webhook = _find(webhook_manifests, "Deployment", "stockade-webhook")["spec"]["template"]
    volumes = {v["name"]: v for v in webhook["spec"]["volumes"]}
    tls = documents[("Secret", volumes["tls"]["secret"]["secretName"])]
    assert tls["type"] == "kubernetes.io/tls"
    assert _decoded(tls) == {
        "tls.crt": (bundle / "webhook-tls.pem").read_bytes(),
        "tls.key": (bundle / "webhook-tls-key.pem").read_bytes(),
    }
    reader = _decoded(documents[("Secret", volumes["verifier-token"]["secret"]["secretName"])])
    assert reader == {"token": (bundle / "reader-token").read_bytes()}
    verifier_ca = documents[("ConfigMap", volumes["verifier-ca"]["configMap"]["name"])]
    assert verifier_ca["data"] == {
        "ca.pem": (bundle / "tls-ca.pem").read_text(),
        "verifier-key.pub.pem": (bundle / "verifier-key.pub.pem").read_text(),
    }
    cluster_ca = documents[("ConfigMap", "stockade-cluster-ca")]
    assert cluster_ca["data"] == {"ca.pem": (bundle / "cluster-ca.pem").read_text()}


def test_init_refuses_to_replace_anything(bundle: Path, tmp_path: Path) -> None:
    before = {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()}
    with pytest.raises(ConfigurationError, match="refusing to replace"):
        _run_init("--out", str(bundle))
    assert {p: p.read_bytes() for p in bundle.rglob("*") if p.is_file()} == before

    # One file of its own already there: nothing at all is made.
    out = tmp_path / "partial"
    out.mkdir()
    (out / "webhook-ca-bundle.yaml").write_text("mine\n")
    with pytest.raises(ConfigurationError, match="refusing to replace"):
        _run_init("--out", str(out))
    assert [p.name for p in out.iterdir()] == ["webhook-ca-bundle.yaml"]
    assert (out / "webhook-ca-bundle.yaml").read_text() == "mine\n"


def test_names_that_are_not_kubernetes_names_are_refused(tmp_path: Path) -> None:
    for args in (
        ("--service-name", "Stockade"),
        ("--service-name", "a.b"),
        ("--namespace", "-x"),
        ("--cluster-domain", "bad domain"),
    ):
        with pytest.raises(ConfigurationError):
            _run_init("--out", str(tmp_path / "x"), *args)
    assert not (tmp_path / "x").exists()


def test_a_webhook_with_its_own_ca_gets_that_ca_as_its_bundle(tmp_path: Path) -> None:
    from stockade.verifier.tls import write_new_ca

    own_ca = tmp_path / "webhook-ca.pem"
    write_new_ca(own_ca, tmp_path / "webhook-ca-key.pem")
    code, output = _run_init("--out", str(tmp_path / "b"), "--webhook-ca", str(own_ca))
    assert code == 0, output
    (patch,) = [yaml.safe_load((tmp_path / "b" / "webhook-ca-bundle.yaml").read_text())]
    assert base64.b64decode(patch[1]["value"]) == own_ca.read_bytes()
    assert not (tmp_path / "b" / "webhook-tls.pem").exists()
    assert ("Secret", "stockade-webhook-tls") not in _documents(tmp_path / "b")


# -- the overlay with the patch, rendered by every kubectl --------------------------------------


@pytest.mark.tools
def test_an_overlay_with_the_patch_renders_alike_validates_and_carries_the_ca_bundle(
    bundle: Path, tmp_path: Path
) -> None:
    from kube.test_kustomize import by_identity, kubectls, validate

    found = kubectls()
    if not found:
        pytest.skip("no kubectl on this machine")
    # The production overlay, copied, with the patch added as the command says to.
    overlay = tmp_path / "overlay"
    shutil.copytree(PRODUCTION, overlay)
    kustomization = yaml.safe_load((overlay / "kustomization.yaml").read_text())
    kustomization["bases"] = [os.path.relpath(BASE, overlay)]  # v2.0.3: no absolute bases
    shutil.copy(bundle / "webhook-ca-bundle.yaml", overlay / "patches")
    kustomization["patchesJson6902"].append(
        {"target": service_bundle.PATCH_TARGET, "path": "patches/webhook-ca-bundle.yaml"}
    )
    (overlay / "kustomization.yaml").write_text(yaml.safe_dump(kustomization))

    rendered = []
    for kubectl in found:
        answer = subprocess.run(
            [kubectl.path, "kustomize", str(overlay)],
            check=False, capture_output=True, text=True, timeout=120,
        )  # fmt: skip
        assert answer.returncode == 0, (str(kubectl), answer.stderr)
        rendered.append(tuple(d for d in yaml.safe_load_all(answer.stdout) if d))
    first, *others = rendered
    for other in others:
        assert by_identity(other) == by_identity(first)
    for document in first:
        validate(document)
    (configuration,) = [d for d in first if d["kind"] == "ValidatingWebhookConfiguration"]
    (hook,) = configuration["webhooks"]
    ca_pem = base64.b64decode(hook["clientConfig"]["caBundle"])
    assert ca_pem == (bundle / "tls-ca.pem").read_bytes()
    # The API server would trust the webhook's certificate under that bundle.
    _cert(bundle / "webhook-tls.pem").verify_directly_issued_by(
        x509.load_pem_x509_certificate(ca_pem)
    )
    service = hook["clientConfig"]["service"]
    assert f"{service['name']}.{service['namespace']}.svc" in _dns_names(
        _cert(bundle / "webhook-tls.pem")
    )
    # The generated Secrets and ConfigMaps validate strictly too.
    for document in _documents(bundle).values():
        validate(document)


# -- a real verifier from the output ---------------------------------------------------------


@pytest.fixture
def served(bundle: Path, tmp_path: Path) -> Iterator[tuple[str, int]]:
    port = free_port()
    data = tmp_path / "data"
    log = (tmp_path / "serve.log").open("wb")
    process = subprocess.Popen(
        stockade_command(
            "verifier", "serve", "--data-dir", data, "--port", port,
            "--keys-dir", bundle, "--tls-cert", bundle / "tls-server.pem",
            "--tls-key", bundle / "tls-server-key.pem",
        ),
        stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    log.close()
    try:
        yield "stockade-verifier.stockade.svc", port
    finally:
        process.terminate()
        try:
            process.wait(15)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        assert "Traceback" not in (tmp_path / "serve.log").read_text()


def _get(bundle: Path, port: int, server_name: str) -> httpx.Response:
    """GET /v1/health at 127.0.0.1 (where the Service name resolves to here), sending and
    checking ``server_name`` in TLS, trusting only the bundle's TLS CA."""
    context = ssl.create_default_context(cafile=str(bundle / "tls-ca.pem"))
    with httpx.Client(verify=context, timeout=5, trust_env=False) as client:
        return client.get(
            f"https://127.0.0.1:{port}/v1/health", extensions={"sni_hostname": server_name}
        )


@pytest.mark.tools
def test_a_verifier_served_from_the_output_answers_under_the_service_name(
    bundle: Path, served: tuple[str, int]
) -> None:
    name, port = served
    deadline = time.monotonic() + 60
    while True:
        try:
            answer = _get(bundle, port, name)
            break
        except httpx.ConnectError as error:
            if isinstance(error.__cause__, ssl.SSLCertVerificationError):
                raise
            assert time.monotonic() < deadline, "verifier not up"
            time.sleep(0.2)
    assert answer.status_code == 200
    for other in ("verifier.stockade.svc.cluster.local", "verifier"):
        assert _get(bundle, port, other).status_code == 200
    # A name the certificate does not hold is refused by the client's hostname check.
    with pytest.raises(httpx.ConnectError, match=r"(?i)certificate|hostname"):
        _get(bundle, port, "stockade-webhook.stockade.svc")
