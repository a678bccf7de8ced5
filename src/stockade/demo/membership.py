"""The demo's cluster-membership story, with real processes: a verifier holding a secret, a
trusted node that joins (a certificate for a key that lives only in its TPM) and receives the
secret sealed to its TPM, a tampered node refused both, and then the trusted node compromised
at runtime: its next attestation fails, its certificate is not renewed, the verifier releases
nothing more and its own TPM refuses to unseal the copy it already holds.

The end-to-end tests run this same story and check its outcome.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import json
import os
import shutil
import subprocess
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from cryptography import x509
from rich.console import Console

from stockade.demo.cluster import (
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

SECRET_NAME = "db-password"
VALIDITY = 8  # seconds a result (and so a node certificate) stays valid in the story
SHM = Path("/dev/shm")


@dataclass
class MembershipOutcome:
    """What the story produced, for the tests to check again."""

    secret: bytes
    log_files: list[Path] = field(default_factory=list)
    joined_certificate: Path | None = None
    refused_join_stderr: str = ""


def _run(command: list[str], log: Path) -> subprocess.CompletedProcess[str]:
    done = subprocess.run(command, capture_output=True, text=True, check=False, timeout=60)
    with log.open("a") as handle:
        handle.write(f"$ {' '.join(command)}\n{done.stdout}{done.stderr}(exit {done.returncode})\n")
    return done


def _channel_signer(state_dir: Path, tcti: str) -> Any:
    """Sign as the node whose agent state is ``state_dir``: its channel key, in its TPM."""
    from stockade.agent.channel_key import ChannelSigner
    from stockade.agent.state import AgentState

    return ChannelSigner(tcti, AgentState(state_dir).channel_key_path)


def _selection_text(selection: Mapping[str, tuple[int, ...]]) -> str:
    return "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in selection.items())


def _leaks(secret: bytes, files: list[Path]) -> list[str]:
    needles = [secret, secret.hex().encode(), base64.b64encode(secret)]
    found = []
    for path in files:
        with contextlib.suppress(OSError):
            data = path.read_bytes()
            if any(needle in data for needle in needles):
                found.append(str(path))
    return found


def membership_story(
    console: Console, home: Path, database: str | None = None
) -> MembershipOutcome:
    from stockade.agent.membership import Membership
    from stockade.agent.state import AgentState
    from stockade.boot import DevelopmentPlatform, boot_node, load_release
    from stockade.cluster.ca import verify_node_certificate
    from stockade.cluster.secret_store import KeyEncryptionKey
    from stockade.cluster.status import verify_status
    from stockade.evidence.duplication import SealedSecret
    from stockade.statements import StatementInvalid, VerifierKeys, verify_secret_release
    from stockade.tpm.device import Tpm
    from stockade.tpm.ekca import EkCa
    from stockade.tpm.sealed import SecretRefused, unseal_secret
    from stockade.tpm.swtpm import SoftwareTpm, start_swtpm
    from stockade.verifier_client import VerifierClient, VerifierRefused

    started = time.monotonic()
    work = home / "membership"
    work.mkdir(parents=True, exist_ok=True)
    console.rule("[bold]Cluster membership: node certificates and secrets, only for attested nodes")
    org = make_org_material(work / "org")
    policy = work / "policy.json"
    policy.write_text(json.dumps(policy_document(org, validity_seconds=VALIDITY)))
    kek = KeyEncryptionKey.generate()
    kek_file = work / "kek"
    kek_file.write_text(kek.to_text() + "\n")
    kek_file.chmod(0o600)
    ek_ca = EkCa.load_or_create(home / "ek-ca")
    verifier = VerifierProcess(
        work / "verifier",
        ek_ca_bundle(ek_ca, work / "ek-ca.pem"),
        policy,
        database=database,
        extra=("--kek-file", str(kek_file)),
    )
    secrets_dir = SHM / f"stockade-demo-{os.getpid()}" / "node-a"
    commands_log = work / "commands.log"
    secret = b"s3cret-" + os.urandom(12).hex().encode()
    outcome = MembershipOutcome(secret)
    tpms: list[SoftwareTpm] = []
    agent: AgentProcess | None = None

    def at() -> str:
        return f"[dim]{time.monotonic() - started:5.1f}s[/]"

    try:
        verifier.start()
        token = (verifier.data_dir / "operator-token").read_text().strip()
        with VerifierClient(verifier.url, verifier.ca, operator_token=token) as operator:
            stored = operator.put_secret(SECRET_NAME, secret)
        console.print(
            f"1. verifier at [cyan]{verifier.url}[/]; the operator stores secret "
            f"[bold]{SECRET_NAME}[/] (version {stored['version']}, AES-256-GCM under KEK "
            f"{stored['kek_id']})"
        )
        platform = DevelopmentPlatform.load(org.platform_dir)
        tpm_a = start_swtpm("member-node-a", home=home, ek_ca=ek_ca)
        tpms.append(tpm_a)
        boot_node(tpm_a, platform, load_release(org.release_dir)).check()
        tpm_c = start_swtpm("member-node-c", home=home, ek_ca=ek_ca)
        tpms.append(tpm_c)
        boot_node(
            tpm_c,
            platform.with_secure_boot(False),
            load_release(org.release_dir, kernel=org.modified_kernel),
        ).check()
        console.print(
            f"2. {at()} node-a booted the signed release with Secure Boot; node-c booted the "
            "modified kernel with Secure Boot off"
        )

        def join(name: str, tpm: SoftwareTpm) -> subprocess.CompletedProcess[str]:
            return _run(
                [
                    stockade_executable(), "join", "--name", name, "--verifier", verifier.url,
                    "--ca", str(verifier.ca), "--tpm", tpm.name, "--home", str(home),
                    "--state-dir", str(work / "agents" / name), "--format", "json",
                ],
                commands_log,
            )  # fmt: skip

        joined = join("node-a", tpm_a)
        if joined.returncode != 0:
            raise ClusterStoryFailed(f"node-a could not join: {joined.stderr.strip()}")
        answer = json.loads(joined.stdout)
        certificate = x509.load_pem_x509_certificate(Path(answer["certificate"]).read_bytes())
        bundle = x509.load_pem_x509_certificate(Path(answer["ca_bundle"]).read_bytes())
        node_id, result_id = verify_node_certificate(certificate, bundle, datetime.now(UTC))
        outcome.joined_certificate = Path(answer["certificate"])
        left = certificate.not_valid_after_utc - datetime.now(UTC)
        console.print(
            f"3. {at()} `stockade join` on node-a: attested [green]affirming[/], then TPM2_Certify "
            f"by its AK proved a new key resident in its TPM; certificate "
            f"{certificate.subject.rfc4514_string()} serial {answer['serial'][:12]}..., expiring "
            f"with its result in {left.total_seconds():.0f} s (result {result_id[:8]})"
        )
        console.print(
            f"   key file {Path(answer['key']).name} is a TSS2 PRIVATE KEY: only this TPM can "
            "load it (tpm2-openssl; docs/tpm-tls-client.md)"
        )
        refused = join("node-c", tpm_c)
        outcome.refused_join_stderr = refused.stderr
        if refused.returncode != 1 or "PCR 4" not in refused.stderr:
            raise ClusterStoryFailed(
                f"node-c's join was not refused with reasons (exit {refused.returncode}): "
                f"{refused.stderr.strip()}"
            )
        reason = refused.stderr.strip().split(": ", 2)[-1]
        console.print(
            f"4. {at()} `stockade join` on node-c: [red]exit 1[/], no certificate: "
            f"{reason[:150]}...",
            overflow="ellipsis",
            no_wrap=True,
        )
        node_c = json.loads(refused.stdout)["node_id"]
        with VerifierClient(verifier.url, verifier.ca, operator_token=token) as operator:
            grants = [
                operator.grant(SECRET_NAME, f"node:{name}")["grants"]
                for name in ("node-a", "node-c")
            ][-1]
        console.print(
            f"   the operator grants {SECRET_NAME} to node-a and node-c, bound to their node ids "
            f"({', '.join(grants)}): a node taking either name later gets nothing"
        )
        with verifier.client() as client:
            # Asked as node-c itself: signed with its channel key, in its TPM.
            client.as_node(node_c, _channel_signer(work / "agents" / "node-c", tpm_c.tcti))
            try:
                client.release_secret(node_c, SECRET_NAME)
            except VerifierRefused as error:
                console.print(
                    f"   node-c asks for {SECRET_NAME} (granted to it): [red]{error.status} "
                    f"{error.code}[/], nothing released"
                )
            else:
                raise ClusterStoryFailed("the tampered node-c received the secret")

        agent = AgentProcess(
            "node-a", tpm_a.name, verifier, home, work / "agents" / "node-a",
            interval=STORY_INTERVAL,
            extra=("--certificates", "--secret", SECRET_NAME, "--secrets-dir", str(secrets_dir)),
        )  # fmt: skip
        agent.start()
        delivered = secrets_dir / SECRET_NAME
        wait_for(delivered.exists, 30, f"{SECRET_NAME} delivered to node-a")
        mode = delivered.stat().st_mode & 0o777
        same = hashlib.sha256(delivered.read_bytes()).digest() == hashlib.sha256(secret).digest()
        if mode != 0o600 or not same:
            raise ClusterStoryFailed(f"the delivered secret is wrong (mode {mode:o}, same {same})")
        console.print(
            f"5. {at()} node-a's agent (`--certificates --secret {SECRET_NAME}`): the verifier "
            "sealed the secret to node-a's EK, its channel key and the PCR values it just "
            "attested (TPM2_Import blob, PolicySigned + PolicyPCR + PolicyCommandCode(Unseal)); "
            "the TPM unsealed it into "
            f"{delivered} (tmpfs, mode 0600, sha256 equal to the stored secret)"
        )
        state_a = AgentState(work / "agents" / "node-a")
        pinned = VerifierKeys.load(state_a.verifier_keys_path)
        kept_release = Membership(state_a.directory, tpm_a.tcti)

        def verified_release() -> Any:
            """The kept statement checked against the kept blob (None while the agent is
            between writing the one and the other for its next release)."""
            try:
                return verify_secret_release(
                    kept_release.release_path(SECRET_NAME).read_text().strip(),
                    pinned,
                    node_id=node_id,
                    name=SECRET_NAME,
                    sealed=kept_release.sealed_path(SECRET_NAME).read_bytes(),
                    now=datetime.now(UTC),
                )
            except StatementInvalid:
                return None

        release = wait_for(verified_release, 10, "node-a's release statement to verify")
        console.print(
            f"   the agent kept the blob only under the verifier's signed release statement "
            f"(version {release.version}, for node-a and exactly this blob, sealed to PCRs "
            f"{_selection_text(release.pcr_selection)}), checked with the key pinned when "
            f"node-a joined (kid {next(iter(pinned.keys))[:16]}...): a blob anyone seals to "
            "node-a's public EK is refused"
        )
        with verifier.client() as client:
            status = client.node_status("node-a")
            checked = verify_status(
                str(status["statement"]),
                VerifierKeys.load(verifier.verifier_key),
                node_id,
                datetime.now(UTC),
            )
        console.print(
            f"   relying parties: GET /v1/nodes/node-a/status, a signed statement valid until "
            f"{checked.expires_at:%H:%M:%S}, checked under the pinned verifier key: "
            f"trusted={checked.trusted}"
        )

        pki = work / "agents" / "node-a" / "pki" / "node.pem"
        wait_for(pki.exists, 20, "node-a's renewed certificate")
        membership = Membership(work / "agents" / "node-a", tpm_a.tcti)
        # What malware on node-a would keep: the sealed copy (the agent deletes its own).
        kept = SealedSecret.unmarshal(membership.sealed_path(SECRET_NAME).read_bytes())
        with Tpm(tpm_a.tcti) as tpm:
            tpm.extend_pcr(9, b"an unexpected runtime measurement")
        console.print(
            f"6. {at()} node-a is [red]compromised at runtime[/]: an unexpected measurement is "
            "extended into PCR 9, one of its policy PCRs"
        )
        with verifier.client() as client:

            def failed() -> Any:
                node = client.node("node-a")
                return node if node["state"] == "failed" else None

            wait_for(failed, 30, "node-a failed")
            reasons = client.results("node-a", limit=1)[0]["reasons"]
        console.print(f"   {at()} its next attestation: [red]failed[/]: {reasons[0]}")
        wait_for(lambda: not delivered.exists(), 15, "the agent to withdraw the delivered secret")
        console.print(f"   the agent withdrew {delivered}")
        serial_after_failure = pki.read_bytes()
        time.sleep(3 * STORY_INTERVAL)
        if pki.read_bytes() != serial_after_failure:
            raise ClusterStoryFailed("node-a's certificate was renewed after it failed")
        expiry = x509.load_pem_x509_certificate(pki.read_bytes()).not_valid_after_utc
        console.print(
            f"   its certificate is not renewed: the last one expires at {expiry:%H:%M:%S} UTC"
        )
        # The agent stops before this story uses node-a's TPM itself: a software TPM has no
        # resource manager, so its objects and ours would compete for the TPM's few transient
        # slots (TPM_RC_OBJECT_MEMORY).
        agent.stop()
        with verifier.client() as client:
            client.as_node(node_id, _channel_signer(work / "agents" / "node-a", tpm_a.tcti))
            try:
                client.release_secret(node_id, SECRET_NAME)
            except VerifierRefused as error:
                console.print(f"   the verifier releases nothing: {error.status} {error.code}")
            else:
                raise ClusterStoryFailed("the compromised node-a received the secret again")
        try:
            with Tpm(tpm_a.tcti) as tpm:
                unseal_secret(tpm, membership.ek_kind(), kept, membership.channel_key())
        except SecretRefused as error:
            console.print(
                f"   and a sealed copy kept on node-a: [red]its own TPM refuses[/] to unseal it "
                f"({error.step}: TPM response 0x{error.response_code:x})"
            )
        else:
            raise ClusterStoryFailed("node-a's TPM unsealed the secret after its PCRs changed")
        verifier.stop()
        outcome.log_files = [
            verifier.log_path,
            agent.log_path,
            commands_log,
            *sorted((work / "verifier").glob("*.log")),
        ]
        leaked = _leaks(secret, outcome.log_files)
        if leaked:
            raise ClusterStoryFailed(f"the secret appears in {', '.join(leaked)}")
        console.print(
            f"7. the secret's bytes (raw, hex or base64) appear in none of the "
            f"{len(outcome.log_files)} logs ({time.monotonic() - started:.0f} s for this story)"
        )
    except (ClusterError, OSError) as error:
        raise ClusterStoryFailed(f"the membership story failed: {error}") from error
    finally:
        if agent is not None:
            agent.stop()
        verifier.stop()
        for software_tpm in tpms:
            with contextlib.suppress(Exception):
                software_tpm.stop()
        shutil.rmtree(secrets_dir.parent, ignore_errors=True)
    return outcome
