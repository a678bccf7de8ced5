"""A development cluster of real processes: a verifier (``stockade verifier serve``) and
development nodes, each a software TPM booted through the verified chain with its own
``stockade agent run``. Used by the end-to-end tests, the verifier benchmark and the
demo (:func:`cluster_story`), so all three run exactly the same thing.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stockade.errors import StockadeError

KERNEL_STUB = Path("/usr/lib/systemd/boot/efi/linuxx64.efi.stub")
CMDLINE = "ro console=ttyS0 quiet"
QUOTED_PCRS = "sha256:0,1,2,3,4,5,6,7,8,9,12"


class ClusterError(StockadeError):
    """A process of the development cluster did not start or behave."""


def stockade_executable() -> str:
    """``$STOCKADE_EXECUTABLE``, else the ``stockade`` beside this Python, else on PATH."""
    if os.environ.get("STOCKADE_EXECUTABLE"):
        return os.environ["STOCKADE_EXECUTABLE"]
    found = Path(sys.executable).with_name("stockade")
    return str(found) if found.exists() else shutil.which("stockade") or "stockade"


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass(frozen=True)
class OrgMaterial:
    """What an organization publishes: a platform, a signed release, and a tampered kernel."""

    platform_dir: Path
    release_dir: Path
    envelope: dict[str, Any]
    org_pub: str
    modified_kernel: Path


def _flip_section_byte(image: bytes) -> bytes:
    import struct

    pe = struct.unpack_from("<I", image, 0x3C)[0]
    sections, optional_size = struct.unpack_from("<2xH12xH", image, pe + 4)
    table = pe + 24 + optional_size
    for index in range(sections):
        raw_size, raw_pointer = struct.unpack_from("<II", image, table + 40 * index + 16)
        if raw_size:
            at = raw_pointer + raw_size // 2
            return image[:at] + bytes([image[at] ^ 0xFF]) + image[at + 1 :]
    raise ClusterError("the kernel image has no section to modify")


def make_org_material(directory: Path) -> OrgMaterial:
    """Keys, a development platform (Secure Boot on), a signed release and a modified kernel."""
    from stockade.boot import create_development_platform
    from stockade.boot.secure_boot import sign_image
    from stockade.release.build import ReleaseInputs, build_release
    from stockade.release.keys import KeyType, generate_key_set, load_signing_key
    from stockade.release.manifest import sign_manifest

    now = datetime.now(UTC)
    keys = generate_key_set(directory / "keys", KeyType.ECDSA_P256, "Cluster Org", now)
    platform_dir = directory / "platform"
    create_development_platform(
        platform_dir, keys.paths.secure_boot_key, keys.paths.secure_boot_cert
    )
    kernel = directory / "vmlinuz.signed"
    sign_image(KERNEL_STUB, kernel, keys.paths.secure_boot_key, keys.paths.secure_boot_cert)
    (directory / "initrd.in").write_bytes(os.urandom(20000))
    (directory / "usr.in").write_bytes(os.urandom(5 * 4096))
    release_dir = directory / "release"
    manifest = build_release(
        ReleaseInputs(
            "stockade-os", "1.0.0", 3, kernel, directory / "initrd.in", CMDLINE,
            directory / "usr.in",
        ),
        release_dir,
        now,
    )  # fmt: skip
    envelope = sign_manifest(manifest, [load_signing_key(keys.paths.org_key.read_bytes())])
    modified = directory / "vmlinuz.modified"
    modified.write_bytes(_flip_section_byte(kernel.read_bytes()))
    return OrgMaterial(
        platform_dir, release_dir, envelope.to_json(), keys.paths.org_pub.read_text(), modified
    )


def policy_document(
    material: OrgMaterial, *, policy_id: str = "cluster", validity_seconds: int = 120
) -> dict[str, Any]:
    from stockade.boot.platform import REFERENCE_FILE

    return {
        "id": policy_id,
        "pcrs": QUOTED_PCRS,
        "result_validity_seconds": validity_seconds,
        "releases": {
            "signers": [material.org_pub],
            "min_security_version": 3,
            "manifests": [material.envelope],
        },
        "platforms": [json.loads((material.platform_dir / REFERENCE_FILE).read_text())],
        "secure_boot": {"required": True},
        "enforce": {
            "release": "enforce", "secure_boot": "enforce", "firmware": "enforce",
            "clock": "enforce",
        },
    }  # fmt: skip


def ek_ca_bundle(ek_ca: Any, path: Path) -> Path:
    """The EK CA's root and issuing certificates in one PEM file (``--ek-ca``)."""
    path.write_bytes(ek_ca.root_cert_path.read_bytes() + ek_ca.issuer_cert_path.read_bytes())
    return path


