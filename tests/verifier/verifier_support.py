"""Test helpers: a quote-only appraiser and the agent side of the protocol on a real swtpm."""

from __future__ import annotations

import base64
import threading
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from stockade.agent.client import ChannelAuth
from stockade.appraisal.appraise import AFFIRMING, CLAIMS, CONTRAINDICATED, NO_CLAIM
from stockade.appraisal.executions import Forbidden
from stockade.channel import channel_certify_nonce
from stockade.evidence import PcrSelection, QuoteInvalid, Signature, verify_quote
from stockade.evidence.clock import is_new_boot
from stockade.evidence.credential import CredentialBlob
from stockade.evidence.templates import KeyKind
from stockade.tpm.ak import AttestationKey, create_ak
from stockade.tpm.credential import activate_credential
from stockade.tpm.device import Tpm
from stockade.tpm.ek import read_endorsement
from stockade.tpm.node_key import NodeKey, certify_node_key, create_node_key, sign_digest
from stockade.tpm.quote import quote
from stockade.tpm.swtpm import SoftwareTpm
from stockade.verifier.appraiser import Appraisal, Status

PCRS = "sha256:0,1,2,3,4,5,6,7"
_TPM_LOCKS: dict[str, threading.Lock] = {}


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@dataclass(frozen=True)
class QuotePolicy:
    ref: str
    pcrs: PcrSelection
    result_validity_seconds: float
    # {"sha256": {"7": hex}}: a verified quote with other values there is contraindicated.
    reference: Mapping[str, Mapping[str, str]] | None = None
    executions_quoted: bool = False
    forbidden: Forbidden = field(default_factory=Forbidden)


class QuoteOnlyAppraiser:
    """Affirms any quote that verifies with the node's AK, the nonce and clock continuity."""

    def parse_policy(self, document: Mapping[str, Any], version: int) -> QuotePolicy:
        return QuotePolicy(
            f"{document['id']}@{version}",
            PcrSelection.parse(document["pcrs"]),
            float(document["result_validity_seconds"]),
            document.get("reference"),
        )

    def build_references(self, policy: QuotePolicy) -> None:
        return None

    def appraise(self, policy, references, node, evidence, expected_nonce) -> Appraisal:
        def appraisal(status, vector, reasons, clock=None, new_boot=False) -> Appraisal:
            return Appraisal(status, vector, tuple(reasons), clock, new_boot, policy.ref, None)

        try:
            verified = verify_quote(
                node.ak_public,
                evidence.quote,
                Signature.unmarshal(evidence.signature),
                nonce=expected_nonce,
                pcr_values=evidence.pcrs,
                expected_selection=policy.pcrs,
                previous_clock=node.last_clock,
            )
        except QuoteInvalid as error:
            vector = {claim: NO_CLAIM for claim in CLAIMS}
            vector["instance-identity"] = CONTRAINDICATED
            return appraisal(Status.CONTRAINDICATED, vector, [f"quote: {error}"])
        clock = verified.clock_info
        new_boot = node.last_clock is None or is_new_boot(node.last_clock, clock)
        vector = {claim: AFFIRMING for claim in CLAIMS}
        quoted = evidence.pcrs.to_json()
        differ = [
            f"quoted PCR {bank}:{index} is {quoted.get(bank, {}).get(index)}, not the reference"
            for bank, values in (policy.reference or {}).items()
            for index, value in values.items()
            if quoted.get(bank, {}).get(index) != value
        ]
        if differ:
            vector["configuration"] = CONTRAINDICATED
            return appraisal(Status.CONTRAINDICATED, vector, differ, clock, new_boot)
        return appraisal(Status.AFFIRMING, vector, [], clock, new_boot)


def policy_document(
    policy_id: str = "test", validity: float = 120, reference: dict | None = None
) -> dict[str, Any]:
    document: dict[str, Any] = {"id": policy_id, "pcrs": PCRS, "result_validity_seconds": validity}
    if reference is not None:
        document["reference"] = reference
    return document


# A fresh swtpm's PCR 7: a node that extends it afterwards fails appraisal with a verified quote.
ZERO_PCR_7 = {"sha256": {"7": "00" * 32}}


