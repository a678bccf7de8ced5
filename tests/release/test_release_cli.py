"""``stockade keys generate`` and ``stockade release build|sign|verify`` end to end, as
subprocesses: exit 0 valid, 1 verification failure (one line), 2 unreadable input."""

from __future__ import annotations

import json
import random
import shutil
import subprocess
from pathlib import Path

import pytest

from stockade.release import dsse
from stockade.release.keys import load_signing_key
from stockade.release.manifest import PAYLOAD_TYPE, canonical_json
from support.cli import one_error_line
from support.cli import run_stockade as stockade

EFI_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
OTHER_EFI = Path("/usr/lib/systemd/boot/efi/systemd-bootx64.efi")


def ok(*args: object) -> subprocess.CompletedProcess[str]:
    result = stockade(*args)
    assert result.returncode == 0, result.stderr
    return result


@pytest.fixture(scope="module")
def signed_release(tmp_path_factory):
    """Keys, inputs and a built and signed release, made once through the CLI."""
    root = tmp_path_factory.mktemp("cli-release")
    keys = json.loads(ok("keys", "generate", "--out", root / "keys", "--format", "json").stdout)
    rng = random.Random(9)
    kernel = root / "kernel.efi"
    if EFI_STUB.exists():
        shutil.copyfile(EFI_STUB, kernel)
    else:
        kernel.write_bytes(rng.randbytes(20000))
    (root / "initrd").write_bytes(rng.randbytes(7000))
    (root / "usr.raw").write_bytes(rng.randbytes(1 << 20))
    built = json.loads(
        ok(
            "release", "build", "--kernel", kernel, "--initrd", root / "initrd",
            "--cmdline", "console=ttyS0 ro quiet", "--usr-image", root / "usr.raw",
            "--version", "2026.5", "--security-version", 4, "--out", root / "release",
            "--name", "acme-os", "--format", "json",
        ).stdout
    )  # fmt: skip
    ok("release", "sign", "--key", keys["org_key"], root / "release" / "manifest.json")
    return root, keys, built


def copy_release(signed_release, tmp_path: Path) -> Path:
    root, _, _ = signed_release
    return Path(shutil.copytree(root / "release", tmp_path / "release"))


def verify(keys, release: Path, *extra: object) -> subprocess.CompletedProcess[str]:
    return stockade(
        "release", "verify", "--pub", keys["org_pub"], release / "manifest.dsse.json", *extra
    )


def test_keys_generate_prints_one_json_document_and_refuses_to_overwrite(signed_release):
    root, keys, _ = signed_release
    assert {Path(keys[name]).name for name in ("org_key", "org_pub")} == {"org.key", "org.pub"}
    assert Path(keys["secure_boot_cert"]).name == "secureboot.crt"
    assert keys["secure_boot_subject"] == "Stockade Secure Boot Signing"
    line = one_error_line(stockade("keys", "generate", "--out", root / "keys"), 2)
    assert "refusing to overwrite" in line


def test_build_sign_verify_round_trip(signed_release):
    root, keys, built = signed_release
    release = root / "release"
    assert sorted(path.name for path in release.iterdir()) == [
        "initrd.img", "manifest.dsse.json", "manifest.json", "usr.img", "usr.verity", "vmlinuz",
    ]  # fmt: skip
    assert built["cmdline"] == f"console=ttyS0 ro quiet usrhash={built['usr_root_hash']}"
    if EFI_STUB.exists() and shutil.which("pesign"):
        hashed = subprocess.run(
            ["pesign", "-h", "-i", str(release / "vmlinuz")],
            capture_output=True, text=True, check=True,
        )  # fmt: skip
        assert hashed.stdout.split()[-1] == built["kernel_authenticode_sha256"]
    result = verify(keys, release, "--artifacts", release, "--min-security-version", 4,
                    "--format", "json")  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["valid"] is True and document["artifacts_verified"] is True
    assert document["manifest_sha256"] == built["manifest_sha256"]
    assert document["keyids"] == [keys["org_keyid"]]
    assert document["security_version"] == 4
    if shutil.which("veritysetup"):
        check = subprocess.run(
            ["veritysetup", "verify", str(release / "usr.img"), str(release / "usr.verity"),
             built["usr_root_hash"]],
            capture_output=True, check=False,
        )  # fmt: skip
        assert check.returncode == 0


def test_swapped_kernel_fails_verify_artifacts(signed_release, tmp_path):
    _, keys, _ = signed_release
    release = copy_release(signed_release, tmp_path)
    replacement = OTHER_EFI.read_bytes() if OTHER_EFI.exists() else b"another kernel"
    (release / "vmlinuz").write_bytes(replacement)
    assert verify(keys, release).returncode == 0  # the signature alone still holds
    line = one_error_line(verify(keys, release, "--artifacts", release), 1)
    assert "vmlinuz" in line


def test_modified_usr_image_fails_and_names_the_block(signed_release, tmp_path):
    _, keys, _ = signed_release
    release = copy_release(signed_release, tmp_path)
    image = bytearray((release / "usr.img").read_bytes())
    image[123 * 4096 + 4000] ^= 0x01
    (release / "usr.img").write_bytes(image)
    result = verify(keys, release, "--artifacts", release, "--format", "json")
    line = one_error_line(result, 1)
    assert "usr.img: data block 123 " in line
    assert json.loads(result.stdout) == {"valid": False, "reason": line.removeprefix("stockade: ")}


