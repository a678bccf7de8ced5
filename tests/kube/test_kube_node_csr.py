"""A kubelet CSR made on the node, end to end with a real software TPM: the request is signed
inside the TPM through tpm2-openssl (`stockade kube node-csr`), carries the node's Stockade
certificate, and the approver approves it; the same key file on another TPM makes nothing."""

from __future__ import annotations

import base64
import subprocess
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
import yaml
from kube_support import StaticTrust

from stockade.cluster.ca import ClusterCa
from stockade.cluster.names import InvalidNodeName
from stockade.errors import InputError
from stockade.kube.csr import CsrRequest, decide_csr
from stockade.kube.node_csr import csr_manifest, tpm_signed_request
from stockade.kube.trust import NodeTrust
from stockade.tpm.device import Tpm
from stockade.tpm.node_key import create_node_key, save_node_key, tpm2_provider_module
from support.cli import run_stockade


@pytest.fixture
def pki(software_tpm, tmp_path: Path) -> tuple[Path, ClusterCa]:
    if tpm2_provider_module() is None:
        pytest.skip("tpm2-openssl (the OpenSSL tpm2 provider) is not installed")
    directory = tmp_path / "pki"
    with Tpm(software_tpm.tcti) as tpm:
        key = create_node_key(tpm)
    save_node_key(key, directory / "node-key.pem")
    ca = ClusterCa.load_or_create(tmp_path / "ca")
    now = datetime.now(UTC)
    certificate = ca.issue_node_certificate(
        key.public,
        node_id="id-node-a",
        node_name="node-a",
        result_id="result-1",
        not_before=now - timedelta(seconds=60),
        not_after=now + timedelta(minutes=5),
    )
    from cryptography.hazmat.primitives import serialization

    (directory / "node.pem").write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return directory, ca


def node_csr(pki_dir: Path, tcti: str, *extra: str) -> subprocess.CompletedProcess[str]:
    return run_stockade(
        "kube", "node-csr", "--name", "node-a", "--pki-dir", pki_dir, "--tcti", tcti, *extra
    )


def trusted() -> StaticTrust:
    until = datetime.now(UTC) + timedelta(minutes=1)
    return StaticTrust({"node-a": NodeTrust("node-a", "id-node-a", "trusted", until, "r")})


def as_submitted(manifest: dict, username: str = "system:node:node-a") -> CsrRequest:
    submitted = {**manifest, "metadata": {**manifest["metadata"], "name": "csr-1"}}
    submitted["spec"] = {**manifest["spec"], "username": username}
    return CsrRequest.from_api(submitted)


def test_client_csr_signed_in_the_tpm_is_approved(pki, software_tpm):
    directory, ca = pki
    done = node_csr(directory, software_tpm.tcti)
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load(done.stdout)
    assert manifest["spec"]["signerName"] == "kubernetes.io/kube-apiserver-client-kubelet"
    request = base64.b64decode(manifest["spec"]["request"])
    assert b"BEGIN CERTIFICATE REQUEST" in request
    decision = decide_csr(as_submitted(manifest), trusted(), ca.certificate, datetime.now(UTC))
    assert decision.action == "approve", decision.reasons


def test_serving_csr_names_the_nodes_addresses(pki, software_tpm):
    directory, ca = pki
    done = node_csr(
        directory, software_tpm.tcti, "--signer", "serving", "--address", "node-a",
        "--address", "10.0.0.5",
    )  # fmt: skip
    assert done.returncode == 0, done.stderr
    manifest = yaml.safe_load(done.stdout)
    decision = decide_csr(
        as_submitted(manifest),
        trusted(),
        ca.certificate,
        datetime.now(UTC),
        node_addresses=lambda name: {"node-a", "10.0.0.5"} if name == "node-a" else None,
    )
    assert decision.action == "approve", decision.reasons


def test_the_same_key_file_on_another_tpm_makes_no_request(pki, make_software_tpm):
    directory, _ = pki
    other = make_software_tpm()
    done = node_csr(directory, other.tcti)
    assert done.returncode == 2
    assert "could not sign" in done.stderr and "BEGIN" not in done.stdout


def test_an_untrusted_node_is_denied_even_with_a_good_request(pki, software_tpm):
    directory, ca = pki
    manifest = yaml.safe_load(node_csr(directory, software_tpm.tcti).stdout)
    failed = StaticTrust({"node-a": NodeTrust("node-a", "id-node-a", "failed", None, "r")})
    decision = decide_csr(as_submitted(manifest), failed, ca.certificate, datetime.now(UTC))
    assert decision.action == "deny" and any("failed" in r for r in decision.reasons)


# -- what goes into openssl's -subj and -addext is a node name and host names only ---------

INJECTIONS = [
    "x/o=system:masters",  # -subj: an extra RDN, O=system:masters
    "node-a/CN=admin",
    "node-a+O=system:masters",  # a multi-valued RDN
    "Node-A",
    "6f0d4c1e-2b7a-4e59-9a63-0c8e1d2f3a4b",  # an id, not a name
    "10.0.0.5",
    "n" * 53,
]


@pytest.mark.parametrize("name", INJECTIONS)
def test_a_name_that_is_not_a_node_name_makes_no_request(tmp_path, name):
    """Refused before openssl (or the TPM) is reached: there is no key file here at all."""
    with pytest.raises(InvalidNodeName):
        tpm_signed_request(tmp_path / "no-such-key.pem", "swtpm:port=1", name)
    with pytest.raises(InvalidNodeName):
        csr_manifest(b"request", b"certificate", name, "client")


@pytest.mark.parametrize(
    "address",
    ["node-a,DNS:kubernetes.default.svc", "node-a,IP:10.96.0.1", "email:a@b", "a b", "-x", ""],
)
def test_an_address_that_is_not_a_host_name_or_ip_makes_no_request(tmp_path, address):
    """A ',' would add subject alternative names of the caller's choosing to -addext."""
    with pytest.raises(InputError, match="neither an IP address nor an RFC 1123 host name"):
        tpm_signed_request(tmp_path / "no-such-key.pem", "swtpm:port=1", "node-a", [address])


@pytest.mark.tools
def test_the_cli_refuses_a_name_that_is_not_a_node_name(tmp_path):
    (tmp_path / "node.pem").write_text("not read further\n")
    done = run_stockade(
        "kube", "node-csr", "--name", "x/o=system:masters",
        "--pki-dir", tmp_path, "--tcti", "swtpm:port=1",
    )  # fmt: skip
    assert done.returncode == 2, done.stderr
    assert "node name 'x/o=system:masters' is not valid" in done.stderr
    assert "BEGIN" not in done.stdout
