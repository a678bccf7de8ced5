"""The measured-boot half of ``stockade demo``: an organization signs an OS release,
a development node boots it through the verified chain on a software TPM, and the
verifier checks the quote, the log and the predicted reference values. Then the
two attacks the issue names: a kernel with a bad signature under Secure Boot, and a
modified kernel booted with Secure Boot off.
"""

from __future__ import annotations

import os
from datetime import UTC, datetime
from pathlib import Path

from rich.console import Console
from rich.table import Table

from stockade.appraisal.measured_boot import RELEASE_PCR
from stockade.appraisal.reference import compare, predict
from stockade.boot import DevelopmentPlatform, boot_node, create_development_platform, load_release
from stockade.boot.release import kernel_authority, release_reference
from stockade.boot.secure_boot import sign_image
from stockade.boot.tamper import flip_section_byte
from stockade.errors import VerificationFailed
from stockade.evidence import PcrSelection, Signature, verify_quote
from stockade.evidence.algorithms import Alg
from stockade.evidence.event_data import (
    ImageLoadData,
    SeparatorData,
    TextData,
    UefiVariableData,
    decode,
)
from stockade.evidence.eventlog import Event, EventLog
from stockade.evidence.quote import VerifiedQuote
from stockade.evidence.replay import VerifiedEventLog, verify_log
from stockade.evidence.secureboot import secure_boot_state
from stockade.evidence.templates import KeyKind
from stockade.release.build import ReleaseInputs, build_release
from stockade.release.keys import KeyType, generate_key_set, load_signing_key, load_verifying_key
from stockade.release.manifest import manifest_digest, open_signed_manifest, sign_manifest
from stockade.tpm.ak import AttestationKey, create_ak
from stockade.tpm.device import Tpm
from stockade.tpm.quote import quote
from stockade.tpm.swtpm import SoftwareTpm, start_swtpm

KERNEL_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
CMDLINE = "ro console=ttyS0 quiet"
BANKS = (int(Alg.SHA1), int(Alg.SHA256))
QUOTED = PcrSelection.parse(f"sha256:0-9,{RELEASE_PCR}")


class DemoFailed(VerificationFailed):
    """A step of the demo did not behave as it must."""


def _summary(event: Event) -> str:
    data = decode(event)
    if isinstance(data, TextData):
        return data.text
    if isinstance(data, UefiVariableData):
        return f"{data.unicode_name} ({len(data.variable_data)} bytes)"
    if isinstance(data, ImageLoadData):
        return str(data.to_json()["DevicePath"])
    if isinstance(data, SeparatorData):
        return f"separator {data.value:#x}"
    return type(data).__name__.removesuffix("Data")


def _print_log(console: Console, log: EventLog) -> None:
    table = Table(title="event log (binary_bios_measurements)", show_lines=False)
    for column in ("#", "PCR", "type", "sha256", "what"):
        table.add_column(column)
    for event in log.events[1:]:
        digest = event.digest(Alg.SHA256)
        table.add_row(
            str(event.number),
            str(event.pcr),
            event.type_name.removeprefix("EV_"),
            digest.hex()[:16] if digest else "",
            _summary(event)[:60],
        )
    console.print(table)


def _attest(
    swtpm: SoftwareTpm, ak: AttestationKey, log: EventLog
) -> tuple[VerifiedQuote, VerifiedEventLog]:
    """Quote the boot PCRs, verify the quote, and verify the log against it."""
    nonce = os.urandom(32)
    with Tpm(swtpm.tcti) as tpm:
        evidence = quote(tpm, ak, QUOTED, nonce)
    verified = verify_quote(
        ak.public,
        evidence.message,
        Signature.unmarshal(evidence.signature),
        nonce=nonce,
        pcr_values=evidence.pcr_values,
        expected_selection=QUOTED,
    )
    return verified, verify_log(log, verified.pcr_values)


