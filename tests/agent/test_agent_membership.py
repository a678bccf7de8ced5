"""The agent's side of cluster membership, with real parts: a real `stockade verifier serve`
process (TLS on 127.0.0.1, the real appraisal of a development node's verified boot, a KEK),
swtpm TPMs booted through the development chain, and the agent's own loop.

After an affirming result the agent holds a certificate for a key that lives only in its TPM
and its granted secrets, unsealed by the TPM (in a session its channel key authorized), in 0600
files on a tmpfs; a directory on disk is refused; after a contraindicated result the delivered
files are withdrawn and the certificate is not renewed. No log line carries a secret.

A ``node:<name>`` grant binds to the id of the node holding the name when it is made, so the
tests enroll the agent first, then grant.
"""

from __future__ import annotations

import contextlib
import shutil
import stat
import subprocess
import tempfile
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from cluster_support import (
    SECRET,
    SHM,
    Cluster,
    assert_no_secret,
    enroll,
    make_agent,
    put_secret,
)
from cryptography import x509

from stockade.agent.client import VerifierClient, VerifierRefused
from stockade.agent.membership import (
    MEMORY_FILESYSTEMS,
    Membership,
    NotOnTmpfs,
    filesystem_type,
    require_memory_filesystem,
)
from stockade.cluster.ca import verify_node_certificate
from stockade.evidence.duplication import SealedSecret
from stockade.tpm.device import Tpm
from stockade.tpm.node_key import load_node_key
from stockade.tpm.sealed import SecretRefused

pytestmark = pytest.mark.swtpm


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_affirmed_agent_holds_a_tpm_bound_certificate_and_the_secret_on_tmpfs(
    cluster: Cluster, booted, tmp_path: Path, shm_dir: Path
) -> None:
    tpm, log = booted()
    state = tmp_path / "state"
    agent, lines = make_agent(
        cluster, tpm, log, state, "web-1", secrets=("db", "not-granted"), secrets_dir=shm_dir
    )
    enroll(cluster, agent)
    put_secret(cluster, "db", SECRET, "node:web-1")
    agent.run(max_attestations=2)  # renewed after every affirming result
    assert agent.attestations == 2, lines
    assert sum("status=affirming" in line for line in lines) == 2, lines

    # The certificate: chains to the CA bundle, for the key in this TPM, and renewed.
    pki = state / "pki"
    cert = x509.load_pem_x509_certificate((pki / "node.pem").read_bytes())
    (ca,) = x509.load_pem_x509_certificates((pki / "ca.pem").read_bytes())
    node_id, result_id = verify_node_certificate(cert, ca, datetime.now(UTC))
    assert node_id == agent.state.enrolled().node_id  # type: ignore[union-attr]
    openssl = subprocess.run(
        ["openssl", "verify", "-CAfile", str(pki / "ca.pem"), str(pki / "node.pem")],
        capture_output=True,
        text=True,
        check=False,
    )
    assert openssl.returncode == 0, openssl.stdout + openssl.stderr
    key = load_node_key(pki / "node-key.pem")
    assert cert.public_key() == key.public.public_key()
    assert (pki / "node-key.pem").read_bytes().startswith(b"-----BEGIN TSS2 PRIVATE KEY-----")
    assert mode(pki / "node-key.pem") == 0o600
    serials = [line.split("serial=")[1].split()[0] for line in lines if "serial=" in line]
    assert len(serials) == 2 and serials[0] != serials[1], lines
    reports = [line for line in lines if line.startswith("attestation ")]
    assert f"result={result_id}" in reports[-1], reports  # issued on the latest result

    # The secret: exactly the bytes, 0600, on the tmpfs; what stays on disk is sealed.
    delivered = shm_dir / "db"
    assert delivered.read_bytes() == SECRET
    assert mode(delivered) == 0o600
    assert mode(shm_dir) == 0o700
    assert sorted(p.name for p in shm_dir.iterdir()) == ["db"]  # no temp files left behind
    sealed = (state / "sealed" / "db.sealed").read_bytes()
    assert SECRET not in sealed and SECRET[:24] not in sealed
    assert SealedSecret.unmarshal(sealed)  # a well-formed import blob
    assert mode(state / "sealed" / "db.sealed") == 0o600
    # ...and opens only with the agent's channel key (0600): tests/agent/test_secret_binding.py
    assert mode(state / "channel.key") == 0o600
    assert SealedSecret.unmarshal(sealed).policy_ref == b"stockade-unseal"
    assert any(line.startswith("secret db: sealed to sha256:") for line in lines), lines
    # An ungranted secret is refused by the verifier; nothing is written for it.
    assert any("secret not-granted: not delivered" in line for line in lines), lines
    assert not (shm_dir / "not-granted").exists()
    assert not (state / "sealed" / "not-granted.sealed").exists()
    assert_no_secret(lines)


