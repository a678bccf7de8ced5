"""A real cluster for the agent's membership tests: a `stockade verifier serve` process (TLS on
127.0.0.1, the development node's verified boot as policy, a KEK) and swtpm TPMs booted through
the development chain. The fixtures (``cluster``, ``booted``, ``shm_dir``) are in conftest.py.
"""

from __future__ import annotations

import base64
import contextlib
import json
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.agent import Agent, AgentConfig
from stockade.agent.client import VerifierClient
from stockade.agent.membership import MEMORY_FILESYSTEMS, filesystem_type
from stockade.agent.source import NodeSource
from stockade.cluster.secret_store import KeyEncryptionKey
from stockade.demo.cluster import (
    KERNEL_STUB,
    OrgMaterial,
    VerifierProcess,
    ek_ca_bundle,
    make_org_material,
    policy_document,
)
from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import SoftwareTpm

SECRET = b"db-password=correct-horse-battery-staple;\x00\xfe binary tail"
SHM = Path("/dev/shm")


def require_tools() -> None:
    from stockade.boot.platform import DEBIAN_GRUB, DEBIAN_SHIM

    missing = [tool for tool in ("swtpm", "swtpm_setup", "sbsign") if not shutil.which(tool)]
    missing += [str(p) for p in (DEBIAN_SHIM, DEBIAN_GRUB, KERNEL_STUB) if not p.exists()]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/bootstrap.sh)")


@dataclass(frozen=True)
class Cluster:
    org: OrgMaterial
    verifier: VerifierProcess

    def operator(self) -> VerifierClient:
        token = (self.verifier.data_dir / "operator-token").read_text().strip()
        return VerifierClient(self.verifier.url, self.verifier.ca, operator_token=token)


@contextlib.contextmanager
def running_cluster(work: Path, ek_ca: EkCa) -> Iterator[Cluster]:
    require_tools()
    org = make_org_material(work / "org")
    policy = work / "policy.json"
    policy.write_text(json.dumps(policy_document(org, validity_seconds=120)))
    kek = work / "kek"
    kek.write_text(KeyEncryptionKey.generate().to_text())
    kek.chmod(0o600)
    verifier = VerifierProcess(
        work / "verifier",
        ek_ca_bundle(ek_ca, work / "ek-ca.pem"),
        policy,
        extra=("--kek-file", str(kek)),
    )
    verifier.start()
    try:
        yield Cluster(org, verifier)
    finally:
        verifier.stop()


def boot_factory(
    cluster: Cluster, make_software_tpm: Callable[[], SoftwareTpm]
) -> Callable[[], tuple[SoftwareTpm, Path]]:
    """A fresh TPM (its own EK) booted through the development chain: (tpm, boot log)."""
    from stockade.boot import DevelopmentPlatform, boot_node, load_release

    platform = DevelopmentPlatform.load(cluster.org.platform_dir)
    release = load_release(cluster.org.release_dir)

    def make() -> tuple[SoftwareTpm, Path]:
        tpm = make_software_tpm()
        result = boot_node(tpm, platform, release)
        result.check()
        return tpm, result.log_path

    return make


@contextlib.contextmanager
def shm_directory() -> Iterator[Path]:
    if filesystem_type(SHM) not in MEMORY_FILESYSTEMS:
        pytest.skip("/dev/shm is not a tmpfs here")
    directory = Path(tempfile.mkdtemp(prefix="stockade-test-secrets-", dir=SHM))
    try:
        yield directory / "secrets"
    finally:
        shutil.rmtree(directory, ignore_errors=True)


def make_agent(
    cluster: Cluster,
    tpm: SoftwareTpm,
    log: Path,
    state_dir: Path,
    name: str,
    *,
    secrets: tuple[str, ...] = ("db",),
    secrets_dir: Path | None = None,
    certificates: bool = True,
    verifier_key: Path | None = None,
) -> tuple[Agent, list[str]]:
    lines: list[str] = []
    config = AgentConfig(
        verifier=cluster.verifier.url,
        ca=cluster.verifier.ca,
        name=name,
        source=NodeSource(tpm.tcti, log, f"test TPM {tpm.name}"),
        state_dir=state_dir,
        interval=0.05,
        jitter=0.0,
        initial_backoff=0.05,
        max_backoff=0.2,
        certificates=certificates,
        secrets=secrets,
        secrets_dir=secrets_dir,
        verifier_key=verifier_key,
    )
    return Agent(config, log=lines.append), lines


def put_secret(cluster: Cluster, name: str, value: bytes, *selectors: str) -> None:
    with cluster.operator() as api:
        api.put_secret(name, value)
        for selector in selectors:
            api.grant(name, selector)


def enroll(cluster: Cluster, agent: Agent) -> str:
    """Enroll the agent now (its channel key made and certified), so grants can name it."""
    with VerifierClient(cluster.verifier.url, cluster.verifier.ca) as client:
        return agent.enrolled_or_enroll(client).node_id


def assert_no_secret(lines: list[str], secret: bytes = SECRET) -> None:
    """Neither the bytes nor any usual rendering of them is in the log."""
    text = "\n".join(lines)
    renderings = {
        secret.decode("latin-1"),
        secret[:24].decode("latin-1"),  # the printable prefix
        base64.b64encode(secret).decode(),
        secret.hex(),
        repr(secret),
    }
    for rendering in renderings:
        assert rendering not in text, f"the secret leaked into the log: {rendering!r}"
