"""The cluster-membership CLI as an operator and a node run it: `stockade verifier kek`,
`stockade secrets put|list|grant|revoke|delete|rekey`, `stockade nodes label|status` and
`stockade join`, each a subprocess against a real `stockade verifier serve` (TLS on
127.0.0.1, the real appraisal of a development node's verified boot) and swtpm TPMs.

The contract: with ``--format json`` stdout is exactly one JSON document; errors are one
line on stderr (exit 2 for a refused or unreadable request, exit 1 for a node that is not
trusted); a secret's value appears in no output.
"""

from __future__ import annotations

import base64
import contextlib
import http.server
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import jwt
import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.agent.channel_key import ChannelSigner
from stockade.agent.client import VerifierClient
from stockade.agent.state import AgentState
from stockade.cluster.ca import verify_node_certificate
from stockade.cluster.secret_store import KeyEncryptionKey
from stockade.cluster.status import verify_status
from stockade.demo.cluster import (
    KERNEL_STUB,
    OrgMaterial,
    VerifierProcess,
    ek_ca_bundle,
    make_org_material,
    policy_document,
)
from stockade.evidence.duplication import SealedSecret
from stockade.statements import VerifierKeys
from stockade.tpm.device import Tpm
from stockade.tpm.ekca import EkCa
from stockade.tpm.node_key import load_node_key
from stockade.tpm.swtpm import SoftwareTpm
from support.cli import one_error_line, stockade_command

pytestmark = pytest.mark.swtpm

SECRET = b"s3cr3t-value-that-must-never-be-printed\n\x00\xff"
UPDATED = b"second-version-of-the-secret-also-private"
CONTROLLED = ("STOCKADE_VERIFIER", "STOCKADE_CA", "STOCKADE_OPERATOR_TOKEN", "STOCKADE_KEK",
              "STOCKADE_VERIFIER_KEY")  # fmt: skip


def _require_tools() -> None:
    from stockade.boot.platform import DEBIAN_GRUB, DEBIAN_SHIM

    missing = [tool for tool in ("swtpm", "swtpm_setup", "sbsign") if not shutil.which(tool)]
    missing += [str(p) for p in (DEBIAN_SHIM, DEBIAN_GRUB, KERNEL_STUB) if not p.exists()]
    if missing:
        pytest.skip(f"missing {', '.join(missing)} (scripts/bootstrap.sh)")


def run(
    *args: str,
    env: dict[str, str] | None = None,
    stdin: bytes | None = None,
    process: bool = False,
) -> subprocess.CompletedProcess[str]:
    """``stockade ARGS`` with only the given STOCKADE_* connection variables set.

    In this process through the console entry point (``stockade.cli.main``: the same
    registration, error lines and exit codes, without the second of interpreter and import
    start-up each command costs), or, with ``process=True``, as a real subprocess.
    """
    if process:
        environment = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
        environment.update(env or {})
        done = subprocess.run(
            stockade_command(*args),
            input=stdin,
            capture_output=True,
            env=environment,
            check=False,
        )
        return subprocess.CompletedProcess(
            done.args,
            done.returncode,
            done.stdout.decode(errors="replace"),
            done.stderr.decode(errors="replace"),
        )
    import stockade.cli

    saved = {name: os.environ.pop(name, None) for name in CONTROLLED}
    os.environ.update(env or {})
    out, err = io.StringIO(), io.StringIO()
    argv, real_stdin = sys.argv, sys.stdin
    sys.argv = ["stockade", *args]
    sys.stdin = io.TextIOWrapper(io.BytesIO(stdin or b""))
    code: int | str | None = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            stockade.cli.main()
    except SystemExit as exit_:
        code = exit_.code
    finally:
        sys.argv, sys.stdin = argv, real_stdin
        for name, value in saved.items():
            os.environ.pop(name, None)
            if value is not None:
                os.environ[name] = value
    return subprocess.CompletedProcess(["stockade", *args], int(code or 0), out.getvalue(),
                                       err.getvalue())  # fmt: skip


def one_json(result: subprocess.CompletedProcess[str], code: int = 0) -> Any:
    """Exactly one JSON document on stdout (json.loads refuses trailing data)."""
    assert result.returncode == code, (result.stdout, result.stderr)
    return json.loads(result.stdout)


def no_secret(*results: subprocess.CompletedProcess[str]) -> None:
    for result in results:
        for value in (SECRET, UPDATED):
            for rendering in (value[:24].decode(), base64.b64encode(value).decode()):
                assert rendering not in result.stdout + result.stderr