def test_secrets_dir_on_disk_is_refused_and_nothing_is_written(
    cluster: Cluster, booted, tmp_path: Path
) -> None:
    on_disk = tmp_path / "secrets"
    if filesystem_type(tmp_path) in MEMORY_FILESYSTEMS:
        pytest.skip(f"{tmp_path} is on a memory filesystem here")
    tpm, log = booted()
    state = tmp_path / "state"
    agent, lines = make_agent(
        cluster, tpm, log, state, "disk-1", secrets=("disk-db",), secrets_dir=on_disk
    )
    enroll(cluster, agent)
    put_secret(cluster, "disk-db", SECRET, "node:disk-1")
    agent.run(max_attestations=1)
    (refusal,) = [line for line in lines if line.startswith("secret disk-db: not delivered")]
    assert "not tmpfs" in refusal and str(on_disk) in refusal, refusal
    assert list(on_disk.iterdir()) == []
    # The sealed copy is kept (useless elsewhere) and the certificate was still renewed.
    assert (state / "sealed" / "disk-db.sealed").exists()
    assert (state / "pki" / "node.pem").exists()
    assert_no_secret(lines)
    # Directly: deliver refuses with NotOnTmpfs, also through a symlink from the tmpfs.
    membership = Membership(state, tpm.tcti, secrets=("disk-db",), secrets_dir=on_disk)
    with pytest.raises(NotOnTmpfs, match="not tmpfs"):
        membership.deliver("disk-db")
    assert list(on_disk.iterdir()) == []
    if filesystem_type(SHM) in MEMORY_FILESYSTEMS:
        link_home = Path(tempfile.mkdtemp(prefix="stockade-test-link-", dir=SHM))
        try:
            (link_home / "secrets").symlink_to(on_disk)
            with pytest.raises(NotOnTmpfs):
                require_memory_filesystem(link_home / "secrets")
        finally:
            shutil.rmtree(link_home, ignore_errors=True)


def test_contraindicated_result_withdraws_secrets_and_stops_renewal(
    cluster: Cluster, booted, tmp_path: Path, shm_dir: Path
) -> None:
    tpm, log = booted()
    state = tmp_path / "state"
    agent, lines = make_agent(
        cluster, tpm, log, state, "tampered-1", secrets=("api-key",), secrets_dir=shm_dir
    )
    enroll(cluster, agent)
    put_secret(cluster, "api-key", SECRET, "node:tampered-1")
    agent.run(max_attestations=1)
    assert (shm_dir / "api-key").read_bytes() == SECRET, lines
    certificate = (state / "pki" / "node.pem").read_bytes()
    sealed_path = state / "sealed" / "api-key.sealed"
    sealed = sealed_path.read_bytes()
    release_path = state / "sealed" / "api-key.release.jwt"  # the verifier's release statement
    assert release_path.exists()

    # Something runs that the boot log does not account for: PCR 7 no longer replays.
    with Tpm(tpm.tcti) as device:
        device.extend_pcr(7, b"unexpected runtime measurement")
    again, after = make_agent(
        cluster, tpm, log, state, "tampered-1", secrets=("api-key",), secrets_dir=shm_dir
    )
    again.run(max_attestations=1)
    (report,) = [line for line in after if line.startswith("attestation ")]
    assert "status=contraindicated" in report and "PCR" in report, report
    assert "secret api-key: withdrawn (node not affirmed)" in after, after
    assert not (shm_dir / "api-key").exists()
    assert list(shm_dir.iterdir()) == []
    assert not any("certificate" in line for line in after), after
    assert (state / "pki" / "node.pem").read_bytes() == certificate
    # The sealed copy went too; a copy kept elsewhere is useless: the TPM refuses it now.
    assert not sealed_path.exists() and not release_path.exists()
    sealed_path.write_bytes(sealed)
    with pytest.raises(SecretRefused, match="unseal"):
        again.membership.unseal("api-key")
    # The verifier refuses a new release too (the agent does not even ask).
    node_id = again.state.enrolled().node_id  # type: ignore[union-attr]
    with VerifierClient(cluster.verifier.url, cluster.verifier.ca) as client:
        again.sign_as_node(client, again.state.enrolled())  # type: ignore[arg-type]
        with pytest.raises(VerifierRefused, match="untrusted"):
            client.release_secret(node_id, "api-key")
    assert_no_secret(lines + after)


