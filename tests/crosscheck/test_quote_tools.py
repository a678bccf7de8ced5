"""Quotes cross-checked with tpm2-tools in both directions, RSA and ECC AKs.

A quote made by tpm2_quote verifies with ``stockade quote verify``; a quote made
by Stockade passes tpm2_checkquote; tampering with message, signature, PCR
values or nonce fails both.
"""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from crosscheck.conftest import make_tools, run_stockade
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.templates import KeyKind
from stockade.evidence.tpm2_tools_files import read_pcr_file, write_pcr_file
from stockade.tpm.ak import create_ak
from stockade.tpm.device import Tpm
from stockade.tpm.quote import quote

pytestmark = [pytest.mark.swtpm, pytest.mark.crosscheck]

SELECTION = "sha256:0,1,2,3,4,5,6,7,16+sha1:0,16"
AK_ARGS = {
    KeyKind.RSA: ["-G", "rsa", "-g", "sha256", "-s", "rsassa"],
    KeyKind.ECC: ["-G", "ecc", "-g", "sha256", "-s", "ecdsa"],
}


def flip(path: Path, offset: int) -> Path:
    data = bytearray(path.read_bytes())
    data[offset % len(data)] ^= 0x01
    out = path.with_name(f"{path.name}.flip{offset}")
    out.write_bytes(bytes(data))
    return out


def stockade_verify(
    files: dict[str, Path], nonce: str, *extra: str
) -> subprocess.CompletedProcess[str]:
    return run_stockade(
        "quote", "verify", "--ak", str(files["ak"]), "--message", str(files["msg"]),
        "--signature", str(files["sig"]), "--pcrs", str(files["pcrs"]), "--nonce", nonce,
        "--format", "json", *extra,
    )  # fmt: skip


def checkquote(files: dict[str, Path], nonce: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["tpm2_checkquote", "-u", str(files["ak"]), "-m", str(files["msg"]),
         "-s", str(files["sig"]), "-f", str(files["pcrs"]), "-q", nonce, "-g", "sha256"],
        capture_output=True, text=True, check=False,
    )  # fmt: skip


def digest_offsets(pcr_file: bytes) -> list[int]:
    """Offsets of real digest bytes in a serialized PCR file (not struct padding)."""
    selection = PcrSelection.parse(SELECTION)
    values = read_pcr_file(pcr_file)
    offsets = []
    base = 132 + 4
    for position, (alg, index) in enumerate(selection.items()):
        digest = values.get(alg, index)
        assert digest is not None
        list_index, slot = divmod(position, 8)
        start = base + list_index * 532 + 4 + slot * 66 + 2
        offsets.extend([start, start + len(digest) - 1])
    return offsets


@pytest.fixture(params=[KeyKind.RSA, KeyKind.ECC], ids=lambda k: k.value)
def tools_quote(request, software_tpm, tmp_path):
    """A quote made entirely by tpm2-tools: EK, AK, extend, quote."""
    kind = request.param
    tools = make_tools(software_tpm.tcti, tmp_path)
    tools("tpm2_createek", "-c", "ek.ctx", "-G", "rsa", "-u", "ek.pub")
    tools("tpm2_createak", "-C", "ek.ctx", "-c", "ak.ctx", *AK_ARGS[kind], "-u", "ak.pub",
          "-n", "ak.name", "-f", "pem", "-p", "")  # fmt: skip
    # -f pem writes ak.pub as PEM; also write the TPM2B_PUBLIC form.
    tools("tpm2_readpublic", "-c", "ak.ctx", "-o", "ak.tpm2b", "-f", "tss")
    tools("tpm2_pcrextend", "16:sha256=" + "ab" * 32)
    nonce = os.urandom(16).hex()
    tools("tpm2_quote", "-c", "ak.ctx", "-l", SELECTION, "-q", nonce, "-m", "q.msg",
          "-s", "q.sig", "-o", "q.pcrs", "-g", "sha256")  # fmt: skip
    files = {
        "ak": tmp_path / "ak.tpm2b",
        "pem": tmp_path / "ak.pub",
        "msg": tmp_path / "q.msg",
        "sig": tmp_path / "q.sig",
        "pcrs": tmp_path / "q.pcrs",
    }
    return files, nonce


def test_tpm2_quote_verifies_with_stockade(tools_quote):
    files, nonce = tools_quote
    result = stockade_verify(files, nonce)
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    assert document["valid"] is True
    assert document["selection"] == SELECTION
    assert document["pcrs"]["sha256"]["16"] != "00" * 32  # the extend is in the quote
    assert checkquote(files, nonce).returncode == 0


def test_tpm2_quote_with_pem_ak_verifies_only_when_the_operator_vouches(tools_quote):
    files, nonce = tools_quote
    refused = stockade_verify({**files, "ak": files["pem"]}, nonce)
    assert refused.returncode == 1
    assert json.loads(refused.stdout)["check"] == "attestation-key"
    result = stockade_verify({**files, "ak": files["pem"]}, nonce, "--trust-bare-key")
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout)["ak_restricted"].startswith("not shown")


