"""Who a node is, and who may make it one: owned names, the EK's canonical identity, the
operator's admission (approve, allowlist, replace), the signed node channel, and evidence that
proves nothing changing nothing. Real swtpms; the verifier in process."""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
from sqlalchemy import func, select
from verifier_support import DevAgent, b64, operator_headers, policy_document, read

from stockade.evidence.public import TpmPublic
from stockade.verifier.config import EnrollmentMode
from stockade.verifier.models import SecurityEvent
from stockade.verifier.security_events import PER_KEY_PER_MINUTE

pytestmark = pytest.mark.swtpm


def _state(client, node_id: str) -> str:
    return read(client, f"/v1/nodes/{node_id}").json()["state"]


def _security_events(client, kind: str | None = None) -> list[dict]:
    events = read(client, "/v1/security-events").json()["security_events"]
    return [event for event in events if kind is None or event["kind"] == kind]


def _log_size(client) -> int:
    return int(client.get("/v1/log/checkpoint", params={"format": "json"}).json()["size"])


# -- names ------------------------------------------------------------------------------------


def test_a_name_belongs_to_one_ek(client, make_software_tpm):
    victim, thief = DevAgent.create(make_software_tpm()), DevAgent.create(make_software_tpm())
    victim_id = victim.enroll(client, "web-1")
    assert victim.attest(client).json()["state"] == "trusted"
    taken = client.post("/v1/enrollments", json=thief.enrollment_request("web-1"))
    assert taken.status_code == 409 and taken.json()["error"] == "name"
    # An id is never a name, in any spelling.
    for spelling in (victim_id, victim_id.upper(), victim_id.replace("-", "")):
        as_id = client.post("/v1/enrollments", json=thief.enrollment_request(spelling))
        assert as_id.status_code == 400 and as_id.json()["error"] == "name", spelling
    # The thief's TPM, once a node, cannot rename itself onto the victim either.
    thief.enroll(client, "web-2")
    rename = client.post("/v1/enrollments", json=thief.enrollment_request("web-1"))
    assert rename.status_code == 409 and rename.json()["error"] == "name"
    assert _state(client, victim_id) == "trusted"
    nodes = read(client, "/v1/nodes").json()["nodes"]
    assert sorted(node["name"] for node in nodes) == ["web-1", "web-2"]
    recorded = _security_events(client, "name-taken") + _security_events(client, "name-change")
    assert len(recorded) == 2 and all(event["name"] == "web-1" for event in recorded)


@pytest.mark.parametrize("name", ["kubernetes.default.svc" + ".x" * 20, "Web-1", "a_b", ""])
def test_names_that_cannot_be_certified_are_refused_at_enrollment(client, software_tpm, name):
    agent = DevAgent.create(software_tpm)
    response = client.post("/v1/enrollments", json=agent.enrollment_request(name))
    assert response.status_code in (400, 422)
    assert read(client, "/v1/nodes").json()["nodes"] == []


# -- the EK's identity -----------------------------------------------------------------------


def test_a_reencoded_ek_does_not_escape_a_revocation(client, software_tpm, verifier_config):
    operator = operator_headers(verifier_config.data_dir)
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "stolen")
    assert client.post(f"/v1/nodes/{node_id}/revoke", headers=operator).status_code == 200
    ek = TpmPublic.unmarshal_tpm2b(agent.ek_public)
    variants = {
        "exponent": replace(ek, parameters=replace(ek.parameters, exponent=65537)),
        "auth-policy": replace(ek, auth_policy=bytes(32)),
        "user-with-auth": replace(ek, attributes=ek.attributes | 0x40),
    }
    for what, variant in variants.items():
        request = agent.enrollment_request("stolen")
        request["ek_public"] = b64(variant.marshal_tpm2b())
        response = client.post("/v1/enrollments", json=request)
        assert response.status_code == 403, (what, response.text)
        # Under a new name too: the key, not the name or the bytes, is the node.
        request["name"] = "fresh-name"
        assert client.post("/v1/enrollments", json=request).status_code == 403, what
    again = client.post("/v1/enrollments", json=agent.enrollment_request("fresh-name"))
    assert again.status_code == 403 and again.json()["error"] == "revoked"
    assert [node["node_id"] for node in read(client, "/v1/nodes").json()["nodes"]] == [node_id]
    assert _state(client, node_id) == "revoked"


