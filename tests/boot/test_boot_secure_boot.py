"""Secure Boot on: refused stages halt the boot before they run. Secure Boot off: they run,
and PCRs 4 and 7 (and the log) show it."""

from __future__ import annotations

import dataclasses
import subprocess

import pytest
from boot_support import pcrread

from stockade.appraisal.reference import compare, predict
from stockade.boot import BootHalted, BootStage, boot_node, load_release
from stockade.boot.platform import DEBIAN_SHIM, revocation_list
from stockade.boot.release import release_reference
from stockade.boot.secure_boot import authorize_image
from stockade.evidence.algorithms import Alg
from stockade.evidence.event_data import UefiVariableData, decode
from stockade.evidence.eventlog import EventType
from stockade.evidence.replay import replay
from stockade.release.authenticode import authenticode_digest

pytestmark = pytest.mark.swtpm

BANKS = [Alg.SHA1, Alg.SHA256]


def _applications(log):
    return [e for e in log.events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION]


def _assert_log_matches_tpm(result, tcti):
    """What was measured before the halt is in the TPM, and nothing else."""
    measured = sorted({e.pcr for e in result.log.events if e.type != EventType.EV_NO_ACTION})
    tpm = pcrread(tcti, ["sha1", "sha256"], [*range(10), 12])
    ours = replay(result.log).values
    for alg in BANKS:
        for index in [*range(10), 12]:
            value = tpm.get(alg, index)
            assert value is not None
            expected = ours.get(alg, index) if index in measured else bytes(len(value))
            assert value == expected, index
    return measured


@pytest.mark.parametrize(
    ("attack", "reason"),
    [
        ("unsigned", "no Authenticode signature"),
        ("rogue", "does not verify with any certificate in db"),
        ("modified", "modified after signing"),
    ],
)
def test_refused_kernel_halts_the_boot(software_tpm, platform, release, kernels, attack, reason):
    kernel = getattr(kernels, attack)
    result = boot_node(software_tpm, platform, load_release(release.directory, kernel=kernel))
    halted = result.halted
    assert isinstance(halted, BootHalted)
    assert halted.stage == "kernel"
    assert halted.path == "/EFI/stockade/vmlinuz"
    assert reason in halted.reason
    assert "kernel" in str(halted) and halted.exit_code == 1
    with pytest.raises(BootHalted):
        result.check()
    # shim and GRUB ran; the kernel never did, so neither did anything after it.
    applications = _applications(result.log)
    assert len(applications) == 2
    assert authenticode_digest(kernel.read_bytes()) not in {
        e.digest(Alg.SHA256) for e in applications
    }
    measured = _assert_log_matches_tpm(result, software_tpm.tcti)
    assert 12 not in measured
    last = result.log.events[-1]
    assert (last.pcr, last.data) == (9, b"/EFI/stockade/vmlinuz\x00")  # GRUB read it


def test_kernel_revoked_in_dbx_halts_although_its_signature_verifies(
    software_tpm, platform, release, kernels, org_keys
):
    # sbverify accepts the signature: only dbx makes the firmware refuse it.
    accepted = subprocess.run(
        ["sbverify", "--cert", str(org_keys.paths.secure_boot_cert), str(kernels.signed)],
        capture_output=True,
        check=False,
    )
    assert accepted.returncode == 0
    revoked = platform.with_dbx(revocation_list([kernels.signed]))
    result = boot_node(software_tpm, revoked, load_release(release.directory))
    assert result.halted is not None and result.halted.stage == "kernel"
    assert "revoked in dbx" in result.halted.reason
    assert len(_applications(result.log)) == 2
    dbx = [
        decode(e)
        for e in result.log.events
        if e.type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG and b"d\x00b\x00x\x00" in e.data
    ]
    assert authenticode_digest(kernels.signed.read_bytes()) in dbx[0].variable_data


def test_unsigned_shim_halts_before_any_boot_application(software_tpm, platform, release, tmp_path):
    shim = platform.stages[0]
    unsigned = tmp_path / "shimx64.efi"
    unsigned.write_bytes(DEBIAN_SHIM.read_bytes())
    machine = dataclasses.replace(
        platform, stages=(BootStage("shim", shim.esp_path, unsigned), *platform.stages[1:])
    )
    result = boot_node(software_tpm, machine, load_release(release.directory))
    assert result.halted is not None and result.halted.stage == "shim"
    assert _applications(result.log) == []
    assert not [e for e in result.log.events if e.type == EventType.EV_EFI_VARIABLE_AUTHORITY]
    _assert_log_matches_tpm(result, software_tpm.tcti)


def test_firmware_decisions_agree_with_sbverify(platform, kernels, org_keys):
    for kernel in (kernels.signed, kernels.unsigned, kernels.rogue, kernels.modified):
        tool = subprocess.run(
            ["sbverify", "--cert", str(org_keys.paths.secure_boot_cert), str(kernel)],
            capture_output=True,
            check=False,
        )
        try:
            entry = authorize_image("kernel", "/k", kernel, platform.db, platform.dbx)
        except BootHalted:
            entry = None
        assert (entry is not None) == (tool.returncode == 0), kernel.name
        assert entry is None or entry == platform.db[0].entries[0]


def test_secure_boot_off_boots_a_modified_kernel_and_pcrs_4_and_7_show_it(
    software_tpm, platform, platform_reference, release, kernels
):
    result = boot_node(
        software_tpm,
        platform.with_secure_boot(False),
        load_release(release.directory, kernel=kernels.modified),
    )
    assert result.booted
    expected = predict(
        platform_reference,
        release_reference(release.manifest, release.directory, BANKS),
        BANKS,
        platform_reference.stages[0].authority,
    )
    tpm = pcrread(software_tpm.tcti, ["sha1", "sha256"], list(expected.pcrs))
    differing = {(d.bank, d.pcr) for d in compare(expected.values, tpm)}
    # PCR 7: SecureBoot=0 and no authority; PCR 4: the kernel; PCR 9: GRUB hashed the file.
    assert differing == {(bank, pcr) for bank in ("sha1", "sha256") for pcr in (4, 7, 9)}

    secure_boot = decode(result.log.events[4])
    assert isinstance(secure_boot, UefiVariableData)
    assert (secure_boot.unicode_name, secure_boot.variable_data) == ("SecureBoot", b"\x00")
    assert not [e for e in result.log.events if e.type == EventType.EV_EFI_VARIABLE_AUTHORITY]

    # The log says why PCR 4 differs: the kernel's event, and only it, has another digest.
    predicted_apps = _applications(expected.log)
    actual_apps = _applications(result.log)
    assert [p.data for p in predicted_apps] == [a.data for a in actual_apps]
    changed = [
        a for p, a in zip(predicted_apps, actual_apps, strict=True) if p.digests != a.digests
    ]
    assert [decode(a).to_json()["DevicePath"].endswith("vmlinuz)") for a in changed] == [True]
    assert changed[0].digest(Alg.SHA256) == authenticode_digest(kernels.modified.read_bytes())
