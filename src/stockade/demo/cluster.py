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
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.table import Table

from stockade.errors import StockadeError, VerificationFailed

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
    # The demo and most tests admit every genuine TPM; approval is shown where it is the story.
    enrollment_mode: str = "open"
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None
    # The whole `verifier serve` option list instead of the one built from the fields above
    # (a test starting the verifier exactly as a manifest does); the port must be ``port``.
    serve_args: tuple[str, ...] | None = None

    @property
    def url(self) -> str:
        return f"https://127.0.0.1:{self.port}"

    @property
    def ca(self) -> Path:
        return self.data_dir / "tls" / "ca.pem"

    @property
    def verifier_key(self) -> Path:
        """The statement key relying parties pin (written by the verifier on start)."""
        return self.data_dir / "keys" / "verifier-key.pub.pem"

    @property
    def reader_token_file(self) -> Path:
        """Reads of trust state need a credential; the demo's monitors use the reader's."""
        return self.data_dir / "reader-token"

    def operator_token(self) -> str | None:
        with contextlib.suppress(OSError):
            return (self.data_dir / "operator-token").read_text().strip()
        return None

    @property
    def log_path(self) -> Path:
        return self.data_dir.parent / f"{self.data_dir.name}.log"

    def start(self, timeout: float = 30.0) -> None:
        command = [
            stockade_executable(), "verifier", "serve", "--data-dir", str(self.data_dir),
            "--port", str(self.port), "--ek-ca", str(self.ek_ca), "--policy", str(self.policy),
            "--enrollment-mode", self.enrollment_mode,
            *(("--database", self.database) if self.database else ()), *self.extra,
        ]  # fmt: skip
        if self.serve_args is not None:
            command = [stockade_executable(), "verifier", "serve", *self.serve_args]
        self.data_dir.mkdir(parents=True, exist_ok=True, mode=0o700)  # owner-only, or refused
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()
        self._wait_ready(timeout)

    def _wait_ready(self, timeout: float) -> None:
        from stockade.verifier_client import VerifierClient, VerifierUnavailable

        deadline = time.monotonic() + timeout
        while True:
            assert self.process is not None
            if self.process.poll() is not None:
                raise ClusterError(f"verifier exited ({self.process.returncode}): {self.tail()}")
            if self.ca.exists():
                try:
                    with VerifierClient(self.url, self.ca, timeout=2.0) as client:
                        client.request("GET", "/v1/health")
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
        """A client holding the operator token: the demo reads nodes and results."""
        from stockade.verifier_client import VerifierClient

        return VerifierClient(self.url, self.ca, operator_token=self.operator_token())


class _ChildProcess:
    """A child process whose output goes to ``log_path``: stopped with SIGTERM (then killed),
    its log read back line by line."""

    process: subprocess.Popen[bytes] | None

    @property
    def log_path(self) -> Path:
        raise NotImplementedError

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


@dataclass
class AgentProcess(_ChildProcess):
    """``stockade agent run`` for one development TPM."""

    name: str
    tpm_name: str
    verifier: VerifierProcess
    home: Path
    state_dir: Path
    interval: float = 1.0
    jitter: float = 0.2
    extra: tuple[str, ...] = ()
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        # By state directory: two agents of one node name (a board swap) keep two logs.
        return self.state_dir.parent / f"{self.state_dir.name}.log"

    def start(self) -> None:
        command = [
            stockade_executable(), "agent", "run", "--name", self.name,
            "--verifier", self.verifier.url, "--ca", str(self.verifier.ca),
            "--tpm", self.tpm_name, "--home", str(self.home), "--state-dir", str(self.state_dir),
            "--interval", str(self.interval), "--jitter", str(self.jitter), "--max-backoff", "1",
            *self.extra,
        ]  # fmt: skip
        self.state_dir.parent.mkdir(parents=True, exist_ok=True)
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()


