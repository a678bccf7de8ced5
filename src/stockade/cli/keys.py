"""``stockade keys generate``: the organization's signing key and Secure Boot key."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._input import emit_json
from stockade.cli.options import FormatOption, OutputFormat
from stockade.release.keys import KeyType, generate_key_set

app = typer.Typer(no_args_is_help=True, help="Organization signing keys.")


@app.command("generate")
def generate(
    out: Annotated[Path, typer.Option(help="directory for the key files")],
    key_type: Annotated[
        KeyType, typer.Option("--type", help="org signing key type")
    ] = KeyType.ECDSA_P256,
    name: Annotated[
        str, typer.Option(help="organization name, used in the Secure Boot certificate")
    ] = "Stockade",
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Write org.key/org.pub (DSSE signing) and secureboot.key/secureboot.crt (RSA-2048,
    self-signed, codeSigning; for the firmware db and sbsign). Never overwrites (exit 2)."""
    generated = generate_key_set(out, key_type, name, dt.datetime.now(dt.UTC))
    if output is OutputFormat.JSON:
        emit_json(generated.to_json())
        return
    paths = generated.paths
    typer.echo(f"org signing key ({key_type.value}): {paths.org_key}")
    typer.echo(f"org public key:      {paths.org_pub}")
    typer.echo(f"org key id:          {generated.org_keyid}")
    typer.echo(f"Secure Boot key:     {paths.secure_boot_key}")
    typer.echo(f"Secure Boot cert:    {paths.secure_boot_cert}")
    typer.echo(f"  subject CN:        {generated.secure_boot_subject}")
    typer.echo(f"  sha256:            {generated.secure_boot_fingerprint}")
