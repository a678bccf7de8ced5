"""``stockade kube controller`` and ``stockade kube approve-csrs``: the node controller and the
kubelet CSR approver (docs/kubernetes.md). Both need the ``kubernetes`` client
(``pip install 'stockade[kube]'``)."""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import importlib
import inspect
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, get_type_hints

import typer

from stockade.cli.daemon_options import (
    ConfigOption,
    LogFormatOption,
    LogLevelOption,
    ProbeAddressOption,
    daemon_context,
)
from stockade.cli.options import VerifierKeyOption, pinned_keys
from stockade.errors import InputError
from stockade.logs import LogFormat, LogLevel, configure_logging, fields

if TYPE_CHECKING:
    from stockade.kube.leader import LeaderElector
    from stockade.kube.supervision import Supervision

log = logging.getLogger("stockade.kube")
CONTROLLER_ENVIRONMENT = "STOCKADE_KUBE_CONTROLLER"
APPROVER_ENVIRONMENT = "STOCKADE_KUBE_APPROVE_CSRS"

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
        help="kubeconfig file [default: $KUBECONFIG, else the in-cluster service account]",
        show_default=False,
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
    """An ``ApiClient`` from ``kubeconfig`` (else ``$KUBECONFIG``), or from the pod's service
    account."""
    try:
        from kubernetes import client

        config: Any = importlib.import_module("kubernetes.config")  # untyped loaders
    except ImportError:
        raise InputError(
            "the kubernetes client is not installed: pip install 'stockade[kube]'"
        ) from None
    configuration = client.Configuration()
    if kubeconfig is None and os.environ.get("KUBECONFIG"):
        kubeconfig = Path(os.environ["KUBECONFIG"])
    try:
        if kubeconfig is not None:
            config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
        else:
            config.load_incluster_config(client_configuration=configuration)
    except (config.ConfigException, OSError) as error:
        raise InputError(f"cannot load the Kubernetes configuration: {error}") from None
    return client.ApiClient(configuration)


LeaderElectOption = Annotated[
    bool | None,
    typer.Option(
        "--leader-elect/--no-leader-elect",
        help="act only while holding a coordination.k8s.io Lease, so that of several replicas "
        "one acts [default: on, off with --once]",
        show_default=False,
    ),
]
LeaseNameOption = Annotated[str, typer.Option("--lease-name", help="the Lease's name")]
LeaseNamespaceOption = Annotated[
    str | None,
    typer.Option(
        "--lease-namespace",
        help="the Lease's namespace [default: the pod's namespace, else stockade-system]",
        show_default=False,
    ),
]
IdentityOption = Annotated[
    str | None,
    typer.Option(
        "--identity",
        help="this replica's name in the Lease [default: host name + random suffix]",
        show_default=False,
    ),
]
LeaseDurationOption = Annotated[
    float,
    typer.Option(
        "--lease-duration",
        help="seconds a Lease must stay unchanged (by the local clock) before another "
        "replica may take it",
    ),
]
RenewDeadlineOption = Annotated[
    float,
    typer.Option(
        "--renew-deadline",
        help="seconds the leader keeps acting without a successful renewal; then it stops",
    ),
]
RetryPeriodOption = Annotated[
    float, typer.Option("--retry-period", help="seconds between renewals and attempts")
]


@dataclass(frozen=True, kw_only=True)
class ElectionOptions:
    """The leader-election options ``controller`` and ``approve-csrs`` share, in the order
    of their flags; each field's annotation is its option, its default the option's
    (``lease_name``'s is each command's own: :func:`_election_options`)."""

    leader_elect: LeaderElectOption = None
    lease_name: LeaseNameOption
    lease_namespace: LeaseNamespaceOption = None
    identity: IdentityOption = None
    lease_duration: LeaseDurationOption = 15.0
    renew_deadline: RenewDeadlineOption = 10.0
    retry_period: RetryPeriodOption = 2.0

    def elect(self, once: bool) -> bool:
        """Whether to elect: as --leader-elect says, else unless --once."""
        return (not once) if self.leader_elect is None else self.leader_elect