@dataclass
class VerifierProcess:
    """``stockade verifier serve`` as a child process on 127.0.0.1 over TLS."""

    data_dir: Path
    ek_ca: Path
    policy: Path
    database: str | None = None
    port: int = field(default_factory=free_port)
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 30.0) -> None:
        command = [
            stockade_executable(), "verifier", "serve", "--data-dir", str(self.data_dir),
            "--port", str(self.port), "--ek-ca", str(self.ek_ca), "--policy", str(self.policy),
            *(("--database", self.database) if self.database else ()), *self.extra,
        ]  # fmt: skip
        self.data_dir.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        from stockade.agent.client import VerifierClient, VerifierUnavailable

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ClusterError(f"verifier exited ({self.process.returncode}): {self.tail()}")
            if self.ca.exists():
                try:
                    with VerifierClient(self.url, self.ca, timeout=2.0) as client:
                        client.nodes()
                    return
                except VerifierUnavailable:
                    pass
            if time.monotonic() > deadline:
                raise ClusterError(f"verifier not ready after {timeout:.0f}s: {self.tail()}")
            time.sleep(0.1)

    def stop(self, timeout: float = 10.0) -> None:
        if self.process is None or self.process.poll() is not None:
            return
        self.process.send_signal(signal.SIGTERM)
        try:
            self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()

    def tail(self, lines: int = 15) -> str:
        with contextlib.suppress(OSError):
            return "\n".join(self.log_path.read_text(errors="replace").splitlines()[-lines:])
        return ""

    def client(self) -> Any:
        from stockade.agent.client import VerifierClient

        return VerifierClient(self.url, self.ca)


@dataclass
class AgentProcess:
    """``stockade agent run`` for one development TPM."""

    name: str
    tpm_name: str
    verifier: VerifierProcess
    home: Path
    state_dir: Path
    interval: float = 1.0
    jitter: float = 0.2
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.state_dir.parent / f"{self.name}.log"

    def start(self) -> None:
        command = [
            stockade_executable(), "agent", "run", "--name", self.name,
            "--verifier", self.verifier.url, "--ca", str(self.verifier.ca),
            "--tpm", self.tpm_name, "--home", str(self.home), "--state-dir", str(self.state_dir),
            "--interval", str(self.interval), "--jitter", str(self.jitter), "--max-backoff", "1",
        ]  # fmt: skip
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()

    def stop(self, timeout: float = 10.0) -> int | None:
        if self.process is None or self.process.poll() is not None:
            return None if self.process is None else self.process.returncode
        self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout)
        except subprocess.TimeoutExpired:
            self.process.kill()
            return self.process.wait()

    def lines(self) -> list[str]:
        with contextlib.suppress(OSError):
            return self.log_path.read_text(errors="replace").splitlines()
        return []


def wait_for(condition: Callable[[], Any], timeout: float, what: str, interval: float = 0.1) -> Any:
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise ClusterError(f"timed out after {timeout:.0f}s waiting for {what}")
        time.sleep(interval)


@contextlib.contextmanager
def running(*processes: VerifierProcess | AgentProcess) -> Iterator[None]:
    try:
        yield
    finally:
        for process in reversed(processes):
            process.stop()