def test_revoked_node_withdraws_its_secrets(
    cluster: Cluster, booted, tmp_path: Path, shm_dir: Path
) -> None:
    tpm, log = booted()
    state = tmp_path / "state"
    agent, lines = make_agent(
        cluster, tpm, log, state, "revoked-1", secrets=("revoked-db",), secrets_dir=shm_dir
    )
    enroll(cluster, agent)
    put_secret(cluster, "revoked-db", SECRET, "node:revoked-1")
    agent.run(max_attestations=1)
    assert (shm_dir / "revoked-db").exists(), lines
    with cluster.operator() as api:
        api.revoke("revoked-1")
    again, after = make_agent(
        cluster, tpm, log, state, "revoked-1", secrets=("revoked-db",), secrets_dir=shm_dir
    )
    thread = threading.Thread(target=again.run)
    thread.start()
    try:
        deadline = time.monotonic() + 1.5
        while (shm_dir / "revoked-db").exists() and time.monotonic() < deadline:
            time.sleep(0.05)
    finally:
        again.stop.set()
        thread.join(10)
    assert any("revoked" in line for line in after), after
    assert not (shm_dir / "revoked-db").exists(), after


# -- filesystem_type: the mount holding a path, from mountinfo ------------------------------

MOUNTINFO = "\n".join(
    [
        "22 1 253:0 / / rw,relatime shared:1 - ext4 /dev/vda rw",
        "30 22 0:25 / /stockade-test rw,nosuid - xfs /dev/vdb rw",
        r"31 30 0:26 / /stockade-test/my\040secrets rw,nosuid,nodev shared:7 - tmpfs tmpfs rw",
        "32 30 0:27 / /stockade-test/my rw master:3 - btrfs /dev/vdc rw",
        "33 30 0:28 / /stockade-test/over rw - ext4 /dev/vdd rw",
        "34 30 0:29 / /stockade-test/over rw - ramfs ramfs rw",  # mounted on top: it wins
        "35 22 0:30 / /stockade-test-sibling rw - tmpfs tmpfs rw",
        "not a mountinfo line",
    ]
)


@pytest.mark.parametrize(
    ("path", "expected"),
    [
        ("/stockade-test/my secrets/db", "tmpfs"),  # escaped space in the mount point
        ("/stockade-test/my secrets", "tmpfs"),  # the mount point itself
        ("/stockade-test/my/db", "btrfs"),
        ("/stockade-test/my", "btrfs"),
        ("/stockade-test/mysecrets/db", "xfs"),  # a name prefix is not a path prefix
        ("/stockade-test/my secretsx/db", "xfs"),
        ("/stockade-test/over/db", "ramfs"),
        ("/stockade-test/a/../my/db", "btrfs"),  # normalized first
        ("/stockade-test-sibling/db", "tmpfs"),
        ("/srv/db", "ext4"),  # longest prefix: only / holds it
        ("/", "ext4"),
    ],
)
def test_filesystem_type_is_the_longest_mount_prefix(path: str, expected: str) -> None:
    assert filesystem_type(Path(path), MOUNTINFO) == expected


def test_filesystem_type_without_a_mount_is_unknown_and_refused(tmp_path: Path) -> None:
    assert filesystem_type(Path("/x"), "") == ""
    with contextlib.suppress(FileNotFoundError):
        assert filesystem_type(SHM) in MEMORY_FILESYSTEMS | {""}
    refused = tmp_path / "d"
    refused.mkdir()
    if filesystem_type(refused) not in MEMORY_FILESYSTEMS:
        with pytest.raises(NotOnTmpfs, match=r"not tmpfs.*--secrets-socket"):
            require_memory_filesystem(refused)


def test_filesystem_type_decodes_every_mountinfo_escape() -> None:
    mountinfo = "\n".join(
        [
            "22 1 253:0 / / rw - ext4 /dev/vda rw",
            "30 22 0:25 / /run rw - tmpfs tmpfs rw",
            r"31 30 0:26 / /run/disk\011backed rw - ext4 /dev/vdb rw",
            r"32 30 0:27 / /run/back\134slash rw - xfs /dev/vdc rw",
        ]
    )
    assert filesystem_type(Path("/run/disk\tbacked/db"), mountinfo) == "ext4"
    assert filesystem_type(Path("/run/back\\slash/db"), mountinfo) == "xfs"
