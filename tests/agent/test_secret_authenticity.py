"""THE ATTACK: "the agent imports any secret sealed to its EK, with any PCR selection".

Before: whatever answered the agent's release request (whoever held the verifier's TLS channel)
could hand it a blob made from public data only: the node's EK and channel key (both public),
sealed to PCR 23, which any process can reset. The agent stored it and its own code unsealed
it: the node's workloads got the impostor's "secret" (a database password of its choosing, a
TLS key it knows). The PolicySigned binding to the channel key does not help: it binds a blob
to the agent, it does not say who made it.

Now a blob is kept only with the verifier's signed release statement for exactly those bytes,
that secret and that node, under the verifier key the node pinned (``--verifier-key``, or on
first use at enrollment), and only when it is sealed, under this node's channel key, to PCRs
the node attested, never PCR 13 or a resettable PCR 16-23. On a real swtpm the forged blob is
shown to unseal in the agent's own code, then refused at every door: (a) no statement; (b) a
statement under a key not pinned; (c) a genuine statement from a real verifier for another
node, another secret, another blob; (d) a genuinely signed statement (a verifier bug) for PCR
23 or PCR 13; (e) a blob whose authPolicy is not the one for the selection it claims; (f)
userWithAuth set. The genuine release still unseals end to end, and the pin is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import jwt
import pytest
from cluster_support import SECRET, Cluster, enroll, make_agent, put_secret
from cryptography.hazmat.primitives.asymmetric import ec

import stockade.evidence.duplication as duplication
from stockade.agent import Agent, AgentConfig
from stockade.agent.client import VerifierClient
from stockade.agent.membership import (
    Membership,
    ReleaseRefused,
    sealed_object_problem,
    selection_problem,
)
from stockade.agent.source import NodeSource
from stockade.agent.state import AgentState, Enrolled, VerifierKeyMismatch
from stockade.evidence.algorithms import Alg
from stockade.evidence.duplication import SealedSecret, SealingError, seal_secret
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import ObjectAttributes, TpmPublic
from stockade.evidence.templates import KeyKind
from stockade.home import write_atomic
from stockade.statements import (
    SECRET_RELEASE_TYPE,
    SecretRelease,
    VerifierKeys,
    secret_release_claims,
    spki_kid,
    verify_secret_release,
)
from stockade.tpm.ak import create_ak
from stockade.tpm.device import Tpm
from stockade.tpm.ek import read_endorsement
from stockade.tpm.node_key import NodeKey, create_node_key, save_node_key
from stockade.tpm.sealed import unseal_secret
from stockade.tpm.swtpm import SoftwareTpm
from support.cli import run_stockade

pytestmark = pytest.mark.swtpm

NAME = "db"
NODE_ID = "node-a-0001"
FORGED = b"db-password=the-impostors-own-database"
GENUINE = b"db-password=correct-horse-battery-staple \x00\xfe"
# What the node quoted last: an impostor chooses the nonce's selection, so it can make the
# agent quote PCR 13 and PCR 23 too.
ATTESTED = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7,8,9,12,13,23")
SEALED_TO = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7,8,9,12")  # what the verifier seals to
PCR_23 = PcrSelection.parse("sha256:23")
VERIFIER = ec.generate_private_key(ec.SECP256R1())  # the verifier's statement key, pinned
IMPOSTOR = ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Node:
    """An enrolled node's agent side: its TPM, AK, channel key and pinned verifier key."""

    tpm: SoftwareTpm
    state: Path
    channel_key: NodeKey
    ek: TpmPublic
    ek_kind: KeyKind
    membership: Membership


def make_node(software_tpm: SoftwareTpm, state: Path) -> Node:
    with Tpm(software_tpm.tcti) as tpm:
        ak = create_ak(tpm, KeyKind.ECC)
        ek = read_endorsement(tpm, ak.ek_kind).public
        channel_key = create_node_key(tpm)
    ak.save(state)
    save_node_key(channel_key, AgentState(state).channel_key_path)
    membership = Membership(
        state,
        software_tpm.tcti,
        secrets=(NAME,),
        verifier_keys=VerifierKeys.of(VERIFIER.public_key()),
        attested=ATTESTED,
    )
    return Node(software_tpm, state, channel_key, ek, ak.ek_kind, membership)


