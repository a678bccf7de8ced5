"""``stockade join``: attest this node and obtain its TPM-resident cluster certificate."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._input import emit_json
from stockade.cli.agent import (
    DevTpmOption,
    EventLogOption,
    NodeCaOption,
    NodeNameOption,
    NodeVerifierOption,
    StateDirOption,
    TctiOption,
)
from stockade.cli.agent import (
    VerifierKeyOption as AgentVerifierKeyOption,
)
from stockade.cli.options import FormatOption, OutputFormat
from stockade.errors import VerificationFailed


def join(
    name: NodeNameOption,
    verifier: NodeVerifierOption,
    ca: NodeCaOption = None,
    tcti: TctiOption = None,
    tpm: DevTpmOption = None,
    event_log: EventLogOption = None,
    state_dir: StateDirOption = None,
    out_dir: Annotated[
        Path | None,
        typer.Option(
            "--out-dir",
            help="where node.pem, node-key.pem (TPM-bound) and ca.pem go "
            "[default: <state dir>/pki]",
        ),
    ] = None,
    home: Annotated[
        Path | None,
        typer.Option("--home", help="Stockade home [default: $STOCKADE_HOME or ~/.stockade]"),
    ] = None,
    verifier_key: AgentVerifierKeyOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Enroll (once), attest, and when the verifier affirms this node, obtain a certificate for
    a key that lives only in this TPM. Exit 1 with the reasons when the node is not trusted."""
    from stockade.agent import Agent, AgentConfig, resolve_source
    from stockade.home import stockade_home
    from stockade.verifier_client import VerifierClient

    source = resolve_source(tcti=tcti, tpm_name=tpm, event_log=event_log, home=home)
    agent = Agent(
        AgentConfig(
            verifier=verifier,
            ca=ca,
            name=name,
            source=source,
            state_dir=state_dir or (home or stockade_home()) / "agents" / name,
            pki_dir=out_dir,
            verifier_key=verifier_key,
        ),
        log=lambda line: None,
    )
    with VerifierClient(verifier, ca) as client:
        enrolled = agent.enrolled_or_enroll(client)
        answer = agent.attest_once(client, enrolled)
        if answer.get("status") != "affirming":
            reasons = answer.get("reasons") or []
            if output is OutputFormat.JSON:
                emit_json({"joined": False, "node_id": enrolled.node_id, **answer})
            raise VerificationFailed(
                f"node {name} is not trusted ({answer.get('status')}): "
                + ("; ".join(reasons) or "no reasons given")
            )
        issued = agent.membership.renew_certificate(client, enrolled.node_id)
    if output is OutputFormat.JSON:
        emit_json(
            {
                "joined": True,
                "node_id": enrolled.node_id,
                "result_id": issued.result_id,
                "serial": issued.serial,
                "not_after": issued.not_after,
                "certificate": str(issued.certificate),
                "key": str(issued.key),
                "ca_bundle": str(issued.ca_bundle),
            }
        )
        return
    typer.echo(f"node {name} ({enrolled.node_id}) joined: result {issued.result_id}")
    typer.echo(f"certificate:  {issued.certificate} (serial {issued.serial})")
    typer.echo(f"valid until:  {issued.not_after} (renewed by the agent with every result)")
    typer.echo(f"TPM key:      {issued.key} (loads only in this TPM: tpm2-openssl)")
    typer.echo(f"CA bundle:    {issued.ca_bundle}")
