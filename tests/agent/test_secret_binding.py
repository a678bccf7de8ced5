"""THE ATTACK: "any process that can use the node's TPM gets its secrets".

Before: a released secret was sealed with authPolicy PolicyPCR + PolicyCommandCode(Unseal), so
any process that could open the TPM (the tss group, a pod given /dev/tpmrm0) and read the blob
(from the verifier's answer or the agent's sealed copy) could import and unseal it: the PCRs
hold the attested values for every process on the node alike.

Now the policy starts with TPM2_PolicySigned by the node's channel key (TPM 2.0 Part 3, 23.3),
a P-256 key in the same TPM that only the agent can load (its 0600 key file). On one real swtpm:

(a) the agent's path (``Membership.unseal``) unseals the secret;
(b) a second process with full TPM access, the blob and the channel key's public area, but
    not the key file, gets nothing: the old PCR-only session, its own TPM key, the channel
    key's public loaded with TPM2_LoadExternal (same Name) signed by another key, and the
    empty password are each refused by the TPM (run in a subprocess: another process);
(c) the channel key of another TPM's node gets nothing (it does not even load here);
(d) after a PCR extend, even the agent gets nothing.
"""

from __future__ import annotations

import contextlib
import json
import os
import stat
import subprocess
import sys
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

from stockade.agent.membership import Membership, NoChannelKey
from stockade.agent.state import AgentState
from stockade.evidence.duplication import SealedSecret, SealingError, seal_secret
from stockade.evidence.marshal import tpm2b
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.policy_digest import TPM_CC_UNSEAL, policy_signed_digest
from stockade.evidence.public import TpmPublic
from stockade.evidence.templates import KeyKind
from stockade.home import write_atomic
from stockade.tpm.ak import create_ak
from stockade.tpm.device import Tpm
from stockade.tpm.ek import loaded_ek, read_endorsement
from stockade.tpm.node_key import NodeKey, create_node_key, loaded_node_key, save_node_key
from stockade.tpm.sealed import SecretRefused, unseal_secret
from stockade.tpm.swtpm import SoftwareTpm

pytestmark = pytest.mark.swtpm

SELECTION = PcrSelection.parse("sha256:0,1,2,3,7,12")
SECRET = b"db-password=correct-horse-battery-staple \x00\xfe"
NAME = "db"
TPM_RC_POLICY_FAIL = 0x99D  # session 1: a policy check failed
TPM_RC_AUTH_UNAVAILABLE = 0x12F  # userWithAuth CLEAR: the password cannot authorize Unseal
TPM_RC_SIGNATURE = 0x09B  # format-one, compared without the parameter-number bits
TPM_RC_NONCE = 0x08F  # format-one, compared without the parameter-number bits
TPM_RC_INTEGRITY = 0x09F  # format-one: the other TPM's key does not load under this SRK


@dataclass(frozen=True)
class Node:
    """One enrolled node's agent side: its TPM, state directory and channel key."""

    tpm: SoftwareTpm
    state: Path
    membership: Membership
    channel_key: NodeKey
    ek_kind: KeyKind
    ek: TpmPublic


def make_node(software_tpm: SoftwareTpm, state: Path) -> Node:
    """What enrollment leaves on a node: the AK (and so the EK kind) and the channel key in
    ``<state>/channel.key``, 0600."""
    with Tpm(software_tpm.tcti) as tpm:
        ak = create_ak(tpm, KeyKind.ECC)
        ek = read_endorsement(tpm, ak.ek_kind).public
        channel_key = create_node_key(tpm)
    ak.save(state)
    save_node_key(channel_key, AgentState(state).channel_key_path)
    membership = Membership(state, software_tpm.tcti, secrets=(NAME,))
    return Node(software_tpm, state, membership, channel_key, ak.ek_kind, ek)


def release(node: Node, payload: bytes = SECRET) -> SealedSecret:
    """What the verifier answers (sealed to the EK, the PCR values now and the channel key's
    Name), kept by the agent as its sealed copy."""
    with Tpm(node.tpm.tcti) as tpm:
        pcrs = tpm.read_pcrs(SELECTION)
    sealed = seal_secret(
        node.ek, payload, SELECTION, pcrs, authorizer_name=node.channel_key.public.name()
    )
    path = node.membership.sealed_path(NAME)
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    write_atomic(path, sealed.marshal(), mode=0o600)
    return sealed


def nothing_loaded(software_tpm: SoftwareTpm) -> bool:
    with Tpm(software_tpm.tcti) as tpm:
        return tpm.transient_object_count() == 0


@pytest.fixture
def node(software_tpm: SoftwareTpm, tmp_path: Path) -> Node:
    return make_node(software_tpm, tmp_path / "state")


# -- (a) the agent ------------------------------------------------------------------------------