def test_one_ek_type_gives_a_tpm_one_identity(make_client, verifier_config, software_tpm):
    """A TPM holds an RSA and an ECC EK: two identities. Revoked under one, it could come back
    under the other (as a new, pending machine); a verifier that accepts one EK type closes
    that door."""
    from stockade.evidence.templates import KeyKind

    verifier_config.ek_types = frozenset({"rsa"})
    client = make_client(policy=policy_document())
    operator = operator_headers(verifier_config.data_dir)
    rsa_side = DevAgent.create(software_tpm, KeyKind.RSA)
    node_id = rsa_side.enroll(client, "one-tpm")
    assert client.post(f"/v1/nodes/{node_id}/revoke", headers=operator).status_code == 200
    ecc_side = DevAgent.create(software_tpm, KeyKind.ECC)
    refused = client.post("/v1/enrollments", json=ecc_side.enrollment_request("other-name"))
    assert refused.status_code == 403 and refused.json()["error"] == "ek-type"
    # Without the restriction the other EK is another identity (shown, not endorsed).
    verifier_config.ek_types = None
    open_client = make_client()
    assert ecc_side.enroll(open_client, "other-name") != node_id


# -- admission -------------------------------------------------------------------------------


def test_approval_mode_keeps_a_new_machine_pending(make_client, verifier_config, software_tpm):
    verifier_config.enrollment_mode = EnrollmentMode.APPROVE
    client = make_client(policy=policy_document())
    operator = operator_headers(verifier_config.data_dir)
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "new-box", expect_state="pending")
    refused = client.post(f"/v1/nodes/{node_id}/nonces", auth=agent.auth)
    assert refused.status_code == 403 and refused.json()["error"] == "pending"
    # The node itself cannot approve itself, nor can a reader.
    assert client.post(f"/v1/nodes/{node_id}/approve").status_code == 401
    as_reader = client.post(f"/v1/nodes/{node_id}/approve", headers=read_headers(client))
    assert as_reader.status_code in (401, 403)
    approved = client.post(f"/v1/nodes/{node_id}/approve", headers=operator)
    assert approved.status_code == 200 and approved.json()["state"] == "enrolled"
    assert agent.attest(client).json()["state"] == "trusted"
    events = read(client, "/v1/events", params={"follow": "false"}).text
    assert '"to": "pending"' in events and '"actor": "operator"' in events
    # Re-enrolling the same, approved TPM (a reinstall) does not send it back to pending.
    reinstalled = DevAgent.create(software_tpm)
    assert reinstalled.enroll(client, "new-box", expect_state="enrolled") == node_id
    # Approving twice is a conflict, not a silent success.
    assert client.post(f"/v1/nodes/{node_id}/approve", headers=operator).status_code == 409


def read_headers(client) -> dict[str, str]:
    from verifier_support import reader_headers

    return reader_headers(client)


