"""Cluster membership at the verifier, with real software TPMs: node certificates for
TPM-certified keys, signed node status, and secrets sealed to a node's TPM, PCRs and channel
key; grants bound to node ids.

Each security test shows the attack, then shows it refused.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from cryptography import x509
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, insert, select, update
from verifier_support import PCRS, ZERO_PCR_7, DevAgent, b64, policy_document

from stockade.cluster.ca import node_identity, verify_node_certificate
from stockade.cluster.secret_store import KeyEncryptionKey, KeyRing
from stockade.cluster.status import verify_status
from stockade.errors import VerificationFailed
from stockade.evidence.duplication import SealedSecret
from stockade.evidence.templates import KeyKind
from stockade.statements import VerifierKeys
from stockade.tpm.device import Tpm
from stockade.tpm.node_key import certify_node_key, create_node_key
from stockade.tpm.sealed import SecretRefused, unseal_secret
from stockade.verifier import VerifierConfig, create_app
from stockade.verifier.config import EnrollmentMode
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.models import Node, Result, Secret, SecretGrant
from stockade.verifier.node_auth import AuthenticatedNode, require_node
from stockade.verifier.states import sweep_stale

SECRET = b"db-password: correct horse battery staple \x00\xff"


@pytest.fixture
def kek() -> KeyEncryptionKey:
    return KeyEncryptionKey.generate()


@pytest.fixture
def config(verifier_config: VerifierConfig, kek: KeyEncryptionKey) -> VerifierConfig:
    return dataclasses.replace(verifier_config, key_ring=KeyRing(kek))


@pytest.fixture
def api(make_client: Callable[..., TestClient], config: VerifierConfig) -> TestClient:
    return make_client(config, policy=policy_document(reference=ZERO_PCR_7))


def operator(config: VerifierConfig) -> dict[str, str]:
    token = (config.data_dir / "operator-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def trusted_node(api: TestClient, tpm, name: str) -> DevAgent:
    agent = DevAgent.create(tpm)
    agent.enroll(api, name)
    answer = agent.attest(api)
    assert answer.status_code == 200 and answer.json()["status"] == "affirming", answer.text
    return agent


def certificate_request(agent: DevAgent, api: TestClient, *, signer: DevAgent | None = None):
    """A node key made in ``agent``'s TPM, certified by ``signer``'s AK (default: its own)."""
    signer = signer or agent
    nonce = agent.nonce(api)
    with Tpm(agent.tpm.tcti) as tpm:
        key = create_node_key(tpm)
    with Tpm(signer.tpm.tcti) as tpm:
        if signer is agent:
            info, signature = certify_node_key(tpm, key, signer.ak, nonce)
        else:  # the other TPM cannot load this key: certify a key of its own instead
            other = create_node_key(tpm)
            info, signature = certify_node_key(tpm, other, signer.ak, nonce)
    body = {
        "nonce": b64(nonce),
        "key_public": b64(key.public.marshal_tpm2b()),
        "certify_info": b64(info),
        "signature": b64(signature),
    }
    return key, body


def fail(agent: DevAgent, api: TestClient) -> None:
    """Change PCR 7 in the node's TPM, then attest: a verified quote of values the policy does
    not accept, a contraindicated result (evidence that does not verify would change nothing)."""
    with Tpm(agent.tpm.tcti) as tpm:
        tpm.extend_pcr(7, b"runtime change")
    nonce = agent.nonce(api)
    evidence = agent.evidence(nonce)
    answer = api.post(f"/v1/nodes/{agent.node_id}/evidence", json=evidence, auth=agent.auth)
    assert answer.json()["status"] == "contraindicated", answer.text


def put_secret(api: TestClient, config: VerifierConfig, name: str, value: bytes, *grants: str):
    stored = api.put(f"/v1/secrets/{name}", json={"value": b64(value)}, headers=operator(config))
    assert stored.status_code == 200, stored.text
    for selector in grants:
        granted = api.post(
            f"/v1/secrets/{name}/grants", json={"selector": selector}, headers=operator(config)
        )
        assert granted.status_code == 200, granted.text
    return stored


def unseal(agent: DevAgent, answer: dict) -> bytes:
    """What the node does: unseal in its TPM, authorized by its channel key."""
    assert agent.channel_key is not None
    sealed = SealedSecret.from_json(answer["sealed"])
    with Tpm(agent.tpm.tcti) as tpm:
        return unseal_secret(tpm, KeyKind.RSA, sealed, agent.channel_key)


# -- node certificates -----------------------------------------------------------------


def test_trusted_node_gets_a_certificate_for_its_tpm_key_that_ends_with_its_result(
    api, software_tpm, config
):
    agent = trusted_node(api, software_tpm, "web-1")
    key, body = certificate_request(agent, api)
    answer = api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth)
    assert answer.status_code == 201, answer.text
    issued = answer.json()
    cert = x509.load_pem_x509_certificate(issued["certificate"].encode())
    ca = x509.load_pem_x509_certificate(issued["ca_bundle"].encode())
    node_id, result_id = verify_node_certificate(cert, ca, datetime.now(UTC))
    assert (node_id, result_id) == (agent.node_id, issued["result_id"])
    assert node_identity(cert) == (agent.node_id, issued["result_id"])
    node = api.get(f"/v1/nodes/{agent.node_id}", headers=operator(config)).json()
    assert issued["result_id"] == node["latest_result_id"]
    assert cert.not_valid_after_utc == datetime.fromisoformat(
        node["trusted_until"].replace("Z", "+00:00")
    ).replace(microsecond=0)
    lifetime = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert lifetime < timedelta(minutes=10)  # minutes, not years
    assert cert.public_key() == key.public.public_key()


def test_key_certified_by_another_nodes_ak_is_refused(api, make_software_tpm):
    agent = trusted_node(api, make_software_tpm(), "web-1")
    other = trusted_node(api, make_software_tpm(), "web-2")
    _, body = certificate_request(agent, api, signer=other)
    answer = api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "certify"


def test_key_the_ak_did_not_certify_is_refused(api, software_tpm):
    """The attacker swaps in a software key's public area next to a genuine certify."""
    agent = trusted_node(api, software_tpm, "web-1")
    _, body = certificate_request(agent, api)
    with Tpm(software_tpm.tcti) as tpm:
        other_key = create_node_key(tpm)
    body["key_public"] = b64(other_key.public.marshal_tpm2b())
    answer = api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth)
    assert answer.status_code == 403 and answer.json()["error"] == "certify", answer.text


