"""``stockade boot init|node|predict``: outputs and the exit-code contract (0 booted, 1 halted
by Secure Boot, 2 bad input)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from stockade.release.build import ENVELOPE_NAME
from support.cli import run_stockade as stockade

pytestmark = pytest.mark.swtpm


@pytest.fixture(scope="module")
def signed_release(release, org_keys) -> Path:
    envelope = release.directory / ENVELOPE_NAME
    if not envelope.exists():
        signed = stockade(
            "release", "sign", str(release.directory / "manifest.json"),
            "--key", str(org_keys.paths.org_key), "--out", str(envelope),
        )  # fmt: skip
        assert signed.returncode == 0, signed.stderr
    return release.directory


def test_boot_node_matches_boot_predict(
    software_tpm, platform_dir, signed_release, tmp_path, org_keys
):
    log = tmp_path / "log.bin"
    booted = stockade(
        "boot", "node", "--tcti", software_tpm.tcti, "--platform", str(platform_dir),
        "--release", str(signed_release), "--log", str(log), "--format", "json",
    )  # fmt: skip
    assert booted.returncode == 0, booted.stderr
    document = json.loads(booted.stdout)
    assert document["booted"] is True and document["halted"] is None
    replayed = stockade("eventlog", "replay", str(log), "--format", "json")
    predicted = stockade(
        "boot", "predict", "--release", str(signed_release), "--platform", str(platform_dir),
        "--org-key", str(org_keys.paths.org_pub), "--format", "json",
    )  # fmt: skip
    assert predicted.returncode == 0, predicted.stderr
    assert json.loads(predicted.stdout) == json.loads(replayed.stdout) == document["pcrs"]
    assert set(json.loads(predicted.stdout)["sha256"]) == {*map(str, range(10)), "12"}


def test_halted_boot_exits_1_with_one_line_naming_the_kernel(
    software_tpm, platform_dir, release, kernels, tmp_path
):
    log = tmp_path / "log.bin"
    halted = stockade(
        "boot", "node", "--tcti", software_tpm.tcti, "--platform", str(platform_dir),
        "--release", str(release.directory), "--kernel", str(kernels.rogue), "--log", str(log),
    )  # fmt: skip
    assert halted.returncode == 1
    lines = halted.stderr.strip().splitlines()
    assert len(lines) == 1
    assert "Secure Boot halted the boot at kernel (/EFI/stockade/vmlinuz)" in lines[0]
    assert log.stat().st_size > 0  # the log up to the halt is written


def test_secure_boot_off_boots_the_same_kernel(
    software_tpm, platform_dir, release, kernels, tmp_path
):
    booted = stockade(
        "boot", "node", "--tcti", software_tpm.tcti, "--platform", str(platform_dir),
        "--release", str(release.directory), "--kernel", str(kernels.rogue),
        "--no-secure-boot", "--log", str(tmp_path / "log.bin"),
    )  # fmt: skip
    assert booted.returncode == 0, booted.stderr


@pytest.mark.parametrize(
    "problem",
    ["no-tpm", "no-release", "bad-platform"],
)
def test_bad_input_exits_2(software_tpm, platform_dir, release, tmp_path, problem):
    args = {
        "--tcti": software_tpm.tcti,
        "--platform": str(platform_dir),
        "--release": str(release.directory),
        "--log": str(tmp_path / "log.bin"),
    }
    if problem == "no-tpm":
        args["--tcti"] = "swtpm:host=127.0.0.1,port=1"
    elif problem == "no-release":
        args["--release"] = str(tmp_path / "missing")
    else:
        args["--platform"] = str(tmp_path)
    result = stockade("boot", "node", *[part for pair in args.items() for part in pair])
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_predict_with_a_wrong_org_key_exits_1(platform_dir, signed_release, rogue_keys):
    result = stockade(
        "boot", "predict", "--release", str(signed_release), "--platform", str(platform_dir),
        "--org-key", str(rogue_keys.paths.org_pub),
    )  # fmt: skip
    assert result.returncode == 1
