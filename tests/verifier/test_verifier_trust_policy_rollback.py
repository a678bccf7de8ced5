"""The verifier's half of trust-policy rollback protection, end to end with a real software
TPM: the hook's own ``measure_and_log`` records the org-signed trust policy (digest and
serial) and the container start into PCR 13 and the execution log, the agent's evidence
carries them, and the appraisal policy's ``executions.trust_policy`` (``min_serial`` or
``digest``) contraindicates a node whose log loaded an older (or other) policy, naming the
record, the serial or digest loaded and the one required."""

from __future__ import annotations

import base64
import dataclasses

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from verifier_support import DevAgent, QuoteOnlyAppraiser, b64, operator_headers

from stockade.agent.execution_log import ExecutionLog
from stockade.agent.oci_hook import measure_and_log
from stockade.appraisal.policy import parse_executions
from stockade.evidence.execution import ContainerStart, encode_record
from stockade.images.policy import TrustPolicy, load_trust_policy, sign_trust_policy
from stockade.release.keys import public_pem
from stockade.tpm.device import Tpm

SELECTION = "sha256:0,1,2,3,4,5,6,7,13"
TIME = "2026-12-06T08:00:00Z"


class RealExecutionsAppraiser(QuoteOnlyAppraiser):
    """Appraises the quote only, and the execution log with the ``executions`` section as
    the core policy parser reads it (``parse_executions``)."""

    def parse_policy(self, document, version):
        base = super().parse_policy(document, version)
        return dataclasses.replace(
            base,
            executions_quoted=True,
            forbidden=parse_executions(document.get("executions", {})),
        )


def appraisal_policy(**trust_policy) -> dict:
    return {
        "id": "rollback",
        "pcrs": SELECTION,
        "result_validity_seconds": 120,
        "executions": {"trust_policy": trust_policy},
    }


@pytest.fixture(scope="module")
def org() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="module")
def policies(org) -> dict[int, TrustPolicy]:
    """The org's trust policy, serials 1 (trusts old-ci) and 2 (revokes it), as signed."""
    build, old_ci = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    made = {}
    for serial, names in ((1, ("build", "old-ci")), (2, ("build",))):
        keys = {"build": public_pem(build.public_key()).decode()}
        if "old-ci" in names:
            keys["old-ci"] = public_pem(old_ci.public_key()).decode()
        document = {
            "version": 2,
            "serial": serial,
            "expires": "2099-01-01T00:00:00Z",
            "keys": keys,
            "scopes": [{"prefix": "registry.example/org", "keys": sorted(keys)}],
        }
        made[serial] = load_trust_policy(sign_trust_policy(document, org), [org.public_key()])
    return made


@pytest.fixture
def api(verifier_config):
    from fastapi.testclient import TestClient

    from stockade.verifier import create_app

    clients = []

    def make(document):
        client = TestClient(
            create_app(verifier_config, appraiser=RealExecutionsAppraiser()),
            raise_server_exceptions=False,
        )
        client.__enter__()
        clients.append(client)
        stored = client.put(
            f"/v1/policies/{document['id']}",
            json=document,
            headers=operator_headers(verifier_config.data_dir),
        )
        assert stored.status_code == 200, stored.text
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


class Node:
    """A development node whose hook admits containers under a trust policy."""

    def __init__(self, agent: DevAgent, log: ExecutionLog) -> None:
        self.agent = agent
        self.log = log

    def start(self, number: int, policy: TrustPolicy) -> None:
        """What ``stockade-oci-hook`` does once the image verified under ``policy``."""
        record = ContainerStart(
            container_id=f"c{number}",
            image_reference="registry.example/org/app:1",
            manifest_digest="sha256:" + f"{number:064x}",
            config_digest="sha256:" + "cc" * 32,
            args=("/app",),
            env_names=("PATH",),
            mounts=(),
            time=TIME,
            trust_policy_digest=policy.digest,
        )
        with self.log.locked(), Tpm(self.agent.tpm.tcti) as tpm:
            measure_and_log(
                self.log, tpm, encode_record(record), policy.digest, TIME, serial=policy.serial
            )

    def attest(self, client) -> dict:
        issued = client.post(f"/v1/nodes/{self.agent.node_id}/nonces", auth=self.agent.auth)
        nonce = base64.b64decode(issued.json()["nonce"])
        evidence = self.agent.evidence(nonce, SELECTION)
        evidence["execution_log"] = b64(self.log.read_from(0))
        evidence["execution_log_from"] = 0
        answer = client.post(
            f"/v1/nodes/{self.agent.node_id}/evidence", json=evidence, auth=self.agent.auth
        )
        assert answer.status_code == 200, answer.text
        return answer.json()