@dataclass
class LogMonitorProcess(_ChildProcess):
    """``stockade log monitor`` following a verifier's transparency log, as an auditor would."""

    verifier: VerifierProcess
    state: Path
    interval: float = 1.0
    process: subprocess.Popen[bytes] | None = None

    @property
    def log_path(self) -> Path:
        return self.state.with_suffix(".log")

    def start(self) -> None:
        key = self.verifier.data_dir / "keys" / "log-key.pub"
        command = [
            stockade_executable(), "log", "monitor", "--verifier", self.verifier.url,
            "--ca", str(self.verifier.ca), "--key", str(key), "--state", str(self.state),
            "--interval", str(self.interval), "--token-file", str(self.verifier.reader_token_file),
        ]  # fmt: skip
        log = self.log_path.open("ab")
        self.process = subprocess.Popen(
            command, stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT
        )
        log.close()


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


# -- the demo's story ------------------------------------------------------------------

STORY_VALIDITY = 6  # seconds a result stays valid: staleness shows within the demo
STORY_INTERVAL = 1.0  # seconds between a demo agent's attestations
STATE_STYLES = {
    "pending": "blue", "enrolled": "cyan", "trusted": "green", "untrusted": "yellow",
    "failed": "red", "revoked": "magenta",
}  # fmt: skip


class ClusterStoryFailed(VerificationFailed):
    """The development cluster did not reach the trust decisions a verifier must make."""


def _styled(state: str | None) -> str:
    if state is None:
        return "[dim](new)[/]"
    return f"[{STATE_STYLES.get(state, 'white')}]{state}[/]"


def _parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


