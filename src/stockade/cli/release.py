"""``stockade release build|sign|verify``: signed OS releases."""

from __future__ import annotations

import datetime as dt
import json
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Annotated
from uuid import UUID

import typer

from stockade.appraisal.uki import (
    BANKS,
    BOOT_PHASES,
    measure_json,
    predict_pcr11,
    uki_reference,
    uki_sections,
)
from stockade.cli._input import emit_json, parse_hex, read_file
from stockade.cli.options import FormatOption, OutputFormat
from stockade.errors import InputError, VerificationFailed
from stockade.release import dsse
from stockade.release.build import (
    ENVELOPE_NAME,
    ReleaseInputs,
    build_release,
    verify_artifacts,
)
from stockade.release.keys import keyid, load_signing_key, load_verifying_key
from stockade.release.manifest import (
    Manifest,
    manifest_digest,
    open_signed_manifest,
    sign_manifest,
)
from stockade.release.verity import Progress

app = typer.Typer(no_args_is_help=True, help="Build, sign and verify OS releases.")


@contextmanager
def _progress(total: int, label: str) -> Iterator[Progress | None]:
    """A rich progress bar on stderr while stdout is a terminal; nothing otherwise."""
    if not sys.stdout.isatty():
        yield None
        return
    from rich.console import Console
    from rich.progress import BarColumn, DownloadColumn, TextColumn, TimeRemainingColumn
    from rich.progress import Progress as Bar

    columns = (
        TextColumn("{task.description}"),
        BarColumn(),
        DownloadColumn(),
        TimeRemainingColumn(),
    )
    with Bar(*columns, console=Console(stderr=True), transient=True) as bar:
        task = bar.add_task(label, total=total)
        yield lambda count: bar.advance(task, count)


def _parse_time(text: str) -> dt.datetime:
    try:
        moment = dt.datetime.fromisoformat(text)
    except ValueError:
        raise InputError(f"--created '{text}' is not an ISO 8601 time") from None
    if moment.tzinfo is None:
        raise InputError(f"--created '{text}' needs a time zone, e.g. 2026-01-31T12:00:00Z")
    return moment


def _manifest_summary(manifest: Manifest) -> dict[str, object]:
    return {
        "name": manifest.name,
        "version": manifest.version,
        "security_version": manifest.security_version,
        "manifest_sha256": manifest_digest(manifest).hex(),
        "usr_root_hash": manifest.usr.verity.root_hash.hex(),
        "cmdline": manifest.cmdline,
    }