def test_certify_over_a_replayed_nonce_is_refused(api, software_tpm):
    agent = trusted_node(api, software_tpm, "web-1")
    _, body = certificate_request(agent, api)
    assert (
        api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth).status_code
        == 201
    )
    replay = api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth)
    assert replay.status_code == 409 and replay.json()["error"] == "nonce"


def test_untrusted_node_is_refused_a_certificate_with_the_reasons(api, software_tpm):
    agent = trusted_node(api, software_tpm, "web-1")
    fail(agent, api)
    _, body = certificate_request(agent, api)
    answer = api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth)
    assert answer.status_code == 403, answer.text
    refused = answer.json()
    assert refused["error"] == "untrusted"
    assert "contraindicated" in refused["detail"]
    assert any("quote" in reason for reason in refused["reasons"]), refused


def test_stale_node_is_refused_a_certificate(api, software_tpm, clock):
    agent = trusted_node(api, software_tpm, "web-1")
    clock.advance(121)
    _, body = certificate_request(agent, api)
    answer = api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth)
    assert answer.status_code == 403 and "stale" in answer.json()["detail"], answer.text


# -- signed status -----------------------------------------------------------------------


def test_status_is_signed_short_lived_and_follows_the_node(api, software_tpm):
    agent = trusted_node(api, software_tpm, "web-1")
    keys = VerifierKeys.parse(api.get("/v1/keys").content, "the verifier's keys")
    good = api.get(f"/v1/nodes/{agent.node_id}/status").json()
    status = verify_status(good["statement"], keys, agent.node_id, datetime.now(UTC))
    assert status.trusted and status.result_id == good["result_id"]
    assert status.expires_at - status.issued_at <= timedelta(seconds=60)
    fail(agent, api)
    bad = api.get(f"/v1/nodes/{agent.node_id}/status").json()
    status = verify_status(bad["statement"], keys, agent.node_id, datetime.now(UTC))
    assert not status.trusted and bad["reason"].startswith("its latest result is contraindicated")
    # A forged statement (payload swapped to say trusted) does not verify.
    header, _, signature = bad["statement"].split(".")
    forged_payload = good["statement"].split(".")[1]
    with pytest.raises(VerificationFailed):
        verify_status(
            f"{header}.{forged_payload}.{signature}", keys, agent.node_id, datetime.now(UTC)
        )
    # Presented for another node, or after it expired: refused.
    with pytest.raises(VerificationFailed):
        verify_status(good["statement"], keys, "another-node", datetime.now(UTC))
    with pytest.raises(VerificationFailed):
        verify_status(
            good["statement"], keys, agent.node_id, datetime.now(UTC) + timedelta(seconds=61)
        )