def kek_file(path: Path) -> Path:
    made = run("verifier", "kek", str(path))
    assert made.returncode == 0, made.stderr
    return path


@dataclass
class Cluster:
    org: OrgMaterial
    verifier: VerifierProcess
    work: Path

    @property
    def token_file(self) -> Path:
        return self.verifier.data_dir / "operator-token"

    @property
    def env(self) -> dict[str, str]:
        """Where the verifier is and its pinned statement key, without the operator token."""
        return {
            "STOCKADE_VERIFIER": self.verifier.url,
            "STOCKADE_CA": str(self.verifier.ca),
            "STOCKADE_VERIFIER_KEY": str(self.verifier.verifier_key),
        }

    @property
    def operator_env(self) -> dict[str, str]:
        token = self.token_file.read_text().strip()
        return {**self.env, "STOCKADE_OPERATOR_TOKEN": token}

    @property
    def reader_env(self) -> dict[str, str]:
        """With the reader token: reads of trust state (finding a node by name)."""
        token = (self.verifier.data_dir / "reader-token").read_text().strip()
        return {**self.env, "STOCKADE_OPERATOR_TOKEN": token}


def start_verifier(
    work: Path, org: OrgMaterial, ek_ca: EkCa, name: str, *kek_args: str
) -> VerifierProcess:
    policy = work / "policy.json"
    if not policy.exists():
        policy.write_text(json.dumps(policy_document(org, validity_seconds=120)))
    verifier = VerifierProcess(
        work / name, ek_ca_bundle(ek_ca, work / "ek-ca.pem"), policy, extra=kek_args
    )
    verifier.start()
    return verifier


@pytest.fixture(scope="module")
def org(tmp_path_factory: pytest.TempPathFactory) -> OrgMaterial:
    _require_tools()
    return make_org_material(tmp_path_factory.mktemp("org"))


@pytest.fixture(scope="module")
def cluster(
    tmp_path_factory: pytest.TempPathFactory, org: OrgMaterial, ek_ca: EkCa
) -> Iterator[Cluster]:
    work = tmp_path_factory.mktemp("cli-membership")
    kek = kek_file(work / "kek")
    verifier = start_verifier(work, org, ek_ca, "verifier", "--kek-file", str(kek))
    try:
        yield Cluster(org, verifier, work)
    finally:
        verifier.stop()


@pytest.fixture
def booted(
    org: OrgMaterial, make_software_tpm: Callable[[], SoftwareTpm]
) -> Callable[[], tuple[SoftwareTpm, Path]]:
    from stockade.boot import DevelopmentPlatform, boot_node, load_release

    platform = DevelopmentPlatform.load(org.platform_dir)
    release = load_release(org.release_dir)

    def make() -> tuple[SoftwareTpm, Path]:
        tpm = make_software_tpm()
        result = boot_node(tpm, platform, release)
        result.check()
        return tpm, result.log_path

    return make


# -- stockade verifier kek -------------------------------------------------------------------


def test_verifier_kek_makes_a_0600_key_and_never_overwrites(tmp_path: Path) -> None:
    path = tmp_path / "kek"
    made = run("verifier", "kek", str(path), process=True)
    assert made.returncode == 0, made.stderr
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    key = KeyEncryptionKey.from_file(path)
    assert key.kek_id in made.stdout
    assert key.to_text() not in made.stdout + made.stderr  # names the key, never shows it
    before = path.read_bytes()
    again = run("verifier", "kek", str(path))
    assert "exists" in one_error_line(again, 2)
    assert path.read_bytes() == before
    assert "No such file" in one_error_line(run("verifier", "kek", str(tmp_path / "a" / "b")), 2)


# -- stockade secrets ------------------------------------------------------------------------


