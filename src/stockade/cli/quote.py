"""``stockade quote verify``: check a TPM quote anywhere, from tpm2-tools or Stockade files."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._input import emit_json, parse_hex, read_file
from stockade.cli.options import FormatOption, OutputFormat
from stockade.evidence import PcrSelection, QuoteInvalid, Signature, TpmPublic, verify_quote
from stockade.evidence.tpm2_tools_files import read_pcr_file, read_public_key_file

app = typer.Typer(no_args_is_help=True, help="Verify TPM quotes.")


@app.command("verify")
def verify(
    ak: Annotated[Path, typer.Option(help="AK public key: TPM2B_PUBLIC (tpm2_createak -u) or PEM")],
    message: Annotated[Path, typer.Option(help="TPMS_ATTEST (tpm2_quote -m)")],
    signature: Annotated[Path, typer.Option(help="TPMT_SIGNATURE (tpm2_quote -s)")],
    pcrs: Annotated[Path, typer.Option(help="PCR values (tpm2_quote -o), serialized or values")],
    nonce: Annotated[str, typer.Option(help="the nonce the verifier issued, hex")],
    pcr_selection: Annotated[
        str | None,
        typer.Option(help="expected selection, e.g. sha256:0-7; required for 'values' PCR files"),
    ] = None,
    trust_bare_key: Annotated[
        bool,
        typer.Option(
            "--trust-bare-key",
            help="accept a PEM/DER AK key: you vouch that it is a restricted TPM key (a bare "
            "key cannot show it; any unrestricted or software key can sign a TPMS_ATTEST)",
        ),
    ] = False,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Exit 0 when the quote is valid, 1 with the failed check when not, 2 on unreadable input.
    The AK is its TPM2B_PUBLIC, whose attributes show it is a restricted signing key; a bare
    PEM key is refused unless --trust-bare-key."""
    expected = PcrSelection.parse(pcr_selection) if pcr_selection else None
    ak_key = read_public_key_file(read_file(ak, "AK public key"))
    attest_bytes = read_file(message, "quote message")
    parsed_signature = Signature.unmarshal(read_file(signature, "quote signature"))
    values = read_pcr_file(read_file(pcrs, "PCR values"), expected)
    try:
        verified = verify_quote(
            ak_key,
            attest_bytes,
            parsed_signature,
            nonce=parse_hex(nonce, "nonce"),
            pcr_values=values,
            expected_selection=expected,
            accept_bare_key=trust_bare_key,
        )
    except QuoteInvalid as failure:
        if output is OutputFormat.JSON:
            emit_json({"valid": False, "check": failure.check, "reason": failure.detail})
        raise
    clock = verified.clock_info
    document = {
        "valid": True,
        "selection": str(verified.selection),
        "signer": verified.attest.qualified_signer.hex(),
        "firmware_version": f"{verified.attest.firmware_version:016x}",
        "clock": {
            "clock_ms": clock.clock,
            "reset_count": clock.reset_count,
            "restart_count": clock.restart_count,
            "safe": clock.safe,
        },
        "pcrs": verified.pcr_values.to_json(),
    }
    if isinstance(ak_key, TpmPublic):
        document["ak_name"] = ak_key.name().hex()
    else:
        document["ak_restricted"] = "not shown: a bare key, accepted with --trust-bare-key"
    if output is OutputFormat.JSON:
        emit_json(document)
    else:
        print(f"quote valid: {verified.selection}", file=sys.stdout)