def test_pending_machines_and_unused_challenges_are_swept(
    make_client, verifier_config, make_software_tpm, clock
):
    import time

    verifier_config.enrollment_mode = EnrollmentMode.APPROVE
    verifier_config.pending_ttl_seconds = 60
    client = make_client(policy=policy_document())
    agent = DevAgent.create(make_software_tpm())
    node_id = agent.enroll(client, "waiting", expect_state="pending")
    idle = DevAgent.create(make_software_tpm())
    client.post("/v1/enrollments", json=idle.enrollment_request("never-activated"))
    service = client.app.state.service
    from stockade.verifier.models import Enrollment

    with service.sessions() as session:
        assert session.scalar(select(func.count()).select_from(Enrollment)) == 2
    clock.advance(3600)
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        with service.sessions() as session:
            left = session.scalar(select(func.count()).select_from(Enrollment))
        if left == 0 and read(client, f"/v1/nodes/{node_id}").status_code == 404:
            break
        time.sleep(0.05)
    assert left == 0
    assert read(client, f"/v1/nodes/{node_id}").status_code == 404
    # The machine may ask again; it waits again.
    assert DevAgent.create(agent.tpm).enroll(client, "waiting", expect_state="pending")


def test_allowlist_mode_admits_only_listed_eks(make_client, verifier_config, make_software_tpm):
    listed, unlisted = DevAgent.create(make_software_tpm()), DevAgent.create(make_software_tpm())
    verifier_config.enrollment_mode = EnrollmentMode.ALLOWLIST
    verifier_config.ek_allowlist = frozenset({hashlib.sha256(listed.ek_certificate).hexdigest()})
    client = make_client(policy=policy_document())
    listed.enroll(client, "listed", expect_state="enrolled")
    refused = client.post("/v1/enrollments", json=unlisted.enrollment_request("unlisted"))
    assert refused.status_code == 403 and refused.json()["error"] == "allowlist"
    verifier_config.ek_allowlist = None
    unconfigured = make_client().post(
        "/v1/enrollments", json=unlisted.enrollment_request("unlisted")
    )
    assert unconfigured.status_code == 403  # allowlist mode without a list admits nobody


def test_board_swap_keeps_the_node_and_drops_the_old_tpm(
    client, make_software_tpm, verifier_config
):
    operator = operator_headers(verifier_config.data_dir)
    old, new = DevAgent.create(make_software_tpm()), DevAgent.create(make_software_tpm())
    node_id = old.enroll(client, "rack-7")
    assert old.attest(client).json()["state"] == "trusted"
    labels = client.put(
        f"/v1/nodes/{node_id}/labels", json={"labels": {"role": "db"}}, headers=operator
    )
    assert labels.status_code == 200
    # Without the operator, the new board is an intruder.
    early = client.post("/v1/enrollments", json=new.enrollment_request("rack-7"))
    assert early.status_code == 409
    # Only the EK the operator names may take it.
    new_ek = hashlib.sha256(new.ek_certificate).hexdigest()
    opened = client.post(f"/v1/nodes/{node_id}/replace", json={"ek": "ab" * 32}, headers=operator)
    assert opened.status_code == 200
    assert client.post("/v1/enrollments", json=new.enrollment_request("rack-7")).status_code == 409
    opened = client.post(f"/v1/nodes/{node_id}/replace", json={"ek": new_ek}, headers=operator)
    assert opened.status_code == 200 and opened.json()["replace_ek"] == new_ek
    assert new.enroll(client, "rack-7") == node_id
    node = read(client, f"/v1/nodes/{node_id}").json()
    assert node["state"] == "enrolled" and node["labels"] == {"role": "db"}
    assert node["replace_until"] is None
    # The old board is nobody now.
    gone = client.post(f"/v1/nodes/{node_id}/nonces", auth=old.auth)
    assert gone.status_code == 401
    assert new.attest(client).json()["state"] == "trusted"
    history = read(client, f"/v1/nodes/{node_id}/results", params={"limit": 10}).json()
    assert len(history["results"]) == 2  # the old board's result is kept
    events = read(client, "/v1/events", params={"follow": "false"}).text
    assert "replaced: EK" in events


# -- the node channel ------------------------------------------------------------------------


