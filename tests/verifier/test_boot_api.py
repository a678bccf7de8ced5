"""``GET /v1/nodes/{node_id}/boot`` (issue 19, the dashboard's boot view) with real evidence:
development nodes booted through the verified chain on swtpm, their quotes and event logs
sent to an in-process verifier with the core appraiser (SQLite, or the database in
``STOCKADE_TEST_DATABASE_URL``).

A matching node's boot is all ``same`` beside the release it booted; a tampered one (Secure
Boot off, a modified kernel) has ``differs`` rows naming the PCR and the event. Each
attestation keeps its event log content-addressed (one row for identical logs); a result
from before migration 0015, a blob that does not hash to its digest, another node's result
and an unknown node are each answered as the contract says; only readers may ask.

Also what the dry-run tests (test_dry_run_envelope.py) share: ``org_material``,
``booted_agent``, ``envelope_bytes``."""

from __future__ import annotations

import base64
import hashlib
import json
import shutil
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, text, update
from verifier_support import DevAgent, b64, operator_headers, read

from stockade.boot import DevelopmentPlatform, boot_node, load_release
from stockade.demo.cluster import (
    KERNEL_STUB,
    QUOTED_PCRS,
    OrgMaterial,
    make_org_material,
    policy_document,
)
from stockade.verifier import VerifierConfig, create_app
from stockade.verifier.models import EvidenceBlob, Result

pytestmark = pytest.mark.tools


# -- shared with test_dry_run_envelope.py ---------------------------------------------------


def require_boot_tools() -> None:
    from stockade.boot.platform import DEBIAN_GRUB, DEBIAN_SHIM

    missing = [tool for tool in ("swtpm", "swtpm_setup", "sbsign") if not shutil.which(tool)]
    missing += [str(p) for p in (DEBIAN_SHIM, DEBIAN_GRUB, KERNEL_STUB) if not p.exists()]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/bootstrap.sh)")


def envelope_bytes(org: OrgMaterial) -> bytes:
    """The signed release's DSSE envelope as ``stockade release sign`` writes it."""
    return json.dumps(org.envelope).encode()


@dataclass
class BootedAgent:
    """A development node: its swtpm booted (good or tampered), enrolled."""

    agent: DevAgent
    log: bytes

    @property
    def node_id(self) -> str:
        assert self.agent.node_id is not None
        return self.agent.node_id

    def attest(self, client: Any, *, envelope: bytes | None = None) -> dict[str, Any]:
        nonce = self.agent.nonce(client)
        body = self.agent.evidence(nonce, QUOTED_PCRS)
        body["event_log"] = b64(self.log)
        if envelope is not None:
            body["release_envelope"] = base64.b64encode(envelope).decode()
        answer = client.post(f"/v1/nodes/{self.node_id}/evidence", json=body, auth=self.agent.auth)
        assert answer.status_code == 200, answer.text
        result: dict[str, Any] = answer.json()
        return result


def booted_agent(
    client: Any, tpm: Any, org: OrgMaterial, name: str, *, tampered: bool = False
) -> BootedAgent:
    """Boot ``tpm`` with the organization's release (``tampered``: Secure Boot off and the
    modified kernel) and enroll it as ``name``."""
    platform = DevelopmentPlatform.load(org.platform_dir)
    if tampered:
        platform = platform.with_secure_boot(False)
        release = load_release(org.release_dir, kernel=org.modified_kernel)
    else:
        release = load_release(org.release_dir)
    booted = boot_node(tpm, platform, release)
    booted.check()
    agent = DevAgent.create(tpm)
    agent.enroll(client, name)
    return BootedAgent(agent, booted.log_bytes)


def core_client(config: VerifierConfig, policy: dict[str, Any]) -> TestClient:
    """A verifier with the core appraiser, ``policy`` stored (and so active)."""
    client = TestClient(create_app(config), raise_server_exceptions=False)
    client.__enter__()
    stored = client.put(
        f"/v1/policies/{policy['id']}", json=policy, headers=operator_headers(config.data_dir)
    )
    assert stored.status_code == 200, stored.text
    return client


# -- fixtures --------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> OrgMaterial:
    require_boot_tools()
    return make_org_material(tmp_path_factory.mktemp("org"))


@pytest.fixture
def core(verifier_config: VerifierConfig, org: OrgMaterial) -> Iterator[TestClient]:
    client = core_client(verifier_config, policy_document(org, policy_id="cluster"))
    yield client
    client.__exit__(None, None, None)


def boot(client: TestClient, node_id: str, **params: str) -> Any:
    return read(client, f"/v1/nodes/{node_id}/boot", params=params)


def rows(view: dict[str, Any], pcr: int) -> list[dict[str, Any]]:
    (found,) = [entry for entry in view["pcrs"] if entry["pcr"] == pcr]
    return list(found["events"])