def _election_options(lease_name: str) -> Callable[[Callable[..., None]], Callable[..., None]]:
    """A command's parameter ``election: ElectionOptions`` as the options of its fields, in
    its place (so the flags, environment variables and file keys keep their order), with
    ``lease_name`` the default Lease name; the command gets their values as one
    ``ElectionOptions``."""
    annotations = get_type_hints(ElectionOptions, include_extras=True)
    options = [
        inspect.Parameter(
            field.name,
            inspect.Parameter.KEYWORD_ONLY,
            default=lease_name if field.name == "lease_name" else field.default,
            annotation=annotations[field.name],
        )
        for field in dataclasses.fields(ElectionOptions)
    ]

    def decorate(command: Callable[..., None]) -> Callable[..., None]:
        signature = inspect.signature(command, eval_str=True)
        parameters = list(signature.parameters.values())
        at = [parameter.name for parameter in parameters].index("election")
        parameters[at : at + 1] = options

        @functools.wraps(command)
        def with_election(*args: Any, **kwargs: Any) -> None:
            values = {option.name: kwargs.pop(option.name) for option in options}
            command(*args, election=ElectionOptions(**values), **kwargs)

        shown = signature.replace(parameters=parameters)
        with_election.__signature__ = shown  # type: ignore[attr-defined]
        with_election.__annotations__ = {
            **{parameter.name: parameter.annotation for parameter in parameters},
            "return": signature.return_annotation,
        }
        return with_election

    return decorate


def _stop_on_signals(supervision: Supervision) -> threading.Event:
    stop = threading.Event()

    def handler(*_: object) -> None:
        stop.set()
        supervision.wake()

    for number in (signal.SIGTERM, signal.SIGINT):
        signal.signal(number, handler)
    return stop


def _supervision(
    daemon: str, api_client: Any, election: ElectionOptions, *, once: bool, stale_after: float
) -> Supervision:
    from kubernetes import client

    from stockade.kube.leader import LeaderElector, LeaseConfig, default_identity, default_namespace
    from stockade.kube.supervision import ControllerMetrics, Supervision
    from stockade.probes import Health

    supervision = Supervision(
        health=Health(stale_after=stale_after), metrics=ControllerMetrics(daemon)
    )
    if election.elect(once):
        config = LeaseConfig(
            name=election.lease_name,
            namespace=election.lease_namespace or default_namespace(),
            identity=election.identity or default_identity(),
            lease_duration=election.lease_duration,
            renew_deadline=election.renew_deadline,
            retry_period=election.retry_period,
        )
        supervision.elector = LeaderElector(
            client.CoordinationV1Api(api_client),
            config,
            on_change=supervision.leadership_changed,
        )
        supervision.leadership_changed(False)
    return supervision


def _once(supervision: Supervision, round_: Callable[[], None]) -> None:
    """One round; with an election, only after acquiring the Lease (waiting at most one lease
    duration), releasing it after."""
    elector = supervision.elector
    if elector is None:
        round_()
        return
    deadline = time.monotonic() + elector.config.lease_duration + 2 * elector.config.retry_period
    while not elector.step():
        if time.monotonic() > deadline:
            typer.echo(
                f"not acting: the lease {supervision.lease} is held by "
                f"{elector.holder or 'another replica'}",
                err=True,
            )
            raise typer.Exit(1)
        time.sleep(elector.config.retry_period)
    try:
        round_()
    finally:
        with supervision.acting:
            elector.release()


@contextlib.contextmanager
def _daemon(
    supervision: Supervision, probe_address: str | None, what: str
) -> Iterator[threading.Event]:
    """Probes (if asked), the election thread, the stop signals; on leaving, the election
    releases the Lease once no write is in flight."""
    from stockade.probes import parse_address, serve_probes

    address = parse_address(probe_address) if probe_address is not None else None
    stop = _stop_on_signals(supervision)
    with contextlib.ExitStack() as stack:
        if address is not None and supervision.health is not None and supervision.metrics:
            serve_probes(stack, address, supervision.health, supervision.metrics.registry)
        elector: LeaderElector | None = supervision.elector
        log.info(
            f"{what} started",
            extra=fields(
                lease=supervision.lease or None,
                identity=elector.config.identity if elector else None,
                leader_elect=elector is not None,
                probes=f"http://{probe_address}" if probe_address else None,
            ),
        )
        if elector is not None:
            thread = elector.start(stop, supervision.acting)
            stack.callback(thread.join, 10.0)
        stack.callback(stop.set)  # runs first: the election stops and releases
        yield stop
    log.info(f"{what} stopped", extra=fields(lease=supervision.lease or None))


