"""UKI releases on a captured platform, on a real TPM: the golden development boot with its
kernel replaced by a Unified Kernel Image (built with objcopy onto Debian's systemd-stub),
measured into a fresh swtpm as the firmware and systemd-stub 252 measure it (PCR 4: the UKI's
Authenticode digest; PCR 11: each section, logged), then systemd-pcrphase's four phase words
into PCR 11 (not logged), and quoted. A policy with the UKI's `ukis` entry (`stockade release
predict-uki --policy-entry`) affirms it; another UKI, or a PCR 11 short of the running phase,
is named; without `ukis` the unlogged PCR 11 does not replay."""

from __future__ import annotations

import json
import shutil
from typing import Any

import pytest
from appraisal_support import Boots, make_ak

from stockade.appraisal.appraise import Evidence, NodeView, Status, appraise, build_references
from stockade.appraisal.captured import capture_policy, self_replayed
from stockade.appraisal.measured_boot import Measurement
from stockade.appraisal.policy import parse_policy
from stockade.appraisal.uki import RUNNING_PHASE, UkiReference, uki_reference, uki_sections
from stockade.boot.chain import TpmExtender
from stockade.evidence.algorithms import HASHES
from stockade.evidence.eventlog import Event, EventLog, EventType, parse_event_log
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.replay import startup_locality, verify_log
from stockade.release.authenticode import authenticode_digest
from stockade.tpm.device import Tpm
from stockade.tpm.quote import quote
from support.cli import run_stockade
from support.uki import STUB, build_uki

pytestmark = [
    pytest.mark.swtpm,
    pytest.mark.tools,
    pytest.mark.skipif(not STUB.exists(), reason=f"{STUB} missing (systemd-boot-efi)"),
    pytest.mark.skipif(shutil.which("objcopy") is None, reason="objcopy missing (binutils)"),
]

SELECTION = "sha256:0,1,2,3,4,5,6,7,8,9,11,12"
NONCE = bytes(range(32))


def _uki(directory, cmdline: str) -> bytes:
    directory.mkdir()
    contents = {
        "linux": b"\x7fkernel" * 4096,
        "osrel": b"ID=stockade\nVERSION_ID=2\n",
        "cmdline": cmdline.encode(),
        "initrd": b"initrd" * 2048,
    }
    return build_uki(directory, contents).read_bytes()


def _uki_boot(golden: bytes, image: bytes) -> EventLog:
    """The golden boot with the UKI as its last boot application and systemd-stub's PCR 11
    measurements logged after it."""
    log = parse_event_log(golden)
    kernel = [e.number for e in log.events if e.type == EventType.EV_EFI_BOOT_SERVICES_APPLICATION]
    events: list[Event] = []
    for event in log.events:
        if event.number == kernel[-1]:
            digests = tuple(
                (alg, authenticode_digest(image, HASHES[alg].name)) for alg, _ in event.digests
            )
            events.append(event._replace(digests=digests))
            banks = [alg for alg, _ in event.digests]
            for name, data in uki_sections(image).measured():
                for measured in (name.encode("ascii") + b"\0", data):
                    events.append(
                        Event(
                            0,
                            11,
                            EventType.EV_IPL,
                            tuple((alg, HASHES[alg].digest(measured)) for alg in banks),
                            name.encode(),
                        )
                    )
        else:
            events.append(event)
    numbered = tuple(event._replace(number=n) for n, event in enumerate(events))
    return EventLog(log.crypto_agile, log.spec_id, numbered)


