"""``stockade boot init|node|predict``: the development boot chain and its reference values."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated, Any

import typer

from stockade.cli._input import emit_json, read_file
from stockade.cli.options import FormatOption, HomeOption, OutputFormat
from stockade.errors import InputError

app = typer.Typer(
    no_args_is_help=True,
    help="Verified, measured boot of development nodes on a software TPM; reference values.",
)

PlatformOption = Annotated[Path, typer.Option(help="platform directory (stockade boot init)")]
ReleaseOption = Annotated[Path, typer.Option(help="release directory (stockade release build)")]


@app.command("init")
def init(
    keys: Annotated[Path, typer.Option(help="key directory (stockade keys generate)")],
    platform: Annotated[Path, typer.Option(help="new (or empty) platform directory")],
    secure_boot: Annotated[
        bool, typer.Option("--secure-boot/--no-secure-boot", help="Secure Boot setting")
    ] = True,
    firmware_version: Annotated[
        str | None, typer.Option(help="firmware (CRTM) version string")
    ] = None,
    dbx_image: Annotated[
        list[Path] | None,
        typer.Option(help="revoke this EFI image in dbx by its Authenticode SHA-256 (repeatable)"),
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Make a development platform owned by the organization: its Secure Boot certificate
    in PK, KEK and db, Debian's shim and GRUB signed onto the ESP, a firmware volume,
    and platform.json, the reference description verifiers predict from."""
    from stockade.boot.firmware import DEFAULT_CRTM_VERSION
    from stockade.boot.platform import REFERENCE_FILE, create_development_platform
    from stockade.release.keys import KeySetPaths

    paths = KeySetPaths.in_directory(keys)
    made = create_development_platform(
        platform,
        paths.secure_boot_key,
        paths.secure_boot_cert,
        secure_boot=secure_boot,
        crtm_version=firmware_version or DEFAULT_CRTM_VERSION,
        dbx_images=dbx_image or [],
    )
    document = {
        "platform": str(platform),
        "reference": str(platform / REFERENCE_FILE),
        "secure_boot": made.secure_boot,
        "firmware_version": made.crtm_version,
        "stages": [{"name": s.name, "esp_path": s.esp_path, "image": str(s.image)}
                   for s in made.stages],
    }  # fmt: skip
    if output is OutputFormat.JSON:
        emit_json(document)
        return
    typer.echo(f"platform:    {platform}")
    typer.echo(f"reference:   {document['reference']}")
    typer.echo(f"Secure Boot: {'on' if made.secure_boot else 'off'}")
    for stage in made.stages:
        typer.echo(f"{stage.name + ':':<12} {stage.esp_path} (signed)")


def _find_tpm(name: str | None, tcti: str | None, home: Path | None) -> Any:
    from stockade.tpm.swtpm import running_swtpms

    if (name is None) == (tcti is None):
        raise InputError("name the software TPM with exactly one of --tpm NAME or --tcti T")
    for tpm in running_swtpms(home):
        if tpm.name == name or tpm.tcti == tcti:
            return tpm
    wanted = f"'{name}'" if name is not None else f"at '{tcti}'"
    raise InputError(
        f"no running Stockade software TPM {wanted}: the virtual boot chain must reset the "
        "TPM it boots (start one with 'stockade tpm start')"
    )