@pytest.fixture
def node(software_tpm, tmp_path):
    def make(client) -> Node:
        agent = DevAgent.create(software_tpm)
        agent.enroll(client, "node-r")
        return Node(agent, ExecutionLog(tmp_path / "execution.log"))

    return make


def test_a_node_whose_log_loaded_an_older_policy_is_contraindicated(api, node, policies):
    """The review's attack after a reboot: the hook has no memory of serial 2 and admits an
    image under the rolled-back serial 1; the verifier requires serial 2 and says so."""
    client = api(appraisal_policy(min_serial=2))
    member = node(client)
    old = policies[1]
    member.start(0, old)
    answer = member.attest(client)
    assert answer["status"] == "contraindicated"
    assert answer["reasons"] == [
        f"execution log: record 0 (trust policy {old.digest}, serial 1): loads an image trust"
        f" policy serial 1 ({old.digest}), older than serial 2, the minimum the appraisal"
        " policy requires",
        "execution log: record 1 (container c0, image registry.example/org/app:1): started"
        f" under an image trust policy serial 1 ({old.digest}), older than serial 2, the"
        " minimum the appraisal policy requires",
    ]
    assert answer["execution_log_next"] == 0  # nothing accepted: resent, judged again
    # Loading serial 2 now does not undo what ran under serial 1 in this boot.
    member.start(1, policies[2])
    again = member.attest(client)
    assert again["status"] == "contraindicated"
    assert any("record 1 (container c0" in reason for reason in again["reasons"])


def test_a_node_under_the_required_serial_is_affirmed(api, node, policies):
    client = api(appraisal_policy(min_serial=2))
    member = node(client)
    member.start(0, policies[2])
    member.start(1, policies[2])
    answer = member.attest(client)
    assert answer["status"] == "affirming", answer["reasons"]
    assert answer["execution_log_next"] == 3


def test_the_exact_digest_is_required(api, node, policies):
    client = api(appraisal_policy(digest=policies[2].digest))
    member = node(client)
    member.start(0, policies[1])
    answer = member.attest(client)
    assert answer["status"] == "contraindicated"
    assert (
        f"loads an image trust policy {policies[1].digest}, not {policies[2].digest}, the one"
        " the appraisal policy requires"
    ) in answer["reasons"][0]


def test_a_rollback_within_the_boot_is_refused_by_the_hook(api, node, policies):
    """Within the boot the node's hook refuses serial 1 once serial 2 is in its log, so the
    verifier never sees it: the node stays affirming and nothing under serial 1 ran."""
    from stockade.agent.oci_hook import HookRefused

    client = api(appraisal_policy(min_serial=2))
    member = node(client)
    member.start(0, policies[2])
    with pytest.raises(HookRefused, match="serial 1, older than serial 2"):
        member.start(1, policies[1])
    answer = member.attest(client)
    assert answer["status"] == "affirming", answer["reasons"]
    assert answer["execution_log_next"] == 2


def test_a_malformed_requirement_is_refused_when_the_policy_is_applied(verifier_config):
    from fastapi.testclient import TestClient

    from stockade.verifier import create_app

    with TestClient(
        create_app(verifier_config, appraiser=RealExecutionsAppraiser()),
        raise_server_exceptions=False,
    ) as client:
        refused = client.put(
            "/v1/policies/rollback",
            json=appraisal_policy(min_serial=0),
            headers=operator_headers(verifier_config.data_dir),
        )
    assert refused.status_code == 422, refused.text
    assert "executions.trust_policy.min_serial" in refused.text