class _Narrator:
    """Follows ``GET /v1/events`` on a thread and prints each transition as it arrives.

    The main thread waits on the states it records (:meth:`wait_for`). A node that
    fails has its latest result's reasons fetched from the results API and printed.
    """

    def __init__(self, console: Console, verifier: VerifierProcess, started: float) -> None:
        self.console = console
        self.verifier = verifier
        self.started = started
        self.states: dict[str, str] = {}
        self.events: list[dict[str, Any]] = []
        self.reasons: dict[str, list[str]] = {}
        self.error: BaseException | None = None
        self._condition = threading.Condition()
        self._stopping = threading.Event()
        self._client: Any = None
        self._thread = threading.Thread(target=self._run, name="stockade-demo-events", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._client is not None:
            with contextlib.suppress(Exception):
                self._client.close()  # ends the stream the thread is reading
        self._thread.join(5.0)

    def _run(self) -> None:
        try:
            with self.verifier.client() as client:
                self._client = client
                for event in client.stream_events(follow=True):
                    self._narrate(client, event)
                    if self._stopping.is_set():
                        return
        except BaseException as error:  # reported to the waiting thread unless stopping
            if not self._stopping.is_set():
                with self._condition:
                    self.error = error
                    self._condition.notify_all()

    def _narrate(self, client: Any, event: dict[str, Any]) -> None:
        name, to, reason = str(event["name"]), str(event["to"]), str(event["reason"] or "")
        at = f"[dim]{time.monotonic() - self.started:5.1f}s[/]"
        detail = f" ({reason})" if reason and to not in (reason, "failed") else ""
        if event.get("actor"):
            detail += f" by {event['actor']}"
        self.console.print(
            f"  {at} [bold]{name}[/]: {_styled(event['from'])} -> {_styled(to)}{detail}"
        )
        reasons: list[str] = []
        if to == "failed":
            results = client.results(str(event["node_id"]), limit=1)
            reasons = [str(r) for r in results[0]["reasons"]] if results else []
            for line in reasons:
                self.console.print(f"          [red]-[/] {line}", overflow="ellipsis", no_wrap=True)
        with self._condition:
            self.events.append(event)
            self.states[name] = to
            if reasons:
                self.reasons[name] = reasons
            self._condition.notify_all()

    def wait_for(self, condition: Callable[[_Narrator], Any], timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        with self._condition:
            while True:
                value = condition(self)
                if value:
                    return value
                if self.error is not None:
                    raise ClusterStoryFailed(f"the event stream ended: {self.error}")
                left = deadline - time.monotonic()
                if left <= 0:
                    raise ClusterStoryFailed(
                        f"timed out after {timeout:.0f}s waiting for {what} (states: {self.states})"
                    )
                self._condition.wait(min(left, 0.5))


def _node_table(client: Any) -> Table:
    table = Table(title="GET /v1/nodes")
    for column in ("node", "state", "last status", "trusted until"):
        table.add_column(column)
    for node in client.nodes():
        results = client.results(str(node["node_id"]), limit=1)
        status = str(results[0]["status"]) if results else "-"
        colour = {"affirming": "green", "warning": "yellow", "contraindicated": "red"}
        table.add_row(
            str(node["name"]),
            _styled(str(node["state"])),
            f"[{colour.get(status, 'white')}]{status}[/]",
            str(node["trusted_until"] or "-"),
        )
    return table


def cluster_story(console: Console, home: Path) -> None:
    """A verifier process and three development nodes (own swtpm, verified boot, own agent
    process), narrated from the verifier's event stream as the decisions happen: two good
    nodes trusted, the tampered node failed with its reasons, a stopped agent's node stale
    right after its deadline. Every process and swtpm is stopped however the story ends."""
    from stockade.boot import DevelopmentPlatform, boot_node, load_release
    from stockade.tpm.ekca import EkCa
    from stockade.tpm.swtpm import SoftwareTpm, start_swtpm

    started = time.monotonic()
    work = home / "cluster"
    console.rule("[bold]Continuous attestation: a verifier and three development nodes")
    org = make_org_material(work / "org")
    console.print(
        "1. organization: a signed release (security version 3), a development platform "
        "with Secure Boot, and a kernel with one byte changed"
    )
    policy = work / "policy.json"
    policy.write_text(json.dumps(policy_document(org, validity_seconds=STORY_VALIDITY)))
    ek_ca = EkCa.load_or_create(home / "ek-ca")
    verifier = VerifierProcess(
        work / "verifier",
        ek_ca_bundle(ek_ca, work / "ek-ca.pem"),
        policy,
        enrollment_mode="approve",
    )
    tpms: list[SoftwareTpm] = []
    agents: dict[str, AgentProcess] = {}
    narrator: _Narrator | None = None
    monitor = LogMonitorProcess(verifier, work / "log-monitor.state")
    try:
        verifier.start()
        monitor.start()
        console.print(
            f"2. verifier at [cyan]{verifier.url}[/] (TLS, SQLite in {verifier.data_dir.name}/), "
            f"policy 'cluster': results valid {STORY_VALIDITY} s; every result goes into its "
            "transparency log, which an auditor follows with `stockade log monitor`; "
            "following GET /v1/events:"
        )
        narrator = _Narrator(console, verifier, started)
        narrator.start()
        platform = DevelopmentPlatform.load(org.platform_dir)
        nodes = {
            "node-a": "the signed release, Secure Boot on",
            "node-b": "the signed release, Secure Boot on",
            "node-c": "the modified kernel, Secure Boot off",
        }
        for name, what in nodes.items():
            tpm = start_swtpm(f"cluster-{name}", home=home, ek_ca=ek_ca)
            tpms.append(tpm)
            if name == "node-c":
                booted = boot_node(
                    tpm,
                    platform.with_secure_boot(False),
                    load_release(org.release_dir, kernel=org.modified_kernel),
                )
            else:
                booted = boot_node(tpm, platform, load_release(org.release_dir))
            booted.check()
            agent = AgentProcess(
                name, tpm.name, verifier, home, work / "agents" / name, interval=STORY_INTERVAL
            )
            agent.start()
            agents[name] = agent
            console.print(
                f"  [dim]{time.monotonic() - started:5.1f}s[/] {name}: own swtpm booted {what}; "
                f"`stockade agent run` attests every {STORY_INTERVAL:.0f} s"
            )

        narrator.wait_for(
            lambda n: all(n.states.get(name) == "pending" for name in nodes),
            30,
            "three pending machines",
        )
        with verifier.client() as operator:
            for name in nodes:
                operator.approve(name)
        console.print(
            "   new machines wait as [blue]pending[/] (enrollment mode approve): the operator "
            "admits each one (`stockade nodes approve NAME`, operator token; the event names "
            "who acted); a machine nobody approves can do nothing and is swept"
        )

        expected = {"node-a": "trusted", "node-b": "trusted", "node-c": "failed"}
        narrator.wait_for(
            lambda n: all(n.states.get(k) == v for k, v in expected.items()),
            45,
            "node-a and node-b trusted, node-c failed",
        )
        reasons = " ".join(narrator.reasons.get("node-c", []))
        missing = [needle for needle in ("PCR 4", "PCR 7", "EV_") if needle not in reasons]
        if missing:
            raise ClusterStoryFailed(f"node-c's reasons do not name {missing}: {reasons}")
        console.print(
            "3. the good nodes are trusted; node-c is failed (contraindicated), its reasons "
            "naming PCR 4 (the kernel), PCR 7 (Secure Boot off) and the events that differ"
        )

        if agents["node-b"].stop() != 0:
            raise ClusterStoryFailed("node-b's agent did not exit cleanly on SIGTERM")
        with verifier.client() as client:
            deadline = _parse_time(str(client.node("node-b")["trusted_until"]))
        left = (deadline - datetime.now(UTC)).total_seconds()
        console.print(
            f"4. node-b's agent stopped: its last result is valid until "
            f"{deadline:%H:%M:%S} UTC ({left:.1f} s from now); waiting:"
        )
        seen = len(narrator.events)
        stale = narrator.wait_for(
            lambda n: next(
                (e for e in n.events[seen:] if e["name"] == "node-b" and e["to"] == "untrusted"),
                None,
            ),
            STORY_VALIDITY + 10,
            "node-b untrusted (stale)",
        )
        late = (_parse_time(str(stale["time"])) - deadline).total_seconds()
        if "stale" not in str(stale["reason"]) or late > 2.0:
            raise ClusterStoryFailed(f"node-b went untrusted {late:.1f} s late: {stale}")
        console.print(
            f"  node-b became untrusted (stale) {late:.1f} s after its deadline; "
            "node-a keeps attesting"
        )
        with verifier.client() as client:
            states = {str(n["name"]): str(n["state"]) for n in client.nodes()}
            if states != {"node-a": "trusted", "node-b": "untrusted", "node-c": "failed"}:
                raise ClusterStoryFailed(f"unexpected final states: {states}")
            console.print(_node_table(client))
        monitor_exit = monitor.stop()
        report = monitor.lines()
        alerts = [line for line in report if "ALERT" in line]
        if alerts or monitor_exit not in (0, -15, 143, None):
            raise ClusterStoryFailed(f"the log monitor alerted: {alerts or report[-3:]}")
        checkpoints = [line for line in report if line.strip()]
        if not checkpoints:
            raise ClusterStoryFailed("the log monitor saw no checkpoint")
        console.print(
            f"  `stockade log monitor` verified {len(checkpoints)} signed checkpoints, each "
            f"consistent with the one before (RFC 9162 proofs); last: {checkpoints[-1].strip()}",
            overflow="ellipsis",
            no_wrap=True,
        )
    except (ClusterError, OSError) as error:
        raise ClusterStoryFailed(f"the development cluster failed: {error}") from error
    finally:
        monitor.stop()
        if narrator is not None:
            narrator.stop()
        for agent in agents.values():
            agent.stop()
        verifier.stop()
        for tpm in tpms:
            with contextlib.suppress(Exception):
                tpm.stop()
    console.print(
        f"5. agents, verifier and software TPMs stopped "
        f"({time.monotonic() - started:.0f} s for this story)"
    )