@app.command("node")
def node(
    platform: PlatformOption,
    release: ReleaseOption,
    tpm: Annotated[str | None, typer.Option(help="software TPM name (stockade tpm start)")] = None,
    tcti: Annotated[str | None, typer.Option(help="TCTI of a running software TPM")] = None,
    secure_boot: Annotated[
        bool | None,
        typer.Option(
            "--secure-boot/--no-secure-boot",
            help="switch Secure Boot on or off in firmware setup [default: the platform's]",
        ),
    ] = None,
    kernel: Annotated[Path | None, typer.Option(help="boot this kernel instead")] = None,
    initrd: Annotated[Path | None, typer.Option(help="boot this initrd instead")] = None,
    usr_image: Annotated[Path | None, typer.Option(help="boot this /usr image instead")] = None,
    log: Annotated[Path | None, typer.Option(help="also write the TCG event log here")] = None,
    home: HomeOption = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Reset the software TPM and boot the release on the platform: firmware, shim, GRUB,
    kernel, each verified against db before it runs (Secure Boot) and measured (PCRs and
    event log). The log is written beside the TPM's state as binary_bios_measurements,
    where the agent reads it. Exit 1 when Secure Boot halts the boot; the log up to
    there is written."""
    from stockade.boot import DevelopmentPlatform, boot_node, load_release
    from stockade.evidence.replay import replay

    swtpm = _find_tpm(tpm, tcti, home)
    machine = DevelopmentPlatform.load(platform)
    if secure_boot is not None:
        machine = machine.with_secure_boot(secure_boot)
    images = load_release(release, kernel=kernel, initrd=initrd, usr_image=usr_image)
    result = boot_node(swtpm, machine, images, log_path=log)
    halted = result.halted
    if output is OutputFormat.JSON:
        emit_json(
            {
                "booted": halted is None,
                "halted": None
                if halted is None
                else {"stage": halted.stage, "path": halted.path, "reason": halted.reason},
                "secure_boot": machine.secure_boot,
                "tcti": swtpm.tcti,
                "log": str(result.log_path),
                "events": len(result.log.events),
                "pcrs": replay(result.log).values.to_json(),
            }
        )
    else:
        typer.echo(f"log:         {result.log_path} ({len(result.log.events)} events)")
        typer.echo(f"Secure Boot: {'on' if machine.secure_boot else 'off'}")
        if halted is None:
            typer.echo(f"booted {images.manifest.name} {images.manifest.version} on {swtpm.tcti}")
    result.check()


@app.command("predict")
def predict(
    release: ReleaseOption,
    platform: Annotated[
        Path, typer.Option(help="platform reference (platform.json) or a platform directory")
    ],
    org_key: Annotated[
        Path | None,
        typer.Option(help="org public key: take the manifest from the verified DSSE envelope"),
    ] = None,
    banks: Annotated[str, typer.Option(help="PCR banks, comma-separated")] = "sha1,sha256",
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Predict the PCRs a node of this platform reaches booting this release, from the
    platform reference and the (signed) release alone. JSON is the shape of
    'stockade eventlog replay --format json'."""
    from stockade.appraisal.measured_boot import RELEASE_PCR
    from stockade.appraisal.reference import platform_from_json
    from stockade.appraisal.reference import predict as predict_pcrs
    from stockade.boot.platform import REFERENCE_FILE
    from stockade.boot.release import kernel_authority, read_manifest, release_reference
    from stockade.evidence.algorithms import hash_by_name

    reference_path = platform / REFERENCE_FILE if platform.is_dir() else platform
    try:
        document = json.loads(read_file(reference_path, "platform reference"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise InputError(f"platform reference '{reference_path}' is not JSON: {error}") from None
    reference = platform_from_json(document)
    manifest = _signed_manifest(release, org_key) if org_key else read_manifest(release)
    algorithms = [int(hash_by_name(name.strip()).alg) for name in banks.split(",") if name]
    prediction = predict_pcrs(
        reference,
        release_reference(manifest, release, algorithms),
        algorithms,
        kernel_authority(reference, manifest, release),
    )
    if output is OutputFormat.JSON:
        emit_json(prediction.values.to_json())
        return
    typer.echo(f"release {manifest.name} {manifest.version}; release PCR {RELEASE_PCR}")
    for bank, values in prediction.values.to_json().items():
        typer.echo(f"{bank}:")
        for index, value in values.items():
            typer.echo(f"  {int(index):>2}: {value}")


def _signed_manifest(release: Path, org_key: Path) -> Any:
    from stockade.release import dsse
    from stockade.release.build import ENVELOPE_NAME
    from stockade.release.keys import load_verifying_key
    from stockade.release.manifest import open_signed_manifest

    envelope = dsse.Envelope.from_bytes(read_file(release / ENVELOPE_NAME, "signed manifest"))
    key = load_verifying_key(read_file(org_key, "org public key"), str(org_key))
    manifest, _ = open_signed_manifest(envelope, [key])
    return manifest