def test_secrets_put_list_grant_revoke_delete(cluster: Cluster, tmp_path: Path) -> None:
    value = tmp_path / "value"
    value.write_bytes(SECRET)
    env = cluster.operator_env
    outputs = []

    put = run("secrets", "put", "cli-db", "--from", str(value), "--format", "json", env=env)
    stored = one_json(put)
    assert stored["name"] == "cli-db" and stored["version"] == 1 and stored["grants"] == []
    from_stdin = run("secrets", "put", "cli-db", "--from", "-", "--format", "json", env=env,
                     stdin=UPDATED, process=True)  # fmt: skip
    assert one_json(from_stdin)["version"] == 2
    text_put = run("secrets", "put", "cli-other", "--from", "-", env=env, stdin=SECRET)
    assert text_put.returncode == 0 and "version 1 stored" in text_put.stdout, text_put.stderr
    outputs += [put, from_stdin, text_put]

    listed = run("secrets", "list", "--format", "json", env=env)
    secrets = {entry["name"]: entry for entry in one_json(listed)["secrets"]}
    assert secrets["cli-db"]["version"] == 2
    assert secrets["cli-db"]["kek_id"] == stored["kek_id"]
    assert set(secrets["cli-db"]) == {"name", "version", "kek_id", "grants", "updated_at"}
    outputs.append(listed)

    # A node grant binds to an enrolled node's id: a name no node holds is 404 ``node``
    # (test_join_label_status_then_tampering grants to an enrolled node by name).
    no_node = run("secrets", "grant", "cli-db", "node:web-1", env=env)
    assert "404 node" in one_error_line(no_node, 2)
    granted = run("secrets", "grant", "cli-db", "label:role=web", "--format", "json", env=env)
    assert one_json(granted) == {"name": "cli-db", "grants": ["label:role=web"]}
    labels = run("secrets", "grant", "cli-db", "label:role=db", "--format", "json", env=env)
    assert one_json(labels)["grants"] == ["label:role=db", "label:role=web"]
    text_grant = run("secrets", "grant", "cli-db", "label:tier=front", env=env)
    assert text_grant.returncode == 0 and "label:tier=front" in text_grant.stdout
    bad_selector = run("secrets", "grant", "cli-db", "everyone", env=env)
    assert "selector" in one_error_line(bad_selector, 2)
    revoked = run("secrets", "revoke", "cli-db", "label:role=web", "--format", "json", env=env)
    assert one_json(revoked)["grants"] == ["label:role=db", "label:tier=front"]
    missing_grant = run("secrets", "revoke", "cli-db", "label:role=web", env=env)
    assert "404" in one_error_line(missing_grant, 2)
    outputs += [no_node, granted, labels, text_grant, revoked]

    table = run("secrets", "list", env=env)
    assert table.returncode == 0 and "cli-db" in table.stdout and "label:role=db" in table.stdout
    deleted = run("secrets", "delete", "cli-other", env=env)
    assert deleted.returncode == 0 and "deleted" in deleted.stdout
    after = one_json(run("secrets", "list", "--format", "json", env=env))
    assert "cli-other" not in {entry["name"] for entry in after["secrets"]}
    assert "cli-other" in one_error_line(run("secrets", "delete", "cli-other", env=env), 2)
    unreadable = run("secrets", "put", "x", "--from", str(tmp_path / "absent"), env=env)
    assert "cannot read the secret value" in one_error_line(unreadable, 2)
    outputs += [table, deleted]
    no_secret(*outputs)


def test_secrets_need_the_operator_token(cluster: Cluster, tmp_path: Path) -> None:
    value = tmp_path / "value"
    value.write_bytes(SECRET)
    wrong = tmp_path / "wrong-token"
    wrong.write_text("x" * 43 + "\n")
    attempts = [
        ("put", "denied", "--from", str(value), "--format", "json"),
        ("list", "--format", "json"),
        ("grant", "denied", "node:web-1", "--format", "json"),
        ("revoke", "denied", "node:web-1", "--format", "json"),
        ("delete", "denied"),
        ("rekey", "--format", "json"),
    ]
    for number, attempt in enumerate(attempts):
        without = run("secrets", *attempt, env=cluster.env, process=number == 0)
        line = one_error_line(without, 2)
        assert "401" in line and "operator token" in line, line
        assert without.stdout == ""
        no_secret(without)
    for attempt in attempts[:2]:
        with_wrong = run("secrets", *attempt, "--token-file", str(wrong), env=cluster.env)
        assert "401" in one_error_line(with_wrong, 2)
        assert with_wrong.stdout == ""
    unreadable = run("secrets", "list", "--token-file", str(tmp_path / "absent"), env=cluster.env)
    assert "operator token" in one_error_line(unreadable, 2)
    # The token file the verifier wrote works as --token-file (the variable is not needed).
    listed = run("secrets", "list", "--format", "json", "--token-file", str(cluster.token_file),
                 env=cluster.env)  # fmt: skip
    assert "denied" not in {entry["name"] for entry in one_json(listed)["secrets"]}


