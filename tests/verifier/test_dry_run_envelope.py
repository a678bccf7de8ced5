"""Policy dry runs (``POST /v1/policies/{id}/dry-run``) judge a node from the release envelope
its latest result kept (migration 0015), as appraisal would: under a candidate that lists no
release but names the signer, a node that sent its signed envelope is no longer "unknown".
The envelope must verify under the candidate's signers, be at or above its minimum and be
the release the stored event log measured into PCR 12 (the log verified against the stored
quoted PCRs). Real boots on swtpm, real evidence, the core appraiser."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert, update
from test_boot_api import booted_agent, core_client, envelope_bytes, require_boot_tools
from verifier_support import operator_headers

from stockade.demo.cluster import OrgMaterial, make_org_material, policy_document
from stockade.release.keys import KeyType, generate_key_set
from stockade.verifier import VerifierConfig
from stockade.verifier.models import EvidenceBlob, Result
from support.rollout_fixtures import build_signed_release

pytestmark = pytest.mark.tools


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> OrgMaterial:
    require_boot_tools()
    return make_org_material(tmp_path_factory.mktemp("org"))


@pytest.fixture
def fleet(
    verifier_config: VerifierConfig, org: OrgMaterial, make_software_tpm: Any
) -> Iterator[tuple[TestClient, dict[str, str]]]:
    """The release listed in the active policy; one node sent its envelope, one did not."""
    client = core_client(verifier_config, policy_document(org, policy_id="cluster"))
    sent = booted_agent(client, make_software_tpm(), org, "web-envelope")
    bare = booted_agent(client, make_software_tpm(), org, "web-bare")
    assert sent.attest(client, envelope=envelope_bytes(org))["status"] == "affirming"
    assert bare.attest(client)["status"] == "affirming"
    yield client, {"envelope": sent.node_id, "bare": bare.node_id}
    client.__exit__(None, None, None)


def signer_only(org: OrgMaterial, signer: str | None = None, minimum: int = 3) -> dict[str, Any]:
    document = policy_document(org, policy_id="candidate")
    document["releases"] = {"signer": signer or org.org_pub, "min_security_version": minimum}
    return document


def dry_run(client: TestClient, document: dict[str, Any], data_dir: Any) -> dict[str, Any]:
    answer = client.post(
        "/v1/policies/candidate/dry-run", json=document, headers=operator_headers(data_dir)
    )
    assert answer.status_code == 200, answer.text
    return dict(answer.json())


def by_node(report: dict[str, Any]) -> dict[str, tuple[str, str]]:
    found = {row["node_id"]: ("changed", row["reason"]) for row in report["changes"]}
    found |= {row["node_id"]: ("unknown", row["reason"]) for row in report["unknown_nodes"]}
    return found


def test_a_signer_only_candidate_judges_the_stored_envelope(
    fleet: tuple[TestClient, dict[str, str]], org: OrgMaterial, verifier_config: VerifierConfig
) -> None:
    client, nodes = fleet
    report = dry_run(client, signer_only(org), verifier_config.data_dir)
    seen = by_node(report)
    # The node that sent its envelope stays affirming: unchanged, not unknown.
    assert nodes["envelope"] not in seen, seen
    assert report["unchanged"] == 1
    # The other still cannot be told: its result kept no envelope.
    state, reason = seen[nodes["bare"]]
    assert state == "unknown" and "envelope" in reason


def test_the_envelope_must_meet_the_candidates_minimum_and_signers(
    fleet: tuple[TestClient, dict[str, str]],
    org: OrgMaterial,
    verifier_config: VerifierConfig,
    tmp_path: Any,
) -> None:
    client, nodes = fleet
    data_dir = verifier_config.data_dir
    # A minimum above the release's security version (3): a rollback now.
    (row,) = dry_run(client, signer_only(org, minimum=4), data_dir)["changes"]
    assert row["node_id"] == nodes["envelope"] and row["to"] == "contraindicated"
    assert "security version 3" in row["reason"] and "minimum 4" in row["reason"]
    # Another organization's signer: the envelope does not verify under it.
    rogue = generate_key_set(tmp_path / "rogue", KeyType.ECDSA_P256, "Rogue", datetime.now(UTC))
    (row,) = dry_run(client, signer_only(org, rogue.paths.org_pub.read_text()), data_dir)["changes"]
    assert row["node_id"] == nodes["envelope"] and row["to"] == "contraindicated"
    assert "does not verify under the policy's signers" in row["reason"]


def test_an_envelope_not_of_the_measured_release_is_refused(
    fleet: tuple[TestClient, dict[str, str]],
    org: OrgMaterial,
    verifier_config: VerifierConfig,
    tmp_path: Any,
) -> None:
    """The stored envelope swapped for another genuinely signed release's (1.1.0, security
    version 4): the stored log's PCR 12 names the booted manifest, so the dry run refuses it
    as appraisal would. And a blob that no longer hashes to its digest is not used."""
    client, nodes = fleet
    engine = client.app.state.service.engine  # type: ignore[attr-defined]
    other = build_signed_release(org, tmp_path / "next", "1.1.0", 4).envelope.to_bytes()
    digest = hashlib.sha256(other).hexdigest()
    with engine.begin() as connection:
        connection.execute(
            insert(EvidenceBlob).values(
                digest=digest, kind="release-envelope", body=other, created_at=datetime.now(UTC)
            )
        )
        connection.execute(
            update(Result)
            .where(Result.node_id == nodes["envelope"])
            .values(release_envelope_digest=digest)
        )
    (row,) = dry_run(client, signer_only(org), verifier_config.data_dir)["changes"]
    assert row["node_id"] == nodes["envelope"] and row["to"] == "contraindicated"
    assert "stockade-os 1.1.0" in row["reason"]
    assert "is not the release the quoted boot measured into PCR 12" in row["reason"]

    with engine.begin() as connection:
        connection.execute(
            update(EvidenceBlob)
            .where(EvidenceBlob.digest == digest)
            .values(body=envelope_bytes(org))  # genuine, but not the bytes of the digest
        )
    state, reason = by_node(dry_run(client, signer_only(org), verifier_config.data_dir))[
        nodes["envelope"]
    ]
    assert state == "unknown" and "envelope" in reason
