"""``stockade image policy sign|verify`` with the trust policy's serial and expiry, as
subprocesses: the serial and expiry shown, an expired policy refused (exit 2 when signing,
exit 1 when verifying), a version 1 policy signed with a warning."""

from __future__ import annotations

import json

import pytest

from stockade.images.policy import sign_trust_policy
from stockade.release.keys import private_pem, public_pem
from support.cli import run_stockade as stockade


@pytest.fixture
def files(tmp_path, org_key):
    paths = {
        "org_key": tmp_path / "org.key",
        "org_pub": tmp_path / "org.pub",
        "policy": tmp_path / "policy.json",
        "envelope": tmp_path / "policy.dsse.json",
    }
    paths["org_key"].write_bytes(private_pem(org_key))
    paths["org_pub"].write_bytes(public_pem(org_key.public_key()))
    return paths


def _sign(files, document):
    files["policy"].write_text(json.dumps(document, indent=2))
    return stockade(
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


def _verify(files, *extra):
    return stockade(
        "image", "policy", "verify", files["envelope"], "--org-pub", files["org_pub"], *extra
    )


def test_serial_and_expiry_are_signed_and_shown(files, policy_document):
    document = {**policy_document, "version": 2, "serial": 7, "expires": "2099-01-01T00:00:00Z"}
    signed = _sign(files, document)
    assert signed.returncode == 0, signed.stderr
    assert signed.stderr == ""
    summary = json.loads(signed.stdout)
    assert (summary["serial"], summary["expires"]) == (7, "2099-01-01T00:00:00Z")
    shown = _verify(files, "--format", "json")
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout)["serial"] == 7
    text = _verify(files)
    assert "serial 7, expires 2099-01-01T00:00:00Z" in text.stdout


def test_an_expired_policy_is_not_signed(files, policy_document):
    document = {**policy_document, "version": 2, "serial": 7, "expires": "2001-01-01T00:00:00Z"}
    refused = _sign(files, document)
    assert refused.returncode == 2
    assert "expires 2001-01-01T00:00:00Z, which is already past" in refused.stderr
    assert not files["envelope"].exists()


def test_an_expired_policy_does_not_verify(files, policy_document, org_key):
    document = {**policy_document, "version": 2, "serial": 7, "expires": "2001-01-01T00:00:00Z"}
    files["envelope"].write_bytes(sign_trust_policy(document, org_key))
    refused = _verify(files, "--format", "json")
    assert refused.returncode == 1
    answer = json.loads(refused.stdout)
    assert answer["check"] == "policy" and "expired at 2001-01-01T00:00:00Z" in answer["reason"]


def test_a_version_1_policy_is_signed_with_a_warning(files, policy_document):
    signed = _sign(files, policy_document)
    assert signed.returncode == 0, signed.stderr
    assert "format version 1, without serial or expiry" in signed.stderr
    assert json.loads(signed.stdout)["serial"] == 0
    assert "version 1: no serial, never expires" in _verify(files).stdout