@pytest.fixture
def node(software_tpm: SoftwareTpm, tmp_path: Path) -> Node:
    return make_node(software_tpm, tmp_path / "state")


def seal(
    node: Node, selection: PcrSelection, payload: bytes, pcrs: PcrValues | None = None
) -> SealedSecret:
    """A blob anyone can make from public data: the node's EK and channel key's Name, and
    PCR values (public: every quote carries them; PCR 23 any process can reset)."""
    if pcrs is None:
        with Tpm(node.tpm.tcti) as tpm:
            pcrs = tpm.read_pcrs(selection)
    return seal_secret(
        node.ek, payload, selection, pcrs, authorizer_name=node.channel_key.public.name()
    )


def forged(node: Node) -> SealedSecret:
    """The review's blob: made from the public EK, sealed to PCR 23."""
    return seal(node, PCR_23, FORGED)


def statement(
    sealed: SealedSecret,
    *,
    key: ec.EllipticCurvePrivateKey = VERIFIER,
    kid: str | None = None,
    node_id: str = NODE_ID,
    name: str = NAME,
    selection: dict[str, tuple[int, ...]] | None = None,
    issued: datetime | None = None,
) -> str:
    """A release statement as the verifier signs one (``verifier.secrets.release_secret``)."""
    issued = issued or datetime.now(UTC)
    release = SecretRelease(
        node_id=node_id,
        name=name,
        version=1,
        sealed_sha256=hashlib.sha256(sealed.marshal()).hexdigest(),
        result_id="result-1",
        pcr_selection=selection
        if selection is not None
        else {bank.bank_name: bank.pcrs for bank in sealed.selection.banks},
    )
    return jwt.encode(
        secret_release_claims(release, issued, issued + timedelta(minutes=5)),
        key,
        algorithm="ES256",
        headers={"kid": kid or spki_kid(key.public_key()), "typ": SECRET_RELEASE_TYPE},
    )


def answer(sealed: SealedSecret, release: str | None) -> dict[str, Any]:
    document: dict[str, Any] = {
        "name": NAME,
        "version": 1,
        "node_id": NODE_ID,
        "result_id": "result-1",
        "granted_by": f"node:{NODE_ID}",
        "sealed": sealed.to_json(),
    }
    if release is not None:
        document["release"] = release
    return document


@dataclass
class Impostor:
    """Whoever holds the verifier's channel: answers every release request as it likes."""

    answer: dict[str, Any]
    asked: list[tuple[str, str]] = field(default_factory=list)

    def release_secret(self, node_id: str, name: str) -> dict[str, Any]:
        self.asked.append((node_id, name))
        return self.answer


def nothing_kept(membership: Membership, name: str = NAME) -> bool:
    return not membership.sealed_path(name).exists() and not membership.release_path(name).exists()


def refused(node: Node, delivered: dict[str, Any], match: str) -> ReleaseRefused:
    with pytest.raises(ReleaseRefused, match=match) as error:
        node.membership.fetch_secret(Impostor(delivered), NODE_ID, NAME)
    assert nothing_kept(node.membership)
    assert FORGED.decode() not in str(error.value)
    return error.value


# -- the forged artifact ------------------------------------------------------------------------


def test_the_forged_blob_unseals_in_the_agents_own_code(node: Node) -> None:
    """Why it matters: the review's blob is a working secret for this node. Written where the
    agent keeps its sealed copies (what fetch_secret did with it before), the agent's own
    unseal hands the impostor's value to the workloads."""
    sealed = forged(node)
    assert str(sealed.selection) == "sha256:23"
    path = node.membership.sealed_path(NAME)
    path.parent.mkdir(parents=True, mode=0o700)
    write_atomic(path, sealed.marshal(), mode=0o600)
    assert node.membership.unseal(NAME) == FORGED
    with Tpm(node.tpm.tcti) as tpm:
        assert unseal_secret(tpm, node.ek_kind, sealed, node.channel_key) == FORGED


