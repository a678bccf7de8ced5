"""Enrollment of cloud vTPMs by their AK certificate, against `stockade verifier serve` over TLS
(``--ak-ca``) and swtpm TPMs provisioned the way GCE provisions a Shielded VM
(``stockade.tpm.cloud_ca``): the real agent enrolls and attests, and each attack is refused."""

from __future__ import annotations

import base64
import dataclasses
import json
import secrets
import shutil
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec
from verifier_support import DevAgent, b64, policy_document, reader_headers

from stockade.agent import Agent, AgentConfig
from stockade.agent.source import NodeSource
from stockade.cluster.secret_store import KeyEncryptionKey
from stockade.evidence.ak_certificate import GceInstance, ak_identity
from stockade.evidence.templates import KeyKind
from stockade.tpm.ak import AttestationKey, create_ak
from stockade.tpm.cloud_ca import (
    DEFAULT_INSTANCE,
    CloudCa,
    issue_ak_certificate,
    provision_cloud_ak,
)
from stockade.tpm.device import Tpm
from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import SoftwareTpm
from stockade.verifier.config import ca_directory_files, load_ca_files
from stockade.verifier.errors import ConfigurationError
from support.verifier_serve import QUOTE_ONLY_APPRAISER, ServedVerifier, ek_ca_files

pytestmark = [pytest.mark.swtpm, pytest.mark.tools]

# Many enrollments from one address in one module: above the default per-address limit.
_RATE = (
    "import dataclasses; create = app.create_app; "
    "app.create_app = lambda config: create(dataclasses.replace(config, "
    "enrollment_rate_per_minute=1200.0))"
)


@dataclasses.dataclass
class CloudAgent(DevAgent):
    """The agent side of an AK-certificate enrollment: the AK made from the NV template and
    the certificate the cloud CA wrote beside it."""

    ak_certificate: bytes = b""

    @classmethod
    def provision(
        cls, tpm: SoftwareTpm, ca: CloudCa, instance: GceInstance | None = None
    ) -> CloudAgent:
        """``instance``: by default one of its own (one instance is one node)."""
        instance = instance or fresh_instance()
        with Tpm(tpm.tcti) as device:
            cloud = provision_cloud_ak(device, ca, instance=instance)
        return cls(tpm, cloud.ak, b"", b"", ak_certificate=cloud.certificate)

    def ak_request(self, name: str, **overrides: Any) -> dict[str, Any]:
        return {
            "name": name,
            "ak_certificate": b64(self.ak_certificate),
            "ak_public": b64(self.ak.public.marshal_tpm2b()),
            **overrides,
        }

    def enroll_by_ak(self, client: httpx.Client, name: str) -> str:
        started = client.post("/v1/enrollments", json=self.ak_request(name))
        assert started.status_code == 201, started.text
        body = started.json()
        assert body["kind"] == "ak-certificate" and body["credential_blob"] is None
        challenge = base64.b64decode(body["challenge"])
        activated = client.post(
            f"/v1/enrollments/{body['enrollment_id']}/activation",
            json=self.activation_request(body["enrollment_id"], challenge),
        )
        assert activated.status_code == 200, activated.text
        self.node_id = activated.json()["node_id"]
        return self.node_id


def fresh_instance() -> GceInstance:
    number = secrets.randbelow(2**62)
    return dataclasses.replace(DEFAULT_INSTANCE, instance_id=number, instance_name=f"vm-{number}")


@pytest.fixture(scope="module")
def cloud_ca(tmp_path_factory: pytest.TempPathFactory) -> CloudCa:
    return CloudCa.load_or_create(tmp_path_factory.mktemp("cloud") / "cloud-ca")


def _bundle(cloud_ca: CloudCa, directory: Path) -> Path:
    directory.mkdir(mode=0o755)
    shutil.copy(cloud_ca.root_cert_path, directory / "gce-ak-root.crt")
    (directory / "gce-ak-root.crt").chmod(0o644)
    return directory


