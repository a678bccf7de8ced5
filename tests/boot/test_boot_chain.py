"""A good boot on a software TPM: the log it writes is what tpm2-tools and the TPM agree on."""

from __future__ import annotations

import dataclasses
import hashlib

import pytest
from boot_support import (
    pcrread,
    replay_as_tpm2_tools_5_4,
    tpm2_eventlog,
    tpm2_eventlog_knows_startup_locality,
)

from stockade.appraisal.measured_boot import RELEASE_PCR
from stockade.boot import BootResult, boot_node, load_release
from stockade.evidence.algorithms import Alg
from stockade.evidence.event_data import ImageLoadData, TextData, UefiVariableData, decode
from stockade.evidence.eventlog import EventLog, EventType
from stockade.evidence.pcr_values import bank_name
from stockade.evidence.replay import replay, verify_log
from stockade.evidence.secureboot import secure_boot_state
from stockade.release.authenticode import authenticode_digest

pytestmark = pytest.mark.swtpm


@pytest.fixture
def good_boot(software_tpm, platform, release, tmp_path) -> BootResult:
    result = boot_node(
        software_tpm, platform, load_release(release.directory), log_path=tmp_path / "log.bin"
    )
    assert result.booted, result.halted
    return result


def _measured_pcrs(log: EventLog) -> list[int]:
    return sorted({e.pcr for e in log.events if e.type != EventType.EV_NO_ACTION})


@pytest.mark.parametrize("locality", [3, 0])
def test_log_parses_with_tpm2_eventlog_and_replays_to_the_tpm(
    software_tpm, platform, release, tmp_path, locality
):
    machine = dataclasses.replace(platform, startup_locality=locality)
    log_path = tmp_path / "log.bin"
    result = boot_node(software_tpm, machine, load_release(release.directory), log_path=log_path)
    assert result.booted
    tools = tpm2_eventlog(log_path)
    assert tools.returncode == 0, tools.stderr
    assert "WARN" not in tools.stderr + tools.stdout
    assert tools.event_count == len(result.log.events)

    pcrs = _measured_pcrs(result.log)
    assert pcrs == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, RELEASE_PCR]
    banks = [bank_name(alg) for alg in result.banks]
    assert banks == ["sha1", "sha256"]
    tpm = pcrread(software_tpm.tcti, banks, pcrs)
    ours = replay(result.log).values
    theirs = tools.pcrs
    for alg in result.banks:
        for index in pcrs:
            actual = tpm.get(alg, index)
            assert actual is not None and actual != bytes(len(actual))
            assert ours.get(alg, index) == actual, (bank_name(alg), index)
            if index == 0 and locality and not tpm2_eventlog_knows_startup_locality():
                # tpm2-tools < 5.5 starts PCR 0 at zero and extends the StartupLocality
                # event's zero digest (tpm2-tools issue #3146, fixed by pull request #3242).
                assert theirs.get(alg, 0) == replay_as_tpm2_tools_5_4(result.log, alg, 0)
                assert theirs.get(alg, 0) != actual
                continue
            assert theirs.get(alg, index) == actual, (bank_name(alg), index)


def test_log_file_is_byte_exact_and_starts_like_firmware(good_boot, software_tpm):
    data = good_boot.log_path.read_bytes()
    assert data == good_boot.log_bytes
    assert EventLog.parse(data).marshal() == data
    spec = good_boot.log.spec_id
    assert spec is not None and spec.is_crypto_agile
    assert [a.algorithm_id for a in spec.algorithms] == [Alg.SHA1, Alg.SHA256]
    first = good_boot.log.events[1]
    assert (first.type, first.data) == (EventType.EV_NO_ACTION, b"StartupLocality\x00\x03")
    # swtpm was started from locality 3, so PCR 0 started at 0...03.
    assert replay(good_boot.log).values.get(Alg.SHA256, 0) == pcrread(
        software_tpm.tcti, ["sha256"], [0]
    ).get(Alg.SHA256, 0)


