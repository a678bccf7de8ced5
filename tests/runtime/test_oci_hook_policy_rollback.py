"""Rolling the node's trust policy back, with real runc containers, a swtpm and the hook.

The review's attack: the org's trust policy serial 1 trusts the key ``old-ci``; serial 2
revokes it. Root on the node puts serial 1 (validly signed, older) back in the policy file and
starts an image signed only by ``old-ci``. Within the boot the hook refuses it: the execution
log (replayed to PCR 13) remembers that serial 2 was loaded. Across a reboot the hook cannot
know, and the verifier's ``executions.trust_policy.min_serial`` is the guard: the record the
hook wrote carries serial 1. An expired policy is refused outright.
"""

from __future__ import annotations

import datetime
import shutil
from pathlib import Path

import pytest
from runtime_support import POLICY_PREFIX, REFERENCE, TAG, Keys, Node, logged_records, pcr13, sign

from stockade.agent.run import BindMount, ContainerRefused, run_image
from stockade.appraisal.executions import appraise_executions
from stockade.appraisal.policy import parse_executions
from stockade.evidence.execution import (
    ContainerStart,
    TrustPolicyLoaded,
)
from stockade.images import sign_trust_policy
from stockade.release.keys import public_pem

pytestmark = pytest.mark.swtpm

FUTURE = "2099-01-01T00:00:00Z"


def trust_policy(keys: Keys, serial: int, *, old_ci: bool, expires: str = FUTURE) -> dict:
    """Serial ``serial`` of the org's policy: ``build`` always, ``old-ci`` (the rogue key
    here) only while ``old_ci``."""
    trusted = {"build": public_pem(keys.build.public_key()).decode()}
    if old_ci:
        trusted["old-ci"] = public_pem(keys.rogue.public_key()).decode()
    return {
        "version": 2,
        "serial": serial,
        "expires": expires,
        "keys": trusted,
        "scopes": [{"prefix": POLICY_PREFIX, "keys": sorted(trusted)}],
    }


def install(node: Node, keys: Keys, document: dict) -> bytes:
    envelope = sign_trust_policy(document, keys.org)
    node.policy_path.write_bytes(envelope)
    return envelope


def _run(node: Node, layout: Path, tmp_path: Path, name: str) -> int:
    return run_image(
        layout,
        TAG,
        reference=REFERENCE,
        settings=node.settings(),
        container_id=name,
        args=("/probe", "write", f"/out/{name}"),
        mounts=[BindMount(node.out, "/out")],
        runc_root=tmp_path / "runc",
        bundle_parent=tmp_path,
    )


@pytest.fixture
def old_ci_layout(image_layout: Path, keys: Keys) -> Path:
    """The probe image signed only by old-ci."""
    sign(image_layout, REFERENCE, keys.rogue)
    return image_layout


@pytest.fixture
def build_layout(base_layout: Path, keys: Keys, tmp_path: Path) -> Path:
    """The probe image signed by build (trusted by every serial)."""
    copy = tmp_path / "build-layout"
    shutil.copytree(base_layout, copy)
    sign(copy, REFERENCE, keys.build)
    return copy


def test_the_reviews_rollback_is_refused_within_the_boot(
    node, keys: Keys, old_ci_layout, build_layout, tmp_path
):
    serial_1 = install(node, keys, trust_policy(keys, 1, old_ci=True))
    assert _run(node, old_ci_layout, tmp_path, "under-1") == 0  # old-ci trusted by serial 1
    install(node, keys, trust_policy(keys, 2, old_ci=False))
    assert _run(node, build_layout, tmp_path, "under-2") == 0
    with pytest.raises(ContainerRefused) as revoked:
        _run(node, old_ci_layout, tmp_path, "revoked")
    assert "untrusted-key" in revoked.value.reason

    node.policy_path.write_bytes(serial_1)  # the attack: the older, validly signed policy
    before = node.log_path.read_bytes()
    with pytest.raises(ContainerRefused) as refused:
        _run(node, old_ci_layout, tmp_path, "rolled-back")
    reason = refused.value.reason
    assert "has serial 1, older than serial 2" in reason and "record 2" in reason
    assert "rolled-back trust policy is refused" in reason
    assert not (node.out / "rolled-back").exists(), "the old-ci image ran"
    assert node.log_path.read_bytes() == before  # nothing appended, nothing extended
    records = logged_records(node)
    assert [(type(r).__name__, getattr(r, "serial", None)) for r in records] == [
        ("TrustPolicyLoaded", 1),
        ("ContainerStart", None),
        ("TrustPolicyLoaded", 2),
        ("ContainerStart", None),
    ]
    assert records[3].container_id == "under-2"
    # The build-signed image is refused too: the node admits nothing under serial 1.
    with pytest.raises(ContainerRefused, match="serial 1, older than serial 2"):
        _run(node, build_layout, tmp_path, "build-under-1")
    # The log, the node's memory of serial 2, still replays to PCR 13.
    quoted = pcr13(node.tcti)
    assert appraise_executions(None, 0, 0, before, quoted, parse_executions({})).ok


