"""``stockade tpm quote``: quote PCRs from a TPM and write tpm2-tools compatible files."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from stockade.cli._input import emit_json, parse_hex
from stockade.cli.options import FormatOption, OutputFormat
from stockade.evidence import PcrSelection
from stockade.evidence.templates import KeyKind
from stockade.evidence.tpm2_tools_files import write_pcr_file

QUOTE_FILES = {"message": "quote.msg", "signature": "quote.sig", "pcrs": "quote.pcrs"}


def quote(
    tcti: Annotated[
        str, typer.Option(help="e.g. device:/dev/tpmrm0 or swtpm:host=127.0.0.1,port=N")
    ],
    pcrs: Annotated[str, typer.Option(help="PCR selection, e.g. sha256:0,1,2,3,4,5,6,7")],
    nonce: Annotated[str, typer.Option(help="verifier's nonce, hex")],
    out: Annotated[Path, typer.Option(help="directory for quote.msg, quote.sig, quote.pcrs")],
    ak_dir: Annotated[
        Path | None,
        typer.Option(help="AK directory (ak.pub, ak.priv); created there if absent [default: OUT]"),
    ] = None,
    ak_type: Annotated[KeyKind, typer.Option(help="key type for a new AK")] = KeyKind.RSA,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Quote with the AK in AK_DIR (creating one under the EK if there is none)."""
    from stockade.tpm.ak import AK_PUBLIC_FILE, AttestationKey, create_ak
    from stockade.tpm.device import Tpm
    from stockade.tpm.quote import quote as tpm_quote

    selection = PcrSelection.parse(pcrs)
    nonce_bytes = parse_hex(nonce, "nonce")
    key_dir = ak_dir or out
    with Tpm(tcti) as tpm:
        if (key_dir / AK_PUBLIC_FILE).exists():
            ak = AttestationKey.load(key_dir)
        else:
            ak = create_ak(tpm, ak_type)
            ak.save(key_dir)
        evidence = tpm_quote(tpm, ak, selection, nonce_bytes)
    out.mkdir(parents=True, exist_ok=True)
    (out / QUOTE_FILES["message"]).write_bytes(evidence.message)
    (out / QUOTE_FILES["signature"]).write_bytes(evidence.signature)
    (out / QUOTE_FILES["pcrs"]).write_bytes(write_pcr_file(evidence.selection, evidence.pcr_values))
    files = {key: str(out / name) for key, name in QUOTE_FILES.items()}
    files["ak"] = str(key_dir / AK_PUBLIC_FILE)
    if output is OutputFormat.JSON:
        emit_json({"selection": str(evidence.selection), "ak_name": ak.name.hex(), "files": files})
    else:
        for key, path in files.items():
            print(f"{key}: {path}")