def test_a_genuine_release_is_kept_with_its_statement_and_unseals(node: Node) -> None:
    sealed = seal(node, SEALED_TO, GENUINE)
    token = statement(sealed)
    impostor = Impostor(answer(sealed, token))
    accepted = node.membership.fetch_secret(impostor, NODE_ID, NAME)
    assert impostor.asked == [(NODE_ID, NAME)]
    assert accepted.sealed == sealed and accepted.release.version == 1
    assert accepted.release.pcr_selection == {"sha256": SEALED_TO.banks[0].pcrs}
    assert node.membership.sealed_path(NAME).read_bytes() == sealed.marshal()
    assert node.membership.release_path(NAME).read_text() == token + "\n"
    assert stat.S_IMODE(node.membership.release_path(NAME).stat().st_mode) == 0o600
    assert node.membership.unseal(NAME) == GENUINE


# -- (a) no statement ----------------------------------------------------------------------------


def test_a_forged_blob_without_a_release_statement_is_refused(node: Node) -> None:
    refused(node, answer(forged(node), None), "no release statement signed by the verifier")
    # Not even a genuine blob comes in without one: the blob alone authenticates nothing.
    refused(node, answer(seal(node, SEALED_TO, GENUINE), None), "no release statement")
    bogus = answer(forged(node), None) | {"release": {"signed": True}}
    refused(node, bogus, "no release statement")


# -- (b) a key that is not pinned ---------------------------------------------------------------


def test_a_statement_under_a_key_that_is_not_pinned_is_refused(node: Node) -> None:
    sealed = forged(node)
    error = refused(node, answer(sealed, statement(sealed, key=IMPOSTOR)), "not a pinned")
    assert spki_kid(IMPOSTOR.public_key()) in str(error)
    # The pinned key's kid in the header, the impostor's signature.
    pinned_kid = spki_kid(VERIFIER.public_key())
    claiming = statement(sealed, key=IMPOSTOR, kid=pinned_kid)
    refused(node, answer(sealed, claiming), "does not verify")
    # The genuine release, but an expired statement (replayed from an earlier release).
    genuine = seal(node, SEALED_TO, GENUINE)
    stale = statement(genuine, issued=datetime.now(UTC) - timedelta(minutes=10))
    refused(node, answer(genuine, stale), "is valid .* not at")


def test_without_a_pinned_key_or_an_attestation_nothing_is_accepted(node: Node) -> None:
    sealed = seal(node, SEALED_TO, GENUINE)
    unpinned = dataclasses.replace(node, membership=Membership(node.state, node.tpm.tcti))
    refused(unpinned, answer(sealed, statement(sealed)), "no verifier key is pinned")
    keys = VerifierKeys.of(VERIFIER.public_key())
    unattested = dataclasses.replace(
        node, membership=Membership(node.state, node.tpm.tcti, verifier_keys=keys)
    )
    refused(unattested, answer(sealed, statement(sealed)), "has not attested yet")


# -- (c) a real verifier's statements, for another node, secret or blob --------------------------


def released(cluster: Cluster, agent: Agent, name: str) -> dict[str, Any]:
    """What the real verifier answers the node's own signed request for ``name``."""
    enrolled = agent.state.enrolled()
    assert enrolled is not None
    with VerifierClient(cluster.verifier.url, cluster.verifier.ca) as client:
        agent.sign_as_node(client, enrolled)
        return client.release_secret(enrolled.node_id, name)


