"""``stockade results show NODE``: a node's attestation results, the EAR decoded and
its signature checked against the verifier's published keys (``GET /v1/keys``)."""

from __future__ import annotations

import base64
import json
from typing import Annotated, Any

import typer
from rich.console import Console
from rich.table import Table

from stockade.cli._input import emit_json
from stockade.cli.nodes import (
    CaOption,
    FormatOption,
    NodeArgument,
    ReadTokenOption,
    VerifierOption,
    client,
)
from stockade.cli.quote import OutputFormat

app = typer.Typer(no_args_is_help=True, help="Attestation results (EAR) of nodes.")

STATUS_STYLES = {"affirming": "green", "warning": "yellow", "contraindicated": "red"}


def check_ear(token: str, keys: dict[str, Any]) -> tuple[dict[str, Any], str]:
    """The EAR's claims and how its signature fared: ``verified`` or why not."""
    import jwt

    try:
        header = jwt.get_unverified_header(token)
        claims: dict[str, Any] = jwt.decode(token, options={"verify_signature": False})
    except jwt.PyJWTError as error:
        return {}, f"malformed EAR: {error}"
    for jwk in keys.get("keys", []):
        if header.get("kid") and jwk.get("kid") != header.get("kid"):
            continue
        try:
            key = jwt.PyJWK.from_dict(jwk).key
            jwt.decode(token, key, algorithms=["ES256"], options={"verify_exp": False})
        except jwt.PyJWTError as error:
            return claims, f"signature INVALID: {error}"
        return claims, "verified"
    return claims, f"no published key with kid {header.get('kid')}"


def _payload(token: str) -> dict[str, Any]:
    body = token.split(".")[1]
    decoded: dict[str, Any] = json.loads(base64.urlsafe_b64decode(body + "=" * (-len(body) % 4)))
    return decoded


@app.command("show")
def show(
    node: NodeArgument,
    limit: Annotated[int, typer.Option("--limit", min=1, help="how many, newest first")] = 1,
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """The node's latest results: status, trust vector, policy, deadline and every reason.
    Needs a reader token."""
    with client(verifier, ca, token_file) as api:
        results = api.results(node, limit)
        keys = api.keys()
    checked = []
    for result in results:
        claims, signature = check_ear(str(result.get("ear", "")), keys)
        checked.append({**result, "ear_claims": claims, "ear_signature": signature})
    if output is OutputFormat.JSON:
        emit_json({"node": node, "results": checked})
        return
    console = Console()
    if not checked:
        console.print(f"{node}: no attestation results yet")
    for result in checked:
        _render(console, result)


def _render(console: Console, result: dict[str, Any]) -> None:
    claims = result["ear_claims"]
    submods = claims.get("submods", {}) if isinstance(claims, dict) else {}
    status = str(result.get("status", ""))
    style = STATUS_STYLES.get(status, "")
    table = Table(show_header=False, title=f"result {result.get('result_id', result.get('id'))}")
    table.add_column("claim", style="bold")
    table.add_column("value", overflow="fold")
    table.add_row("status", f"[{style}]{status}[/]" if style else status)
    table.add_row("not after", str(result.get("not_after", "")))
    table.add_row("EAR signature", str(result["ear_signature"]))
    table.add_row("verifier", json.dumps(claims.get("ear.verifier-id", {})))
    for name, submod in submods.items():
        table.add_row("node", str(name))
        table.add_row("policy", str(submod.get("ear.appraisal-policy-id", "")))
        vector = submod.get("ear.trustworthiness-vector", {})
        table.add_row("trust vector", ", ".join(f"{k}={v}" for k, v in vector.items()))
        table.add_row("boot", json.dumps(submod.get("stockade.boot", {})))
    reasons: list[Any] = result.get("reasons") or next(
        (s.get("stockade.reasons", []) for s in submods.values()), []
    )
    table.add_row("reasons", "\n".join(f"- {r}" for r in reasons) or "none")
    console.print(table)
