"""Credential activation cross-checked with tpm2-tools, RSA and ECC EKs.

Stockade's software MakeCredential is recovered by tpm2_activatecredential and
by Stockade's own activation; tpm2_makecredential's output is recovered by
Stockade; the wrong EK or the wrong AK name recovers nothing.
"""

from __future__ import annotations

import os
import subprocess

import pytest

from crosscheck.conftest import make_tools
from stockade.evidence.algorithms import Alg
from stockade.evidence.credential import (
    make_credential,
    marshal_credential_file,
    unmarshal_credential_file,
)
from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind
from stockade.tpm.ak import create_ak
from stockade.tpm.credential import activate_credential
from stockade.tpm.device import Tpm, TpmCommandFailed
from stockade.tpm.ek import read_endorsement

pytestmark = [pytest.mark.swtpm, pytest.mark.crosscheck]

KINDS = [KeyKind.RSA, KeyKind.ECC]


@pytest.fixture(params=KINDS, ids=lambda k: k.value)
def tools_keys(request, software_tpm, tmp_path):
    kind = request.param
    tools = make_tools(software_tpm.tcti, tmp_path)
    tools("tpm2_createek", "-c", "ek.ctx", "-G", kind.value, "-u", "ek.pub")
    tools("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", "-G", "ecc", "-g", "sha256",
          "-s", "ecdsa", "-u", "ak.pub", "-n", "ak.name")  # fmt: skip
    ek = TpmPublic.unmarshal_tpm2b((tmp_path / "ek.pub").read_bytes())
    name = (tmp_path / "ak.name").read_bytes()
    return software_tpm, tmp_path, ek, name


def activate_with_tools(tcti, cwd, credential: bytes) -> tuple[int, bytes]:
    """Returns (exit code, recovered secret)."""
    (cwd / "cred.in").write_bytes(credential)
    script = f"""
set -e
export TPM2TOOLS_TCTI='{tcti}'
tpm2_flushcontext -t; tpm2_flushcontext -s
tpm2_startauthsession --policy-session -S session.ctx
tpm2_policysecret -S session.ctx -c e
set +e
tpm2_activatecredential -c ak.ctx -C ek.ctx -i cred.in -o secret.out -P session:session.ctx
rc=$?
tpm2_flushcontext session.ctx
tpm2_flushcontext -t; tpm2_flushcontext -s
exit $rc
"""
    result = subprocess.run(["bash", "-c", script], cwd=cwd, capture_output=True, check=False)
    out = cwd / "secret.out"
    secret = out.read_bytes() if result.returncode == 0 and out.exists() else b""
    if out.exists():
        out.unlink()
    return result.returncode, secret


def test_stockade_credential_recovered_by_tpm2_activatecredential(tools_keys):
    swtpm, cwd, ek, ak_name = tools_keys
    secret = os.urandom(32)
    blob = make_credential(ek, ak_name, secret)
    code, recovered = activate_with_tools(swtpm.tcti, cwd, marshal_credential_file(blob))
    assert code == 0
    assert recovered == secret


def test_wrong_ak_name_recovers_nothing_with_tools(tools_keys):
    swtpm, cwd, ek, ak_name = tools_keys
    other_name = ak_name[:2] + bytes(b ^ 0xFF for b in ak_name[2:])
    blob = make_credential(ek, other_name, os.urandom(32))
    code, recovered = activate_with_tools(swtpm.tcti, cwd, marshal_credential_file(blob))
    assert code != 0
    assert recovered == b""


def test_other_tpms_ek_recovers_nothing_with_tools(tools_keys, make_software_tpm):
    swtpm, cwd, ek, ak_name = tools_keys
    other = make_software_tpm()
    with Tpm(other.tcti) as tpm:
        other_ek = read_endorsement(tpm, KeyKind.RSA if ek.type == Alg.RSA else KeyKind.ECC).public
    assert other_ek.name() != ek.name()
    blob = make_credential(other_ek, ak_name, os.urandom(32))
    code, recovered = activate_with_tools(swtpm.tcti, cwd, marshal_credential_file(blob))
    assert code != 0
    assert recovered == b""


@pytest.mark.parametrize("kind", KINDS, ids=lambda k: k.value)
def test_stockade_activation_recovers_stockade_and_tools_credentials(kind, software_tpm, tmp_path):
    secret = os.urandom(32)
    with Tpm(software_tpm.tcti) as tpm:
        ek = read_endorsement(tpm, kind).public
        ak = create_ak(tpm, KeyKind.RSA, ek_kind=kind)
        ours = make_credential(ek, ak.name, secret)
        assert activate_credential(tpm, ak, ours) == secret

        (tmp_path / "ek.pub").write_bytes(ek.marshal_tpm2b())
        (tmp_path / "secret").write_bytes(secret)
        subprocess.run(
            ["tpm2_makecredential", "-T", "none", "-u", "ek.pub", "-s", "secret",
             "-n", ak.name.hex(), "-o", "tools.cred"],
            cwd=tmp_path, check=True, capture_output=True,
        )  # fmt: skip
        theirs = unmarshal_credential_file((tmp_path / "tools.cred").read_bytes())
        assert activate_credential(tpm, ak, theirs) == secret

        wrong_name = make_credential(ek, create_ak(tpm, KeyKind.ECC, ek_kind=kind).name, secret)
        with pytest.raises(TpmCommandFailed):
            activate_credential(tpm, ak, wrong_name)
        assert tpm.transient_object_count() == 0


def test_other_tpms_ek_recovers_nothing_with_stockade(software_tpm, make_software_tpm):
    other = make_software_tpm()
    with Tpm(other.tcti) as tpm:
        foreign_ek = read_endorsement(tpm, KeyKind.RSA).public
    with Tpm(software_tpm.tcti) as tpm:
        ak = create_ak(tpm, KeyKind.RSA)
        blob = make_credential(foreign_ek, ak.name, os.urandom(32))
        with pytest.raises(TpmCommandFailed):
            activate_credential(tpm, ak, blob)