def test_tampering_fails_both_verifiers(tools_quote):
    files, nonce = tools_quote
    message_size = files["msg"].stat().st_size
    signature_size = files["sig"].stat().st_size
    tampered = [
        {**files, "msg": flip(files["msg"], offset)}
        for offset in (0, 4, 10, message_size // 2, message_size - 1)
    ]
    tampered += [
        {**files, "sig": flip(files["sig"], offset)}
        for offset in (6, signature_size // 2, signature_size - 1)
    ]
    tampered += [
        {**files, "pcrs": flip(files["pcrs"], offset)}
        for offset in digest_offsets(files["pcrs"].read_bytes())[::3]
    ]
    for variant in tampered:
        ours = stockade_verify(variant, nonce)
        assert ours.returncode == 1, (variant, ours.stdout, ours.stderr)
        assert json.loads(ours.stdout)["valid"] is False
        assert checkquote(variant, nonce).returncode != 0, variant


def test_every_byte_flip_is_rejected_in_process(tools_quote):
    """Exhaustive over the message and signature, with the pure verifier."""
    from stockade.evidence import EvidenceError, Signature, verify_quote
    from stockade.evidence.tpm2_tools_files import read_public_key_file

    files, nonce = tools_quote
    ak = read_public_key_file(files["ak"].read_bytes())
    message = files["msg"].read_bytes()
    signature = files["sig"].read_bytes()
    values = read_pcr_file(files["pcrs"].read_bytes())
    verify_quote(
        ak, message, Signature.unmarshal(signature), nonce=bytes.fromhex(nonce), pcr_values=values
    )
    for offset in range(len(message)):
        bad = bytearray(message)
        bad[offset] ^= 0x80
        with pytest.raises(EvidenceError):
            verify_quote(
                ak, bytes(bad), Signature.unmarshal(signature),
                nonce=bytes.fromhex(nonce), pcr_values=values,
            )  # fmt: skip
    for offset in range(len(signature)):
        bad = bytearray(signature)
        bad[offset] ^= 0x80
        with pytest.raises(EvidenceError):
            verify_quote(
                ak, message, Signature.unmarshal(bytes(bad)),
                nonce=bytes.fromhex(nonce), pcr_values=values,
            )  # fmt: skip


def test_wrong_nonce_fails_both(tools_quote):
    files, nonce = tools_quote
    wrong = ("00" if nonce[:2] != "00" else "11") + nonce[2:]
    ours = stockade_verify(files, wrong)
    assert ours.returncode == 1
    assert json.loads(ours.stdout)["check"] == "nonce"
    assert "nonce" in ours.stderr
    assert checkquote(files, wrong).returncode != 0


@pytest.mark.parametrize("kind", [KeyKind.RSA, KeyKind.ECC], ids=lambda k: k.value)
def test_stockade_quote_passes_tpm2_checkquote(kind, software_tpm, tmp_path):
    nonce = os.urandom(20)
    selection = PcrSelection.parse(SELECTION)
    with Tpm(software_tpm.tcti) as tpm:
        tpm.extend_pcr(16, b"stockade cross-check")
        ak = create_ak(tpm, kind)
        evidence = quote(tpm, ak, selection, nonce)
    files = {
        "ak": tmp_path / "ak.pub",
        "msg": tmp_path / "q.msg",
        "sig": tmp_path / "q.sig",
        "pcrs": tmp_path / "q.pcrs",
    }
    files["ak"].write_bytes(ak.public.marshal_tpm2b())
    files["msg"].write_bytes(evidence.message)
    files["sig"].write_bytes(evidence.signature)
    files["pcrs"].write_bytes(write_pcr_file(evidence.selection, evidence.pcr_values))
    result = checkquote(files, nonce.hex())
    assert result.returncode == 0, result.stderr
    assert stockade_verify(files, nonce.hex()).returncode == 0
    for variant in (
        {**files, "msg": flip(files["msg"], 12)},
        {**files, "sig": flip(files["sig"], 20)},
        {**files, "pcrs": flip(files["pcrs"], digest_offsets(files["pcrs"].read_bytes())[2])},
    ):
        assert checkquote(variant, nonce.hex()).returncode != 0
        assert stockade_verify(variant, nonce.hex()).returncode == 1
    assert checkquote(files, os.urandom(20).hex()).returncode != 0


def test_stockade_tpm_quote_cli_output_passes_tpm2_checkquote(software_tpm, tmp_path):
    nonce = os.urandom(16).hex()
    out = tmp_path / "quote"
    result = run_stockade(
        "tpm", "quote", "--tcti", software_tpm.tcti, "--pcrs", "sha256:0,1,2,3,4,5,6,7",
        "--nonce", nonce, "--out", str(out), "--ak-type", "ecc", "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    document = json.loads(result.stdout)
    files = {
        "ak": Path(document["files"]["ak"]),
        "msg": Path(document["files"]["message"]),
        "sig": Path(document["files"]["signature"]),
        "pcrs": Path(document["files"]["pcrs"]),
    }
    assert checkquote(files, nonce).returncode == 0
    assert stockade_verify(files, nonce).returncode == 0
    # A second quote reuses the saved AK: same AK name.
    again = run_stockade(
        "tpm", "quote", "--tcti", software_tpm.tcti, "--pcrs", "sha256:0", "--nonce", nonce,
        "--out", str(out), "--format", "json",
    )  # fmt: skip
    assert json.loads(again.stdout)["ak_name"] == document["ak_name"]