# -- secrets -------------------------------------------------------------------------------


def test_secret_api_needs_the_operator_token(api, config):
    assert api.put("/v1/secrets/db", json={"value": b64(SECRET)}).status_code == 401
    wrong = {"Authorization": "Bearer " + "x" * 43}
    assert api.put("/v1/secrets/db", json={"value": b64(SECRET)}, headers=wrong).status_code == 401
    assert api.get("/v1/secrets").status_code == 401
    put_secret(api, config, "db", SECRET)
    listed = api.get("/v1/secrets", headers=operator(config))
    assert listed.status_code == 200 and listed.json()["secrets"][0]["name"] == "db"


def test_granted_trusted_node_unseals_the_secret_in_its_tpm_and_nothing_leaks(
    api, software_tpm, config
):
    agent = trusted_node(api, software_tpm, "web-1")
    responses = [put_secret(api, config, "db", SECRET, "node:web-1")]
    responses.append(api.get("/v1/secrets", headers=operator(config)))
    released = api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth)
    responses.append(released)
    assert released.status_code == 200, released.text
    assert unseal(agent, released.json()) == SECRET
    for response in responses:  # the value appears in no response (only sealed)
        assert SECRET not in response.content
        assert b64(SECRET).encode() not in response.content
    # And not in the database either: encrypted at rest.
    engine = create_engine(config.resolved_database_url)
    with engine.connect() as connection:
        stored = connection.execute(select(Secret.ciphertext)).scalar_one()
    engine.dispose()
    assert SECRET not in stored


def test_label_grants_select_nodes_by_operator_labels(api, make_software_tpm, config):
    web = trusted_node(api, make_software_tpm(), "web-1")
    db = trusted_node(api, make_software_tpm(), "db-1")
    put_secret(api, config, "tls", SECRET, "label:role=web")
    assert api.post(f"/v1/nodes/{web.node_id}/secrets/tls", auth=web.auth).status_code == 403
    labelled = api.put(
        f"/v1/nodes/{web.node_id}/labels",
        json={"labels": {"role": "web"}},
        headers=operator(config),
    )
    assert labelled.status_code == 200 and labelled.json()["labels"] == {"role": "web"}
    released = api.post(f"/v1/nodes/{web.node_id}/secrets/tls", auth=web.auth)
    assert released.status_code == 200 and unseal(web, released.json()) == SECRET
    refused = api.post(f"/v1/nodes/{db.node_id}/secrets/tls", auth=db.auth)
    assert refused.status_code == 403 and refused.json()["error"] == "not-granted"
    # Labels are the operator's: without the token a node cannot label itself.
    self_label = api.put(f"/v1/nodes/{db.node_id}/labels", json={"labels": {"role": "web"}})
    assert self_label.status_code == 401


def test_blob_released_for_node_a_is_useless_to_node_b(api, make_software_tpm, config):
    a = trusted_node(api, make_software_tpm(), "node-a")
    b = trusted_node(api, make_software_tpm(), "node-b")
    put_secret(api, config, "db", SECRET, "node:node-a")
    released = api.post(f"/v1/nodes/{a.node_id}/secrets/db", auth=a.auth).json()
    with pytest.raises(SecretRefused, match="import"):
        unseal(b, released)


