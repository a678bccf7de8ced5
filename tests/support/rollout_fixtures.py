"""What the end-to-end rollout tests share (tests/e2e: the rollout inventory, the rollout
runbook, a release trusted by its signer): the organization's next release built and signed,
a policy file, a real verifier over TLS with the agents of development nodes (swtpm, verified
boot, ``stockade agent run``) that all stop at the end, the reading commands with the reader
token, and a wait that shows the nodes, the agents' last lines and the verifier's log when it
times out.

``tests/e2e/conftest.py`` hands a test module these as one :class:`RolloutKit` (the
``rollout`` fixture)::

    with rollout.serving(work / "verifier", policy) as stand:
        stand.start_agent("web-1", tpm.name, work / "agents" / "web-1")
        stand.wait(lambda: stand.states() == {"web-1": "trusted"}, 60, "web-1 trusted")
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stockade.demo.cluster import (
    CMDLINE,
    AgentProcess,
    ClusterError,
    OrgMaterial,
    VerifierProcess,
    policy_document,
    wait_for,
)
from support.cli import run_stockade
from support.verifier_serve import ServedVerifier

__all__ = [
    "RolloutKit",
    "SignedRelease",
    "Stand",
    "build_signed_release",
    "listed_nodes",
    "node_states",
    "reader_cli",
]


@dataclass(frozen=True)
class SignedRelease:
    """A release built from the organization's signed kernel and signed with its key."""

    directory: Path
    envelope: Any  # the DSSE envelope (stockade.release.manifest.sign_manifest)
    digest: str  # the manifest digest, hex

    def write_envelope(self) -> Path:
        """``<directory>/manifest.dsse.json``, as ``stockade release sign`` writes it."""
        path = self.directory / "manifest.dsse.json"
        path.write_bytes(self.envelope.to_bytes())
        return path


def build_signed_release(
    org: OrgMaterial, directory: Path, version: str, security_version: int
) -> SignedRelease:
    """The organization's release ``version`` (the same signed kernel and command line, a new
    initrd and /usr), built into ``<directory>/release`` as ``stockade release build`` does
    and signed with the org key."""
    from stockade.release.build import ReleaseInputs, build_release
    from stockade.release.keys import load_signing_key
    from stockade.release.manifest import manifest_digest, sign_manifest

    material = org.release_dir.parent  # make_org_material's directory
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "initrd.in").write_bytes(os.urandom(20000))
    (directory / "usr.in").write_bytes(os.urandom(5 * 4096))
    release_dir = directory / "release"
    manifest = build_release(
        ReleaseInputs(
            "stockade-os", version, security_version, material / "vmlinuz.signed",
            directory / "initrd.in", CMDLINE, directory / "usr.in",
        ),
        release_dir,
        datetime.now(UTC),
    )  # fmt: skip
    org_key = load_signing_key((material / "keys" / "org.key").read_bytes())
    envelope = sign_manifest(manifest, [org_key])
    return SignedRelease(release_dir, envelope, manifest_digest(manifest).hex())


def reader_cli(verifier: VerifierProcess, *args: object, text: bool = False) -> Any:
    """A reading command with the reader token: its JSON, or (``text``) its text output on a
    terminal wide enough for the wide tables."""
    result = run_stockade(
        *args, "--verifier", verifier.url, "--ca", verifier.ca,
        "--token-file", verifier.reader_token_file, *(() if text else ("--format", "json")),
        env={**os.environ, "COLUMNS": "250"},
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return result.stdout if text else json.loads(result.stdout)


def listed_nodes(verifier: VerifierProcess) -> dict[str, dict[str, Any]]:
    """``nodes list``, by name."""
    return {node["name"]: node for node in reader_cli(verifier, "nodes", "list")["nodes"]}


def node_states(verifier: VerifierProcess) -> dict[str, str]:
    """Each listed node's state, by name."""
    return {name: node["state"] for name, node in listed_nodes(verifier).items()}


@dataclass
class Stand:
    """A running verifier and the agents started against it (the latest one by name in
    :attr:`agents`; every one is stopped when :meth:`RolloutKit.serving` ends)."""

    verifier: VerifierProcess
    home: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    started: list[AgentProcess] = field(default_factory=list)

    def start_agent(self, name: str, tpm_name: str, state_dir: Path, *extra: str) -> AgentProcess:
        """``stockade agent run`` for the node ``name`` on the swtpm ``tpm_name``."""
        agent = AgentProcess(name, tpm_name, self.verifier, self.home, state_dir, extra=extra)
        agent.start()
        self.agents[name] = agent
        self.started.append(agent)
        return agent

    def states(self) -> dict[str, str]:
        return node_states(self.verifier)

    def wait(
        self,
        condition: Callable[[], Any],
        timeout: float,
        what: str,
        *,
        shown: Callable[[], object] | None = None,
        interval: float = 0.1,
        last: int = 5,
    ) -> Any:
        """:func:`~stockade.demo.cluster.wait_for`; timed out, an ``AssertionError`` with
        ``shown()`` (the node states unless given), each agent's ``last`` log lines and the
        verifier's log."""
        try:
            return wait_for(condition, timeout, what, interval=interval)
        except ClusterError:
            seen = (shown or self.states)()
            logs = {name: agent.lines()[-last:] for name, agent in self.agents.items()}
            raise AssertionError(f"{what}: {seen}\n{logs}\n{self.verifier.tail()}") from None

    def stop(self) -> None:
        for agent in self.started:
            agent.stop()
        self.verifier.stop()


@dataclass(frozen=True)
class RolloutKit:
    """The e2e fixtures a rollout test starts from (``tests/e2e/conftest.py``: ``rollout``)."""

    org: OrgMaterial
    make_tpm: Callable[[], Any]  # a freshly provisioned swtpm that lives for the module
    ek_ca_file: Path
    database_url: str | None
    home: Path  # the session's Stockade home (the swtpms' and agents' --home)
    mktemp: Callable[[str], Path]  # a new directory for the module

    def policy_file(
        self, path: Path, validity_seconds: int, *manifests: Any
    ) -> tuple[Path, dict[str, Any]]:
        """The cluster policy (the org's release 1.0.0, and ``manifests`` besides) written
        as JSON to ``path``: the path and the document."""
        document = policy_document(self.org, validity_seconds=validity_seconds)
        document["releases"]["manifests"].extend(manifests)
        path.write_text(json.dumps(document))
        return path, document

    @contextmanager
    def serving(self, data_dir: Path, policy: Path) -> Iterator[Stand]:
        """``stockade verifier serve`` on ``policy`` (the e2e database if there is one), ready;
        it and every agent started on the stand are stopped at the end."""
        verifier = ServedVerifier(data_dir, self.ek_ca_file, policy, database=self.database_url)
        verifier.start()
        stand = Stand(verifier, self.home)
        try:
            yield stand
        finally:
            stand.stop()