def test_kek_rotation_with_previous_kek_and_rekey(
    org: OrgMaterial, ek_ca: EkCa, tmp_path: Path
) -> None:
    old, new = kek_file(tmp_path / "kek-old"), kek_file(tmp_path / "kek-new")
    old_id, new_id = (KeyEncryptionKey.from_file(path).kek_id for path in (old, new))
    verifier = start_verifier(tmp_path, org, ek_ca, "rotating", "--kek-file", str(old))
    token = (verifier.data_dir / "operator-token").read_text().strip()
    env = {"STOCKADE_VERIFIER": verifier.url, "STOCKADE_CA": str(verifier.ca),
           "STOCKADE_OPERATOR_TOKEN": token}  # fmt: skip
    try:
        put = run("secrets", "put", "rotated", "--from", "-", env=env, stdin=SECRET)
        assert put.returncode == 0, put.stderr
        nothing = one_json(run("secrets", "rekey", "--format", "json", env=env))
        assert nothing == {"rekeyed": 0, "kek_id": old_id}
        verifier.stop()
        verifier.extra = ("--kek-file", str(new), "--previous-kek-file", str(old))
        verifier.start()
        rekeyed = one_json(run("secrets", "rekey", "--format", "json", env=env))
        assert rekeyed == {"rekeyed": 1, "kek_id": new_id}
        text = run("secrets", "rekey", env=env)
        assert text.returncode == 0 and f"0 secrets re-encrypted under KEK {new_id}" in text.stdout
        verifier.stop()
        verifier.extra = ("--kek-file", str(new))  # the old KEK can go
        verifier.start()
        (listed,) = one_json(run("secrets", "list", "--format", "json", env=env))["secrets"]
        assert (listed["name"], listed["kek_id"]) == ("rotated", new_id)
    finally:
        verifier.stop()


# -- stockade join, nodes label, nodes status -------------------------------------------------


def join(cluster: Cluster, tpm: SoftwareTpm, log: Path, name: str, state: Path, *extra: str):
    return run(
        "join", "--name", name, "--tcti", tpm.tcti, "--event-log", str(log),
        "--state-dir", str(state / "agent"), "--out-dir", str(state / "pki"), *extra,
        env=cluster.env,
    )  # fmt: skip