def test_lower_security_version_than_required_fails(signed_release):
    root, keys, _ = signed_release
    line = one_error_line(verify(keys, root / "release", "--min-security-version", 5), 1)
    assert "security version 4, below the minimum 5" in line


def test_tampered_manifest_or_untrusted_key_fails(signed_release, tmp_path):
    root, keys, _ = signed_release
    release = copy_release(signed_release, tmp_path)
    envelope = json.loads((release / "manifest.dsse.json").read_text())
    import base64

    payload = json.loads(base64.b64decode(envelope["payload"]))
    payload["security_version"] = 99
    envelope["payload"] = base64.b64encode(json.dumps(payload).encode()).decode()
    (release / "manifest.dsse.json").write_text(json.dumps(envelope))
    assert "valid signature" in one_error_line(verify(keys, release), 1)
    other = json.loads(
        ok("keys", "generate", "--out", tmp_path / "other", "--type", "ed25519",
           "--format", "json").stdout
    )  # fmt: skip
    one_error_line(verify(other, root / "release"), 1)


def test_unreadable_inputs_exit_2(signed_release, tmp_path):
    root, keys, _ = signed_release
    one_error_line(verify(keys, tmp_path), 2)  # no envelope there
    (tmp_path / "manifest.dsse.json").write_text("{not json")
    one_error_line(verify(keys, tmp_path), 2)
    (tmp_path / "bad.pub").write_text("-----BEGIN PUBLIC KEY-----\nnope\n-----END PUBLIC KEY-----")
    bad_key = {"org_pub": tmp_path / "bad.pub"}
    one_error_line(verify(bad_key, root / "release"), 2)
    missing = copy_release(signed_release, tmp_path)
    (missing / "initrd.img").unlink()
    one_error_line(verify(keys, missing, "--artifacts", missing), 2)


def test_build_refuses_a_cmdline_bound_to_another_usr_image(signed_release, tmp_path):
    root, _, _ = signed_release
    result = stockade(
        "release", "build", "--kernel", root / "kernel.efi", "--initrd", root / "initrd",
        "--cmdline", f"ro usrhash={'ab' * 32}", "--usr-image", root / "usr.raw",
        "--version", "1", "--security-version", 1, "--out", tmp_path / "r",
    )  # fmt: skip
    assert "usrhash" in one_error_line(result, 2)


# A second, quoted usrhash= (systemd unquotes it and takes the last) at each step.

EVIL = "ee" * 32


def forged_cmdline(root_hash: str) -> str:
    return f'console=ttyS0 ro quiet usrhash={root_hash} "usrhash={EVIL}"'


def test_build_refuses_a_quoted_second_usrhash(signed_release, tmp_path):
    root, _, _ = signed_release
    salt, uuid = "09" * 32, "99999999-8888-4777-8666-555555555555"

    def build(cmdline: str, out: Path) -> subprocess.CompletedProcess[str]:
        return stockade(
            "release", "build", "--kernel", root / "kernel.efi", "--initrd", root / "initrd",
            "--cmdline", cmdline, "--usr-image", root / "usr.raw", "--version", "1",
            "--security-version", 1, "--out", out, "--salt", salt, "--uuid", uuid,
            "--format", "json",
        )  # fmt: skip

    built = json.loads(build("console=ttyS0 ro quiet", tmp_path / "good").stdout)
    result = build(forged_cmdline(built["usr_root_hash"]), tmp_path / "forged")
    line = one_error_line(result, 2)
    assert f'"usrhash={EVIL}"' in line and "2 times" in line
    assert not (tmp_path / "forged").exists()


def test_sign_refuses_a_manifest_with_a_quoted_second_usrhash(signed_release, tmp_path):
    _, keys, built = signed_release
    release = copy_release(signed_release, tmp_path)
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["cmdline"] = forged_cmdline(built["usr_root_hash"])
    (release / "manifest.json").write_bytes(canonical_json(manifest))
    (release / "manifest.dsse.json").unlink()
    result = stockade("release", "sign", "--key", keys["org_key"], release / "manifest.json")
    assert f'"usrhash={EVIL}"' in one_error_line(result, 2)
    assert not (release / "manifest.dsse.json").exists()


def test_verify_artifacts_refuses_a_signed_release_with_a_quoted_second_usrhash(
    signed_release, tmp_path
):
    """Signed outside this check (an older Stockade, or by hand), with every artifact
    intact: the signature and the files verify, the command line does not."""
    _, keys, built = signed_release
    release = copy_release(signed_release, tmp_path)
    manifest = json.loads((release / "manifest.json").read_text())
    manifest["cmdline"] = forged_cmdline(built["usr_root_hash"])
    org_key = load_signing_key(Path(keys["org_key"]).read_bytes(), "org key")
    envelope = dsse.sign(canonical_json(manifest), PAYLOAD_TYPE, [org_key])
    (release / "manifest.dsse.json").write_bytes(envelope.to_bytes())
    result = verify(keys, release, "--artifacts", release, "--format", "json")
    line = one_error_line(result, 1)
    assert f'"usrhash={EVIL}"' in line
    assert json.loads(result.stdout) == {"valid": False, "reason": line.removeprefix("stockade: ")}