@app.command("build")
def build(
    kernel: Annotated[Path, typer.Option(help="kernel image (an EFI PE image for Secure Boot)")],
    initrd: Annotated[Path, typer.Option(help="initrd")],
    cmdline: Annotated[
        str,
        typer.Option(
            help="kernel command line; usrhash= is appended (refused if it reads two ways "
            "or could mount another /usr)"
        ),
    ],
    usr_image: Annotated[Path, typer.Option(help="read-only /usr file system image")],
    version: Annotated[str, typer.Option(help="release version string")],
    security_version: Annotated[
        int, typer.Option(min=0, help="security version; raise it to revoke older releases")
    ],
    out: Annotated[Path, typer.Option(help="new (or empty) release directory")],
    name: Annotated[str, typer.Option(help="release name")] = "stockade-os",
    created: Annotated[
        str | None, typer.Option(help="creation time, ISO 8601 with zone [default: now]")
    ] = None,
    salt: Annotated[str | None, typer.Option(help="dm-verity salt, hex [default: random]")] = None,
    uuid: Annotated[str | None, typer.Option(help="dm-verity UUID [default: random]")] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Copy the kernel and initrd into OUT, write the /usr image with its dm-verity hash
    file, and write manifest.json (sign it with ``stockade release sign``)."""
    moment = _parse_time(created) if created else dt.datetime.now(dt.UTC)
    salt_bytes = parse_hex(salt, "salt") if salt is not None else None
    try:
        uuid_value = UUID(uuid) if uuid is not None else None
    except ValueError:
        raise InputError(f"--uuid '{uuid}' is not a UUID") from None
    inputs = ReleaseInputs(name, version, security_version, kernel, initrd, cmdline, usr_image)
    try:
        total = usr_image.stat().st_size
    except OSError as error:
        raise InputError(f"cannot read /usr image '{usr_image}': {error.strerror}") from None
    with _progress(total, "dm-verity") as progress:
        manifest = build_release(
            inputs, out, moment, salt=salt_bytes, uuid=uuid_value, progress=progress
        )
    document = {
        **_manifest_summary(manifest),
        "directory": str(out),
        "manifest": str(out / "manifest.json"),
        "kernel_authenticode_sha256": (
            manifest.kernel.authenticode_sha256.hex()
            if manifest.kernel.authenticode_sha256 is not None
            else None
        ),
    }
    if output is OutputFormat.JSON:
        emit_json(document)
        return
    typer.echo(f"built {manifest.name} {manifest.version} (security version "
               f"{manifest.security_version}) in {out}")  # fmt: skip
    typer.echo(f"manifest sha256: {document['manifest_sha256']}")
    typer.echo(f"/usr root hash:  {document['usr_root_hash']}")
    if manifest.kernel.authenticode_sha256 is None:
        typer.echo("warning: the kernel is not a PE image; no Authenticode digest recorded")


@app.command("sign")
def sign(
    manifest_path: Annotated[Path, typer.Argument(metavar="MANIFEST", help="manifest.json")],
    key: Annotated[list[Path], typer.Option(help="org signing key (PEM); repeat to co-sign")],
    out: Annotated[
        Path | None, typer.Option(help="envelope path [default: manifest.dsse.json beside it]")
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Sign a release manifest into a DSSE envelope."""
    manifest = Manifest.from_bytes(read_file(manifest_path, "manifest"))
    keys = [load_signing_key(read_file(path, "signing key"), f"key '{path}'") for path in key]
    envelope = sign_manifest(manifest, keys)
    target = out or manifest_path.with_name(ENVELOPE_NAME)
    try:
        target.write_bytes(envelope.to_bytes())
    except OSError as error:
        raise InputError(f"cannot write '{target}': {error.strerror or error}") from None
    keyids = [keyid(signing.public_key()) for signing in keys]
    if output is OutputFormat.JSON:
        emit_json({**_manifest_summary(manifest), "envelope": str(target), "keyids": keyids})
        return
    typer.echo(f"signed {manifest.name} {manifest.version}: {target}")
    for signer in keyids:
        typer.echo(f"key id: {signer}")


@app.command("verify")
def verify(
    envelope_path: Annotated[Path, typer.Argument(metavar="ENVELOPE", help="manifest.dsse.json")],
    pub: Annotated[list[Path], typer.Option(help="trusted org public key (PEM); repeatable")],
    artifacts: Annotated[
        Path | None, typer.Option(help="release directory: re-hash files, re-verify dm-verity")
    ] = None,
    min_security_version: Annotated[
        int | None, typer.Option(min=0, help="refuse releases below this security version")
    ] = None,
    threshold: Annotated[int, typer.Option(min=1, help="distinct trusted signers needed")] = 1,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Exit 0 when the release is valid, 1 with the reason when not, 2 on unreadable input."""
    trusted = [load_verifying_key(read_file(path, "public key"), f"key '{path}'") for path in pub]
    envelope = dsse.Envelope.from_bytes(read_file(envelope_path, "envelope"))
    try:
        manifest, verified = open_signed_manifest(
            envelope, trusted, threshold=threshold, min_security_version=min_security_version
        )
        if artifacts is not None:
            with _progress(manifest.usr.size, "dm-verity") as progress:
                verify_artifacts(manifest, artifacts, progress)
    except VerificationFailed as failure:
        if output is OutputFormat.JSON:
            emit_json({"valid": False, "reason": str(failure)})
        raise
    document = {
        "valid": True,
        **_manifest_summary(manifest),
        "keyids": list(verified.keyids),
        "artifacts_verified": artifacts is not None,
    }
    if output is OutputFormat.JSON:
        emit_json(document)
        return
    checked = " and its artifacts" if artifacts is not None else ""
    typer.echo(f"release {manifest.name} {manifest.version} (security version "
               f"{manifest.security_version}){checked} valid")  # fmt: skip


@app.command("predict-uki")
def predict_uki(
    uki: Annotated[Path, typer.Argument(metavar="UKI", help="unified kernel image (.efi)")],
    bank: Annotated[
        list[str] | None,
        typer.Option(help="PCR bank: sha1, sha256, sha384, sha512; repeatable [default: all]"),
    ] = None,
    phase: Annotated[
        list[str] | None,
        typer.Option(
            help="boot phase, words joined by ':'; repeatable [default: the four phases "
            "systemd-pcrphase extends]"
        ),
    ] = None,
    policy_entry: Annotated[
        str | None,
        typer.Option(
            "--policy-entry",
            metavar="NAME",
            help="print instead the policy's `ukis` entry for this UKI named NAME (its "
            "Authenticode and running PCR 11, sha256)",
        ),
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Predict PCR 11 of UKI at each boot phase as systemd-stub and systemd-pcrphase
    (systemd 252) extend it; ``--format json`` prints what ``systemd-measure calculate
    --json=short`` prints for the UKI's sections."""
    image = read_file(uki, "unified kernel image")
    if policy_entry is not None:
        entry = uki_reference(policy_entry, image).to_document()
        if output is OutputFormat.JSON:
            emit_json(entry)
        else:
            typer.echo(f"- name: {json.dumps(entry['name'])}")
            typer.echo(f"  authenticode: {entry['authenticode']}")
            typer.echo(f"  pcr11: {entry['pcr11']}")
        return
    sections = uki_sections(image)
    banks = sorted({name.lower() for name in bank} if bank else set(BANKS))
    predictions = {name: predict_pcr11(sections, name, phase or BOOT_PHASES) for name in banks}
    if output is OutputFormat.JSON:
        typer.echo(json.dumps(measure_json(predictions), separators=(",", ":"), ensure_ascii=False))
        return
    for label in predictions[banks[0]]:
        typer.echo(f"# PCR[11] Phase <{label}>", err=True)
        for name in banks:
            typer.echo(f"11:{name}={predictions[name][label].hex()}")