def test_join_label_status_then_tampering(cluster: Cluster, booted, tmp_path: Path) -> None:
    tpm, log = booted()
    joined = one_json(join(cluster, tpm, log, "cli-web-1", tmp_path, "--format", "json"))
    assert joined["joined"] is True
    pki = tmp_path / "pki"
    assert sorted(p.name for p in pki.iterdir()) == ["ca.pem", "node-key.pem", "node.pem"]
    assert (joined["certificate"], joined["key"], joined["ca_bundle"]) == (
        str(pki / "node.pem"), str(pki / "node-key.pem"), str(pki / "ca.pem"),
    )  # fmt: skip
    assert stat.S_IMODE((pki / "node-key.pem").stat().st_mode) == 0o600
    cert = x509.load_pem_x509_certificate((pki / "node.pem").read_bytes())
    (ca,) = x509.load_pem_x509_certificates((pki / "ca.pem").read_bytes())
    assert verify_node_certificate(cert, ca, datetime.now(UTC)) == (
        joined["node_id"], joined["result_id"],
    )  # fmt: skip
    assert cert.public_key() == load_node_key(pki / "node-key.pem").public.public_key()
    # Joining again (text) renews for the same TPM key and the same node.
    key_before = (pki / "node-key.pem").read_bytes()
    again = join(cluster, tpm, log, "cli-web-1", tmp_path)
    assert again.returncode == 0, again.stderr
    assert f"({joined['node_id']}) joined" in again.stdout and "node-key.pem" in again.stdout
    assert (pki / "node-key.pem").read_bytes() == key_before

    # Labels: the operator's (token), and a label grant then releases to the node.
    unlabelled = run("nodes", "label", "cli-web-1", "role=web", env=cluster.env)
    assert "401" in one_error_line(unlabelled, 2)
    labelled = run("nodes", "label", "cli-web-1", "role=web", "tier=front", "--format", "json",
                   env=cluster.operator_env)  # fmt: skip
    node = one_json(labelled)
    assert node["labels"] == {"role": "web", "tier": "front"}
    text = run("nodes", "label", "cli-web-1", "role=web", env=cluster.operator_env)
    assert text.returncode == 0 and "cli-web-1: labels role=web" in text.stdout, text.stderr
    malformed = run("nodes", "label", "cli-web-1", "no-equals-sign", env=cluster.operator_env)
    one_error_line(malformed, 2)
    put = run("secrets", "put", "cli-tls", "--from", "-", env=cluster.operator_env, stdin=SECRET)
    assert put.returncode == 0, put.stderr
    grant = run("secrets", "grant", "cli-tls", "label:role=web", env=cluster.operator_env)
    assert grant.returncode == 0, grant.stderr
    # By name: bound to the id of the node holding the name now.
    by_name = run("secrets", "grant", "cli-tls", "node:cli-web-1", "--format", "json",
                  env=cluster.operator_env)  # fmt: skip
    assert f"node:{joined['node_id']}" in one_json(by_name)["grants"]
    unbound = run("secrets", "revoke", "cli-tls", "node:cli-web-1", env=cluster.operator_env)
    assert unbound.returncode == 0, unbound.stderr
    with VerifierClient(cluster.verifier.url, cluster.verifier.ca) as client:
        client.as_node(
            joined["node_id"],
            ChannelSigner(tpm.tcti, AgentState(tmp_path / "agent").channel_key_path),
        )
        released = client.release_secret(joined["node_id"], "cli-tls")
        keys = VerifierKeys.parse(json.dumps(client.keys()).encode(), "the verifier's keys")
    assert released["granted_by"] == "label:role=web"
    assert SealedSecret.from_json(released["sealed"])

    # Status: signed, checked, exit 0 while trusted.
    by_name = run("nodes", "status", "cli-web-1", "--format", "json", env=cluster.env)
    assert "401 read-token" in one_error_line(by_name, 2)  # a name needs the node list
    status = run("nodes", "status", "cli-web-1", "--format", "json", env=cluster.reader_env)
    document = one_json(status)
    assert document["trusted"] is True and document["verified"] is True
    checked = verify_status(document["statement"], keys, joined["node_id"], datetime.now(UTC))
    assert checked.trusted and checked.name == "cli-web-1"
    shown = run("nodes", "status", joined["node_id"], env=cluster.env)  # by id: no credential
    assert shown.returncode == 0 and "trusted" in shown.stdout, shown.stderr
    assert "signature checked" in shown.stdout
    # The statement is checked only against a pinned key: none pinned is a usage error, and
    # a key other than the verifier's (the keys the answer's server would hand out) fails.
    unpinned = {k: v for k, v in cluster.env.items() if k != "STOCKADE_VERIFIER_KEY"}
    refused_unpinned = run("nodes", "status", joined["node_id"], env=unpinned)
    assert refused_unpinned.returncode == 2 and "--verifier-key" in refused_unpinned.stderr
    other_key = tmp_path / "other-verifier-key.pem"
    other_key.write_bytes(
        VerifierKeys.of(ec.generate_private_key(ec.SECP256R1()).public_key()).pem()
    )
    wrong = run("nodes", "status", joined["node_id"],
                env={**cluster.env, "STOCKADE_VERIFIER_KEY": str(other_key)})  # fmt: skip
    assert wrong.returncode == 1 and "not a pinned verifier key" in wrong.stderr

    # Tampered: join exits 1 with the reasons; status exits 1; one JSON document each.
    with Tpm(tpm.tcti) as device:
        device.extend_pcr(7, b"unexpected runtime measurement")
    refused = join(cluster, tpm, log, "cli-web-1", tmp_path, "--format", "json")
    answer = one_json(refused, 1)
    assert answer["joined"] is False and answer["status"] == "contraindicated"
    line = one_error_line(refused, 1)
    assert "not trusted (contraindicated)" in line and "PCR" in line, line
    assert all(reason in line for reason in answer["reasons"])
    refused_text = join(cluster, tpm, log, "cli-web-1", tmp_path)
    assert "PCR" in one_error_line(refused_text, 1) and refused_text.stdout == ""
    assert (pki / "node.pem").exists()  # the old certificate stays; it expires on its own

    untrusted = run("nodes", "status", "cli-web-1", "--format", "json", env=cluster.reader_env)
    document = one_json(untrusted, 1)
    assert document["trusted"] is False and document["verified"] is True
    assert "contraindicated" in one_error_line(untrusted, 1)
    untrusted_text = run("nodes", "status", "cli-web-1", env=cluster.reader_env)
    assert "not trusted" in untrusted_text.stdout
    assert "not trusted" in one_error_line(untrusted_text, 1)
    no_secret(refused, untrusted, put, grant)


# -- nodes status checks what it is told ------------------------------------------------------