def test_a_verifier_statement_for_another_node_secret_or_blob_is_refused(
    cluster: Cluster, booted: Callable[[], tuple[SoftwareTpm, Path]], tmp_path: Path
) -> None:
    (tpm_a, log_a), (tpm_b, log_b) = booted(), booted()
    agent_a, lines_a = make_agent(cluster, tpm_a, log_a, tmp_path / "a", "auth-a", secrets=())
    agent_b, lines_b = make_agent(cluster, tpm_b, log_b, tmp_path / "b", "auth-b", secrets=())
    node_a, node_b = enroll(cluster, agent_a), enroll(cluster, agent_b)
    put_secret(cluster, "auth-db", SECRET, f"node:{node_a}", f"node:{node_b}")
    put_secret(cluster, "auth-other", b"another secret", f"node:{node_a}")
    agent_a.run(max_attestations=1)
    agent_b.run(max_attestations=1)
    assert agent_a.attestations == agent_b.attestations == 1, lines_a + lines_b
    a_db, a_other = released(cluster, agent_a, "auth-db"), released(cluster, agent_a, "auth-other")
    b_db = released(cluster, agent_b, "auth-db")
    membership = agent_a.membership

    def refused_to_a(delivered: dict[str, Any], match: str) -> None:
        with pytest.raises(ReleaseRefused, match=match):
            membership.fetch_secret(Impostor(delivered), node_a, "auth-db")
        assert nothing_kept(membership, "auth-db")

    # Node B's genuine release of the same secret, blob and statement.
    refused_to_a(b_db, f"addressed to node '{node_b}'")
    # Node A's genuine release of another secret, as this one.
    refused_to_a(a_other, "is for secret 'auth-other'")
    # This secret's genuine statement, with another blob: the other secret's, or the forgery.
    refused_to_a({**a_db, "sealed": a_other["sealed"]}, "does not name the sealed blob")
    with Tpm(tpm_a.tcti) as device:
        pcr_23 = device.read_pcrs(PCR_23)
    forgery = seal_secret(
        TpmPublic.unmarshal_tpm2b(_ek_public(tpm_a)),
        FORGED,
        PCR_23,
        pcr_23,
        authorizer_name=membership.channel_key().public.name(),
    )
    refused_to_a({**a_db, "sealed": forgery.to_json()}, "does not name the sealed blob")
    # And the genuine answer itself is accepted and unseals.
    accepted = membership.fetch_secret(Impostor(a_db), node_a, "auth-db")
    assert accepted.release.node_id == node_a and accepted.release.name == "auth-db"
    assert membership.unseal("auth-db") == SECRET


def _ek_public(tpm: SoftwareTpm) -> bytes:
    with Tpm(tpm.tcti) as device:
        return read_endorsement(device, KeyKind.ECC).public.marshal_tpm2b()


# -- (d) genuinely signed, sealed to a PCR that binds nothing -------------------------------------


@pytest.mark.parametrize(
    ("selection", "reason"),
    [
        ("sha256:23", "PCR 23 is resettable"),
        ("sha256:0,1,2,3,4,5,6,7,23", "PCR 23 is resettable"),
        ("sha256:16", "PCR 16 is resettable"),
        ("sha256:13", "PCR 13 is the execution PCR"),
        ("sha256:0,1,2,3,4,5,6,7,13", "PCR 13 is the execution PCR"),
    ],
)
def test_a_signed_statement_for_a_resettable_or_execution_pcr_is_refused(
    node: Node, selection: str, reason: str
) -> None:
    """A verifier bug (or a stolen signing flow) signs the blob and its selection: the agent
    still refuses PCRs that bind nothing, even when it was made to quote them."""
    sealed = seal(node, PcrSelection.parse(selection), FORGED)
    attested = PcrSelection.parse("sha256:0,1,2,3,4,5,6,7,8,9,12,13,16,23")
    quoted_all = Membership(
        node.state,
        node.tpm.tcti,
        verifier_keys=VerifierKeys.of(VERIFIER.public_key()),
        attested=attested,
    )
    made_to_quote_them = dataclasses.replace(node, membership=quoted_all)
    refused(made_to_quote_them, answer(sealed, statement(sealed)), reason)