def statuses(view: dict[str, Any]) -> set[str]:
    return {row["status"] for entry in view["pcrs"] for row in entry["events"]}


def printable(text: str) -> bool:
    return all(32 <= ord(character) < 127 for character in text)


# -- the boot view ---------------------------------------------------------------------------


def test_a_matching_boot_is_all_same_and_a_tampered_one_differs(
    core: TestClient, org: OrgMaterial, make_software_tpm: Any
) -> None:
    good = booted_agent(core, make_software_tpm(), org, "web-good")
    bad = booted_agent(core, make_software_tpm(), org, "web-tampered", tampered=True)
    assert good.attest(core)["status"] == "affirming"
    tampered = bad.attest(core)
    assert tampered["status"] == "contraindicated"

    answer = boot(core, good.node_id)
    assert answer.status_code == 200, answer.text
    assert answer.headers["cache-control"] == "no-store"
    view = answer.json()
    assert view["available"] is True and view["unavailable_reason"] is None
    assert view["status"] == "affirming" and view["policy"] == "cluster@1"
    assert view["release"]["name"] == "stockade-os" and view["release"]["version"] == "1.0.0"
    assert view["reference"].startswith("stockade-os 1.0.0 on platform 0")
    # Every quoted PCR is there, matching: the whole log beside the reference.
    assert [entry["pcr"] for entry in view["pcrs"]] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 12]
    assert all(entry["matches"] for entry in view["pcrs"])
    assert all(entry["quoted"] == entry["expected"] for entry in view["pcrs"])
    assert statuses(view) == {"same"}
    kernel = rows(view, 4)[-1]
    assert kernel["found"]["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"
    assert kernel["expected"]["description"] == "kernel of stockade-os 1.0.0"
    assert kernel["found"]["digest"] == kernel["expected"]["digest"]

    view = boot(core, bad.node_id).json()
    assert view["available"] is True and view["status"] == "contraindicated"
    assert view["reasons"] == tampered["reasons"]
    assert view["reference"].startswith("stockade-os 1.0.0")
    # A contraindicated result stores no PCR values: the log's own replay is compared.
    assert all(entry["quoted"] is None for entry in view["pcrs"])
    by_pcr = {entry["pcr"]: entry for entry in view["pcrs"]}
    assert not by_pcr[4]["matches"] and not by_pcr[7]["matches"]
    assert by_pcr[0]["matches"]  # the firmware is the reference's
    differs = [row for row in rows(view, 4) if row["status"] == "differs"]
    assert differs, rows(view, 4)
    (modified,) = [r for r in differs if r["expected"]["description"].startswith("kernel")]
    assert modified["found"]["type"] == "EV_EFI_BOOT_SERVICES_APPLICATION"
    assert modified["found"]["digest"] != modified["expected"]["digest"]
    assert modified["expected"]["description"] == "kernel of stockade-os 1.0.0"
    # PCR 7: the SecureBoot variable the node measured is not the reference's.
    secure_boot = [r for r in rows(view, 7) if r["status"] == "differs"]
    assert any("SecureBoot" in r["found"]["description"] for r in secure_boot), rows(view, 7)
    for entry in view["pcrs"]:
        for row in entry["events"]:
            for side in (row["found"], row["expected"]):
                assert side is None or printable(side["description"])


def test_results_keep_their_event_log_once(
    core: TestClient, org: OrgMaterial, make_software_tpm: Any
) -> None:
    node = booted_agent(core, make_software_tpm(), org, "web-twice")
    first = node.attest(core)["result_id"]
    second = node.attest(core)["result_id"]
    digest = hashlib.sha256(node.log).hexdigest()
    engine = core.app.state.service.engine  # type: ignore[attr-defined]
    with engine.connect() as connection:
        kept = connection.execute(
            select(Result.event_log_digest, Result.release_envelope_digest).where(
                Result.id.in_([first, second])
            )
        ).all()
        assert sorted(kept) == [(digest, None), (digest, None)]
        blobs = connection.execute(
            select(EvidenceBlob.kind, EvidenceBlob.body).where(EvidenceBlob.digest == digest)
        ).all()
        assert blobs == [("event-log", node.log)]  # stored once
        total = connection.scalar(select(func.count()).select_from(EvidenceBlob))
        assert total == 1
    # Each result shows its own boot; the default is the latest.
    assert boot(core, node.node_id).json()["result_id"] == second
    assert boot(core, node.node_id, result=first).json()["result_id"] == first


def test_unknown_nodes_results_and_credentials(
    core: TestClient, org: OrgMaterial, make_software_tpm: Any
) -> None:
    one = booted_agent(core, make_software_tpm(), org, "web-one")
    other = booted_agent(core, make_software_tpm(), org, "web-other")
    assert boot(core, other.node_id).json()["error"] == "result"  # no result yet
    result_id = one.attest(core)["result_id"]
    other.attest(core)

    missing = boot(core, "00000000-0000-4000-8000-000000000000")
    assert (missing.status_code, missing.json()["error"]) == (404, "node")
    # Another node's result is not found under this node.
    crossed = boot(core, other.node_id, result=result_id)
    assert (crossed.status_code, crossed.json()["error"]) == (404, "result")
    unknown = boot(core, one.node_id, result="00000000-0000-4000-8000-000000000001")
    assert (unknown.status_code, unknown.json()["error"]) == (404, "result")
    # Bounded, well-formed ids only.
    assert boot(core, one.node_id, result="x" * 65).status_code == 422
    assert boot(core, "y" * 65).status_code == 422
    assert boot(core, one.node_id, result="../etc").status_code == 422
    # A reader's credential is needed; a node's channel signature is not one.
    anonymous = core.get(f"/v1/nodes/{one.node_id}/boot")
    assert anonymous.status_code == 401
    signed = core.get(f"/v1/nodes/{one.node_id}/boot", auth=one.agent.auth)
    assert signed.status_code == 401


def test_results_from_before_0015_and_altered_blobs_are_unavailable(
    core: TestClient, org: OrgMaterial, make_software_tpm: Any
) -> None:
    node = booted_agent(core, make_software_tpm(), org, "web-old")
    result_id = node.attest(core)["result_id"]
    engine = core.app.state.service.engine  # type: ignore[attr-defined]
    digest = hashlib.sha256(node.log).hexdigest()
    with engine.begin() as connection:
        connection.execute(
            update(EvidenceBlob).where(EvidenceBlob.digest == digest).values(body=b"other bytes")
        )
    view = boot(core, node.node_id).json()
    assert view["available"] is False and view["pcrs"] == []
    assert "does not match its digest" in view["unavailable_reason"]
    with engine.begin() as connection:  # as a result stored before migration 0015
        connection.execute(
            text("UPDATE results SET event_log_digest = NULL WHERE id = :id"), {"id": result_id}
        )
    view = boot(core, node.node_id).json()
    assert view["available"] is False
    assert "before" in view["unavailable_reason"] and "0015" in view["unavailable_reason"]
    assert view["status"] == "affirming" and view["result_id"] == result_id


def test_an_older_policy_version_is_built_once(
    core: TestClient, org: OrgMaterial, make_software_tpm: Any, verifier_config: VerifierConfig
) -> None:
    node = booted_agent(core, make_software_tpm(), org, "web-versions")
    first = node.attest(core)["result_id"]
    assert boot(core, node.node_id).json()["available"] is True
    cache = core.app.state.boot_references  # type: ignore[attr-defined]
    assert cache.built == 0  # the service's own references of the active version
    # A new version (another validity) becomes the active one; the old result names v1.
    newer = policy_document(org, policy_id="cluster", validity_seconds=300)
    stored = core.put(
        "/v1/policies/cluster", json=newer, headers=operator_headers(verifier_config.data_dir)
    )
    assert stored.status_code == 200 and stored.json()["version"] == 2
    node.attest(core)
    for _ in range(3):
        view = boot(core, node.node_id, result=first).json()
        assert view["available"] is True and view["policy"] == "cluster@1"
        assert statuses(view) == {"same"}
    assert cache.built == 0  # this process appraised under v1: its references are kept
    # A restarted verifier appraised under v2 only: v1's references are built once.
    core.__exit__(None, None, None)
    with TestClient(create_app(verifier_config), raise_server_exceptions=False) as restarted:
        for _ in range(3):
            view = boot(restarted, node.node_id, result=first).json()
            assert view["available"] is True and statuses(view) == {"same"}
        assert restarted.app.state.boot_references.built == 1  # type: ignore[attr-defined]


def test_a_signer_only_policy_compares_with_the_stored_envelope(
    verifier_config: VerifierConfig, org: OrgMaterial, make_software_tpm: Any
) -> None:
    policy = policy_document(org, policy_id="signed")
    policy["releases"] = {"signer": org.org_pub, "min_security_version": 3}
    client = core_client(verifier_config, policy)
    try:
        with_envelope = booted_agent(client, make_software_tpm(), org, "web-envelope")
        without = booted_agent(client, make_software_tpm(), org, "web-bare")
        assert with_envelope.attest(client, envelope=envelope_bytes(org))["status"] == "affirming"
        assert without.attest(client)["status"] == "contraindicated"

        view = boot(client, with_envelope.node_id).json()
        assert view["available"] is True
        assert view["reference"].startswith("stockade-os 1.0.0")
        assert statuses(view) == {"same"}
        # No envelope: nothing to compare with; the node's log is still shown.
        view = boot(client, without.node_id).json()
        assert view["available"] is True and view["reference"] is None
        assert statuses(view) == {"extra"}
        assert any("envelope" in note for note in view["notes"])
    finally:
        client.__exit__(None, None, None)