def test_an_ak_ca_bundle_is_read_and_guarded_like_an_ek_ca_bundle(cloud_ca, tmp_path):
    bundle = _bundle(cloud_ca, tmp_path / "ak-roots")
    roots, intermediates = load_ca_files(ca_directory_files(bundle, "--ak-ca-dir"), "AK CA")
    assert [r.subject for r in roots] == [cloud_ca.root_certificate().subject] and not intermediates
    bundle.chmod(0o777)
    with pytest.raises(ConfigurationError, match=r"AK CA bundle: .* writable by others"):
        ca_directory_files(bundle, "--ak-ca-dir")
    with pytest.raises(ConfigurationError, match=r"--ak-ca-dir .* not a directory"):
        ca_directory_files(tmp_path / "missing", "--ak-ca-dir")


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, ek_ca: EkCa, cloud_ca: CloudCa
) -> Iterator[ServedVerifier]:
    work = tmp_path_factory.mktemp("ak-verifier")
    policy = work / "policy.json"
    policy.write_text(json.dumps(policy_document("cloud")))
    kek = work / "kek"
    kek.write_text(KeyEncryptionKey.generate().to_text())
    kek.chmod(0o600)
    verifier = ServedVerifier(
        work / "data",
        ek_ca=ek_ca_files(ek_ca),
        policy=policy,
        prelude=f"{QUOTE_ONLY_APPRAISER}; {_RATE}",
        # Both ways of naming AK roots: a bundle directory (the root) and a file (the issuer).
        extra=(
            *("--ak-ca-dir", str(_bundle(cloud_ca, work / "ak-roots"))),
            *("--ak-ca", str(cloud_ca.issuer_cert_path)),
            *("--kek-file", str(kek)),
        ),
    )
    with verifier:
        yield verifier


@pytest.fixture
def client(served: ServedVerifier) -> Iterator[httpx.Client]:
    with served.httpx_client() as client:
        yield client


def _error(response: httpx.Response) -> str:
    return str(response.json()["error"])


def _nodes(served: ServedVerifier, client: httpx.Client) -> list[dict[str, Any]]:
    listed = client.get("/v1/nodes", headers=reader_headers(served.data_dir))
    return list(listed.json()["nodes"])


def _der(certificate: Any) -> bytes:
    return bytes(certificate.public_bytes(serialization.Encoding.DER))


def test_a_cloud_vtpm_enrolls_by_its_ak_certificate_and_attests(
    served: ServedVerifier,
    cloud_ca: CloudCa,
    make_software_tpm: Callable[[], SoftwareTpm],
    tmp_path: Path,
):
    """The real agent: --ak-from-nv makes the AK from the NV template, sends the certificate,
    certifies its channel key over the challenge, and is attested with that AK."""
    software_tpm = make_software_tpm()  # its own endorsement seed, so its own AK
    with Tpm(software_tpm.tcti) as device:
        provisioned = provision_cloud_ak(device, cloud_ca)
    log = tmp_path / "binary_bios_measurements"
    log.write_bytes(b"")
    lines: list[str] = []
    agent = Agent(
        AgentConfig(
            verifier=served.url,
            ca=served.ca,
            name="gce-vm-1",
            source=NodeSource(software_tpm.tcti, log, "cloud vTPM"),
            state_dir=tmp_path / "state",
            interval=0.05,
            jitter=0.0,
            initial_backoff=0.05,
            ak_from_nv=True,
        ),
        log=lines.append,
    )
    agent.run(max_attestations=1)
    assert agent.attestations == 1, lines
    assert any("affirming" in line for line in lines), lines
    saved = AttestationKey.load(tmp_path / "state")
    assert saved.primary_template is not None
    assert saved.public.marshal() == provisioned.ak.public.marshal()

    with served.httpx_client() as client:
        enrolled = state = None
        for node in _nodes(served, client):
            if node["name"] == "gce-vm-1":
                enrolled, state = node, node["state"]
        assert enrolled is not None and state == "trusted"
        assert enrolled["identity_kind"] == "ak-certificate"
        assert enrolled["ek_fingerprint"] == ak_identity(saved.public.public_key())
        assert enrolled["instance"] == DEFAULT_INSTANCE.to_json()
        assert enrolled["instance_key"] == DEFAULT_INSTANCE.key
        # Secrets are sealed to an EK, and no EK of this TPM was ever proven.
        refused = client.post(
            f"/v1/nodes/{enrolled['node_id']}/secrets/db",
            auth=CloudAgent(software_tpm, saved, b"", b"").auth_as(
                enrolled["node_id"], _channel_key(tmp_path / "state")
            ),
        )
        assert refused.status_code == 403 and _error(refused) == "no-ek", refused.text


def _channel_key(state_dir: Path) -> Any:
    from stockade.tpm.node_key import load_node_key

    return load_node_key(state_dir / "channel.key")


