"""``stockade results show NODE``: a node's attestation results, as their EARs say once
they verify under the verifier key the operator pinned (``--verifier-key``)."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer

from stockade.cli._input import emit_json
from stockade.cli._text import cell
from stockade.cli.options import (
    CaOption,
    FormatOption,
    NodeArgument,
    OutputFormat,
    ReadTokenOption,
    VerifierKeyOption,
    VerifierOption,
    client,
    pinned_key_file,
)
from stockade.errors import VerificationFailed

if TYPE_CHECKING:
    from rich.table import Table

app = typer.Typer(no_args_is_help=True, help="Attestation results (EAR) of nodes.")

STATUS_STYLES = {"affirming": "green", "warning": "yellow", "contraindicated": "red"}


def check_results(results: list[Any], node: str, keys: Any) -> list[dict[str, Any]]:
    """Each result as its EAR says, once the EAR verifies under the pinned ``keys`` and is
    about ``node`` and the result id it is listed under. Nothing unsigned is kept: a result
    whose EAR does not verify is shown only as that failure."""
    return [check_result(result, node, keys) for result in results]


def check_result(result: Any, node: str | None, keys: Any) -> dict[str, Any]:
    """One listed result as :func:`check_results` shows it (``node`` None: the node the
    listing names, which the EAR must name too). Its transparency-log ``log_index`` and
    receipt (``inclusion_proof``) are carried as the verifier sent them: ``stockade log
    verify`` checks the receipt against the pinned log key, and that the logged entry is
    this result's (id, EAR digest, status)."""
    from stockade.statements import StatementInvalid, verify_ear

    listed = result.get("result_id") if isinstance(result, dict) else None
    token = result.get("ear") if isinstance(result, dict) else None
    about = (
        node if node is not None else (result.get("node_id") if isinstance(result, dict) else None)
    )
    logged = {
        "log_index": result.get("log_index") if isinstance(result, dict) else None,
        "inclusion_proof": result.get("inclusion_proof") if isinstance(result, dict) else None,
    }
    try:
        if not isinstance(token, str):
            raise StatementInvalid(f"result {listed} carries no EAR")
        if not isinstance(about, str):
            raise StatementInvalid(f"result {listed} names no node")
        ear = verify_ear(
            token, keys, node=about, result_id=listed if isinstance(listed, str) else None
        )
    except StatementInvalid as error:
        return {"result_id": listed, "ear_signature": f"NOT VERIFIED: {error}", **logged}
    return {
        "result_id": ear.result_id,
        "node_id": ear.node_id,
        "node": ear.node_name,
        "status": ear.status,
        "policy": ear.policy,
        "issued_at": ear.issued_at.isoformat(),
        "not_after": ear.expires_at.isoformat(),
        "trust_vector": dict(ear.trust_vector),
        "reasons": list(ear.reasons),
        "release": None if ear.release is None else dict(ear.release),
        "boot": {"reset_count": ear.reset_count, "restart_count": ear.restart_count},
        "ear": token,
        "ear_claims": dict(ear.claims),
        "ear_signature": "verified",
        **logged,
    }


@app.command("show")
def show(
    node: NodeArgument,
    limit: Annotated[int, typer.Option("--limit", min=1, help="how many, newest first")] = 1,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    verifier_key: VerifierKeyOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """The node's latest results: status, trust vector, policy, deadline and every reason,
    all read from the EAR once it verifies under the pinned verifier key and names this
    node. ``--format json`` carries each result's log index and receipt: the document as
    printed is what ``stockade log verify --key LOG_KEY --verifier-key KEY`` checks offline.
    Exit 1 if any result does not verify. Needs a reader token."""
    key_file = pinned_key_file(verifier_key, verifier)
    with client(verifier, ca, token_file) as api:
        results = api.results(node, limit)
    checked = check_results(results, node, key_file.keys())
    if output is OutputFormat.JSON:
        emit_json({"node": node, "results": checked})
    else:
        from rich.console import Console

        console = Console()
        if not checked:
            console.print(f"{cell(node)}: no attestation results yet")
        for result in checked:
            console.print(result_table(result))
    refused = [r for r in checked if r["ear_signature"] != "verified"]
    if refused:
        raise VerificationFailed(
            f"{len(refused)} of {len(checked)} results of {node} do not verify under the "
            "pinned verifier key"
        )


def release_text(release: dict[str, Any]) -> str:
    """``stockade-os 1.1.0 (security version 4, manifest 3f5a...)``, as ``nodes list -o
    wide`` shows it."""
    from stockade.cli.nodes import release_cells

    label, security_version, manifest = release_cells(release)
    return f"{label} (security version {security_version}, manifest {manifest})"


def result_table(result: dict[str, Any]) -> Table:
    """One checked result (``check_results``) as a table of its claims."""
    from rich.table import Table

    listed = result.get("result_id")
    table = Table(show_header=False, title=f"result {cell(listed, '(no id)')}")
    table.add_column("claim", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("EAR signature", cell(result["ear_signature"]))
    if result["ear_signature"] != "verified":
        return table
    status = cell(result["status"])
    style = STATUS_STYLES.get(status, "")
    table.add_row("status", f"[{style}]{status}[/]" if style else status)
    table.add_row("node", f"{cell(result['node'])} ({cell(result['node_id'])})")
    table.add_row("issued", cell(result["issued_at"]))
    table.add_row("not after", cell(result["not_after"]))
    table.add_row("policy", cell(result["policy"], "-"))
    release = result.get("release")
    if release:
        table.add_row("release", release_text(release))
    vector = result["trust_vector"]
    table.add_row("trust vector", ", ".join(f"{k}={cell(v)}" for k, v in vector.items()) or "-")
    boot = result["boot"]
    table.add_row(
        "boot",
        f"reset count {cell(boot.get('reset_count'), '-')}, "
        f"restart count {cell(boot.get('restart_count'), '-')}",
    )
    reasons = result["reasons"]
    table.add_row("reasons", "\n".join(f"- {cell(r)}" for r in reasons) or "none")
    return table