def test_another_policy_with_the_same_serial_is_refused(node, keys: Keys, build_layout, tmp_path):
    install(node, keys, trust_policy(keys, 2, old_ci=False))
    assert _run(node, build_layout, tmp_path, "first") == 0
    install(node, keys, trust_policy(keys, 2, old_ci=True))  # an org mistake, or a sibling
    with pytest.raises(ContainerRefused, match="needs a higher serial"):
        _run(node, build_layout, tmp_path, "same-serial")
    install(node, keys, trust_policy(keys, 3, old_ci=False))
    assert _run(node, build_layout, tmp_path, "newer") == 0
    loads = [r.serial for r in logged_records(node) if isinstance(r, TrustPolicyLoaded)]
    assert loads == [2, 3]


def test_a_log_cut_short_cannot_hide_the_newer_policy(
    node, keys: Keys, old_ci_layout, build_layout, tmp_path
):
    """Root deletes the execution log too, so the hook would not see serial 2: before it
    records a policy it checks the log replays to PCR 13, and refuses when it does not."""
    serial_1 = install(node, keys, trust_policy(keys, 1, old_ci=True))
    install(node, keys, trust_policy(keys, 2, old_ci=False))
    assert _run(node, build_layout, tmp_path, "under-2") == 0
    node.log_path.write_bytes(b"")
    node.policy_path.write_bytes(serial_1)
    with pytest.raises(ContainerRefused, match="does not replay to PCR 13"):
        _run(node, old_ci_layout, tmp_path, "hidden")
    assert not (node.out / "hidden").exists()
    assert node.log_path.read_bytes() == b""


def test_an_expired_policy_is_refused(node, keys: Keys, build_layout, tmp_path):
    install(node, keys, trust_policy(keys, 5, old_ci=False, expires="2020-01-01T00:00:00Z"))
    with pytest.raises(ContainerRefused) as refused:
        _run(node, build_layout, tmp_path, "expired")
    assert "serial 5) expired at 2020-01-01T00:00:00Z" in refused.value.reason
    assert "no container starts under an expired policy" in refused.value.reason
    assert not (node.out / "expired").exists()
    assert logged_records(node) == []
    assert all(value == bytes(len(value)) for value in pcr13(node.tcti).values())


def test_expiry_is_checked_at_each_start(node, keys: Keys, build_layout, tmp_path):
    """A policy that was current when loaded is refused once it expires (the hook is given
    the time, as the clock would give it)."""
    from stockade.agent.oci_hook import HookRefused, _load_policy

    soon = datetime.datetime.now(datetime.UTC) + datetime.timedelta(hours=1)
    install(
        node, keys, trust_policy(keys, 5, old_ci=False, expires=soon.strftime("%Y-%m-%dT%H:%M:%SZ"))
    )
    assert _run(node, build_layout, tmp_path, "current") == 0
    later = soon + datetime.timedelta(seconds=1)
    with pytest.raises(HookRefused, match="expired at"):
        _load_policy(node.settings(), later)


def test_after_a_reboot_the_verifier_sees_the_old_serial(
    node, keys: Keys, software_tpm, old_ci_layout, tmp_path
):
    """The cross-boot half: a fresh boot's hook has no memory of serial 2 and admits the
    old-ci image under serial 1. Its TrustPolicyLoaded record carries serial 1, and the
    verifier's appraisal with ``min_serial: 2`` contraindicates the node, naming it."""
    install(node, keys, trust_policy(keys, 2, old_ci=False))
    software_tpm.power_cycle()  # a reboot: PCR 13 zero, the log (in /run) empty
    install(node, keys, trust_policy(keys, 1, old_ci=True))
    assert _run(node, old_ci_layout, tmp_path, "after-reboot") == 0
    loaded, start = logged_records(node)
    assert isinstance(loaded, TrustPolicyLoaded) and loaded.serial == 1
    assert isinstance(start, ContainerStart) and start.trust_policy_digest == loaded.digest
    requirement = parse_executions({"trust_policy": {"min_serial": 2}})
    result = appraise_executions(
        None, 1, 0, node.log_path.read_bytes(), pcr13(node.tcti), requirement
    )
    assert not result.ok
    assert result.refused_policy == (0, 1)
    assert result.reasons[0] == (
        f"record 0 (trust policy {loaded.digest}, serial 1): loads an image trust policy"
        f" serial 1 ({loaded.digest}), older than serial 2, the minimum the appraisal policy"
        " requires"
    )
    assert result.reasons[1].startswith("record 1 (container after-reboot, image ")
