"""``stockade verifier init``: everything a Kubernetes deployment of the verifier needs before
its first apply, made once in one directory (``stockade.verifier.service_bundle``)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.verifier.config import DEFAULT_LOG_ORIGIN


def init(
    out: Annotated[
        Path,
        typer.Option("--out", help="directory to make the keys, certificates and manifests in"),
    ],
    service_name: Annotated[
        list[str] | None,
        typer.Option(
            "--service-name",
            help="the verifier's Service (repeatable): its certificate names NAME, NAME.NS, "
            "NAME.NS.svc and NAME.NS.svc.<cluster domain> [default: stockade-verifier]",
        ),
    ] = None,
    namespace: Annotated[
        str, typer.Option("--namespace", help="the namespace of the Services and Secrets")
    ] = "stockade",
    webhook_service: Annotated[
        list[str] | None,
        typer.Option(
            "--webhook-service",
            help="the admission webhook's Service (repeatable), named the same way by the "
            "certificate of the Secret stockade-webhook-tls [default: stockade-webhook]",
        ),
    ] = None,
    webhook_ca: Annotated[
        Path | None,
        typer.Option(
            "--webhook-ca",
            help="the webhook serves with a certificate of this CA (PEM) instead: no "
            "stockade-webhook-tls is made, and the caBundle is this CA",
        ),
    ] = None,
    cluster_domain: Annotated[
        str, typer.Option("--cluster-domain", help="the cluster's DNS domain")
    ] = "cluster.local",
    log_origin: Annotated[
        str,
        typer.Option("--log-origin", help="the transparency log's origin (its key's name)"),
    ] = DEFAULT_LOG_ORIGIN,
) -> None:
    """Make the shared keys, the Services' TLS certificates (from the shared TLS CA), the
    Secrets and ConfigMaps the manifests name and the webhook's caBundle patch, in --out.
    Refuses to replace any file."""
    from stockade.verifier.service_bundle import (
        CONFIGMAPS_FILE,
        MANIFESTS,
        PATCH_TARGET,
        SECRETS_FILE,
        write_bundle,
    )

    written = write_bundle(
        out,
        service_name or ["stockade-verifier"],
        namespace,
        webhook_services=webhook_service or ["stockade-webhook"],
        webhook_ca=webhook_ca,
        cluster_domain=cluster_domain,
        log_origin=log_origin,
    )
    for path in written.files:
        typer.echo(f"wrote {path}")
    typer.echo(f"verifier certificate names: {', '.join(written.verifier_names)}")
    if written.webhook_names:
        typer.echo(f"webhook certificate names:  {', '.join(written.webhook_names)}")
    target = ", ".join(f"{key}: {value}" for key, value in PATCH_TARGET.items())
    typer.echo(
        f"next: kubectl apply -f {out / MANIFESTS / SECRETS_FILE} -f "
        f"{out / MANIFESTS / CONFIGMAPS_FILE} (then remove {SECRETS_FILE}: it holds every "
        f"private key); keep {out / 'tls-ca-key.pem'} off the cluster; copy {written.patch} "
        "into your overlay's patches/ and add to its patchesJson6902:\n"
        f"  - target: {{{target}}}\n"
        f"    path: patches/{written.patch.name}"
    )