def test_the_agent_unseals_a_secret_sealed_to_its_channel_key(node: Node) -> None:
    release(node)
    key_file = AgentState(node.state).channel_key_path
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert node.membership.unseal(NAME) == SECRET
    assert node.membership.unseal(NAME) == SECRET  # a fresh session, a fresh signature
    assert nothing_loaded(node.tpm)


def test_without_its_key_file_the_agent_cannot_unseal_either(node: Node) -> None:
    release(node)
    AgentState(node.state).channel_key_path.unlink()
    with pytest.raises(NoChannelKey, match=r"no channel key.*enroll"):
        node.membership.unseal(NAME)


def test_a_copy_sealed_before_channel_binding_is_refused_cleanly(node: Node) -> None:
    """A sealed copy left by an older agent (format version 1, no PolicySigned) is a typed
    error telling to fetch it again: never a crash, never an unbound unseal."""
    sealed = release(node)
    old = (
        b"STKSEAL\x01"
        + sealed.object_public
        + sealed.duplicate
        + sealed.encrypted_seed
        + tpm2b(sealed.selection.marshal())
        + len(sealed.ciphertext).to_bytes(4, "big")
        + sealed.ciphertext
    )
    node.membership.sealed_path(NAME).write_bytes(old)
    with pytest.raises(SealingError, match=r"version 1.*again"):
        node.membership.unseal(NAME)


# -- (b) a second process with full TPM access, without the key file ------------------------


@contextlib.contextmanager
def imported(tpm: Tpm, ek_kind: KeyKind, sealed: SealedSecret) -> Iterator[Any]:
    """The sealed object imported under the EK and loaded (the EK flushed): any TPM user can
    do this much, the EK's policy only asks for the (empty) endorsement authorization."""
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.types import (
        TPM2B_ENCRYPTED_SECRET,
        TPM2B_PRIVATE,
        TPM2B_PUBLIC,
        TPMT_SYM_DEF_OBJECT,
    )

    public, _ = TPM2B_PUBLIC.unmarshal(sealed.object_public)
    duplicate, _ = TPM2B_PRIVATE.unmarshal(sealed.duplicate)
    seed, _ = TPM2B_ENCRYPTED_SECRET.unmarshal(sealed.encrypted_seed)
    with loaded_ek(tpm, ek_kind) as (ek, _):
        with tpm.endorsement_policy_session() as session:
            private = tpm.esys.import_(
                ek,
                b"",
                public,
                duplicate,
                seed,
                TPMT_SYM_DEF_OBJECT(algorithm=TPM2_ALG.NULL),
                session1=session,
            )
        with tpm.endorsement_policy_session() as session:
            handle = tpm.esys.load(ek, private, public, session1=session)
    with tpm.transient(handle):
        yield handle


@contextlib.contextmanager
def policy_session(tpm: Tpm) -> Iterator[Any]:
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_SE
    from tpm2_pytss.types import TPMT_SYM_DEF

    session = tpm.esys.start_auth_session(
        ESYS_TR.NONE,
        ESYS_TR.NONE,
        TPM2_SE.POLICY,
        TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
        TPM2_ALG.SHA256,
    )
    with tpm.transient(session):
        yield session


def pcrs_and_unseal(tpm: Tpm, session: Any, handle: Any, sealed: SealedSecret) -> bytes:
    """PolicyPCR + PolicyCommandCode(Unseal) on ``session``, then TPM2_Unseal."""
    from tpm2_pytss.constants import TPM2_CC
    from tpm2_pytss.types import TPML_PCR_SELECTION

    pcrs, _ = TPML_PCR_SELECTION.unmarshal(sealed.selection.marshal())
    tpm.esys.policy_pcr(session, b"", pcrs)
    tpm.esys.policy_command_code(session, TPM2_CC(TPM_CC_UNSEAL))
    return bytes(tpm.esys.unseal(handle, session1=session))


def ecdsa_signature(raw_r: int, raw_s: int) -> Any:
    from tpm2_pytss.constants import TPM2_ALG
    from tpm2_pytss.types import TPMT_SIGNATURE

    signature = TPMT_SIGNATURE(sigAlg=TPM2_ALG.ECDSA)
    signature.signature.ecdsa.hash = TPM2_ALG.SHA256
    signature.signature.ecdsa.signatureR = raw_r.to_bytes(32, "big")
    signature.signature.ecdsa.signatureS = raw_s.to_bytes(32, "big")
    return signature


