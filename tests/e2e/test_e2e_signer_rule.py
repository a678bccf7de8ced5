"""A new signed release needs no policy edit (issue 18), end to end: a real verifier whose
policy lists only the organization's release 1.0.0, a development node on a swtpm booted
(`stockade boot node --release`) with release 1.1.0 (security version 4, signed by the org
key, listed nowhere), and a real agent. With `--release-envelope` (the envelope `stockade
release sign` writes) the node is trusted and its result records 1.1.0; the same node's agent
without it fails closed; with the envelope of another signed release than it booted it is
refused as well."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from stockade.demo.cluster import AgentProcess
from support.cli import run_stockade
from support.rollout_fixtures import RolloutKit, Stand, build_signed_release, listed_nodes

pytestmark = pytest.mark.tools

VERSION = "1.1.0"
SECURITY_VERSION = 4


def wait_state(stand: Stand, agent: AgentProcess, state: str, what: str) -> None:
    """Wait until the node is ``state`` with a result newer than any seen now."""

    def node() -> dict[str, Any] | None:
        return listed_nodes(stand.verifier).get(agent.name)

    before = (node() or {}).get("latest_result_id")

    def reached() -> bool:
        found = node()
        return (
            found is not None
            and found["state"] == state
            and found.get("latest_result_id") != before
        )

    stand.wait(reached, 60, what, shown=node, last=8)


def test_an_unlisted_signed_release_is_trusted_with_its_envelope(
    rollout: RolloutKit, tmp_path: Path
) -> None:
    org = rollout.org
    # Release 1.1.0 (the org's signed kernel, a new initrd and /usr), built and signed as
    # `stockade release build` / `sign` do.
    release = build_signed_release(org, tmp_path / "next", VERSION, SECURITY_VERSION)
    envelope = release.write_envelope()
    policy, document = rollout.policy_file(tmp_path / "policy.json", 60)
    assert document["releases"]["manifests"] == [org.envelope]  # 1.0.0 only
    with rollout.serving(tmp_path / "verifier", policy) as stand:
        tpm = rollout.make_tpm()

        def agent(*extra: str) -> AgentProcess:
            state_dir = tmp_path / "agents" / "unlisted"
            return stand.start_agent("unlisted", tpm.name, state_dir, *extra)

        booted = run_stockade(
            "boot", "node", "--platform", str(org.platform_dir),
            "--release", str(release.directory), "--tpm", tpm.name, "--home", str(rollout.home),
        )  # fmt: skip
        assert booted.returncode == 0, booted.stderr

        with_envelope = agent("--release-envelope", str(envelope))
        wait_state(stand, with_envelope, "trusted", "trusted with its release envelope")
        node = listed_nodes(stand.verifier)["unlisted"]
        assert node["release"] == {
            "name": "stockade-os", "version": VERSION, "security_version": SECURITY_VERSION,
            "digest": release.digest,
        }  # fmt: skip
        with_envelope.stop()

        # The same node, its agent without the envelope: nothing names the release.
        without = agent()
        wait_state(stand, without, "failed", "failed without its release envelope")
        with stand.verifier.client() as api:
            latest = api.results("unlisted")[0]
        assert latest["status"] == "contraindicated"
        assert latest["release"] is None
        without.stop()

        # The envelope of another genuinely signed release (1.0.0, listed) than it booted.
        other = tmp_path / "other.dsse.json"
        other.write_text(json.dumps(org.envelope))
        mismatched = agent("--release-envelope", str(other))
        wait_state(stand, mismatched, "failed", "failed with another release's envelope")
        with stand.verifier.client() as api:
            latest = api.results("unlisted")[0]
        assert any(
            "is not the release the quoted boot measured into PCR 12" in reason
            for reason in latest["reasons"]
        ), latest["reasons"]