def test_after_a_policy_pcr_changes_the_tpm_refuses_to_unseal(api, software_tpm, config):
    agent = trusted_node(api, software_tpm, "web-1")
    put_secret(api, config, "db", SECRET, "node:web-1")
    released = api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth).json()
    assert unseal(agent, released) == SECRET
    with Tpm(software_tpm.tcti) as tpm:
        tpm.extend_pcr(7, b"unexpected runtime measurement")
    with pytest.raises(SecretRefused, match="unseal"):
        unseal(agent, released)


def test_untrusted_or_revoked_nodes_get_no_secret(api, make_software_tpm, config, clock):
    revoked = trusted_node(api, make_software_tpm(), "revoked-1")
    stale = trusted_node(api, make_software_tpm(), "stale-1")
    put_secret(api, config, "db", SECRET, "node:revoked-1", "node:stale-1")
    answer = api.post(f"/v1/nodes/{revoked.node_id}/revoke", headers=operator(config))
    assert answer.status_code == 200, answer.text
    refused = api.post(f"/v1/nodes/{revoked.node_id}/secrets/db", auth=revoked.auth)
    assert refused.status_code in (401, 403) and "revoked" in refused.text, refused.text
    assert SECRET not in refused.content
    clock.advance(121)
    refused = api.post(f"/v1/nodes/{stale.node_id}/secrets/db", auth=stale.auth)
    assert refused.status_code == 403 and "stale" in refused.json()["detail"]


def test_secret_revoke_stops_further_releases(api, software_tpm, config):
    agent = trusted_node(api, software_tpm, "web-1")
    put_secret(api, config, "db", SECRET, "node:web-1")
    assert api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth).status_code == 200
    removed = api.delete(
        "/v1/secrets/db/grants", params={"selector": "node:web-1"}, headers=operator(config)
    )
    assert removed.status_code == 200 and removed.json()["grants"] == []
    assert api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth).status_code == 403


def test_restart_loses_no_secret_and_a_wrong_kek_changes_nothing(
    make_client, config, software_tpm, tmp_path: Path
):
    api = make_client(config, policy=policy_document())
    agent = trusted_node(api, software_tpm, "web-1")
    put_secret(api, config, "db", SECRET, "node:web-1")
    engine = create_engine(config.resolved_database_url)
    with engine.connect() as connection:
        before = connection.execute(select(Secret.name, Secret.kek_id, Secret.ciphertext)).all()
    wrong = dataclasses.replace(config, key_ring=KeyRing(KeyEncryptionKey.generate()))
    with pytest.raises(ConfigurationError, match="not given"):
        create_app(wrong)
    with pytest.raises(ConfigurationError, match="none"):
        create_app(dataclasses.replace(config, key_ring=None))
    with engine.connect() as connection:
        after = connection.execute(select(Secret.name, Secret.kek_id, Secret.ciphertext)).all()
    engine.dispose()
    assert before == after
    restarted = make_client(config)
    released = restarted.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth)
    assert released.status_code == 200 and unseal(agent, released.json()) == SECRET


def test_kek_rotation_without_downtime(make_client, config, software_tpm, kek):
    api = make_client(config, policy=policy_document())
    agent = trusted_node(api, software_tpm, "web-1")
    put_secret(api, config, "db", SECRET, "node:web-1")
    new = KeyEncryptionKey.generate()
    rotating = dataclasses.replace(config, key_ring=KeyRing(new, (kek,)))
    api = make_client(rotating)
    # Old rows still serve during the rotation...
    assert (
        unseal(agent, api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth).json())
        == SECRET
    )
    rekeyed = api.post("/v1/secrets/rekey", headers=operator(config))
    assert rekeyed.json() == {"rekeyed": 1, "kek_id": new.kek_id}
    # ...and afterwards the old KEK can go.
    api = make_client(dataclasses.replace(config, key_ring=KeyRing(new)))
    assert (
        unseal(agent, api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth).json())
        == SECRET
    )


def test_without_a_kek_secrets_are_refused(make_client, verifier_config, software_tpm):
    api = make_client(verifier_config, policy=policy_document())
    token = operator(verifier_config)
    answer = api.put("/v1/secrets/db", json={"value": b64(SECRET)}, headers=token)
    assert answer.status_code == 503 and answer.json()["error"] == "kek"


