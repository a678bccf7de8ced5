"""``stockade kube controller`` and ``stockade kube approve-csrs``: the node controller and the
kubelet CSR approver (docs/kubernetes.md). Both need the ``kubernetes`` client
(``pip install 'stockade[kube]'``)."""

from __future__ import annotations

import importlib
import logging
import signal
import threading
from datetime import timedelta
from pathlib import Path
from typing import Annotated, Any

import typer

from stockade.cli.options import VerifierKeyOption, pinned_keys
from stockade.errors import InputError

app = typer.Typer(no_args_is_help=True, help="Kubernetes: node controller, kubelet CSR approver.")

VerifierOption = Annotated[
    str, typer.Option("--verifier", envvar="STOCKADE_VERIFIER", help="verifier base URL")
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", envvar="STOCKADE_CA", help="CA certificate of the verifier's TLS"),
]
KubeconfigOption = Annotated[
    Path | None,
    typer.Option(
        "--kubeconfig",
        envvar="KUBECONFIG",
        help="kubeconfig file (default: the in-cluster service account)",
    ),
]
OnceOption = Annotated[bool, typer.Option("--once", help="one round, then exit")]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="the verifier's reader token file [default: $STOCKADE_OPERATOR_TOKEN]",
    ),
]


def _kube_client(kubeconfig: Path | None) -> Any:
    """An ``ApiClient`` from ``kubeconfig``, or from the pod's service account."""
    try:
        from kubernetes import client

        config: Any = importlib.import_module("kubernetes.config")  # untyped loaders
    except ImportError:
        raise InputError(
            "the kubernetes client is not installed: pip install 'stockade[kube]'"
        ) from None
    configuration = client.Configuration()
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as error:
        raise InputError(f"cannot load the Kubernetes configuration: {error}") from None
    return client.ApiClient(configuration)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()
    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, lambda *_: stop.set())
    return stop


def _logging() -> None:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(message)s")


@app.command("controller")
def controller(
    verifier: VerifierOption,
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    verifier_key: VerifierKeyOption = None,
    kubeconfig: KubeconfigOption = None,
    grace: Annotated[
        float,
        typer.Option(
            "--grace",
            help="seconds a node stays untrusted before the NoExecute taint evicts its pods",
        ),
    ] = 300.0,
    interval: Annotated[
        float, typer.Option("--interval", help="seconds between full resyncs")
    ] = 10.0,
    watch: Annotated[
        bool, typer.Option("--watch/--no-watch", help="react to Node events between resyncs")
    ] = True,
    once: OnceOption = False,
) -> None:
    """Label, taint and annotate every Node from the verifier's view (fail closed). Reading
    the view needs a reader token."""
    from kubernetes import client

    from stockade.kube.controller import NodeController, VerifierTrustView
    from stockade.verifier_client import VerifierClient

    if grace < 0 or interval <= 0:
        raise InputError("--grace must be >= 0 and --interval > 0")
    keys = pinned_keys(verifier_key)
    _logging()
    verifier_client = VerifierClient.from_options(verifier, ca, token_file)
    nodes = NodeController(
        client.CoreV1Api(_kube_client(kubeconfig)),
        VerifierTrustView(verifier_client.request, keys),
        grace=timedelta(seconds=grace),
    )
    if once:
        for patch in nodes.sync():
            print(f"{patch.node}: {'; '.join(patch.changes) or 'updated'} ({patch.reason})")
        return
    nodes.run(interval, _stop_on_signals(), watch=watch)


@app.command("approve-csrs")
def approve_csrs(
    verifier: VerifierOption,
    cluster_ca: Annotated[
        Path,
        typer.Option(
            "--cluster-ca", help="the cluster CA certificate (the verifier's cluster-ca/ca.pem)"
        ),
    ],
    ca: CaOption = None,
    token_file: TokenFileOption = None,
    verifier_key: VerifierKeyOption = None,
    kubeconfig: KubeconfigOption = None,
    interval: Annotated[float, typer.Option("--interval", help="seconds between rounds")] = 5.0,
    cache_seconds: Annotated[
        float, typer.Option("--cache-seconds", help="how long one verifier node list is used")
    ] = 1.0,
    once: OnceOption = False,
) -> None:
    """Approve kubelet CSRs of trusted nodes for their TPM-resident keys; deny the rest.
    Reading the verifier's node list needs a reader token."""
    from cryptography import x509
    from kubernetes import client

    from stockade.kube.csr import CsrApprover
    from stockade.kube.trust import verifier_trust_source

    try:
        ca_certificate = x509.load_pem_x509_certificate(cluster_ca.read_bytes())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the cluster CA '{cluster_ca}': {error}") from None
    if interval <= 0:
        raise InputError("--interval must be > 0")
    _logging()
    api_client = _kube_client(kubeconfig)
    approver = CsrApprover(
        client.CertificatesV1Api(api_client),
        client.CoreV1Api(api_client),
        verifier_trust_source(
            verifier, ca, pinned_keys(verifier_key), ttl=cache_seconds, token_file=token_file
        ),
        ca_certificate,
    )
    if once:
        for name, decision in approver.sync():
            print(f"{name}: {decision.action} ({decision.message})")
        return
    approver.run(interval, _stop_on_signals())
