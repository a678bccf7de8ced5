"""The demo's container story, with real processes: an organization signs an image
(cosign-style, in an OCI layout) and a trust policy; a trusted development node runs the
signed image with ``stockade run`` (umoci + runc, the Stockade OCI hook measuring the start
into PCR 13 and the execution log), an unsigned image is refused before it runs, the agent's
next attestation carries the log, and ``stockade audit executions`` lists what ran, each entry
checked against the quote that proved it. Finally the node runs a properly signed image the
verifier's policy forbids, and becomes contraindicated.

The end-to-end tests run this same story and check its outcome.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from rich.console import Console

from stockade.demo.cluster import (
    QUOTED_PCRS,
    STORY_INTERVAL,
    AgentProcess,
    ClusterError,
    ClusterStoryFailed,
    VerifierProcess,
    ek_ca_bundle,
    make_org_material,
    policy_document,
    stockade_executable,
    wait_for,
)

APP = "registry.example/org/app"
MINER = "registry.example/org/miner"
TAG = "v1"
VALIDITY = 30
PROGRAM = r"""
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  const char *text = "hello from a signed container\n";
  write(1, text, strlen(text));
  if (argc >= 2) {
    int fd = open(argv[1], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0 || write(fd, "ran\n", 4) != 4) return 3;
    close(fd);
  }
  return 0;
}
"""


@dataclass
class ContainersOutcome:
    ran: bool = False
    refused_stderr: str = ""
    audit: list[dict[str, Any]] = field(default_factory=list)
    forbidden_reasons: list[str] = field(default_factory=list)


def _tool(*command: str | Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(
        [str(c) for c in command], capture_output=True, text=True, check=False, timeout=120
    )
    if done.returncode != 0:
        raise ClusterError(f"{Path(str(command[0])).name} failed: {done.stderr.strip()[-300:]}")
    return done


def build_image(directory: Path) -> Path:
    """An OCI layout (umoci) holding one static program, tagged v1: small and offline."""
    directory.mkdir(parents=True, exist_ok=True)
    source = directory / "hello.c"
    source.write_text(PROGRAM)
    binary = directory / "hello"
    _tool("gcc", "-static", "-Os", "-s", "-o", binary, source)
    layout = directory / "layout"
    _tool("umoci", "init", "--layout", layout)
    _tool("umoci", "new", "--image", f"{layout}:{TAG}")
    _tool("umoci", "insert", "--image", f"{layout}:{TAG}", binary, "/hello")
    _tool("umoci", "config", "--image", f"{layout}:{TAG}", "--config.cmd", "/hello")
    return layout


def containers_story(
    console: Console, home: Path, database: str | None = None
) -> ContainersOutcome:
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.boot import DevelopmentPlatform, boot_node, load_release
    from stockade.images import ImageLayout, sign_image, sign_trust_policy
    from stockade.release.keys import load_signing_key, public_pem
    from stockade.tpm.ekca import EkCa
    from stockade.tpm.swtpm import EXECUTION_LOG_NAME, SoftwareTpm, start_swtpm

    started = time.monotonic()
    work = home / "containers"
    work.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]Signed containers, measured into PCR 13, audited from quotes")
    outcome = ContainersOutcome()
    org = make_org_material(work / "org")
    org_key = load_signing_key((work / "org" / "keys" / "org.key").read_bytes())
    org_pub = work / "org.pub"
    org_pub.write_text(org.org_pub)
    ci_key = ec.generate_private_key(ec.SECP256R1())
    trust = {
        "version": 1,
        "keys": {"ci": public_pem(ci_key.public_key()).decode()},
        "scopes": [{"prefix": "registry.example/org", "keys": ["ci"]}],
    }
    trust_file = work / "trust-policy.dsse.json"
    trust_file.write_bytes(sign_trust_policy(trust, org_key))
    signed = build_image(work / "image")
    sign_image(ImageLayout.open(signed), TAG, APP, ci_key)
    unsigned = work / "unsigned"
    shutil.copytree(work / "image" / "layout", unsigned, dirs_exist_ok=True)
    for tag in ImageLayout.open(unsigned).tags():
        if tag.endswith(".sig"):
            _tool("umoci", "rm", "--image", f"{unsigned}:{tag}")
    miner = work / "miner"
    shutil.copytree(work / "image" / "layout", miner, dirs_exist_ok=True)
    sign_image(ImageLayout.open(miner), TAG, MINER, ci_key)
    console.print(
        f"1. the organization signs a trust policy (key 'ci' may sign registry.example/org/*) "
        f"and, with key 'ci', the image {APP}:{TAG} (cosign simple-signing payload, tag "
        "sha256-<digest>.sig in the OCI layout); a copy without the signature is unsigned"
    )
    document = policy_document(org, validity_seconds=VALIDITY)
    document["pcrs"] = QUOTED_PCRS + ",13"
    document["executions"] = {"forbid": {"references": [MINER]}}
    policy = work / "policy.json"
    policy.write_text(json.dumps(document))
    ek_ca = EkCa.load_or_create(home / "ek-ca")
    verifier = VerifierProcess(
        work / "verifier", ek_ca_bundle(ek_ca, work / "ek-ca.pem"), policy, database=database
    )
    tpms: list[SoftwareTpm] = []
    agent: AgentProcess | None = None
    out = work / "out"
    out.mkdir()
    try:
        verifier.start()
        tpm = start_swtpm("containers-node", home=home, ek_ca=ek_ca)
        tpms.append(tpm)
        boot_node(
            tpm, DevelopmentPlatform.load(org.platform_dir), load_release(org.release_dir)
        ).check()
        agent = AgentProcess(
            "node-a", tpm.name, verifier, home, work / "agents" / "node-a",
            interval=STORY_INTERVAL,
        )  # fmt: skip
        agent.start()
        with verifier.client() as client:

            def trusted() -> bool:
                return any(
                    n["name"] == "node-a" and n["state"] == "trusted" for n in client.nodes()
                )

            wait_for(trusted, 45, "node-a trusted")
        console.print(
            f"2. {time.monotonic() - started:4.1f}s verifier (policy quotes PCR 13 and forbids "
            f"{MINER}) and node-a (verified boot, agent attesting every "
            f"{STORY_INTERVAL:.0f} s): [green]trusted[/]"
        )

        def run(layout: Path, reference: str, name: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [
                    stockade_executable(), "run", f"{layout}:{TAG}", "--reference", reference,
                    "--tpm", tpm.name, "--policy", str(trust_file), "--org-key", str(org_pub),
                    "--mount", f"{out}:/out", "--name", name, "--", "/hello", f"/out/{name}",
                ],
                capture_output=True, text=True, check=False, timeout=120,
                env={**_environment(home)},
            )  # fmt: skip

        good = run(signed, APP, "web-1")
        outcome.ran = good.returncode == 0 and (out / "web-1").exists()
        if not outcome.ran:
            raise ClusterStoryFailed(f"the signed image did not run: {good.stderr.strip()}")
        console.print(
            f"3. `stockade run {APP}:{TAG}`: the hook verified the signature against the "
            "trust policy, extended PCR 13 and appended the record (fsync) before runc started "
            f"it: [green]{good.stdout.strip()}[/]"
        )
        bad = run(unsigned, APP, "web-2")
        outcome.refused_stderr = bad.stderr
        if bad.returncode == 0 or (out / "web-2").exists():
            raise ClusterStoryFailed("the unsigned image ran")
        console.print(
            f"4. the unsigned copy: [red]refused[/] (exit {bad.returncode}), it never ran: "
            f"{bad.stderr.strip().splitlines()[-1][:150]}",
            overflow="ellipsis",
            no_wrap=True,
        )
        log = tpm.instance_dir / EXECUTION_LOG_NAME
        console.print(
            f"   node-a's execution log {log.name}: {log.stat().st_size} bytes of CEL records "
            "(content type 0xC5), PCR 13 extended in every bank"
        )

        audit: list[dict[str, Any]] = []

        def audited() -> bool:
            done = _audit(home, verifier, "node-a")
            audit[:] = done.get("executions", [])
            return any(e["kind"] == "container-start" for e in audit)

        wait_for(audited, 30, "the execution to reach the verifier")
        outcome.audit = audit
        if not all(entry.get("proof_verified") for entry in audit):
            raise ClusterStoryFailed(f"an execution is not proven by its quote: {audit}")
        table = subprocess.run(
            [stockade_executable(), "audit", "executions", "--node", "node-a",
             "--verifier", verifier.url, "--ca", str(verifier.ca),
             "--token-file", str(verifier.reader_token_file),
             "--verifier-key", str(verifier.verifier_key)],
            capture_output=True, text=True, check=False, env={**_environment(home)},
        )  # fmt: skip
        console.print(
            "5. the agent's next attestation carried the new records; `stockade audit "
            "executions --node node-a` (each proof checked on this side against the pinned "
            "verifier key: the result's EAR names the node, AK and quote; the AK's signature "
            "over the quoted PCRs, PCR 13 replayed from the log, the record in it):"
        )
        console.print(table.stdout.rstrip(), highlight=False)

        forbidden = run(miner, MINER, "miner-1")
        if forbidden.returncode != 0:
            raise ClusterStoryFailed(f"the signed miner image did not run: {forbidden.stderr}")
        with verifier.client() as client:

            def failed() -> Any:
                node = client.node("node-a")
                return node if node["state"] == "failed" else None

            wait_for(failed, 30, "node-a contraindicated for the forbidden image")
            outcome.forbidden_reasons = list(client.results("node-a", limit=1)[0]["reasons"])
        reason = next((r for r in outcome.forbidden_reasons if "forbidden" in r), "")
        if not reason:
            raise ClusterStoryFailed(f"no forbidden-image reason: {outcome.forbidden_reasons}")
        console.print(
            f"6. node-a runs {MINER}:{TAG}: validly signed, so the hook lets it start, but the "
            f"verifier's policy forbids it: node-a [red]failed[/]: {reason}"
        )
        console.print(f"   ({time.monotonic() - started:.0f} s for this story)")
    except (ClusterError, OSError) as error:
        raise ClusterStoryFailed(f"the container story failed: {error}") from error
    finally:
        if agent is not None:
            agent.stop()
        verifier.stop()
        for started_tpm in tpms:
            with contextlib.suppress(Exception):
                started_tpm.stop()
    return outcome


def _environment(home: Path) -> dict[str, str]:
    import os

    return {**os.environ, "STOCKADE_HOME": str(home), "COLUMNS": "150"}


def _audit(home: Path, verifier: VerifierProcess, node: str) -> dict[str, Any]:
    done = subprocess.run(
        [stockade_executable(), "audit", "executions", "--node", node, "--verifier",
         verifier.url, "--ca", str(verifier.ca), "--token-file", str(verifier.reader_token_file),
         "--verifier-key", str(verifier.verifier_key), "--format", "json"],
        capture_output=True, text=True, check=False, env=_environment(home),
    )  # fmt: skip
    if done.returncode not in (0, 1) or not done.stdout.strip():
        return {}
    document: dict[str, Any] = json.loads(done.stdout)
    return document
