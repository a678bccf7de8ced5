"""The dashboard's browser tests share one running fleet: a real ``stockade verifier serve``
over TLS with a signed-release policy, and real development nodes (each its own swtpm, a
verified boot, its own ``stockade agent run``):

- ``node-a`` and ``node-b`` boot the signed release with Secure Boot on: trusted;
- ``node-c`` boots a kernel with one byte changed and Secure Boot off: failed, its reasons
  naming PCR 4, PCR 7 and the events that differ.

A test may start more nodes (``fleet.start_node("node-d", tampered=True)``); names are unique
per session. The browser itself is ``support.browser.headless_chromium``. Everything started
here stops at the end of the session, however the tests ended.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from stockade.demo.cluster import (
    AgentProcess,
    OrgMaterial,
    VerifierProcess,
    ek_ca_bundle,
    make_org_material,
    policy_document,
    wait_for,
)
from stockade.tpm.ekca import EkCa
from support.browser import browser_unavailable

RESULT_VALIDITY = 60  # seconds: no node goes stale while a test looks at it
AGENT_INTERVAL = 2.0
STARTING_NODES = {"node-a": False, "node-b": False, "node-c": True}  # name: tampered


@dataclass
class DashboardFleet:
    """The running verifier and its nodes, for the dashboard tests."""

    verifier: VerifierProcess
    org: OrgMaterial
    home: Path
    ek_ca: EkCa
    work: Path
    agents: dict[str, AgentProcess] = field(default_factory=dict)
    tpms: list[Any] = field(default_factory=list)

    @property
    def url(self) -> str:
        return self.verifier.url

    def reader_token(self) -> str:
        return self.verifier.reader_token_file.read_text().strip()

    def operator_token(self) -> str:
        token = self.verifier.operator_token()
        assert token is not None, "the verifier wrote no operator token"
        return token

    def client(self) -> Any:
        """A ``VerifierClient`` holding the operator token (close it, or use ``with``)."""
        return self.verifier.client()

    def start_node(self, name: str, *, tampered: bool = False) -> AgentProcess:
        """Boot a new development node (its own swtpm) and start its agent. Tampered: the
        modified kernel with Secure Boot off, which the policy refuses."""
        from stockade.boot import DevelopmentPlatform, boot_node, load_release
        from stockade.tpm.swtpm import start_swtpm

        assert name not in self.agents, f"{name} was started already"
        tpm = start_swtpm(f"dashboard-{name}", home=self.home, ek_ca=self.ek_ca)
        self.tpms.append(tpm)
        platform = DevelopmentPlatform.load(self.org.platform_dir)
        if tampered:
            release = load_release(self.org.release_dir, kernel=self.org.modified_kernel)
            booted = boot_node(tpm, platform.with_secure_boot(False), release)
        else:
            booted = boot_node(tpm, platform, load_release(self.org.release_dir))
        booted.check()
        agent = AgentProcess(
            name, tpm.name, self.verifier, self.home, self.work / "agents" / name,
            interval=AGENT_INTERVAL,
        )  # fmt: skip
        agent.start()
        self.agents[name] = agent
        return agent

    def states(self) -> dict[str, str]:
        with self.client() as client:
            return {str(node["name"]): str(node["state"]) for node in client.nodes()}

    def node(self, name: str) -> dict[str, Any]:
        with self.client() as client:
            node: dict[str, Any] = client.node(name)
            return node

    def wait_states(self, wanted: dict[str, str], timeout: float = 60.0) -> None:
        def reached() -> bool:
            states = self.states()
            return all(states.get(name) == state for name, state in wanted.items())

        try:
            wait_for(reached, timeout, f"nodes {wanted}")
        except Exception as error:
            raise AssertionError(f"{error}; states now {self.states()}\n{self.tail()}") from None

    def tail(self) -> str:
        agents = "\n".join(
            f"--- {name}:\n" + "\n".join(agent.lines()[-8:]) for name, agent in self.agents.items()
        )
        return f"--- verifier:\n{self.verifier.tail(20)}\n{agents}"

    def stop(self) -> None:
        for agent in self.agents.values():
            agent.stop()
        self.verifier.stop()
        for tpm in self.tpms:
            tpm.stop()


@pytest.fixture(scope="session")
def browser_or_skip() -> None:
    reason = browser_unavailable()
    if reason:
        pytest.skip(reason)


@pytest.fixture(scope="session")
def fleet(
    tmp_path_factory: pytest.TempPathFactory, stockade_home: Path, ek_ca: EkCa
) -> Iterator[DashboardFleet]:
    """The verifier and the three starting nodes, settled (two trusted, one failed)."""
    import shutil

    from stockade.boot.platform import DEBIAN_GRUB, DEBIAN_SHIM
    from stockade.demo.cluster import KERNEL_STUB

    missing = [tool for tool in ("swtpm", "swtpm_setup", "sbsign") if not shutil.which(tool)]
    missing += [str(p) for p in (DEBIAN_SHIM, DEBIAN_GRUB, KERNEL_STUB) if not p.exists()]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/bootstrap.sh)")
    work = tmp_path_factory.mktemp("dashboard")
    org = make_org_material(work / "org")
    policy = work / "policy.json"
    policy.write_text(json.dumps(policy_document(org, validity_seconds=RESULT_VALIDITY)))
    verifier = VerifierProcess(work / "verifier", ek_ca_bundle(ek_ca, work / "ek-ca.pem"), policy)
    fleet = DashboardFleet(verifier, org, stockade_home, ek_ca, work)
    try:
        verifier.start()
        for name, tampered in STARTING_NODES.items():
            fleet.start_node(name, tampered=tampered)
        fleet.wait_states({"node-a": "trusted", "node-b": "trusted", "node-c": "failed"})
        yield fleet
    finally:
        fleet.stop()
