"""The agent's secret socket with a real software TPM: every read is unsealed by the TPM (in a
session the agent's channel key authorizes), so reads stop working the moment a sealed PCR
moves; the socket is the owner's only."""

from __future__ import annotations

import stat
from pathlib import Path

import pytest

from stockade.agent.membership import Membership
from stockade.agent.secret_socket import SecretSocketError, read_secret, serving_secrets
from stockade.agent.state import AgentState
from stockade.evidence.duplication import seal_secret
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.templates import KeyKind
from stockade.home import write_atomic
from stockade.tpm.ak import create_ak
from stockade.tpm.device import Tpm
from stockade.tpm.ek import read_endorsement
from stockade.tpm.node_key import create_node_key, save_node_key

SELECTION = PcrSelection.parse("sha256:0,1,2,3,7,12")
VALUE = b"api-token \x00\x01 " + bytes(range(256))


@pytest.fixture
def membership(software_tpm, tmp_path: Path) -> Membership:
    state = tmp_path / "state"
    with Tpm(software_tpm.tcti) as tpm:
        ak = create_ak(tpm, KeyKind.ECC)
        ek = read_endorsement(tpm, ak.ek_kind).public
        pcrs = tpm.read_pcrs(SELECTION)
        channel_key = create_node_key(tpm)
    ak.save(state)
    save_node_key(channel_key, AgentState(state).channel_key_path)
    membership = Membership(state, software_tpm.tcti, secrets=("api-token",))
    sealed = seal_secret(ek, VALUE, SELECTION, pcrs, authorizer_name=channel_key.public.name())
    membership.sealed_path("api-token").parent.mkdir(parents=True)
    write_atomic(membership.sealed_path("api-token"), sealed.marshal(), mode=0o600)
    return membership


def test_reads_are_unsealed_per_request_and_stop_when_a_pcr_moves(
    membership, software_tpm, tmp_path
):
    path = tmp_path / "run" / "secrets.sock"
    with serving_secrets(path, frozenset({"api-token"}), membership.unseal):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
        assert stat.S_IMODE(path.parent.stat().st_mode) == 0o700
        assert read_secret(path, "api-token") == VALUE
        assert read_secret(path, "api-token") == VALUE  # nothing consumed, nothing cached
        with Tpm(software_tpm.tcti) as tpm:
            tpm.extend_pcr(12, b"something the verifier never saw")
        with pytest.raises(SecretSocketError, match="unseal") as refused:
            read_secret(path, "api-token")
        assert VALUE not in str(refused.value).encode()
    assert not path.exists()


def test_unknown_names_and_bad_requests_are_refused(membership, tmp_path):
    path = tmp_path / "secrets.sock"
    with serving_secrets(path, frozenset({"api-token"}), membership.unseal):
        with pytest.raises(SecretSocketError, match="unknown"):
            read_secret(path, "someone-elses-secret")
        with pytest.raises(SecretSocketError, match="unknown"):
            read_secret(path, "../api-token")


def test_withdraw_removes_the_sealed_copy_and_reads_then_fail(membership, tmp_path):
    path = tmp_path / "secrets.sock"
    with serving_secrets(path, frozenset({"api-token"}), membership.unseal):
        assert read_secret(path, "api-token") == VALUE
        assert membership.withdraw() == ["api-token"]
        with pytest.raises(SecretSocketError, match="no sealed copy"):
            read_secret(path, "api-token")


def test_without_the_channel_key_reads_fail_and_nothing_leaks(membership, tmp_path):
    """The key file gone (or never readable by this process): every read is refused with
    the reason, the value never."""
    path = tmp_path / "secrets.sock"
    AgentState(membership.state_dir).channel_key_path.unlink()
    with serving_secrets(path, frozenset({"api-token"}), membership.unseal):
        with pytest.raises(SecretSocketError, match="no channel key") as refused:
            read_secret(path, "api-token")
        assert VALUE not in str(refused.value).encode()


def test_no_agent_listening_is_a_clear_error(tmp_path):
    with pytest.raises(SecretSocketError, match="cannot read"):
        read_secret(tmp_path / "absent.sock", "api-token")