def test_an_ak_certificate_from_an_unknown_root_is_refused(
    served: ServedVerifier, client: httpx.Client, software_tpm: SoftwareTpm, tmp_path: Path
):
    rogue = CloudCa.load_or_create(tmp_path / "rogue-cloud-ca")
    agent = CloudAgent.provision(software_tpm, rogue)
    response = client.post("/v1/enrollments", json=agent.ak_request("rogue-vm"))
    assert response.status_code == 403, response.text
    assert _error(response) == "ak-certificate"
    assert "does not chain to a trusted AK CA" in response.json()["detail"]
    # Offering the rogue issuing CA as an intermediate changes nothing: it has no trusted root.
    offered = agent.ak_request("rogue-vm", ak_intermediates=[b64(_der(rogue.issuer_certificate()))])
    again = client.post("/v1/enrollments", json=offered)
    assert again.status_code == 403 and _error(again) == "ak-certificate"
    assert all(node["name"] != "rogue-vm" for node in _nodes(served, client))


def test_an_ak_certificate_for_another_key_is_refused(
    client: httpx.Client, cloud_ca: CloudCa, software_tpm: SoftwareTpm
):
    """A genuine certificate, but for a key that is not the AK presented (here a software key:
    whoever holds it could sign anything)."""
    agent = CloudAgent.provision(software_tpm, cloud_ca)
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    forged = cloud_ca.issue_ak_certificate(other)
    response = client.post(
        "/v1/enrollments", json=agent.ak_request("other-key", ak_certificate=b64(_der(forged)))
    )
    assert response.status_code == 403 and _error(response) == "ak-certificate"
    assert "certifies a different key than the AK presented" in response.json()["detail"]


def test_an_expired_ak_certificate_is_refused(
    client: httpx.Client, cloud_ca: CloudCa, software_tpm: SoftwareTpm
):
    agent = CloudAgent.provision(software_tpm, cloud_ca)
    long_ago = datetime.now(UTC) - timedelta(days=400)
    expired = cloud_ca.issue_ak_certificate(
        agent.ak.public.public_key(), not_before=long_ago, not_after=long_ago + timedelta(days=1)
    )
    response = client.post(
        "/v1/enrollments", json=agent.ak_request("expired", ak_certificate=b64(_der(expired)))
    )
    assert response.status_code == 403 and _error(response) == "ak-certificate"
    assert "expired" in response.json()["detail"]


def test_an_ak_certificate_chaining_only_to_an_ek_root_is_refused(
    client: httpx.Client, ek_ca: EkCa, software_tpm: SoftwareTpm, cloud_ca: CloudCa
):
    """The verifier trusts the EK CA (--ek-ca) for EKs; that CA must never vouch for an AK."""
    agent = CloudAgent.provision(software_tpm, cloud_ca)
    ek_issuer_key = serialization.load_pem_private_key(ek_ca.issuer_key_path.read_bytes(), None)
    assert isinstance(ek_issuer_key, ec.EllipticCurvePrivateKey)
    by_ek_ca = issue_ak_certificate(
        agent.ak.public.public_key(), issuer=ek_ca.issuer_certificate(), issuer_key=ek_issuer_key
    )
    request = agent.ak_request(
        "ek-ca-ak",
        ak_certificate=b64(_der(by_ek_ca)),
        ak_intermediates=[b64(_der(ek_ca.issuer_certificate()))],
    )
    response = client.post("/v1/enrollments", json=request)
    assert response.status_code == 403 and _error(response) == "ak-certificate"
    assert "does not chain to a trusted AK CA" in response.json()["detail"]


def test_an_ak_that_is_not_a_restricted_signing_key_is_refused(
    client: httpx.Client, cloud_ca: CloudCa, software_tpm: SoftwareTpm
):
    """A certificate for a TPM key that may sign anything (not restricted) proves nothing: it
    could sign a forged TPMS_ATTEST. Refused whatever the certificate says."""
    from stockade.evidence.public import ObjectAttributes
    from stockade.tpm.node_key import create_node_key

    agent = CloudAgent.provision(software_tpm, cloud_ca)
    with Tpm(software_tpm.tcti) as device:
        unrestricted = create_node_key(device).public
    assert not unrestricted.has(ObjectAttributes.RESTRICTED)
    certificate = cloud_ca.issue_ak_certificate(unrestricted.public_key())
    response = client.post(
        "/v1/enrollments",
        json=agent.ak_request(
            "unrestricted",
            ak_certificate=b64(_der(certificate)),
            ak_public=b64(unrestricted.marshal_tpm2b()),
        ),
    )
    assert response.status_code == 400 and _error(response) == "attestation-key"
    assert "RESTRICTED" in response.json()["detail"]


