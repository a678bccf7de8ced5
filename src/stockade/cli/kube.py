"""``stockade kube serve``: the validating admission webhook and the scheduler extender
over HTTPS (docs/kubernetes.md)."""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._input import read_file
from stockade.cli.daemon_options import (
    ConfigOption,
    LogFormatOption,
    LogLevelOption,
    daemon_context,
)
from stockade.cli.options import VerifierKeyOption, pinned_keys
from stockade.errors import InputError
from stockade.logs import LogFormat, LogLevel, configure_logging

app = typer.Typer(no_args_is_help=True, help="Kubernetes: admission webhook, scheduler extender.")


@app.callback()
def kube() -> None:
    """Kubernetes: no workload lands on a node the verifier does not trust now."""


SERVE_ENVIRONMENT = "STOCKADE_KUBE_SERVE"


@app.command("serve", context_settings=daemon_context(SERVE_ENVIRONMENT))
def serve(
    config_file: ConfigOption = None,
    *,
    verifier: Annotated[
        str, typer.Option("--verifier", envvar="STOCKADE_VERIFIER", help="verifier URL")
    ],
    tls_cert: Annotated[Path, typer.Option("--tls-cert", help="server certificate (PEM)")],
    tls_key: Annotated[Path, typer.Option("--tls-key", help="server private key (PEM)")],
    ca: Annotated[
        Path | None,
        typer.Option(
            "--ca", envvar="STOCKADE_CA", help="CA certificate the verifier's TLS is pinned to"
        ),
    ] = None,
    image_store: Annotated[
        Path | None,
        typer.Option("--image-store", help="directory of OCI layouts holding signed images"),
    ] = None,
    trust_policy: Annotated[
        Path | None, typer.Option("--trust-policy", help="org-signed image trust policy")
    ] = None,
    org_pub: Annotated[
        list[Path] | None,
        typer.Option("--org-pub", help="org public key the trust policy is signed by; repeatable"),
    ] = None,
    exempt_namespace: Annotated[
        list[str] | None,
        typer.Option("--exempt-namespace", help="namespace allowed unjudged; repeatable"),
    ] = None,
    exempt_user: Annotated[
        list[str] | None,
        typer.Option(
            "--exempt-user",
            help="user allowed unjudged (system:serviceaccount:NS:NAME); repeatable",
        ),
    ] = None,
    client_ca: Annotated[
        Path | None,
        typer.Option("--client-ca", help="require client certificates issued by this CA"),
    ] = None,
    host: Annotated[str, typer.Option("--host", help="address to listen on")] = "127.0.0.1",
    port: Annotated[int, typer.Option("--port", help="TCP port")] = 8443,
    cache_seconds: Annotated[
        float, typer.Option("--cache-seconds", help="how long one verifier node list is used")
    ] = 1.0,
    token_file: Annotated[
        Path | None,
        typer.Option(
            "--token-file",
            help="the verifier's reader token file [default: $STOCKADE_OPERATOR_TOKEN]",
        ),
    ] = None,
    verifier_key: VerifierKeyOption = None,
    log_format: LogFormatOption = LogFormat.TEXT,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Serve POST /validate (AdmissionReview v1), POST /filter (extender), GET /livez,
    /readyz (the verifier's trust view is fresh and the trust policy loaded), /metrics and
    /healthz. Reading the verifier's node list needs a reader token. Every setting may come
    from --config FILE (each key a flag without its dashes; flags and $STOCKADE_KUBE_SERVE_*
    win)."""
    from datetime import UTC, datetime

    from stockade.images.policy import load_trust_policy
    from stockade.kube.admission import AdmissionPolicy, Exemptions, SignedImageStore
    from stockade.kube.server import ServerTls, create_app, serve_app
    from stockade.kube.trust import verifier_trust_source
    from stockade.release.keys import load_verifying_key

    configure_logging(log_format, log_level)
    files = [(tls_cert, "--tls-cert"), (tls_key, "--tls-key")]
    if client_ca is not None:
        files.append((client_ca, "--client-ca"))
    for path, what in files:
        if not path.is_file():
            raise InputError(f"{what} '{path}' is not a file")
    images = None
    image_options = (image_store, trust_policy, org_pub)
    if any(option for option in image_options):
        if image_store is None or trust_policy is None or not org_pub:
            raise InputError("--image-store, --trust-policy and --org-pub go together")
        if not image_store.is_dir():
            raise InputError(f"--image-store '{image_store}' is not a directory")
        keys = [load_verifying_key(read_file(p, "org public key"), f"key '{p}'") for p in org_pub]
        policy_document = load_trust_policy(
            read_file(trust_policy, "trust policy"), keys, now=datetime.now(UTC)
        )
        images = SignedImageStore(image_store, policy_document)
    policy = AdmissionPolicy(
        trust=verifier_trust_source(
            verifier, ca, pinned_keys(verifier_key), ttl=cache_seconds, token_file=token_file
        ),
        images=images,
        exemptions=Exemptions(frozenset(exempt_namespace or ()), frozenset(exempt_user or ())),
    )
    shown = f"[{host}]" if ":" in host else host
    base = f"https://{shown}:{port}"
    image_rule = f"on, {image_store}" if images else "off"
    if log_format is LogFormat.TEXT:
        print(f"kube webhook:   {base}/validate", flush=True)
        print(f"kube extender:  {base}/filter", flush=True)
        print(f"image rule:     {image_rule}", flush=True)
        print(f"probes:         {base}/livez, /readyz, /metrics", flush=True)
    else:
        logging.getLogger("stockade.kube").info(
            "kube serve started",
            extra={
                "webhook": f"{base}/validate",
                "extender": f"{base}/filter",
                "image_rule": image_rule,
            },
        )
    serve_app(create_app(policy), host, port, ServerTls(tls_cert, tls_key, client_ca))


@app.command("node-csr")
def node_csr(
    name: Annotated[str, typer.Option("--name", help="this node's name (Kubernetes = Stockade)")],
    pki_dir: Annotated[
        Path, typer.Option("--pki-dir", help="node-key.pem and node.pem (stockade join)")
    ],
    tcti: Annotated[str | None, typer.Option("--tcti", help="TPM TCTI")] = None,
    tpm: Annotated[str | None, typer.Option("--tpm", help="a running development TPM")] = None,
    signer: Annotated[str, typer.Option("--signer", help="client or serving")] = "client",
    address: Annotated[
        list[str] | None,
        typer.Option("--address", help="serving: a DNS name or IP of this node (repeatable)"),
    ] = None,
) -> None:
    """Print a kubelet CertificateSigningRequest (YAML, for `kubectl create -f -`) whose key
    is this node's TPM-resident key, signed in the TPM, with its Stockade node certificate
    attached for `stockade kube approve-csrs`."""
    import yaml

    from stockade.agent.source import HARDWARE_TCTI, resolve_source
    from stockade.kube.node_csr import csr_manifest, tpm_signed_request

    if tcti is None:
        tcti = resolve_source(tpm_name=tpm).tcti if tpm else HARDWARE_TCTI
    certificate = read_file(pki_dir / "node.pem", "the node certificate")
    request = tpm_signed_request(pki_dir / "node-key.pem", tcti, name, tuple(address or ()))
    typer.echo(yaml.safe_dump(csr_manifest(request, certificate, name, signer), sort_keys=False))