def test_the_attested_pcrs_are_recorded_only_for_verified_results(api, software_tpm, config):
    agent = trusted_node(api, software_tpm, "web-1")
    fail(agent, api)
    engine = create_engine(config.resolved_database_url)
    with engine.connect() as connection:
        rows = connection.execute(
            select(Result.status, Result.pcrs).order_by(Result.created_at)
        ).all()
    engine.dispose()
    (good_status, good_pcrs), (bad_status, bad_pcrs) = rows
    assert good_status == "affirming" and bad_status == "contraindicated"
    assert sorted(good_pcrs["sha256"], key=int) == PCRS.split(":")[1].split(",")
    assert bad_pcrs is None  # a failed quote attests nothing to seal to


def test_key_certified_after_a_reboot_is_refused_until_the_node_attests_again(api, software_tpm):
    """A node attests, then reboots into other software and asks for a certificate: the
    certification's resetCount shows a boot nobody appraised."""
    agent = trusted_node(api, software_tpm, "web-1")
    software_tpm.power_cycle()
    _, body = certificate_request(agent, api)
    answer = api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth)
    assert answer.status_code == 403, answer.text
    assert answer.json()["error"] == "certify" and "another boot" in answer.json()["detail"]
    assert agent.attest(api).json()["status"] == "affirming"
    _, body = certificate_request(agent, api)
    assert (
        api.post(f"/v1/nodes/{agent.node_id}/certificates", json=body, auth=agent.auth).status_code
        == 201
    )


# -- secrets are bound to the channel key, grants to node ids ------------------------------


def test_a_node_without_a_channel_key_gets_no_secret(api, software_tpm, config):
    """A node enrolled before the channel (channel_key_public NULL) gets 403 ``channel``
    telling it to enroll again: there is no key to bind the unseal to. The release route's
    own refusal, so node authentication is stubbed out here (it would refuse such a node
    earlier, as it cannot sign)."""
    agent = trusted_node(api, software_tpm, "old-1")
    put_secret(api, config, "db", SECRET, "node:old-1")
    engine = create_engine(config.resolved_database_url)
    with engine.begin() as connection:
        connection.execute(
            update(Node).where(Node.id == agent.node_id).values(channel_key_public=None)
        )
    engine.dispose()
    api.app.dependency_overrides[require_node] = lambda: AuthenticatedNode(agent.node_id, "old-1")
    try:
        refused = api.post(f"/v1/nodes/{agent.node_id}/secrets/db")
    finally:
        api.app.dependency_overrides.pop(require_node, None)
    assert refused.status_code == 403, refused.text
    assert refused.json()["error"] == "channel"
    assert "enroll" in refused.json()["detail"]
    assert SECRET not in refused.content and "sealed" not in refused.json()


def test_the_release_is_sealed_to_the_nodes_channel_key(api, make_software_tpm, config):
    """The authPolicy names the channel key this node enrolled with: another key in the same
    TPM (a second TPM user's) does not unseal the released blob."""
    agent = trusted_node(api, make_software_tpm(), "web-1")
    put_secret(api, config, "db", SECRET, "node:web-1")
    released = api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth)
    assert released.status_code == 200, released.text
    sealed = SealedSecret.from_json(released.json()["sealed"])
    assert released.json()["sealed"]["policy_ref"] == b64(b"stockade-unseal")
    with Tpm(agent.tpm.tcti) as tpm:
        intruder = create_node_key(tpm)
        with pytest.raises(SecretRefused, match="unseal") as refused:
            unseal_secret(tpm, KeyKind.RSA, sealed, intruder)
        assert refused.value.response_code == 0x99D  # TPM_RC_POLICY_FAIL
        assert tpm.transient_object_count() == 0
    assert unseal(agent, released.json()) == SECRET


