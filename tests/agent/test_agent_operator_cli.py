"""The operator CLI (nodes, results, policy) against a stand-in verifier on 127.0.0.1:
one JSON document with --format json, the EAR decoded and its signature checked, exit 2
with one line when the verifier is unreachable. The stand-in refuses reads without the reader
(or operator) token and changes without the operator token, as the verifier does."""

from __future__ import annotations

import http.server
import json
import os
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import ClassVar

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.statements import VerifierKeys
from support.cli import run_stockade

KEY = ec.generate_private_key(ec.SECP256R1())
KID = next(iter(VerifierKeys.of(KEY.public_key()).keys))
IMPOSTOR = ec.generate_private_key(ec.SECP256R1())
READER = "reader-token-for-the-cli-tests"
OPERATOR = "operator-token-for-the-cli-tests"
NODE = {"node_id": "n-1", "name": "good-1", "state": "trusted", "trusted_until": "2026-11-01Z"}
CLAIMS = {
    "eat_profile": "tag:github.com,2023:veraison/ear",
    "iat": 1,
    "exp": 2,
    "submods": {
        "good-1": {
            "ear.status": "contraindicated",
            "ear.trustworthiness-vector": {"executables": 96},
            "ear.appraisal-policy-id": "production@1",
            "stockade.node-id": "n-1",
            "stockade.result-id": "r-1",
            "stockade.reasons": ["PCR 4 differs: EV_EFI_BOOT_SERVICES_APPLICATION #23"],
        }
    },
}


def _jwk() -> dict[str, object]:
    document = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
    return {**document, "kid": KID, "alg": "ES256"}


def _ear(claims: dict[str, object] = CLAIMS, key: ec.EllipticCurvePrivateKey = KEY) -> str:
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": KID})


class FakeVerifier(http.server.BaseHTTPRequestHandler):
    policies: list[dict[str, object]]
    ears: ClassVar[list[str]] = []  # when set, the EARs served instead of the genuine one

    def _token(self) -> str:
        scheme, _, token = self.headers.get("Authorization", "").partition(" ")
        return token if scheme == "Bearer" else ""

    def _refused(self, role: str) -> bool:
        allowed = (OPERATOR,) if role == "operator" else (READER, OPERATOR)
        if self._token() in allowed:
            return False
        self._json(401, {"error": f"{role}-token", "detail": f"needs the {role} token"})
        return True

    def do_GET(self) -> None:
        path = self.path.split("?")[0]
        if path != "/v1/keys" and self._refused("read"):
            return
        ears = list(FakeVerifier.ears) or [_ear()]
        routes = {
            "/v1/nodes": {"nodes": [NODE]},
            "/v1/nodes/n-1": NODE,
            "/v1/nodes/n-1/results": {
                "results": [
                    {
                        "result_id": "r-1",
                        "status": "affirming",  # unsigned: the CLI must not believe it
                        "ear": ear,
                        "reasons": [],
                    }
                    for ear in ears
                ]
            },
            "/v1/keys": {"keys": [_jwk()]},
            "/v1/policies": {"policies": self.policies},
        }
        if path in routes:
            self._json(200, routes[path])
        else:
            self._json(404, {"error": "not-found", "detail": f"no {path}"})

    def do_POST(self) -> None:
        if self._refused("operator"):
            return
        if self.path == "/v1/nodes/n-1/revoke":
            self._json(200, {**NODE, "state": "revoked"})
        else:
            self._json(404, {"error": "not-found", "detail": self.path})

    def do_PUT(self) -> None:
        if self._refused("operator"):
            return
        document = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        stored = {"id": document["id"], "version": len(self.policies) + 1, "document": document}
        self.policies.append(stored)
        self._json(200, stored)

    def _json(self, status: int, document: object) -> None:
        body = json.dumps(document).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: object) -> None:
        pass


@pytest.fixture(scope="module")
def verifier() -> Iterator[str]:
    handler = type("Handler", (FakeVerifier,), {"policies": []})
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    server.server_close()


PINNED = Path(os.environ.get("TMPDIR", "/tmp")) / f"pinned-verifier-key-{os.getpid()}.pem"


def stockade(
    *args: str, verifier: str | None = None, token: str | None = READER, pinned: bool = True
) -> subprocess.CompletedProcess[str]:
    drop = ("STOCKADE_VERIFIER", "STOCKADE_CA", "STOCKADE_OPERATOR_TOKEN", "STOCKADE_VERIFIER_KEY")
    env = {k: v for k, v in os.environ.items() if k not in drop}
    if pinned:
        PINNED.write_bytes(VerifierKeys.of(KEY.public_key()).pem())
        env["STOCKADE_VERIFIER_KEY"] = str(PINNED)
    if verifier:
        env["STOCKADE_VERIFIER"] = verifier
    if token:
        env["STOCKADE_OPERATOR_TOKEN"] = token
    return run_stockade(*args, env=env)


def test_nodes_list_and_show(verifier: str) -> None:
    listed = stockade("nodes", "list", "--format", "json", verifier=verifier)
    assert listed.returncode == 0, listed.stderr
    assert json.loads(listed.stdout) == {"nodes": [NODE]}
    shown = stockade("nodes", "show", "good-1", "--format", "json", "--verifier", verifier)
    assert json.loads(shown.stdout) == NODE
    table = stockade("nodes", "list", verifier=verifier)
    assert "good-1" in table.stdout
    assert "trusted" in table.stdout