@pytest.fixture(scope="module")
def uki_world(boots: Boots, tmp_path_factory: pytest.TempPathFactory, stockade_home, ek_ca,
              swtpm_template) -> dict[str, Any]:  # fmt: skip
    from stockade.tpm.swtpm import start_swtpm

    base = tmp_path_factory.mktemp("uki")
    image = _uki(base / "a", "root=/dev/vda ro")
    other = _uki(base / "b", "root=/dev/vda ro init=/bin/sh")
    (base / "a.efi").write_bytes(image)
    log = _uki_boot(boots.good.evidence.event_log, image)
    with start_swtpm("appraisal-uki", stockade_home, ek_ca, template=swtpm_template) as tpm:
        # A fresh boot from the locality the log's StartupLocality event records.
        locality = next((n for e in log.events if (n := startup_locality(e)) is not None), 0)
        tpm.power_cycle(startup_locality=locality)
        extender = TpmExtender(tpm.tcti)
        try:
            for event in log.events:
                if event.type != EventType.EV_NO_ACTION:
                    extender.extend(Measurement(event.pcr, event.type, event.data, event.digests))
            banks = [alg for alg, _ in log.events[-1].digests]
            for word in RUNNING_PHASE.split(":"):  # systemd-pcrphase: extended, never logged
                digests = tuple((alg, HASHES[alg].digest(word.encode())) for alg in banks)
                extender.extend(Measurement(11, EventType.EV_IPL, b"", digests))
        finally:
            extender.close()
        ak = make_ak(tpm)
        with Tpm(tpm.tcti) as device:
            made = quote(device, ak, PcrSelection.parse(SELECTION), NONCE)
    data = log.marshal()
    parsed = parse_event_log(data)
    captured = capture_policy(verify_log(parsed, self_replayed(parsed)), "uki-platform")
    return {
        "base": base,
        "image": image,
        "reference": uki_reference("stockade-os 2.0 (UKI)", image),
        "other": uki_reference("stockade-os 2.1 (UKI)", other),
        "captured": json.loads(json.dumps(captured.to_document())),
        "evidence": Evidence(NONCE, made.message, made.signature, made.pcr_values, data),
        "node": NodeView("node-uki", "node-uki", ak.public, None),
    }


def _appraise(world: dict[str, Any], *ukis: UkiReference):
    document = {"id": "uki", "result_validity_seconds": 60, "captured": world["captured"]}
    if ukis:
        document["ukis"] = [uki.to_document() for uki in ukis]
    policy = parse_policy(document, 1)
    return appraise(policy, build_references(policy), world["node"], world["evidence"], NONCE)


def test_the_uki_the_policy_names_is_affirming(uki_world):
    policy = parse_policy(
        {"id": "uki", "result_validity_seconds": 60, "captured": uki_world["captured"],
         "ukis": [uki_world["reference"].to_document()]}, 1,
    )  # fmt: skip
    assert str(policy.pcrs) == SELECTION
    result = _appraise(uki_world, uki_world["reference"])
    assert result.status is Status.AFFIRMING, result.reasons
    assert result.matched_release == "stockade-os 2.0 (UKI)"


def test_another_uki_is_named_in_pcr_4_and_pcr_11(uki_world):
    result = _appraise(uki_world, uki_world["other"])
    assert result.status is Status.CONTRAINDICATED
    pcrs = {finding["pcr"] for finding in result.findings}
    assert {4, 11} <= pcrs, result.reasons
    (kernel,) = [f for f in result.findings if f["pcr"] == 4]
    assert kernel["event"]["found"] == uki_world["reference"].authenticode.hex()
    assert kernel["event"]["expected"] == uki_world["other"].authenticode.hex()
    # Beside the accepted one, the boot still matches.
    both = _appraise(uki_world, uki_world["other"], uki_world["reference"])
    assert both.status is Status.AFFIRMING and both.matched_release == "stockade-os 2.0 (UKI)"


def test_a_pcr_11_short_of_the_running_phase_is_named(uki_world):
    reference = uki_world["reference"]
    early = UkiReference(reference.name, reference.authenticode, bytes(32))
    result = _appraise(uki_world, early)
    assert result.status is Status.CONTRAINDICATED
    (finding,) = result.findings
    assert finding["pcr"] == 11
    assert RUNNING_PHASE in finding["reason"]


def test_without_ukis_the_unlogged_phases_do_not_replay(uki_world):
    result = _appraise(uki_world)
    assert result.status is Status.CONTRAINDICATED
    assert any(finding["pcr"] == 11 for finding in result.findings), result.reasons


def test_predict_uki_prints_the_policy_entry(uki_world):
    shown = run_stockade(
        "release", "predict-uki", uki_world["base"] / "a.efi",
        "--policy-entry", "stockade-os 2.0 (UKI)", "--format", "json",
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    assert json.loads(shown.stdout) == uki_world["reference"].to_document()