class _Relay(http.server.BaseHTTPRequestHandler):
    """Relays GETs to the real verifier, rewriting the status answer with ``rewrite``."""

    upstream: httpx.Client
    rewrite: Callable[[str, dict[str, Any]], dict[str, Any]]

    def do_GET(self) -> None:
        forwarded = {k: v for k, v in self.headers.items() if k.lower() == "authorization"}
        answer = self.upstream.get(self.path, headers=forwarded)
        status, body = answer.status_code, answer.content
        if self.path.endswith("/status"):
            status, body = 200, json.dumps(self.rewrite(self.path, answer.json())).encode()
        elif self.path == "/v1/nodes":  # and a node the verifier does not know
            nodes = answer.json()["nodes"]
            ghost = {**nodes[0], "node_id": "ghost-node-id", "name": "ghost"}
            body = json.dumps({"nodes": [*nodes, ghost]}).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture
def relay(cluster: Cluster) -> Iterator[Callable[..., str]]:
    servers: list[http.server.ThreadingHTTPServer] = []
    upstream = httpx.Client(
        base_url=cluster.verifier.url, verify=str(cluster.verifier.ca), trust_env=False
    )

    def start(rewrite: Callable[[str, dict[str, Any]], dict[str, Any]]) -> str:
        handler = type("Relay", (_Relay,), {"upstream": upstream, "rewrite": staticmethod(rewrite)})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_address[1]}"

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()
    upstream.close()


def _b64url(document: dict[str, Any]) -> str:
    return base64.urlsafe_b64encode(json.dumps(document).encode()).rstrip(b"=").decode()


def _trusted_node(cluster: Cluster, booted, tmp_path: Path, name: str) -> str:
    tpm, log = booted()
    return str(one_json(join(cluster, tpm, log, name, tmp_path, "--format", "json"))["node_id"])


def test_nodes_status_refuses_a_forged_statement(
    cluster: Cluster, booted, tmp_path: Path, relay
) -> None:
    node_id = _trusted_node(cluster, booted, tmp_path, "cli-status-1")
    trusted = run("nodes", "status", node_id, env=cluster.env)
    assert trusted.returncode == 0, trusted.stderr

    def forge(path: str, answer: dict[str, Any]) -> dict[str, Any]:
        header, payload, signature = answer["statement"].split(".")
        claims = json.loads(base64.urlsafe_b64decode(payload + "=="))
        claims["exp"] += 3600  # a longer life than the verifier granted
        return {**answer, "statement": f"{header}.{_b64url(claims)}.{signature}"}

    pinned = {"STOCKADE_VERIFIER_KEY": str(cluster.verifier.verifier_key)}
    forged = run("nodes", "status", node_id, "--format", "json", "--verifier", relay(forge),
                 env=pinned)  # fmt: skip
    assert "does not verify" in one_error_line(forged, 1)
    assert forged.stdout == ""

    # Whoever holds the channel re-signs the statement and serves its own key at /v1/keys:
    # the CLI never fetches keys, it checks against the pinned one.
    impostor = ec.generate_private_key(ec.SECP256R1())

    def resign(path: str, answer: dict[str, Any]) -> dict[str, Any]:
        if path.endswith("/v1/keys"):
            return {"keys": [{**json.loads(jwt.algorithms.ECAlgorithm.to_jwk(
                impostor.public_key())), "kid": "impostor", "alg": "ES256"}]}  # fmt: skip
        header = jwt.get_unverified_header(answer["statement"])
        claims = jwt.decode(answer["statement"], options={"verify_signature": False})
        statement = jwt.encode(claims, impostor, algorithm="ES256", headers=header)
        return {**answer, "statement": statement}

    resigned = run("nodes", "status", node_id, "--verifier", relay(resign), env=pinned)
    assert "does not verify" in one_error_line(resigned, 1)


def test_nodes_status_binds_the_statement_to_the_node_asked_for(
    cluster: Cluster, booted, tmp_path: Path, relay
) -> None:
    node_id = _trusted_node(cluster, booted, tmp_path, "cli-status-2")

    def substitute(path: str, answer: dict[str, Any]) -> dict[str, Any]:
        return httpx.get(
            f"{cluster.verifier.url}/v1/nodes/{node_id}/status", verify=str(cluster.verifier.ca)
        ).json()

    asked = run("nodes", "status", "ghost", "--verifier", relay(substitute),
                env={**cluster.reader_env})  # fmt: skip
    assert "ghost-node-id" in one_error_line(asked, 1)
