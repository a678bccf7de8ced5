"""``stockade tpm start|stop|list``: software TPMs (swtpm) that outlive the command."""

from __future__ import annotations

from typing import Annotated

import typer

from stockade.cli._input import emit_json
from stockade.cli.options import FormatOption, HomeOption, OutputFormat

app = typer.Typer(
    no_args_is_help=True,
    help="Software TPMs (swtpm) for development nodes, and TPM commands.",
)


@app.command("start")
def start(
    name: Annotated[
        str | None,
        typer.Argument(help="instance name [default: the first of tpm0, tpm1, ... not running]"),
    ] = None,
    home: HomeOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Start a software TPM in the background; the first start provisions its EKs and certs."""
    from stockade.tpm.swtpm import running_swtpms, start_swtpm

    if name is None:
        running = {tpm.name for tpm in running_swtpms(home)}
        name = next(f"tpm{n}" for n in range(len(running) + 1) if f"tpm{n}" not in running)
    tpm = start_swtpm(name, home, detach=True)
    if output is OutputFormat.JSON:
        emit_json(tpm.to_json())
        return
    typer.echo(f"started software TPM '{tpm.name}' (pid {tpm.pid})")
    typer.echo(f"tcti:      {tpm.tcti}")
    typer.echo(f"state dir: {tpm.state_dir}")
    typer.echo(f"EK CA:     {tpm.ek_ca.directory}")


@app.command("stop")
def stop(
    name: Annotated[str, typer.Argument(help="instance name")],
    home: HomeOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Stop a software TPM (orderly TPM2_Shutdown); its state stays for the next start."""
    from stockade.tpm.swtpm import stop_swtpm

    was_running = stop_swtpm(name, home)
    if output is OutputFormat.JSON:
        emit_json({"name": name, "was_running": was_running})
    else:
        typer.echo(f"stopped '{name}'" if was_running else f"'{name}' was not running")


@app.command("list")
def list_tpms(home: HomeOption = None, output: FormatOption = OutputFormat.TEXT) -> None:
    """List the software TPMs under the Stockade home, running or stopped."""
    from stockade.tpm.swtpm import known_swtpms

    rows = [(tpm, tpm.is_running()) for tpm in known_swtpms(home)]
    if output is OutputFormat.JSON:
        emit_json(
            {
                "tpms": [
                    {**tpm.to_json(), "running": running, "pid": tpm.pid if running else None}
                    for tpm, running in rows
                ]
            }
        )
        return
    if not rows:
        typer.echo("no software TPMs")
        return
    width = max(len(tpm.name) for tpm, _ in rows)
    for tpm, running in rows:
        status = f"running  pid {tpm.pid:<7} {tpm.tcti}" if running else "stopped"
        typer.echo(f"{tpm.name:<{width}}  {status}")