def test_a_pcr_the_node_did_not_attest_is_refused(node: Node) -> None:
    sealed = seal(node, PcrSelection.parse("sha256:0,7,14"), FORGED)
    refused(node, answer(sealed, statement(sealed)), r"sha256:14, which this node did not attest")
    sha1 = seal(node, PcrSelection.parse("sha1:0,7"), FORGED)
    refused(node, answer(sha1, statement(sha1)), r"sha1:0, sha1:7, which this node did not")


def test_a_statement_naming_other_pcrs_than_the_blob_is_refused(node: Node) -> None:
    sealed = forged(node)
    claimed = {"sha256": SEALED_TO.banks[0].pcrs}
    refused(node, answer(sealed, statement(sealed, selection=claimed)), "the blob to sha256:23")


# -- (e) the authPolicy is not the one for the selection it claims -------------------------------


def test_a_blob_whose_auth_policy_does_not_match_its_selection_is_refused(node: Node) -> None:
    # Sealed to PCR 23 alone, presented as sealed to the boot PCRs (and signed as such).
    under_23 = forged(node)
    claiming = dataclasses.replace(under_23, selection=SEALED_TO)
    refused(node, answer(claiming, statement(claiming)), "authPolicy .* is not the unseal policy")
    # The right selection, values this TPM does not hold.
    other = PcrValues({Alg.SHA256: {index: b"\x01" * 32 for index in SEALED_TO.banks[0].pcrs}})
    elsewhere = seal(node, SEALED_TO, FORGED, pcrs=other)
    refused(node, answer(elsewhere, statement(elsewhere)), "authPolicy")


# -- (f) userWithAuth set ------------------------------------------------------------------------


def test_a_blob_with_user_with_auth_set_is_refused(
    node: Node, monkeypatch: pytest.MonkeyPatch
) -> None:
    """With userWithAuth SET, TPM2_Unseal takes the empty password: no policy, no PCRs."""
    with_password = int(duplication.SEALED_OBJECT_ATTRIBUTES | ObjectAttributes.USER_WITH_AUTH)
    monkeypatch.setattr(duplication, "SEALED_OBJECT_ATTRIBUTES", with_password)
    sealed = seal(node, SEALED_TO, FORGED)
    assert sealed.public.has(ObjectAttributes.USER_WITH_AUTH)
    # Even were the blob parser to let it through, the agent refuses it...
    refused(node, answer(sealed, statement(sealed)), "userWithAuth SET")
    # ...and the parser does not.
    monkeypatch.undo()
    with pytest.raises(SealingError, match="attributes"):
        SealedSecret.from_json(sealed.to_json())
    refused(node, answer(sealed, statement(sealed)), "malformed.*attributes")


def test_only_a_sealed_data_object_without_user_with_auth_passes(node: Node) -> None:
    public = forged(node).public
    assert sealed_object_problem(public) is None
    password = dataclasses.replace(
        public, attributes=public.attributes | ObjectAttributes.USER_WITH_AUTH
    )
    assert "userWithAuth SET" in (sealed_object_problem(password) or "")
    assert "not a sealed data object" in (
        sealed_object_problem(dataclasses.replace(public, type=Alg.RSA)) or ""
    )
    assert selection_problem(PcrSelection(()), {}, ATTESTED) == "it is sealed to no PCR"


# -- refusal leaves what was kept, and the loop carries on ---------------------------------------


def test_a_refused_release_leaves_the_kept_copy_alone(node: Node) -> None:
    genuine = seal(node, SEALED_TO, GENUINE)
    token = statement(genuine)
    node.membership.fetch_secret(Impostor(answer(genuine, token)), NODE_ID, NAME)
    with pytest.raises(ReleaseRefused):
        node.membership.fetch_secret(Impostor(answer(forged(node), None)), NODE_ID, NAME)
    assert node.membership.sealed_path(NAME).read_bytes() == genuine.marshal()
    assert node.membership.release_path(NAME).read_text() == token + "\n"
    assert node.membership.unseal(NAME) == GENUINE


