"""``stockade agent run``: the node agent (enroll, then attest continuously)."""

from __future__ import annotations

import logging
import signal
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

from stockade.cli.daemon_options import (
    ConfigOption,
    LogFormatOption,
    LogLevelOption,
    ProbeAddressOption,
    daemon_context,
)
from stockade.errors import InputError
from stockade.logs import LogFormat, LogLevel

if TYPE_CHECKING:
    from stockade.agent.oci_hook import HookSettings

app = typer.Typer(no_args_is_help=True, help="The node agent: enrollment and attestation.")

# The options every command acting as a node shares (agent run, join).
NodeNameOption = Annotated[str, typer.Option("--name", help="the node's name at the verifier")]
NodeVerifierOption = Annotated[
    str, typer.Option("--verifier", envvar="STOCKADE_VERIFIER", help="verifier base URL")
]
NodeCaOption = Annotated[
    Path | None,
    typer.Option("--ca", envvar="STOCKADE_CA", help="CA certificate of the verifier's TLS"),
]
TctiOption = Annotated[str | None, typer.Option("--tcti", help="TPM TCTI (needs --event-log)")]
DevTpmOption = Annotated[
    str | None, typer.Option("--tpm", help="a running development TPM by name")
]
EventLogOption = Annotated[Path | None, typer.Option("--event-log", help="boot event log")]
StateDirOption = Annotated[
    Path | None,
    typer.Option("--state-dir", help="AK and node id [default: <home>/agents/<name>]"),
]
VerifierKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--verifier-key",
        envvar="STOCKADE_VERIFIER_KEY",
        help="the verifier's statement key (its <data dir>/keys/verifier-key.pub.pem, or the "
        "JWK set of GET /v1/keys saved from a channel you trust): a released secret is "
        "accepted only under its signature. Pinned in the state directory (verifier-keys.pem); "
        "it must match a key pinned before. Without it the agent pins the key the verifier "
        "serves at enrollment (trust on first use)",
    ),
]


RUN_ENVIRONMENT = "STOCKADE_AGENT_RUN"