def test_events_follow_the_pc_client_firmware_profile(good_boot, platform, release, kernels):
    events = good_boot.log.events[1:]
    shape = [(e.pcr, EventType(e.type).name) for e in events]
    expected_start = [
        (0, "EV_NO_ACTION"),
        (0, "EV_S_CRTM_VERSION"),
        (0, "EV_EFI_PLATFORM_FIRMWARE_BLOB2"),
        *[(7, "EV_EFI_VARIABLE_DRIVER_CONFIG")] * 5,
        (7, "EV_SEPARATOR"),
        (1, "EV_EFI_VARIABLE_BOOT"),
        (1, "EV_EFI_VARIABLE_BOOT"),
        (4, "EV_EFI_ACTION"),
        *[(pcr, "EV_SEPARATOR") for pcr in range(7)],
        (5, "EV_EFI_GPT_EVENT"),
        (7, "EV_EFI_VARIABLE_AUTHORITY"),
        (4, "EV_EFI_BOOT_SERVICES_APPLICATION"),
        (4, "EV_EFI_BOOT_SERVICES_APPLICATION"),
    ]
    assert shape[: len(expected_start)] == expected_start
    assert shape[-2:] == [(5, "EV_EFI_ACTION"), (5, "EV_EFI_ACTION")]
    variables = [decode(e) for e in events if e.type == EventType.EV_EFI_VARIABLE_DRIVER_CONFIG]
    assert [v.unicode_name for v in variables] == ["SecureBoot", "PK", "KEK", "db", "dbx"]
    assert variables[0].variable_data == b"\x01"

    # One authority for three stages signed by one db certificate, measured once.
    authorities = [e for e in events if e.type == EventType.EV_EFI_VARIABLE_AUTHORITY]
    assert len(authorities) == 1
    authority = decode(authorities[0])
    assert isinstance(authority, UefiVariableData) and authority.unicode_name == "db"
    assert authority.variable_data == (
        platform.db[0].entries[0].owner.bytes_le + platform.db[0].entries[0].data
    )

    applications = [e for e in events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION]
    images = [stage.image for stage in platform.stages] + [kernels.signed]
    assert len(applications) == len(images) == 3
    for event, image in zip(applications, images, strict=True):
        data = image.read_bytes()
        assert event.digest(Alg.SHA256) == authenticode_digest(data, "sha256")
        assert event.digest(Alg.SHA1) == authenticode_digest(data, "sha1")
        loaded = decode(event)
        assert isinstance(loaded, ImageLoadData) and loaded.length == len(data)
    kernel_path = loaded.to_json()["DevicePath"]
    assert kernel_path.startswith("PciRoot(0x0)/Pci(0x1f,0x2)/Sata(0,65535,0)/HD(1,GPT,")
    assert kernel_path.endswith("/File(\\EFI\\stockade\\vmlinuz)")


def test_grub_and_release_measurements(good_boot, release):
    manifest = release.manifest
    texts = {
        (e.pcr, decode(e).text): e
        for e in good_boot.log.events
        if e.type == EventType.EV_IPL and isinstance(decode(e), TextData)
    }
    linux = f"/EFI/stockade/vmlinuz {manifest.cmdline}"
    cmdline = texts[(8, f"kernel_cmdline: {linux}")]
    # GRUB 2: the digest covers the command line without its prefix and NUL.
    assert cmdline.digest(Alg.SHA256) == hashlib.sha256(linux.encode()).digest()
    assert cmdline.data.endswith(b"\x00")
    initrd = texts[(9, "/EFI/stockade/initrd.img")]
    initrd_bytes = (release.directory / "initrd.img").read_bytes()
    assert initrd.digest(Alg.SHA1) == hashlib.sha1(initrd_bytes).digest()
    assert initrd.digest(Alg.SHA256) == manifest.initrd.sha256
    kernel_file = texts[(9, "/EFI/stockade/vmlinuz")]
    assert kernel_file.digest(Alg.SHA256) == manifest.kernel.file.sha256

    release_events = [e for e in good_boot.log.events if e.pcr == RELEASE_PCR]
    from stockade.release.manifest import manifest_digest

    assert [e.data.decode() for e in release_events] == [
        f"stockade-release: stockade-os 1.0.0 sha256:{manifest_digest(manifest).hex()}",
        f"stockade-usr-verity: {manifest.usr.verity.root_hash.hex()}",
    ]
    for event in release_events:
        assert event.digest(Alg.SHA256) == hashlib.sha256(event.data).digest()


def test_secure_boot_state_reads_back_from_the_attested_log(good_boot, software_tpm, kernels):
    tpm = pcrread(software_tpm.tcti, ["sha1", "sha256"], _measured_pcrs(good_boot.log))
    state = secure_boot_state(verify_log(good_boot.log, tpm))
    assert state.enabled
    [certificate] = state.keys["db"].certificates()
    assert "Stockade Test Secure Boot Signing" in certificate.subject.rfc4514_string()
    assert len(state.boot_applications) == 3
    assert state.boot_applications[0].authority is not None
    assert (
        state.boot_applications[2].digests["sha256"]
        == authenticode_digest(kernels.signed.read_bytes()).hex()
    )
    assert state.kernel_command_line is not None
    assert "usrhash=" in state.kernel_command_line


def test_two_boots_write_the_same_log(software_tpm, platform, release, good_boot):
    again = boot_node(software_tpm, platform, load_release(release.directory))
    assert again.log_bytes == good_boot.log_bytes
    assert again.log_path == software_tpm.instance_dir / "binary_bios_measurements"
    assert again.log_path.read_bytes() == again.log_bytes