def _stale_after(interval: float) -> float:
    from stockade.probes import DEFAULT_STALE_AFTER

    return max(DEFAULT_STALE_AFTER, 3 * interval + 30)


@app.command("controller", context_settings=daemon_context(CONTROLLER_ENVIRONMENT))
@_election_options(lease_name="stockade-node-controller")
def controller(
    config_file: ConfigOption = None,
    *,
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
    election: ElectionOptions,
    probe_address: ProbeAddressOption = None,
    log_format: LogFormatOption = LogFormat.TEXT,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Label, taint and annotate every Node from the verifier's view (fail closed). Reading
    the view needs a reader token.

    Several replicas elect one leader with a Lease (--leader-elect, on unless --once): only
    the replica certain it holds the Lease patches Nodes. With --probe-address HOST:PORT:
    GET /livez (the loop runs), /readyz (the last round reached the verifier and the API
    server; leader or standby) and /metrics."""
    from kubernetes import client

    from stockade.kube.controller import NodeController, VerifierTrustView
    from stockade.verifier_client import VerifierClient

    configure_logging(log_format, log_level)
    if grace < 0 or interval <= 0:
        raise InputError("--grace must be >= 0 and --interval > 0")
    keys = pinned_keys(verifier_key)
    verifier_client = VerifierClient.from_options(verifier, ca, token_file)
    api_client = _kube_client(kubeconfig)
    supervision = _supervision(
        "controller", api_client, election, once=once, stale_after=_stale_after(interval)
    )
    nodes = NodeController(
        client.CoreV1Api(api_client),
        VerifierTrustView(verifier_client.request, keys),
        grace=timedelta(seconds=grace),
        supervision=supervision,
    )
    if once:

        def one_round() -> None:
            for patch in nodes.sync():
                print(f"{patch.node}: {'; '.join(patch.changes) or 'updated'} ({patch.reason})")

        _once(supervision, one_round)
        return
    with _daemon(supervision, probe_address, "node controller") as stop:
        nodes.run(interval, stop, watch=watch)


@app.command("approve-csrs", context_settings=daemon_context(APPROVER_ENVIRONMENT))
@_election_options(lease_name="stockade-csr-approver")
def approve_csrs(
    config_file: ConfigOption = None,
    *,
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
    election: ElectionOptions,
    probe_address: ProbeAddressOption = None,
    log_format: LogFormatOption = LogFormat.TEXT,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Approve kubelet CSRs of trusted nodes for their TPM-resident keys; deny the rest.
    Reading the verifier's node list needs a reader token.

    Several replicas elect one leader with a Lease (--leader-elect, on unless --once): only
    the replica certain it holds the Lease records a decision. With --probe-address
    HOST:PORT: GET /livez, /readyz (the last round reached the verifier and the API server;
    leader or standby) and /metrics."""
    from cryptography import x509
    from kubernetes import client

    from stockade.kube.csr import CsrApprover
    from stockade.kube.trust import verifier_trust_source

    configure_logging(log_format, log_level)
    try:
        ca_certificate = x509.load_pem_x509_certificate(cluster_ca.read_bytes())
    except (OSError, ValueError) as error:
        raise InputError(f"cannot read the cluster CA '{cluster_ca}': {error}") from None
    if interval <= 0:
        raise InputError("--interval must be > 0")
    api_client = _kube_client(kubeconfig)
    supervision = _supervision(
        "approver", api_client, election, once=once, stale_after=_stale_after(interval)
    )
    approver = CsrApprover(
        client.CertificatesV1Api(api_client),
        client.CoreV1Api(api_client),
        verifier_trust_source(
            verifier, ca, pinned_keys(verifier_key), ttl=cache_seconds, token_file=token_file
        ),
        ca_certificate,
        supervision=supervision,
    )
    if once:

        def one_round() -> None:
            for name, decision in approver.sync():
                print(f"{name}: {decision.action} ({decision.message})")

        _once(supervision, one_round)
        return
    with _daemon(supervision, probe_address, "CSR approver") as stop:
        approver.run(interval, stop)