def test_an_ak_certificate_activation_is_single_use_and_bound_to_the_challenge(
    served: ServedVerifier,
    client: httpx.Client,
    cloud_ca: CloudCa,
    make_software_tpm: Callable[[], SoftwareTpm],
):
    software_tpm = make_software_tpm()  # its own endorsement seed, so its own AK
    agent = CloudAgent.provision(software_tpm, cloud_ca)
    started = client.post("/v1/enrollments", json=agent.ak_request("replayed")).json()
    enrollment_id = started["enrollment_id"]
    challenge = base64.b64decode(started["challenge"])
    url = f"/v1/enrollments/{enrollment_id}/activation"
    activation = agent.activation_request(enrollment_id, challenge)
    first = client.post(url, json=activation)
    assert first.status_code == 200, first.text
    # The same activation again (a replay, by whoever saw it): refused, nothing changes.
    replayed = client.post(url, json=activation)
    assert replayed.status_code == 409 and _error(replayed) == "enrollment"
    # A certification over another enrollment's challenge does not activate this one.
    other = client.post("/v1/enrollments", json=agent.ak_request("replayed")).json()
    moved = client.post(
        f"/v1/enrollments/{other['enrollment_id']}/activation",
        json=agent.activation_request(enrollment_id, challenge),
    )
    assert moved.status_code == 403 and _error(moved) in ("activation", "certify")
    assert [n["name"] for n in _nodes(served, client)].count("replayed") == 1


def test_an_ak_that_is_not_the_tpms_cannot_activate(
    client: httpx.Client, cloud_ca: CloudCa, make_software_tpm: Callable[[], SoftwareTpm]
):
    """The certificate is public: presenting it with its AK, but certifying the channel key
    with another AK (one this TPM really has), fails the certification."""
    software_tpm = make_software_tpm()  # its own endorsement seed, so its own AK
    agent = CloudAgent.provision(software_tpm, cloud_ca)
    started = client.post("/v1/enrollments", json=agent.ak_request("stolen-cert")).json()
    with Tpm(software_tpm.tcti) as device:
        other_ak = create_ak(device, KeyKind.ECC)
    impostor = CloudAgent(software_tpm, other_ak, b"", b"")
    response = client.post(
        f"/v1/enrollments/{started['enrollment_id']}/activation",
        json=impostor.activation_request(
            started["enrollment_id"], base64.b64decode(started["challenge"])
        ),
    )
    assert response.status_code == 403 and _error(response) == "certify"


def test_revoking_an_ak_certificate_node_keeps_it_out(
    served: ServedVerifier,
    client: httpx.Client,
    cloud_ca: CloudCa,
    make_software_tpm: Callable[[], SoftwareTpm],
):
    from verifier_support import operator_headers

    software_tpm = make_software_tpm()  # its own endorsement seed, so its own AK

    instance = dataclasses.replace(DEFAULT_INSTANCE, instance_id=77, instance_name="revoked")
    agent = CloudAgent.provision(software_tpm, cloud_ca, instance)
    node_id = agent.enroll_by_ak(client, "revoked-vm")
    assert agent.attest(client).json()["status"] == "affirming"
    operator = operator_headers(served.data_dir)
    revoked = client.post(f"/v1/nodes/{node_id}/revoke", json={"reason": "x"}, headers=operator)
    assert revoked.status_code == 200, revoked.text
    again = client.post("/v1/enrollments", json=agent.ak_request("revoked-vm"))
    assert again.status_code == 403 and _error(again) == "revoked"
    # The same instance under its other (RSA) AK is the same revoked instance.
    with Tpm(software_tpm.tcti) as device:
        rsa = provision_cloud_ak(device, cloud_ca, KeyKind.RSA, instance)
    other = CloudAgent(software_tpm, rsa.ak, b"", b"", ak_certificate=rsa.certificate)
    under_rsa = client.post("/v1/enrollments", json=other.ak_request("revoked-vm-rsa"))
    assert under_rsa.status_code == 403 and _error(under_rsa) == "revoked"


def test_ak_certificate_enrollment_without_an_ak_ca_is_refused(
    tmp_path: Path, ek_ca: EkCa, cloud_ca: CloudCa, software_tpm: SoftwareTpm
):
    agent = CloudAgent.provision(software_tpm, cloud_ca)
    with (
        ServedVerifier(tmp_path / "data", ek_ca=ek_ca_files(ek_ca)) as verifier,
        verifier.httpx_client() as client,
    ):
        response = client.post("/v1/enrollments", json=agent.ak_request("no-ak-ca"))
        assert response.status_code == 403 and _error(response) == "ak-ca"
        assert "--ak-ca" in response.json()["detail"]
        # The EK path is unchanged on the same verifier.
        ek_agent = DevAgent.create(software_tpm)
        assert ek_agent.enroll(client, "ek-node")