def test_the_agent_loop_logs_a_refusal_and_carries_on(node: Node, tmp_path: Path) -> None:
    lines: list[str] = []
    agent = Agent(
        AgentConfig(
            verifier="https://verifier.invalid",
            ca=None,
            name="node-a",
            source=NodeSource(node.tpm.tcti, tmp_path / "boot.log", "test TPM"),
            state_dir=node.state,
            secrets=(NAME, "other"),
        ),
        log=lines.append,
    )
    agent._verifier_keys = VerifierKeys.of(VERIFIER.public_key())
    agent._attested = ATTESTED
    sealed_forged = forged(node)
    genuine = seal(node, SEALED_TO, GENUINE)

    @dataclass
    class Answers:
        def release_secret(self, node_id: str, name: str) -> dict[str, Any]:
            if name == NAME:  # the forgery, with a statement under the impostor's key
                return answer(sealed_forged, statement(sealed_forged, key=IMPOSTOR))
            return answer(genuine, statement(genuine, name="other"))

    not_after = (datetime.now(UTC) + timedelta(minutes=2)).isoformat()
    verdict = {"status": "affirming", "not_after": not_after}
    agent._act_on(Answers(), Enrolled(NODE_ID, "node-a", "https://verifier.invalid"), verdict)  # type: ignore[arg-type]
    (refusal,) = [line for line in lines if line.startswith(f"secret {NAME}:")]
    assert "not delivered, nothing kept" in refusal and "not a pinned verifier key" in refusal
    assert nothing_kept(agent.membership)
    (kept,) = [line for line in lines if line.startswith("secret other:")]
    assert "version 1 released by the verifier; sealed copy kept" in kept, lines
    assert agent.membership.unseal("other") == GENUINE
    assert all(FORGED.decode() not in line for line in lines)


# -- the genuine release end to end, and the pin ------------------------------------------------


def test_the_genuine_release_unseals_end_to_end_under_the_key_pinned_at_enrollment(
    cluster: Cluster, booted: Callable[[], tuple[SoftwareTpm, Path]], tmp_path: Path
) -> None:
    tpm, log = booted()
    state = tmp_path / "state"
    agent, lines = make_agent(cluster, tpm, log, state, "pin-1", secrets=("pin-db",))
    pin = AgentState(state).verifier_keys_path
    assert not pin.exists()
    node_id = enroll(cluster, agent)
    # Trust on first use: pinned at enrollment, what GET /v1/keys served then.
    with VerifierClient(cluster.verifier.url, cluster.verifier.ca) as client:
        served = VerifierKeys.parse(json.dumps(client.keys()).encode(), "served")
    assert pin.read_bytes() == served.pem()
    assert stat.S_IMODE(pin.stat().st_mode) == 0o644
    (kid,) = served.keys
    assert any(f"pinned verifier key {kid[:16]}" in line and "first use" in line for line in lines)
    put_secret(cluster, "pin-db", SECRET, f"node:{node_id}")
    agent.run(max_attestations=1)
    assert any(
        line.startswith("secret pin-db: sealed to sha256:") and "version 1 released" in line
        for line in lines
    ), lines
    membership = agent.membership
    assert membership.unseal("pin-db") == SECRET
    sealed = membership.sealed_path("pin-db").read_bytes()
    token = membership.release_path("pin-db").read_text().strip()
    checked = verify_secret_release(
        token, served, node_id=node_id, name="pin-db", sealed=sealed, now=datetime.now(UTC)
    )
    assert all(pcr < 16 and pcr != 13 for pcrs in checked.pcr_selection.values() for pcr in pcrs)
    assert pin.read_bytes() == served.pem()