def test_a_grant_by_name_is_bound_to_the_nodes_id(api, make_software_tpm, config):
    web = trusted_node(api, make_software_tpm(), "web-1")
    put_secret(api, config, "db", SECRET)
    granted = api.post(
        "/v1/secrets/db/grants", json={"selector": "node:web-1"}, headers=operator(config)
    )
    assert granted.status_code == 200, granted.text
    assert granted.json()["grants"] == [f"node:{web.node_id}"]
    # by id: the same grant, stored once
    again = api.post(
        "/v1/secrets/db/grants", json={"selector": f"node:{web.node_id}"}, headers=operator(config)
    )
    assert again.json()["grants"] == [f"node:{web.node_id}"]
    listed = api.get("/v1/secrets", headers=operator(config)).json()["secrets"][0]
    assert listed["grants"] == [f"node:{web.node_id}"]
    # a name no node holds: 404 ``node``, nothing stored
    missing = api.post(
        "/v1/secrets/db/grants", json={"selector": "node:web-2"}, headers=operator(config)
    )
    assert missing.status_code == 404 and missing.json()["error"] == "node", missing.text
    assert api.get("/v1/secrets", headers=operator(config)).json()["secrets"][0]["grants"] == [
        f"node:{web.node_id}"
    ]
    # removing by name removes the grant bound to that node's id
    removed = api.delete(
        "/v1/secrets/db/grants", params={"selector": "node:web-1"}, headers=operator(config)
    )
    assert removed.status_code == 200 and removed.json()["grants"] == []
    gone = api.delete(
        "/v1/secrets/db/grants", params={"selector": "node:web-1"}, headers=operator(config)
    )
    assert gone.status_code == 404 and gone.json()["error"] == "grant"


def test_a_grant_to_a_name_is_not_captured_by_a_node_that_takes_the_name_later(
    make_client, config, make_software_tpm, clock
):
    """The attack: the operator grants ``node:web-1`` while web-1 waits for approval; the
    pending node expires and is swept, freeing the name; another TPM enrolls as web-1 and is
    approved (the operator approves "web-1"). Matching grants by name at release time would
    hand it the secret. The grant was bound to the first node's id: nothing is released."""
    approve = dataclasses.replace(
        config, enrollment_mode=EnrollmentMode.APPROVE, pending_ttl_seconds=60
    )
    api = make_client(approve, policy=policy_document())
    first = DevAgent.create(make_software_tpm())
    first.enroll(api, "web-1", expect_state="pending")
    put_secret(api, config, "db", SECRET, "node:web-1")
    stored = api.get("/v1/secrets", headers=operator(config)).json()["secrets"][0]["grants"]
    assert stored == [f"node:{first.node_id}"]

    clock.advance(61)
    sweep_stale(api.app.state.service)
    assert api.get(f"/v1/nodes/{first.node_id}", headers=operator(config)).status_code == 404

    taker = DevAgent.create(make_software_tpm())
    taker.enroll(api, "web-1", expect_state="pending")
    assert taker.node_id != first.node_id
    approved = api.post(f"/v1/nodes/{taker.node_id}/approve", headers=operator(config))
    assert approved.status_code == 200, approved.text
    assert taker.attest(api).json()["status"] == "affirming"
    refused = api.post(f"/v1/nodes/{taker.node_id}/secrets/db", auth=taker.auth)
    assert refused.status_code == 403 and refused.json()["error"] == "not-granted", refused.text
    assert SECRET not in refused.content

    # An old-style row naming the node (not yet migrated) grants nothing either: release
    # matches node grants by id only.
    engine = create_engine(config.resolved_database_url)
    with engine.begin() as connection:
        connection.execute(
            insert(SecretGrant).values(
                secret_name="db", selector="node:web-1", created_at=datetime.now(UTC)
            )
        )
    engine.dispose()
    refused = api.post(f"/v1/nodes/{taker.node_id}/secrets/db", auth=taker.auth)
    assert refused.status_code == 403 and refused.json()["error"] == "not-granted", refused.text

    # Granting to the name again is the operator's deliberate act: it binds to the new node.
    put_secret(api, config, "db", SECRET, "node:web-1")
    released = api.post(f"/v1/nodes/{taker.node_id}/secrets/db", auth=taker.auth)
    assert released.status_code == 200, released.text
    assert released.json()["granted_by"] == f"node:{taker.node_id}"
    assert unseal(taker, released.json()) == SECRET
