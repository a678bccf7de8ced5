"""A new signed release needs no policy edit (issue 18), end to end: a real verifier whose
policy lists only the organization's release 1.0.0, a development node on a swtpm booted
(`stockade boot node --release`) with release 1.1.0 (security version 4, signed by the org
key, listed nowhere), and a real agent. With `--release-envelope` (the envelope `stockade
release sign` writes) the node is trusted and its result records 1.1.0; the same node's agent
without it fails closed; with the envelope of another signed release than it booted it is
refused as well."""

from __future__ import annotations

import json
import os
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from stockade.demo.cluster import (
    CMDLINE,
    AgentProcess,
    ClusterError,
    OrgMaterial,
    VerifierProcess,
    policy_document,
    wait_for,
)
from stockade.release.manifest import manifest_digest
from support.cli import run_stockade

pytestmark = pytest.mark.tools

VERSION = "1.1.0"
SECURITY_VERSION = 4


def build_unlisted_release(org: OrgMaterial, directory: Path) -> tuple[Path, Path, str]:
    """Release 1.1.0 (the org's signed kernel, a new initrd and /usr), built and signed as
    `stockade release build` / `sign` do: its directory, its envelope file and its digest."""
    from stockade.release.build import ReleaseInputs, build_release
    from stockade.release.keys import load_signing_key
    from stockade.release.manifest import sign_manifest

    material = org.release_dir.parent
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "initrd.in").write_bytes(os.urandom(20000))
    (directory / "usr.in").write_bytes(os.urandom(5 * 4096))
    release_dir = directory / "release"
    manifest = build_release(
        ReleaseInputs(
            "stockade-os", VERSION, SECURITY_VERSION, material / "vmlinuz.signed",
            directory / "initrd.in", CMDLINE, directory / "usr.in",
        ),
        release_dir,
        datetime.now(UTC),
    )  # fmt: skip
    org_key = load_signing_key((material / "keys" / "org.key").read_bytes())
    envelope = release_dir / "manifest.dsse.json"
    envelope.write_bytes(sign_manifest(manifest, [org_key]).to_bytes())
    return release_dir, envelope, manifest_digest(manifest).hex()


def nodes(verifier: VerifierProcess) -> dict[str, dict[str, Any]]:
    result = run_stockade(
        "nodes", "list", "--verifier", verifier.url, "--ca", str(verifier.ca),
        "--token-file", str(verifier.reader_token_file), "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {node["name"]: node for node in json.loads(result.stdout)["nodes"]}


def wait_state(verifier: VerifierProcess, agent: AgentProcess, state: str, what: str) -> None:
    """Wait until the node is ``state`` with a result newer than any seen now."""
    before = nodes(verifier).get(agent.name, {}).get("latest_result_id")

    def reached() -> bool:
        node = nodes(verifier).get(agent.name)
        return (
            node is not None and node["state"] == state and node.get("latest_result_id") != before
        )

    try:
        wait_for(reached, 60, what)
    except ClusterError:
        raise AssertionError(
            f"{nodes(verifier).get(agent.name)}\n{agent.lines()[-8:]}\n{verifier.tail()}"
        ) from None


def test_an_unlisted_signed_release_is_trusted_with_its_envelope(
    org: OrgMaterial,
    make_module_tpm: Any,
    tmp_path: Path,
    ek_ca_file: Path,
    database_url: str | None,
    stockade_home: Path,
) -> None:
    release_dir, envelope, digest = build_unlisted_release(org, tmp_path / "next")
    document = policy_document(org, validity_seconds=60)
    assert document["releases"]["manifests"] == [org.envelope]  # 1.0.0 only
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps(document))
    verifier = VerifierProcess(tmp_path / "verifier", ek_ca_file, policy, database=database_url)
    verifier.start()
    agents: list[AgentProcess] = []

    def agent(*extra: str) -> AgentProcess:
        started = AgentProcess(
            "unlisted", tpm.name, verifier, stockade_home, tmp_path / "agents" / "unlisted",
            extra=extra,
        )  # fmt: skip
        started.start()
        agents.append(started)
        return started

    try:
        tpm = make_module_tpm()
        booted = run_stockade(
            "boot", "node", "--platform", str(org.platform_dir), "--release", str(release_dir),
            "--tpm", tpm.name, "--home", str(stockade_home),
        )  # fmt: skip
        assert booted.returncode == 0, booted.stderr

        with_envelope = agent("--release-envelope", str(envelope))
        wait_state(verifier, with_envelope, "trusted", "trusted with its release envelope")
        node = nodes(verifier)["unlisted"]
        assert node["release"] == {
            "name": "stockade-os", "version": VERSION, "security_version": SECURITY_VERSION,
            "digest": digest,
        }  # fmt: skip
        with_envelope.stop()

        # The same node, its agent without the envelope: nothing names the release.
        without = agent()
        wait_state(verifier, without, "failed", "failed without its release envelope")
        with verifier.client() as api:
            latest = api.results("unlisted")[0]
        assert latest["status"] == "contraindicated"
        assert latest["release"] is None
        without.stop()

        # The envelope of another genuinely signed release (1.0.0, listed) than it booted.
        other = tmp_path / "other.dsse.json"
        other.write_text(json.dumps(org.envelope))
        mismatched = agent("--release-envelope", str(other))
        wait_state(verifier, mismatched, "failed", "failed with another release's envelope")
        with verifier.client() as api:
            latest = api.results("unlisted")[0]
        assert any(
            "is not the release the quoted boot measured into PCR 12" in reason
            for reason in latest["reasons"]
        ), latest["reasons"]
    finally:
        for started in agents:
            started.stop()
        verifier.stop()