@app.command("run", context_settings=daemon_context(RUN_ENVIRONMENT))
def run(
    config_file: ConfigOption = None,
    *,
    name: NodeNameOption,
    verifier: NodeVerifierOption,
    ca: NodeCaOption = None,
    tcti: TctiOption = None,
    tpm: DevTpmOption = None,
    event_log: EventLogOption = None,
    state_dir: StateDirOption = None,
    interval: Annotated[float, typer.Option("--interval", help="seconds between attestations")] = (
        30.0
    ),
    jitter: Annotated[float, typer.Option("--jitter", help="+/- seconds of random jitter")] = 3.0,
    max_backoff: Annotated[
        float, typer.Option("--max-backoff", help="cap of the retry backoff, seconds")
    ] = 30.0,
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Stockade home [default: $STOCKADE_HOME or ~/.stockade]"),
    ] = None,
    certificates: Annotated[
        bool,
        typer.Option(
            "--certificates/--no-certificates",
            help="renew the TPM-resident node certificate after every affirming result",
        ),
    ] = False,
    pki_dir: Annotated[
        Path | None,
        typer.Option("--pki-dir", help="node.pem, node-key.pem, ca.pem [default: <state>/pki]"),
    ] = None,
    secret: Annotated[
        list[str] | None,
        typer.Option("--secret", help="a secret to fetch, sealed to this TPM (repeatable)"),
    ] = None,
    secrets_dir: Annotated[
        Path | None,
        typer.Option("--secrets-dir", help="tmpfs directory to write unsealed secrets (0600)"),
    ] = None,
    secrets_socket: Annotated[
        Path | None,
        typer.Option(
            "--secrets-socket",
            help="Unix socket (0600) serving the secrets, unsealed by the TPM on every read",
        ),
    ] = None,
    verifier_key: VerifierKeyOption = None,
    hook_socket: Annotated[
        Path | None,
        typer.Option(
            "--hook-socket",
            help="admit containers for the OCI hook's client on this Unix socket (0600), in "
            "this process, measuring into this agent's TPM and execution log "
            "(docs/oci-hook.md)",
        ),
    ] = None,
    hook_option: Annotated[
        list[str] | None,
        typer.Option(
            "--hook-option",
            help="a stockade-oci-hook setting for the admissions, as NAME=VALUE (repeatable): "
            "policy, org-key, layout-cache, containers-storage, containers-runroot, "
            "containerd-state, containerd-address; unset ones come from the environment "
            "(STOCKADE_TRUST_POLICY, ...) or the defaults",
        ),
    ] = None,
    ak_from_nv: Annotated[
        bool,
        typer.Option(
            "--ak-from-nv",
            help="enroll by the cloud vTPM's AK certificate (GCE: the AK template and "
            "certificate in NV 0x01c10000-0x01c10003) instead of the EK certificate; used "
            "anyway when the TPM has those but no EK certificate",
        ),
    ] = False,
    release_envelope: Annotated[
        Path | None,
        typer.Option(
            "--release-envelope",
            help="the booted release's DSSE envelope (manifest.dsse.json of `stockade release "
            "build`; on a node, beside its kernel: /boot/efi/EFI/stockade/manifest.dsse.json), "
            "sent with the evidence: a release the policy does not list is accepted by signer "
            "and minimum security version",
        ),
    ] = None,
    probe_address: ProbeAddressOption = None,
    log_format: LogFormatOption = LogFormat.TEXT,
    log_level: LogLevelOption = LogLevel.INFO,
) -> None:
    """Enroll this node's TPM (once; the AK is kept) and attest every interval until SIGTERM.

    A secret is kept only with the verifier's signed release statement for it, verified under
    the pinned verifier key. With --verifier-key the operator pins that key. Without it the
    agent trusts on first use: at enrollment it saves the key served at GET /v1/keys to
    <state dir>/verifier-keys.pem, so whoever held the verifier's TLS channel then is trusted
    from then on. The pinned file is never replaced: a --verifier-key that differs is an
    error; to re-pin (the verifier's key really changed), remove the file.

    With --probe-address HOST:PORT: GET /livez (the loop is not stuck), /readyz (enrolled, and
    the last round was answered by the verifier, whatever its verdict) and /metrics
    (stockade.agent.metrics). Every setting may come from --config FILE (each key a flag
    without its dashes; flags and $STOCKADE_AGENT_RUN_* win)."""
    import contextlib

    from stockade.agent import Agent, AgentConfig, resolve_source
    from stockade.agent.metrics import AgentTelemetry, stale_after
    from stockade.home import stockade_home
    from stockade.logs import configure_logging
    from stockade.probes import parse_address, serve_probes

    configure_logging(log_format, log_level)
    address = parse_address(probe_address) if probe_address is not None else None
    source = resolve_source(tcti=tcti, tpm_name=tpm, event_log=event_log, home=home)
    hook_settings = _hook_settings(hook_option or [])
    agent = Agent(
        AgentConfig(
            verifier=verifier,
            ca=ca,
            name=name,
            source=source,
            state_dir=state_dir or (home or stockade_home()) / "agents" / name,
            interval=interval,
            jitter=jitter,
            max_backoff=max_backoff,
            certificates=certificates,
            pki_dir=pki_dir,
            secrets=tuple(secret or ()),
            secrets_dir=secrets_dir,
            secrets_socket=secrets_socket,
            verifier_key=verifier_key,
            hook_socket=hook_socket,
            hook_settings=hook_settings,
            ak_from_nv=ak_from_nv,
            release_envelope=release_envelope,
        ),
        telemetry=AgentTelemetry(stale_after(interval, jitter)),
    )

    def stop(signum: int, _frame: object) -> None:
        agent.stop.set()

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    with contextlib.ExitStack() as stack:
        if address is not None:
            telemetry = agent.telemetry
            serve_probes(stack, address, telemetry.health, telemetry.metrics.registry)
            logging.getLogger("stockade.agent").info(
                f"probes on http://{probe_address} (/livez, /readyz, /metrics)"
            )
        agent.run()


# The admission settings an agent may take; its TPM and execution log are its own.
_HOOK_OPTIONS = frozenset(
    {
        "--policy",
        "--org-key",
        "--layout-cache",
        "--containers-storage",
        "--containers-runroot",
        "--containerd-state",
        "--containerd-address",
    }
)


def _hook_settings(options: list[str]) -> HookSettings:
    import os

    from stockade.agent.oci_hook import HookRefused, parse_settings

    options = [o if o.startswith("--") else f"--{o}" for o in options]  # policy=... too
    for option in options:
        flag, eq, _value = option.partition("=")
        if flag not in _HOOK_OPTIONS or not eq:
            raise InputError(
                f"--hook-option {option!r}: expected FLAG=VALUE with FLAG one of "
                f"{', '.join(sorted(_HOOK_OPTIONS))}"
            )
    try:
        return parse_settings(options, os.environ)
    except HookRefused as error:
        raise InputError(f"--hook-option: {error}") from None