def test_unsigned_forged_and_replayed_node_calls_change_nothing(client, make_software_tpm):
    victim, attacker = DevAgent.create(make_software_tpm()), DevAgent.create(make_software_tpm())
    victim_id = victim.enroll(client, "victim")
    attacker.enroll(client, "attacker")
    assert victim.attest(client).json()["state"] == "trusted"
    size = _log_size(client)
    junk = {"nonce": "AA==", "quote": "AA==", "signature": "AA==", "pcrs": {}, "event_log": ""}
    evidence_url = f"/v1/nodes/{victim_id}/evidence"
    assert client.post(f"/v1/nodes/{victim_id}/nonces").status_code == 401
    assert client.post(evidence_url, json=junk).status_code == 401
    forged = client.post(evidence_url, json=junk, auth=attacker.auth_as(victim_id))
    assert forged.status_code == 401 and forged.json()["error"] == "channel"
    # A captured, validly signed request replayed byte for byte.
    request = client.build_request("POST", f"/v1/nodes/{victim_id}/nonces")
    signed = next(victim.auth.auth_flow(request))
    captured = {
        name: signed.headers[name] for name in ("signature-input", "signature", "content-digest")
    }
    first = client.post(f"/v1/nodes/{victim_id}/nonces", headers=captured)
    assert first.status_code == 201
    replayed = client.post(f"/v1/nodes/{victim_id}/nonces", headers=captured)
    assert replayed.status_code == 401 and "replay" in replayed.json()["detail"]
    # The victim's own signature over a nonce request does not authorise evidence.
    moved = client.post(evidence_url, json=junk, headers=captured)
    assert moved.status_code == 401
    assert _state(client, victim_id) == "trusted"
    assert len(read(client, f"/v1/nodes/{victim_id}/results").json()["results"]) == 1
    assert _log_size(client) == size


def test_evidence_that_does_not_verify_is_a_counted_security_event(client, make_software_tpm):
    node, other = DevAgent.create(make_software_tpm()), DevAgent.create(make_software_tpm())
    node_id = node.enroll(client, "honest")
    assert node.attest(client).json()["state"] == "trusted"
    size = _log_size(client)
    url = f"/v1/nodes/{node_id}/evidence"
    for _ in range(PER_KEY_PER_MINUTE + 6):
        nonce = node.nonce(client)
        response = client.post(url, json=other.evidence(nonce), auth=node.auth)
        assert response.status_code == 403 and response.json()["error"] == "evidence"
    assert _state(client, node_id) == "trusted"
    assert len(read(client, f"/v1/nodes/{node_id}/results").json()["results"]) == 1
    assert _log_size(client) == size
    events = _security_events(client, "evidence-unverified")
    assert len(events) == PER_KEY_PER_MINUTE  # rate-limited: the rest are counted, not stored
    service = client.app.state.service
    with service.sessions() as session:
        rows = session.scalar(select(func.count()).select_from(SecurityEvent))
    assert rows == len(_security_events(client))
    # The security events are themselves a read that needs a credential.
    assert client.get("/v1/security-events").status_code == 401


def test_allowlist_entries_have_one_form(tmp_path):
    from stockade.verifier.config import load_allowlist, normalize_ek_entry
    from stockade.verifier.errors import ConfigurationError

    digest = "AB" * 32
    assert normalize_ek_entry(digest) == "ab" * 32
    assert normalize_ek_entry("sha256:" + ":".join(["ab"] * 32)) == "ab" * 32
    assert normalize_ek_entry("serial:0x00Fe") == normalize_ek_entry("SERIAL:fe") == "serial:fe"
    for bad in ("ab" * 31, "serial:xyz", "serial:" + "f" * 41, "md5:" + "ab" * 16, ""):
        assert normalize_ek_entry(bad) is None, bad
    listing = tmp_path / "allow"
    listing.write_text(f"# fleet\n{digest}  # rack 1\nserial:00ff\n")
    assert load_allowlist(listing) == {"ab" * 32, "serial:ff"}
    listing.write_text("not-a-fingerprint\n")
    with pytest.raises(ConfigurationError, match="allow:1"):
        load_allowlist(listing)