def second_tpm_user(
    tcti: str, ek_kind: KeyKind, sealed: SealedSecret, channel_public: TpmPublic
) -> list[dict[str, Any]]:
    """Everything a process with full access to the TPM can try, holding the blob and the
    channel key's public area (the verifier's row; not secret) but not the key file."""
    from tpm2_pytss import TSS2_Exception
    from tpm2_pytss.constants import ESYS_TR
    from tpm2_pytss.types import TPM2B_PUBLIC

    outcomes: list[dict[str, Any]] = []

    def attempt(name: str, step: str, run: Callable[[], bytes]) -> None:
        try:
            data = run()
        except TSS2_Exception as error:
            outcomes.append({"attempt": name, "step": step, "rc": int(error.rc)})
        except SecretRefused as error:
            outcomes.append({"attempt": name, "step": error.step, "rc": error.response_code})
        else:  # the attack worked: report what it got (the test fails on it)
            outcomes.append({"attempt": name, "step": "released", "data": data.hex()})

    with Tpm(tcti) as tpm:

        def old_session() -> bytes:
            """The unbound policy: PolicyPCR + PolicyCommandCode, the PCRs as attested."""
            with imported(tpm, ek_kind, sealed) as handle, policy_session(tpm) as session:
                return pcrs_and_unseal(tpm, session, handle, sealed)

        def own_tpm_key() -> bytes:
            """A P-256 key of its own, made in the same TPM, authorizes the session."""
            return unseal_secret(tpm, ek_kind, sealed, create_node_key(tpm))

        def channel_public_only() -> bytes:
            """TPM2_LoadExternal of the channel key's public: the authObject has the right
            Name, but the signature over aHash is by a key the attacker holds."""
            forger = ec.generate_private_key(ec.SECP256R1())
            public, _ = TPM2B_PUBLIC.unmarshal(channel_public.marshal_tpm2b())
            key = tpm.esys.load_external(public, None, ESYS_TR.RH_NULL)
            with (
                tpm.transient(key),
                imported(tpm, ek_kind, sealed) as handle,
                policy_session(tpm) as session,
            ):
                nonce = bytes(tpm.esys.trsess_get_nonce_tpm(session))
                a_hash = policy_signed_digest(nonce, 0, b"", sealed.policy_ref)
                der = forger.sign(a_hash, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
                forged = ecdsa_signature(*utils.decode_dss_signature(der))
                tpm.esys.policy_signed(key, session, forged, nonce, b"", sealed.policy_ref, 0)
                return pcrs_and_unseal(tpm, session, handle, sealed)

        def empty_password() -> bytes:
            with imported(tpm, ek_kind, sealed) as handle:
                return bytes(tpm.esys.unseal(handle, session1=ESYS_TR.PASSWORD))

        attempt("old-session", "unseal", old_session)
        attempt("own-tpm-key", "unseal", own_tpm_key)
        attempt("channel-public-only", "authorize", channel_public_only)
        attempt("empty-password", "unseal", empty_password)
        outcomes.append({"attempt": "left-loaded", "count": tpm.transient_object_count()})
    return outcomes


def second_tpm_user_main(argv: list[str]) -> None:
    """The subprocess's entry point: ``tcti ek_kind blob_file channel_public_file``."""
    tcti, kind, blob, public = argv
    sealed = SealedSecret.unmarshal(Path(blob).read_bytes())
    channel_public = TpmPublic.unmarshal_tpm2b(Path(public).read_bytes())
    json.dump(second_tpm_user(tcti, KeyKind(kind), sealed, channel_public), sys.stdout)


SECOND_PROCESS = (
    "import sys; sys.path.insert(0, sys.argv[1]); "
    "from test_secret_binding import second_tpm_user_main; "
    "second_tpm_user_main(sys.argv[2:])"
)


def test_a_second_process_with_full_tpm_access_gets_nothing(node: Node, tmp_path: Path) -> None:
    sealed = release(node)
    loot = tmp_path / "second-user"
    loot.mkdir()
    (loot / "db.sealed").write_bytes(sealed.marshal())  # the blob, as the verifier sent it
    (loot / "channel.pub").write_bytes(node.channel_key.public.marshal_tpm2b())  # public
    assert not any(path.name == "channel.key" for path in loot.iterdir())
    result = subprocess.run(
        [
            sys.executable,
            "-c",
            SECOND_PROCESS,
            str(Path(__file__).parent),
            node.tpm.tcti,
            node.ek_kind.value,
            str(loot / "db.sealed"),
            str(loot / "channel.pub"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
        cwd=loot,
        env={**os.environ, "HOME": str(loot)},
    )
    assert result.returncode == 0, result.stderr
    outcomes = {entry["attempt"]: entry for entry in json.loads(result.stdout)}
    released = [entry for entry in outcomes.values() if entry.get("step") == "released"]
    assert released == [], f"the second TPM user unsealed the secret: {released}"
    for output in (result.stdout, result.stderr):
        assert SECRET.hex() not in output and "correct-horse" not in output

    # It imported the blob and ran each session to the end: the TPM refused the unseal
    # because the policy was not satisfied (not because the blob was unusable).
    assert outcomes["old-session"] == {
        "attempt": "old-session",
        "step": "unseal",
        "rc": TPM_RC_POLICY_FAIL,
    }
    assert outcomes["own-tpm-key"]["step"] == "unseal"
    assert outcomes["own-tpm-key"]["rc"] == TPM_RC_POLICY_FAIL
    # The channel key's Name without its private key: TPM2_PolicySigned rejects the signature.
    assert outcomes["channel-public-only"]["step"] == "authorize"
    assert outcomes["channel-public-only"]["rc"] & 0x0BF == TPM_RC_SIGNATURE
    assert outcomes["empty-password"]["rc"] == TPM_RC_AUTH_UNAVAILABLE
    assert outcomes["left-loaded"]["count"] == 0

    # The same blob, the agent's path: released (the refusals were about the key, not the blob).
    assert node.membership.unseal(NAME) == SECRET
    assert nothing_loaded(node.tpm)


def test_an_authorization_is_good_for_its_own_session_only(node: Node) -> None:
    """A signature the agent's channel key made for one session (captured somehow) does not
    authorize another: aHash covers that session's nonceTPM."""
    from tpm2_pytss import TSS2_Exception

    sealed = release(node)
    with Tpm(node.tpm.tcti) as tpm, loaded_node_key(tpm, node.channel_key) as key:
        from stockade.tpm.node_key import sign_digest_with

        with policy_session(tpm) as first:
            captured_nonce = bytes(tpm.esys.trsess_get_nonce_tpm(first))
            raw = sign_digest_with(
                tpm, key, policy_signed_digest(captured_nonce, 0, b"", sealed.policy_ref)
            )
        captured = ecdsa_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        with policy_session(tpm) as second:
            nonce = bytes(tpm.esys.trsess_get_nonce_tpm(second))
            with pytest.raises(TSS2_Exception) as stale:
                tpm.esys.policy_signed(
                    key, second, captured, captured_nonce, b"", sealed.policy_ref, 0
                )
            assert int(stale.value.rc) & 0x0BF == TPM_RC_NONCE
            with pytest.raises(TSS2_Exception) as replayed:
                tpm.esys.policy_signed(key, second, captured, nonce, b"", sealed.policy_ref, 0)
            assert int(replayed.value.rc) & 0x0BF == TPM_RC_SIGNATURE
            assert bytes(tpm.esys.policy_get_digest(second)) == bytes(32)
    assert nothing_loaded(node.tpm)


# -- (c) another node's channel key ---------------------------------------------------------


def test_the_channel_key_of_another_tpms_node_gets_nothing(
    make_software_tpm: Callable[[], SoftwareTpm], tmp_path: Path
) -> None:
    mine = make_node(make_software_tpm(), tmp_path / "a")
    theirs = make_node(make_software_tpm(), tmp_path / "b")
    sealed = release(mine)
    # On this node's TPM with the other node's key file: it does not load under this TPM's
    # storage key, so nothing can be signed with it here.
    with Tpm(mine.tpm.tcti) as tpm:
        with pytest.raises(SecretRefused, match="authorize") as refused:
            unseal_secret(tpm, mine.ek_kind, sealed, theirs.channel_key)
        assert refused.value.step == "authorize"
        assert refused.value.response_code & 0x0BF == TPM_RC_INTEGRITY
        assert tpm.transient_object_count() == 0
    # On the other node's TPM, where its key works: the blob is not for that EK.
    with Tpm(theirs.tpm.tcti) as tpm:
        with pytest.raises(SecretRefused) as refused:
            unseal_secret(tpm, theirs.ek_kind, sealed, theirs.channel_key)
        assert refused.value.step == "import"
        assert tpm.transient_object_count() == 0
    # Its key file swapped into this node's state: refused the same way.
    save_node_key(theirs.channel_key, AgentState(mine.state).channel_key_path)
    with pytest.raises(SecretRefused, match="authorize"):
        mine.membership.unseal(NAME)
    save_node_key(mine.channel_key, AgentState(mine.state).channel_key_path)
    assert mine.membership.unseal(NAME) == SECRET


# -- (d) the PCRs moved -----------------------------------------------------------------------


def test_after_a_pcr_extend_even_the_agent_gets_nothing(node: Node) -> None:
    release(node)
    assert node.membership.unseal(NAME) == SECRET
    with Tpm(node.tpm.tcti) as tpm:
        tpm.extend_pcr(7, b"something the verifier never saw")
    with pytest.raises(SecretRefused, match="refused to unseal") as refused:
        node.membership.unseal(NAME)
    assert refused.value.step == "unseal"
    assert refused.value.response_code == TPM_RC_POLICY_FAIL
    assert SECRET.hex() not in str(refused.value)
    assert nothing_loaded(node.tpm)
