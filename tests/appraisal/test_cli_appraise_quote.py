"""`stockade appraise` with a TPM quote (--ak --message --signature --nonce, tpm2-tools
files): real quotes from a software TPM after real boots (conftest ``boots``). The quote is
verified first and only what it covers is trusted; a quote over other PCRs, another nonce or
a bare key nobody vouched for makes the result contraindicated, and files it cannot read
exit 2. Every command runs at once (each is a Python start-up)."""

from __future__ import annotations

import json
import subprocess
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest
from appraisal_support import Boots, Captured
from cryptography.hazmat.primitives import serialization

from stockade.appraisal.captured import capture_policy, self_replayed
from stockade.evidence.attest import Attest
from stockade.evidence.eventlog import parse_event_log
from stockade.evidence.replay import verify_log
from stockade.evidence.tpm2_tools_files import write_pcr_file
from support.cli import run_stockade

pytestmark = [pytest.mark.swtpm, pytest.mark.tools]


def _files(base: Path, label: str, captured: Captured) -> dict[str, Path]:
    evidence = captured.evidence
    paths = {
        "log": base / f"{label}.log",
        "message": base / f"{label}.attest",
        "signature": base / f"{label}.sig",
        "pcrs": base / f"{label}.pcrs",
    }
    paths["log"].write_bytes(evidence.event_log)
    paths["message"].write_bytes(evidence.quote)
    paths["signature"].write_bytes(evidence.signature)
    selection = Attest.unmarshal(evidence.quote).attested.pcr_select  # type: ignore[union-attr]
    paths["pcrs"].write_bytes(write_pcr_file(selection, evidence.pcrs))
    return paths


@pytest.fixture(scope="module")
def runs(boots: Boots, tmp_path_factory: pytest.TempPathFactory) -> dict[Any, Any]:
    base = tmp_path_factory.mktemp("appraise-quote")
    good = _files(base, "good", boots.good)
    tampered = _files(base, "tampered", boots.tampered)
    ak = base / "ak.pub"
    ak.write_bytes(boots.ak.marshal_tpm2b())
    pem = base / "ak.pem"
    pem.write_bytes(
        boots.ak.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    log = parse_event_log(boots.good.evidence.event_log)
    policy = base / "golden.yaml"
    document = capture_policy(verify_log(log, self_replayed(log)), "golden").to_document()
    policy.write_text(json.dumps(document))

    def quote(files: dict[str, Path], nonce: bytes, key: Path = ak) -> list[object]:
        return [
            "appraise", "--policy", policy, "--event-log", files["log"], "--ak", key,
            "--message", files["message"], "--signature", files["signature"],
            "--nonce", nonce.hex(),
        ]  # fmt: skip

    good_nonce = boots.good.evidence.nonce
    commands: dict[str, list[object]] = {
        "good": quote(good, good_nonce),
        "good-pcrs": [*quote(good, good_nonce), "--pcrs", good["pcrs"]],
        "tampered": quote(tampered, boots.tampered.evidence.nonce),
        # The good log presented with the tampered boot's quote: the log's replay is not
        # what the TPM signed.
        "good-log-tampered-quote": quote(
            {**tampered, "log": good["log"]}, boots.tampered.evidence.nonce
        ),
        "wrong-nonce": quote(good, bytes(32)),
        "bare-key": quote(good, good_nonce, pem),
        "bare-key-trusted": [*quote(good, good_nonce, pem), "--trust-bare-key"],
        "partial": ["appraise", "--policy", policy, "--event-log", good["log"], "--ak", ak],
        "garbage-quote": quote({**good, "message": good["log"]}, good_nonce),
    }
    with ThreadPoolExecutor(max_workers=4) as pool:
        outcomes = pool.map(lambda a: run_stockade(*a), commands.values())
        done = dict(zip(commands, outcomes, strict=True))
    return {"tampered_log": boots.tampered.evidence.event_log, **done}


def _json(result: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    document: dict[str, Any] = json.loads(result.stdout)
    return document


@pytest.mark.parametrize("name", ["good", "good-pcrs", "bare-key-trusted"])
def test_a_verified_quote_over_the_golden_boot_is_affirming(runs, name):
    result = runs[name]
    assert result.returncode == 0, result.stdout + result.stderr
    document = _json(result)
    assert document["status"] == "affirming"
    assert document["quote"] == {"verified": True, "selection": "sha256:0,1,2,3,4,5,6,7,8,9,12"}


def test_a_quoted_tampered_boot_is_contraindicated_naming_the_kernel_event(runs):
    result = runs["tampered"]
    assert result.returncode == 1, result.stderr
    document = _json(result)
    assert document["quote"]["verified"] is True
    log = parse_event_log(runs["tampered_log"])
    kernel = [e for e in log.events if e.type_name == "EV_EFI_BOOT_SERVICES_APPLICATION"][-1]
    named = [r["event"]["index"] for r in document["reasons"] if r["pcr"] == 4 and r["event"]]
    assert kernel.number in named


def test_a_log_the_quote_does_not_sign_is_contraindicated(runs):
    result = runs["good-log-tampered-quote"]
    assert result.returncode == 1
    document = _json(result)
    assert document["quote"]["verified"] is False
    assert "pcr-digest" in document["reasons"][0]["reason"]


def test_a_quote_over_another_nonce_is_contraindicated(runs):
    result = runs["wrong-nonce"]
    assert result.returncode == 1
    assert "nonce" in _json(result)["reasons"][0]["reason"]


def test_a_bare_key_nobody_vouched_for_is_not_trusted(runs):
    result = runs["bare-key"]
    assert result.returncode == 1
    assert "attestation-key" in _json(result)["reasons"][0]["reason"]


def test_half_the_quote_options_is_a_usage_error(runs):
    result = runs["partial"]
    assert result.returncode == 2
    assert "--message" in result.stderr and "Traceback" not in result.stderr


def test_a_quote_file_that_is_not_a_quote_exits_2(runs):
    result = runs["garbage-quote"]
    assert result.returncode == 2, result.stdout
    assert "Traceback" not in result.stderr