def test_the_pinned_key_is_never_replaced(
    cluster: Cluster, booted: Callable[[], tuple[SoftwareTpm, Path]], tmp_path: Path
) -> None:
    """A node pinned to another key (an impostor's at enrollment, or the verifier's before a
    key change) keeps that pin: the verifier's own statements are then refused, and nothing
    the verifier serves replaces the file. The operator re-pins by removing it."""
    tpm, log = booted()
    state = tmp_path / "state"
    agent, _ = make_agent(cluster, tpm, log, state, "pin-2", secrets=("pin2-db",))
    node_id = enroll(cluster, agent)
    pin = AgentState(state).verifier_keys_path
    other = VerifierKeys.of(IMPOSTOR.public_key()).pem()
    pin.write_bytes(other)
    put_secret(cluster, "pin2-db", SECRET, f"node:{node_id}")
    again, lines = make_agent(cluster, tpm, log, state, "pin-2", secrets=("pin2-db",))
    again.run(max_attestations=1)
    (refusal,) = [line for line in lines if line.startswith("secret pin2-db:")]
    assert "nothing kept" in refusal and "not a pinned verifier key" in refusal, refusal
    assert pin.read_bytes() == other
    assert nothing_kept(again.membership, "pin2-db")

    class NoFetch:
        url = cluster.verifier.url

        def keys(self) -> dict[str, Any]:
            raise AssertionError("a pinned node fetched the verifier's keys again")

    fresh, _ = make_agent(cluster, tpm, log, state, "pin-2")
    assert fresh.verifier_keys(NoFetch()).pem() == other  # type: ignore[arg-type]
    # Removed by the operator: pinned again, from the verifier.
    pin.unlink()
    newer, _ = make_agent(cluster, tpm, log, state, "pin-2", secrets=("pin2-db",))
    newer.run(max_attestations=1)
    assert pin.exists() and pin.read_bytes() != other
    assert newer.membership.unseal("pin2-db") == SECRET


def test_a_verifier_key_given_explicitly_is_pinned_and_must_match(
    cluster: Cluster, booted: Callable[[], tuple[SoftwareTpm, Path]], tmp_path: Path
) -> None:
    tpm, log = booted()
    state = tmp_path / "state"
    with VerifierClient(cluster.verifier.url, cluster.verifier.ca) as client:
        jwks = tmp_path / "verifier-jwks.json"
        jwks.write_text(json.dumps(client.keys()))  # the JWK set, saved from a trusted channel
    agent, lines = make_agent(
        cluster, tpm, log, state, "pin-3", secrets=("pin3-db",), verifier_key=jwks
    )
    node_id = enroll(cluster, agent)
    assert not any("first use" in line for line in lines), lines
    pin = AgentState(state).verifier_keys_path
    assert pin.read_bytes() == VerifierKeys.load(jwks).pem()
    put_secret(cluster, "pin3-db", SECRET, f"node:{node_id}")
    agent.run(max_attestations=1)
    assert agent.membership.unseal("pin3-db") == SECRET, lines

    # Another key given later: refused before anything runs, naming both.
    wrong = tmp_path / "wrong.pem"
    wrong.write_bytes(VerifierKeys.of(IMPOSTOR.public_key()).pem())
    mismatched, _ = make_agent(cluster, tpm, log, state, "pin-3", verifier_key=wrong)
    with pytest.raises(VerifierKeyMismatch) as error:
        mismatched.run(max_attestations=1)
    (pinned_kid,) = VerifierKeys.load(jwks).keys
    assert pinned_kid in str(error.value) and spki_kid(IMPOSTOR.public_key()) in str(error.value)
    assert "remove that file" in str(error.value)
    assert pin.read_bytes() == VerifierKeys.load(jwks).pem()

    # The same through the CLI, the key from $STOCKADE_VERIFIER_KEY: one line, exit 2.
    env = {**os.environ, "STOCKADE_VERIFIER_KEY": str(wrong)}
    env.pop("STOCKADE_VERIFIER", None)
    done = run_stockade(
        "agent", "run", "--name", "pin-3", "--verifier", cluster.verifier.url,
        "--ca", cluster.verifier.ca, "--tcti", tpm.tcti, "--event-log", log, "--state-dir", state,
        env=env, timeout=60,
    )  # fmt: skip
    assert done.returncode == 2, done.stdout + done.stderr
    (message,) = done.stderr.strip().splitlines()
    assert message.startswith("stockade: --verifier-key") and pinned_kid in message
    assert "Traceback" not in done.stderr
    assert pin.read_bytes() == VerifierKeys.load(jwks).pem()
