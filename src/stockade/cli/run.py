"""``stockade run LAYOUT:TAG [-- CMD...]``: run a signed image with runc, the Stockade hook
verifying and measuring it before it starts. Exits with the container's status; exit 1 with
the hook's one-line reason when the container was refused (it never ran)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.agent.oci_hook import DEFAULT_LOG, DEFAULT_ORG_KEY, DEFAULT_POLICY, DEFAULT_TCTI


def run(
    image: Annotated[str, typer.Argument(help="OCI image layout and tag, LAYOUT_DIR:TAG")],
    command: Annotated[
        list[str] | None, typer.Argument(help="command to run instead of the image's (after --)")
    ] = None,
    reference: Annotated[
        str,
        typer.Option(
            "--reference",
            help="the repository the image must be signed for, e.g. registry.example/app",
        ),
    ] = "",
    tcti: Annotated[
        str | None,
        typer.Option("--tcti", envvar="STOCKADE_TCTI", help=f"TPM TCTI [default: {DEFAULT_TCTI}]"),
    ] = None,
    tpm: Annotated[
        str | None, typer.Option("--tpm", help="a running development TPM by name")
    ] = None,
    log: Annotated[
        Path,
        typer.Option("--log", envvar="STOCKADE_EXECUTION_LOG", help="the node's execution log"),
    ] = DEFAULT_LOG,
    policy: Annotated[
        Path,
        typer.Option("--policy", envvar="STOCKADE_TRUST_POLICY", help="signed trust policy"),
    ] = DEFAULT_POLICY,
    org_key: Annotated[
        list[Path] | None,
        typer.Option("--org-key", help=f"org public key(s) [default: {DEFAULT_ORG_KEY}]"),
    ] = None,
    mount: Annotated[
        list[str] | None, typer.Option("--mount", help="bind mount SRC:DST[:ro] (repeatable)")
    ] = None,
    name: Annotated[str | None, typer.Option("--name", help="container id")] = None,
    agent_socket: Annotated[
        Path | None,
        typer.Option("--agent-socket", help="admit through a running hook server's socket"),
    ] = None,
    runc_root: Annotated[Path | None, typer.Option("--runc-root", help="runc --root")] = None,
    keep_bundle: Annotated[bool, typer.Option("--keep-bundle", help="keep the bundle")] = False,
) -> None:
    """Unpack IMAGE with umoci into a bundle and run it with runc; the hook verifies the image's
    signature against the trust policy, extends PCR 13 and appends to the execution log before
    the container starts, or refuses it."""
    from stockade.agent.oci_hook import HookSettings
    from stockade.agent.run import BindMount, run_image
    from stockade.errors import InputError
    from stockade.images import parse_image_ref

    layout, tag = parse_image_ref(image)
    if not reference:
        raise InputError("--reference is required: the repository the image must be signed for")
    if tcti is None and tpm is not None:
        from stockade.agent.source import resolve_source

        source = resolve_source(tpm_name=tpm)
        tcti = source.tcti
        if log == DEFAULT_LOG:  # a development node keeps its log beside its TPM
            log = source.execution_log
    settings = HookSettings(
        tcti=tcti or DEFAULT_TCTI,
        log_path=log.absolute(),
        policy_path=policy.absolute(),
        org_keys=tuple(k.absolute() for k in org_key or [DEFAULT_ORG_KEY]),
        agent_socket=agent_socket.absolute() if agent_socket else None,
    )
    status = run_image(
        layout.absolute(),
        tag,
        reference=reference,
        settings=settings,
        container_id=name,
        args=command or (),
        mounts=[BindMount.parse(spec) for spec in mount or []],
        runc_root=runc_root,
        keep_bundle=keep_bundle,
    )
    raise typer.Exit(status)
