"""Every secret release is signed: the verifier's answer carries a secret-release statement
(``typ`` stockade-secret-release+jwt) that a node checks under the key it pinned, naming the
node, the secret, its version, the exact blob and the PCRs it is sealed to. A blob alone is
no proof of origin: anyone can seal one to a node's public EK and channel key.

And the verifier never seals to a PCR that binds nothing (13, the execution PCR, or the
resettable 16-23), even when its policy quotes one: the agent would refuse such a blob.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from datetime import timedelta

import jwt
import pytest
from fastapi.testclient import TestClient
from verifier_support import DevAgent, b64, operator_headers, policy_document

from stockade.cluster.secret_store import KeyEncryptionKey, KeyRing
from stockade.evidence.duplication import SealedSecret
from stockade.evidence.templates import KeyKind
from stockade.statements import (
    SECRET_RELEASE_TYPE,
    StatementInvalid,
    VerifierKeys,
    verify_secret_release,
)
from stockade.tpm.device import Tpm
from stockade.tpm.sealed import unseal_secret
from stockade.verifier import VerifierConfig

pytestmark = pytest.mark.swtpm

SECRET = b"db-password: correct horse battery staple \x00\xff"
WITH_RESETTABLE = "sha256:0,1,2,3,4,5,6,7,16,23"


@pytest.fixture
def config(verifier_config: VerifierConfig) -> VerifierConfig:
    return dataclasses.replace(verifier_config, key_ring=KeyRing(KeyEncryptionKey.generate()))


def verifier(
    make_client: Callable[..., TestClient], config: VerifierConfig, pcrs: str
) -> TestClient:
    return make_client(config, policy={**policy_document(), "pcrs": pcrs})


def trusted(api: TestClient, tpm, name: str, selection: str) -> DevAgent:
    agent = DevAgent.create(tpm)
    agent.enroll(api, name)
    nonce = agent.nonce(api)
    answer = api.post(
        f"/v1/nodes/{agent.node_id}/evidence",
        json=agent.evidence(nonce, selection),
        auth=agent.auth,
    )
    assert answer.status_code == 200 and answer.json()["status"] == "affirming", answer.text
    return agent


def grant(api: TestClient, config: VerifierConfig, name: str, node_id: str) -> None:
    headers = operator_headers(config.data_dir)
    stored = api.put(f"/v1/secrets/{name}", json={"value": b64(SECRET)}, headers=headers)
    assert stored.status_code == 200, stored.text
    granted = api.post(
        f"/v1/secrets/{name}/grants", json={"selector": f"node:{node_id}"}, headers=headers
    )
    assert granted.status_code == 200, granted.text


def published_keys(api: TestClient) -> VerifierKeys:
    return VerifierKeys.parse(json.dumps(api.get("/v1/keys").json()).encode(), "GET /v1/keys")


def test_a_release_carries_a_statement_for_that_node_secret_and_blob(
    make_client, config, software_tpm, clock
) -> None:
    api = verifier(make_client, config, "sha256:0,1,2,3,4,5,6,7")
    agent = trusted(api, software_tpm, "web-1", "sha256:0,1,2,3,4,5,6,7")
    assert agent.node_id is not None and agent.channel_key is not None
    grant(api, config, "db", agent.node_id)
    released = api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth)
    assert released.status_code == 200, released.text
    answer = released.json()
    token = answer["release"]
    sealed = SealedSecret.from_json(answer["sealed"])
    keys = published_keys(api)
    header = jwt.get_unverified_header(token)
    assert header["typ"] == SECRET_RELEASE_TYPE and header["kid"] in keys.keys
    checked = verify_secret_release(
        token, keys, node_id=agent.node_id, name="db", sealed=sealed.marshal(), now=clock()
    )
    assert checked.version == answer["version"] == 1
    assert checked.result_id == answer["result_id"]
    assert checked.sealed_sha256 == hashlib.sha256(sealed.marshal()).hexdigest()
    assert checked.pcr_selection == {bank.bank_name: bank.pcrs for bank in sealed.selection.banks}
    assert checked.pcr_selection == {"sha256": (0, 1, 2, 3, 4, 5, 6, 7)}
    with Tpm(software_tpm.tcti) as tpm:
        assert unseal_secret(tpm, KeyKind.RSA, sealed, agent.channel_key) == SECRET
    # Short-lived, and of its own kind: not for another node, and never an EAR.
    with pytest.raises(StatementInvalid, match="is valid"):
        verify_secret_release(
            token,
            keys,
            node_id=agent.node_id,
            name="db",
            sealed=sealed.marshal(),
            now=clock() + timedelta(minutes=6),
        )
    with pytest.raises(StatementInvalid, match="addressed to node"):
        verify_secret_release(
            token, keys, node_id="another", name="db", sealed=sealed.marshal(), now=clock()
        )
    with pytest.raises(StatementInvalid, match="has type"):  # what an EAR verifier asks
        keys.verify(token, "an EAR", typ=None, now=clock())


def test_a_release_is_never_sealed_to_a_resettable_pcr(make_client, config, software_tpm, clock):
    """The policy quotes PCRs 16 and 23; the secret is sealed to 0-7 only (and says so)."""
    api = verifier(make_client, config, WITH_RESETTABLE)
    agent = trusted(api, software_tpm, "web-1", WITH_RESETTABLE)
    assert agent.node_id is not None and agent.channel_key is not None
    grant(api, config, "db", agent.node_id)
    answer = api.post(f"/v1/nodes/{agent.node_id}/secrets/db", auth=agent.auth).json()
    sealed = SealedSecret.from_json(answer["sealed"])
    assert str(sealed.selection) == "sha256:0,1,2,3,4,5,6,7"
    checked = verify_secret_release(
        answer["release"],
        published_keys(api),
        node_id=agent.node_id,
        name="db",
        sealed=sealed.marshal(),
        now=clock(),
    )
    assert checked.pcr_selection == {"sha256": (0, 1, 2, 3, 4, 5, 6, 7)}
    with Tpm(software_tpm.tcti) as tpm:
        tpm.extend_pcr(23, b"anything: PCR 23 is not part of the seal")
        assert unseal_secret(tpm, KeyKind.RSA, sealed, agent.channel_key) == SECRET