def test_a_request_mixing_ek_and_ak_certificates_is_refused(
    client: httpx.Client, cloud_ca: CloudCa, software_tpm: SoftwareTpm
):
    agent = CloudAgent.provision(software_tpm, cloud_ca)
    ek_agent = DevAgent.create(software_tpm)
    mixed = agent.ak_request(
        "mixed",
        ek_certificate=b64(ek_agent.ek_certificate),
        ek_public=b64(ek_agent.ek_public),
    )
    response = client.post("/v1/enrollments", json=mixed)
    assert response.status_code == 400 and _error(response) == "malformed"


def test_a_tpm_with_a_cloud_ak_and_no_ek_certificate_enrolls_by_it_unasked(
    served: ServedVerifier,
    cloud_ca: CloudCa,
    make_software_tpm: Callable[[], SoftwareTpm],
    tmp_path: Path,
):
    """Without --ak-from-nv: a TPM with no EK certificate of the agent's kind but a cloud AK in
    NV (GCE's layout) enrolls by the AK certificate; one with both keeps using its EK."""
    from tpm2_pytss.constants import ESYS_TR

    from stockade.tpm.ek import EK_CERT_NV_INDEX

    software_tpm = make_software_tpm()
    instance = dataclasses.replace(DEFAULT_INSTANCE, instance_id=99, instance_name="no-ek")
    with Tpm(software_tpm.tcti) as device:
        provision_cloud_ak(device, cloud_ca, instance=instance)
    log = tmp_path / "binary_bios_measurements"
    log.write_bytes(b"")

    def agent(name: str) -> tuple[Agent, list[str]]:
        lines: list[str] = []
        config = AgentConfig(
            verifier=served.url,
            ca=served.ca,
            name=name,
            source=NodeSource(software_tpm.tcti, log, "cloud vTPM"),
            state_dir=tmp_path / name,
            interval=0.05,
            jitter=0.0,
        )
        return Agent(config, log=lines.append), lines

    with_ek, _ = agent("has-an-ek")
    assert not with_ek.uses_cloud_ak()
    with Tpm(software_tpm.tcti) as device:
        handle = device.esys.tr_from_tpmpublic(EK_CERT_NV_INDEX[KeyKind.ECC])
        device.esys.nv_undefine_space(handle, auth_handle=ESYS_TR.PLATFORM)
    without_ek, lines = agent("no-ek-vm")
    without_ek.run(max_attestations=1)
    assert any("cloud AK certificate in NV and no EK certificate" in line for line in lines)
    assert any("affirming" in line for line in lines), lines
    with served.httpx_client() as client:
        (node,) = [n for n in _nodes(served, client) if n["name"] == "no-ek-vm"]
    assert node["identity_kind"] == "ak-certificate"
    assert node["instance"]["instance_name"] == "no-ek"


def test_a_second_key_of_an_enrolled_instance_cannot_be_a_second_node(
    served: ServedVerifier, client: httpx.Client, cloud_ca: CloudCa, make_software_tpm
):
    """A cloud instance has an RSA and an ECC AK, each certified: one instance is one node,
    whichever of its keys and names it comes with (409, recorded as a security event)."""
    from verifier_support import operator_headers

    first = CloudAgent.provision(make_software_tpm(), cloud_ca)
    instance = fresh_instance()
    with Tpm(first.tpm.tcti) as device:
        ecc = provision_cloud_ak(device, cloud_ca, KeyKind.ECC, instance)
        rsa = provision_cloud_ak(device, cloud_ca, KeyKind.RSA, instance)
    CloudAgent(first.tpm, ecc.ak, b"", b"", ak_certificate=ecc.certificate).enroll_by_ak(
        client, "instance-a"
    )
    second = CloudAgent(first.tpm, rsa.ak, b"", b"", ak_certificate=rsa.certificate)
    response = client.post("/v1/enrollments", json=second.ak_request("instance-b"))
    assert response.status_code == 409 and _error(response) == "instance", response.text
    events = client.get("/v1/security-events", headers=operator_headers(served.data_dir)).text
    assert "instance-taken" in events
    assert all(node["name"] != "instance-b" for node in _nodes(served, client))