@dataclass
class DevAgent:
    """The agent side: a swtpm, its EK, an AK made under it and, once enrolled, the channel
    key (in the same TPM) that signs its calls; ``auth`` signs an httpx request with it."""

    tpm: SoftwareTpm
    ak: AttestationKey
    ek_public: bytes
    ek_certificate: bytes
    node_id: str | None = None
    channel_key: NodeKey | None = None

    @property
    def auth(self) -> ChannelAuth:
        """httpx auth signing as this node (pass ``auth=agent.auth`` to node calls)."""
        assert self.node_id is not None and self.channel_key is not None, "enroll first"
        return self.auth_as(self.node_id)

    def auth_as(self, node_id: str, key: NodeKey | None = None) -> ChannelAuth:
        """Sign with this TPM's channel key (or ``key``) but claim to be ``node_id``."""
        signing_key = key or self.channel_key
        assert signing_key is not None

        def sign(digest: bytes) -> bytes:
            # One signature at a time: a swtpm has no resource manager for parallel clients.
            with (
                _TPM_LOCKS.setdefault(self.tpm.tcti, threading.Lock()),
                Tpm(self.tpm.tcti) as device,
            ):
                return sign_digest(device, signing_key, digest)

        return ChannelAuth(node_id, sign)

    @classmethod
    def create(cls, tpm: SoftwareTpm, ek_kind: KeyKind = KeyKind.RSA) -> DevAgent:
        with Tpm(tpm.tcti) as device:
            endorsement = read_endorsement(device, ek_kind)
            ak = create_ak(device, KeyKind.ECC, ek_kind=ek_kind)
        assert endorsement.certificate is not None
        return cls(tpm, ak, endorsement.public.marshal_tpm2b(), endorsement.certificate)

    def enrollment_request(self, name: str) -> dict[str, str]:
        return {
            "name": name,
            "ek_certificate": b64(self.ek_certificate),
            "ek_public": b64(self.ek_public),
            "ak_public": b64(self.ak.public.marshal_tpm2b()),
        }

    def activate(self, challenge: Mapping[str, str], activator: SoftwareTpm | None = None) -> bytes:
        blob = CredentialBlob(
            base64.b64decode(challenge["credential_blob"]),
            base64.b64decode(challenge["encrypted_secret"]),
        )
        with Tpm((activator or self.tpm).tcti) as device:
            return activate_credential(device, self.ak, blob)

    def activation_request(self, enrollment_id: str, secret: bytes) -> dict[str, str]:
        """The secret, and a new channel key certified by the AK over this enrollment."""
        with Tpm(self.tpm.tcti) as device:
            key = create_node_key(device)
            certify_info, signature = certify_node_key(
                device, key, self.ak, channel_certify_nonce(enrollment_id, secret)
            )
        self.channel_key = key
        return {
            "secret": b64(secret),
            "channel_key_public": b64(key.public.marshal_tpm2b()),
            "channel_certify_info": b64(certify_info),
            "channel_signature": b64(signature),
        }

    def enroll(self, client, name: str, *, expect_state: str | None = None) -> str:
        challenge = client.post("/v1/enrollments", json=self.enrollment_request(name))
        assert challenge.status_code == 201, challenge.text
        body = challenge.json()
        secret = self.activate(body)
        activation = client.post(
            f"/v1/enrollments/{body['enrollment_id']}/activation",
            json=self.activation_request(body["enrollment_id"], secret),
        )
        assert activation.status_code == 200, activation.text
        if expect_state is not None:
            assert activation.json()["state"] == expect_state, activation.text
        self.node_id = activation.json()["node_id"]
        return self.node_id

    def evidence(self, nonce: bytes, selection: str = PCRS) -> dict[str, Any]:
        with Tpm(self.tpm.tcti) as device:
            quoted = quote(device, self.ak, PcrSelection.parse(selection), nonce)
        return {
            "nonce": b64(nonce),
            "quote": b64(quoted.message),
            "signature": b64(quoted.signature),
            "pcrs": quoted.pcr_values.to_json(),
            "event_log": "",
        }

    def nonce(self, client) -> bytes:
        issued = client.post(f"/v1/nodes/{self.node_id}/nonces", auth=self.auth)
        assert issued.status_code == 201, issued.text
        return base64.b64decode(issued.json()["nonce"])

    def attest(self, client) -> Any:
        nonce = self.nonce(client)
        return client.post(
            f"/v1/nodes/{self.node_id}/evidence", json=self.evidence(nonce), auth=self.auth
        )


def operator_headers(data_dir) -> dict[str, str]:
    """The operator's bearer token (the verifier writes it on first start)."""
    token = (data_dir / "operator-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def reader_headers(where) -> dict[str, str]:
    """The reader's bearer token (made beside the operator's on first start): reads only.
    ``where`` is the data directory, or a TestClient of the verifier app."""
    data_dir = where.app.state.service.config.data_dir if hasattr(where, "app") else where
    token = (data_dir / "reader-token").read_text().strip()
    return {"Authorization": f"Bearer {token}"}


def read(client, path: str, **options):
    """``client.get(path)`` with the reader's token (reads of trust state need a credential)."""
    headers = {**reader_headers(client), **options.pop("headers", {})}
    return client.get(path, headers=headers, **options)