def test_reads_send_the_token_from_the_environment_or_a_file(verifier: str, tmp_path) -> None:
    token_file = tmp_path / "reader-token"
    token_file.write_text(READER + "\n")
    for command in (
        ("nodes", "list"),
        ("nodes", "show", "good-1"),
        ("results", "show", "good-1"),
        ("policy", "list"),
    ):
        refused = stockade(*command, "--format", "json", verifier=verifier, token=None)
        assert refused.returncode == 2
        assert refused.stdout == "" and refused.stderr.count("\n") == 1
        assert "401 read-token" in refused.stderr
        with_file = (*command, "--token-file", str(token_file), "--format", "json")
        served = stockade(*with_file, verifier=verifier, token=None)
        assert served.returncode == 0, served.stderr


def test_revoke_by_name(verifier: str) -> None:
    revoked = stockade(
        "nodes", "revoke", "good-1", "--format", "json", verifier=verifier, token=OPERATOR
    )
    assert json.loads(revoked.stdout)["state"] == "revoked"
    by_reader = stockade("nodes", "revoke", "good-1", verifier=verifier)
    assert by_reader.returncode == 2 and "operator-token" in by_reader.stderr
    missing = stockade("nodes", "revoke", "nobody", verifier=verifier, token=OPERATOR)
    assert missing.returncode == 2
    assert missing.stderr.count("\n") == 1
    assert "nobody" in missing.stderr


def test_results_show_decodes_and_verifies_the_ear(verifier: str) -> None:
    shown = stockade("results", "show", "good-1", "--format", "json", verifier=verifier)
    assert shown.returncode == 0, shown.stderr
    (result,) = json.loads(shown.stdout)["results"]
    assert result["ear_signature"] == "verified"
    # The status shown is the signed one, not the answer's unsigned "affirming".
    assert result["status"] == "contraindicated"
    assert result["reasons"] == CLAIMS["submods"]["good-1"]["stockade.reasons"]  # type: ignore[index]
    table = stockade("results", "show", "good-1", verifier=verifier)
    assert "PCR 4 differs" in table.stdout
    assert "verified" in table.stdout
    assert "affirming" not in table.stdout


def _claims_about(node_id: str, name: str, result_id: str = "r-1") -> dict[str, object]:
    submod = {
        **CLAIMS["submods"]["good-1"],  # type: ignore[index]
        "ear.status": "affirming",
        "stockade.node-id": node_id,
        "stockade.result-id": result_id,
    }
    return {**CLAIMS, "submods": {name: submod}}


@pytest.mark.parametrize(
    ("ear", "why"),
    [
        (lambda: _ear(_claims_about("n-2", "other-node")), "is about node other-node"),
        (lambda: _ear(_claims_about("n-1", "good-1", "r-9")), "is result r-9, not r-1"),
        (lambda: _ear(_claims_about("n-1", "good-1"), IMPOSTOR), "does not verify"),
        (lambda: "not-a-jwt", "is not a JWT"),
    ],
    ids=["another-nodes-ear", "another-result", "impostor-key", "garbage"],
)
def test_results_show_refuses_an_ear_that_is_not_the_nodes_under_the_pinned_key(
    verifier: str, ear, why: str
) -> None:
    """The review's case: an affirming status beside "EAR signature verified" while the EAR
    belongs to another node, or is signed by a key the verifier fetched on the same call."""
    FakeVerifier.ears = [ear()]
    try:
        shown = stockade("results", "show", "good-1", "--format", "json", verifier=verifier)
    finally:
        FakeVerifier.ears = []
    assert shown.returncode == 1, shown.stderr
    (result,) = json.loads(shown.stdout)["results"]
    assert why in result["ear_signature"]
    assert "status" not in result and "reasons" not in result
    assert "do not verify under the pinned verifier key" in shown.stderr


def test_results_show_needs_a_pinned_key(verifier: str) -> None:
    refused = stockade("results", "show", "good-1", verifier=verifier, pinned=False)
    assert refused.returncode == 2
    assert "--verifier-key" in refused.stderr and refused.stderr.count("\n") == 1


def test_policy_apply_and_list(verifier: str, tmp_path: Path) -> None:
    policy = tmp_path / "policy.yaml"
    policy.write_text("id: production\npcrs: sha256:0-9,12\nresult_validity_seconds: 60\n")
    applied = stockade(
        "policy", "apply", str(policy), "--format", "json", verifier=verifier, token=OPERATOR
    )
    assert applied.returncode == 0, applied.stderr
    assert json.loads(applied.stdout)["version"] == 1
    listed = json.loads(stockade("policy", "list", "--format", "json", verifier=verifier).stdout)
    assert listed["policies"][0]["document"]["pcrs"] == "sha256:0-9,12"
    policy.write_text("- not a mapping\n")
    bad = stockade("policy", "apply", str(policy), verifier=verifier)
    assert bad.returncode == 2
    assert "'id'" in bad.stderr


def test_unreachable_verifier_is_exit_2_with_one_line() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    for command in (("nodes", "list"), ("results", "show", "x"), ("policy", "list")):
        result = stockade(*command, "--format", "json", verifier=f"https://127.0.0.1:{port}")
        assert result.returncode == 2
        assert result.stdout == ""
        assert result.stderr.count("\n") == 1
        assert "unreachable" in result.stderr
    missing = stockade("nodes", "list")
    assert missing.returncode == 2
    assert "STOCKADE_VERIFIER" in missing.stderr
