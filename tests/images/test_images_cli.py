"""``stockade image sign|verify|policy``, as subprocesses: exit 0 valid, 1 rejected (one
line naming the check), 2 unreadable input."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import serialization
from images_support import REFERENCE, TAG

from stockade.release.keys import private_pem, public_pem
from support.cli import one_error_line
from support.cli import run_stockade as stockade


@pytest.fixture
def files(tmp_path, org_key, build_key, stranger_key, policy_document):
    paths = {
        "org_key": tmp_path / "org.key",
        "org_pub": tmp_path / "org.pub",
        "build_key": tmp_path / "build.key",
        "stranger_key": tmp_path / "stranger.key",
        "policy": tmp_path / "policy.json",
        "envelope": tmp_path / "policy.dsse.json",
    }
    paths["org_key"].write_bytes(private_pem(org_key))
    paths["org_pub"].write_bytes(public_pem(org_key.public_key()))
    paths["build_key"].write_bytes(private_pem(build_key))
    paths["stranger_key"].write_bytes(
        stranger_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
    )
    paths["policy"].write_text(json.dumps(policy_document, indent=2))
    return paths


def test_policy_sign_sign_and_verify(files, layout_dir):
    signed = stockade(
        "image",
        "policy",
        "sign",
        files["policy"],
        "--key",
        files["org_key"],
        "--out",
        files["envelope"],
        "--format",
        "json",
    )
    assert signed.returncode == 0, signed.stderr
    digest = json.loads(signed.stdout)["digest"]
    shown = stockade(
        "image",
        "policy",
        "verify",
        files["envelope"],
        "--org-pub",
        files["org_pub"],
        "--format",
        "json",
    )
    assert json.loads(shown.stdout)["digest"] == digest

    image = f"{layout_dir}:{TAG}"
    verify = (
        "image",
        "verify",
        image,
        "--reference",
        REFERENCE,
        "--policy",
        files["envelope"],
        "--org-pub",
        files["org_pub"],
    )
    unsigned = stockade(*verify, "--format", "json")
    assert one_error_line(unsigned, 1).startswith("stockade: image rejected (unsigned)")
    assert json.loads(unsigned.stdout) | {"reason": ""} == {
        "valid": False,
        "check": "unsigned",
        "reason": "",
    }

    bad = stockade("image", "sign", image, "--key", files["stranger_key"], "--reference", REFERENCE)
    assert bad.returncode == 0, bad.stderr
    assert "untrusted-key" in one_error_line(stockade(*verify), 1)

    good = stockade(
        "image",
        "sign",
        image,
        "--key",
        files["build_key"],
        "--reference",
        REFERENCE,
        "--format",
        "json",
    )
    assert good.returncode == 0, good.stderr
    assert json.loads(good.stdout)["signature_tag"].endswith(".sig")
    ok = stockade(*verify, "--format", "json")
    assert ok.returncode == 0, ok.stderr
    document = json.loads(ok.stdout)
    assert document["valid"] is True
    assert document["signer"] == "build"
    assert document["policy_digest"] == digest
    text = stockade(*verify)
    assert text.returncode == 0
    assert "by 'build'" in text.stdout


def test_unreadable_inputs_exit_2(files, layout_dir, tmp_path):
    assert (
        stockade(
            "image",
            "policy",
            "sign",
            files["policy"],
            "--key",
            files["org_key"],
            "--out",
            files["envelope"],
        ).returncode
        == 0
    )
    missing = stockade(
        "image",
        "verify",
        f"{tmp_path / 'nope'}:{TAG}",
        "--reference",
        REFERENCE,
        "--policy",
        files["envelope"],
        "--org-pub",
        files["org_pub"],
    )
    assert "not an OCI image layout" in one_error_line(missing, 2)
    ed = stockade(
        "image", "sign", f"{layout_dir}:{TAG}", "--key", files["org_key"], "--reference", REFERENCE
    )
    assert "ECDSA P-256" in one_error_line(ed, 2)
    (tmp_path / "bad.json").write_text('{"version": 1}')
    bad_policy = stockade(
        "image",
        "policy",
        "sign",
        tmp_path / "bad.json",
        "--key",
        files["org_key"],
        "--out",
        tmp_path / "out.json",
    )
    assert "trust policy" in one_error_line(bad_policy, 2)


def test_policy_from_another_org_exits_1(files, layout_dir, tmp_path, build_key):
    from cryptography.hazmat.primitives.asymmetric import ed25519

    other = tmp_path / "other.pub"
    other.write_bytes(public_pem(ed25519.Ed25519PrivateKey.generate().public_key()))
    assert (
        stockade(
            "image",
            "policy",
            "sign",
            files["policy"],
            "--key",
            files["org_key"],
            "--out",
            files["envelope"],
        ).returncode
        == 0
    )
    result = stockade(
        "image",
        "verify",
        f"{layout_dir}:{TAG}",
        "--reference",
        REFERENCE,
        "--policy",
        files["envelope"],
        "--org-pub",
        other,
        "--format",
        "json",
    )
    assert "(policy)" in one_error_line(result, 1)
    assert json.loads(result.stdout)["check"] == "policy"


def test_help_lists_the_commands():
    result = stockade("image", "--help")
    assert result.returncode == 0
    for command in ("sign", "verify", "policy"):
        assert command in result.stdout
    assert Path(sys.executable).exists()