def measured_boot_story(console: Console, home: Path) -> None:
    now = datetime.now(UTC)
    console.rule("[bold]Measured and Secure Boot: a development node boots a signed release")
    keys = generate_key_set(home / "keys", KeyType.ECDSA_P256, "Demo Org", now)
    platform_dir = home / "platform"
    create_development_platform(
        platform_dir, keys.paths.secure_boot_key, keys.paths.secure_boot_cert
    )
    platform = DevelopmentPlatform.load(platform_dir)
    console.print(
        "1. platform: virtual UEFI firmware, Debian shim and GRUB signed for db "
        f"([dim]{keys.secure_boot_subject}[/]), Secure Boot on"
    )

    kernel = home / "vmlinuz.signed"
    sign_image(KERNEL_STUB, kernel, keys.paths.secure_boot_key, keys.paths.secure_boot_cert)
    (home / "initrd.in").write_bytes(os.urandom(64 * 1024))
    (home / "usr.in").write_bytes(os.urandom(16 * 4096))
    release_dir = home / "release"
    built = build_release(
        ReleaseInputs(
            "stockade-os", "1.0.0", 1, kernel, home / "initrd.in", CMDLINE, home / "usr.in"
        ),
        release_dir,
        now,
    )
    envelope = sign_manifest(built, [load_signing_key(keys.paths.org_key.read_bytes())])
    manifest, _ = open_signed_manifest(
        envelope, [load_verifying_key(keys.paths.org_pub.read_bytes())], min_security_version=1
    )
    console.print(
        f"2. release {manifest.name} {manifest.version} built and signed (DSSE), manifest "
        f"sha256:{manifest_digest(manifest).hex()[:16]}..., /usr verity root "
        f"{manifest.usr.verity.root_hash.hex()[:16]}..."
    )

    reference = platform.reference(BANKS)
    prediction = predict(
        reference,
        release_reference(manifest, release_dir, BANKS),
        BANKS,
        kernel_authority(reference, manifest, release_dir),
    )
    console.print(
        f"3. reference values predicted from the platform and the signed release alone "
        f"(PCRs {', '.join(map(str, prediction.pcrs))})"
    )

    with start_swtpm("demo-boot-node", home=home) as swtpm:
        booted = boot_node(swtpm, platform, load_release(release_dir))
        booted.check()
        console.print("4. node booted through shim, GRUB and the kernel; its log:")
        _print_log(console, booted.log)
        with Tpm(swtpm.tcti) as tpm:
            ak = create_ak(tpm, KeyKind.ECC)
        verified, verified_log = _attest(swtpm, ak, booted.log)
        state = secure_boot_state(verified_log)
        differences = compare(prediction.values.restricted_to(QUOTED), verified.pcr_values)
        if differences or not state.enabled:
            raise DemoFailed(f"a good boot does not match its reference values: {differences}")
        console.print(
            f"5. quote verified, log replays to the quoted PCRs, Secure Boot "
            f"{'on' if state.enabled else 'off'}, {len(state.boot_applications)} boot "
            f"applications, cmdline '{state.kernel_command_line}'; every PCR equals its "
            "predicted reference value"
        )

        console.print("6. attacks:")
        rogue_keys = generate_key_set(home / "rogue-keys", KeyType.ED25519, "Rogue", now)
        rogue = home / "vmlinuz.rogue"
        sign_image(
            KERNEL_STUB, rogue, rogue_keys.paths.secure_boot_key, rogue_keys.paths.secure_boot_cert
        )
        halted = boot_node(swtpm, platform, load_release(release_dir, kernel=rogue))
        if halted.halted is None:
            raise DemoFailed("a kernel signed by a key outside db booted under Secure Boot")
        console.print(
            f"  [green]halted[/] Secure Boot refused a kernel signed by another key: "
            f"[dim]{halted.halted}[/]"
        )

        modified = home / "vmlinuz.modified"
        modified.write_bytes(flip_section_byte(kernel.read_bytes()))
        insecure = boot_node(
            swtpm, platform.with_secure_boot(False), load_release(release_dir, kernel=modified)
        )
        insecure.check()
        verified, _ = _attest(swtpm, ak, insecure.log)
        changed = compare(prediction.values.restricted_to(QUOTED), verified.pcr_values)
        changed_pcrs = sorted({difference.pcr for difference in changed})
        if not {4, 7} <= set(changed_pcrs):
            raise DemoFailed(f"a modified kernel with Secure Boot off changed only {changed_pcrs}")
        console.print(
            "  [green]visible[/] a modified kernel booted with Secure Boot off: PCRs "
            f"{', '.join(map(str, changed_pcrs))} differ from the reference values "
            "(4: the kernel's Authenticode digest, 7: SecureBoot=0)"
        )
