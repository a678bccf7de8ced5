"""Auditor exports against a real ``stockade verifier serve`` over TLS, with results from a
development swtpm node (the tests' quote-only appraiser):

- ``results show --format json``: each result carries its log index and receipt; the
  document as printed passes ``stockade log verify`` (receipts under the pinned log key,
  EARs under the pinned verifier key), and a tampered copy fails it;
- ``audit results``: the CLI follows ``GET /v1/results`` page by page; every result of the
  range comes out once, across page boundaries, while new results arrive; JSON passes ``log
  verify``; CSV parses with the csv module;
- ``audit secret-releases`` over the release audit table;
- credentials: no token is 401, a reader cannot act as an operator, and a named operator's
  name is the actor of its events.
"""

from __future__ import annotations

import base64
import copy
import csv
import io
import json
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade.cli.audit import RELEASE_COLUMNS, RESULT_COLUMNS
from stockade.cluster.secret_store import KeyEncryptionKey
from stockade.tpm.swtpm import SoftwareTpm
from support.cli import run_stockade
from support.verifier_serve import QUOTE_ONLY_APPRAISER, ServedVerifier, ek_ca_files

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "verifier"))
from verifier_support import DevAgent, b64, policy_document

pytestmark = [pytest.mark.tools, pytest.mark.swtpm]

OPERATOR_TOKEN = "alice-operator-token-0123456789abcdef"
READER_TOKEN = "bob-reader-token-0123456789abcdef"


def _digest(token: str) -> str:
    import hashlib

    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Served:
    verifier: ServedVerifier
    agent: DevAgent
    node_id: str
    reader_file: Path
    operator_file: Path
    work: Path

    @property
    def log_key(self) -> Path:
        return self.verifier.data_dir / "keys" / "log-key.pub"

    @property
    def verifier_key(self) -> Path:
        return self.verifier.data_dir / "keys" / "verifier-key.pub.pem"

    def options(self, token: Path | None = None) -> list[str]:
        return [
            "--verifier", self.verifier.url, "--ca", str(self.verifier.ca),
            "--token-file", str(token or self.reader_file),
        ]  # fmt: skip

    def client(self) -> httpx.Client:
        return self.verifier.httpx_client(timeout=30)

    def attest(self, client: httpx.Client) -> dict[str, Any]:
        answer = self.agent.attest(client)
        assert answer.status_code == 200, answer.text
        document: dict[str, Any] = answer.json()
        return document


def _bearer(token: str) -> dict[str, str]:
    return {"Authorization": f"Bearer {token}"}


@pytest.fixture(scope="module")
def served(
    tmp_path_factory: pytest.TempPathFactory, ek_ca: Any, shared_software_tpm: SoftwareTpm
) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("audit-exports")
    policy = work / "policy.json"
    policy.write_text(json.dumps(policy_document("audit", validity=600)))
    credentials = work / "credentials"
    credentials.write_text(
        f"alice operator {_digest(OPERATOR_TOKEN)}\nbob reader {_digest(READER_TOKEN)}\n"
    )
    kek = work / "kek"
    kek.write_text(KeyEncryptionKey.generate().to_text() + "\n")
    kek.chmod(0o600)
    reader_file, operator_file = work / "bob-token", work / "alice-token"
    reader_file.write_text(READER_TOKEN + "\n")
    operator_file.write_text(OPERATOR_TOKEN + "\n")
    verifier = ServedVerifier(
        work / "data",
        ek_ca=ek_ca_files(ek_ca),
        policy=policy,
        prelude=QUOTE_ONLY_APPRAISER,
        extra=("--credentials-file", str(credentials), "--kek-file", str(kek)),
    )
    with verifier:
        agent = DevAgent.create(shared_software_tpm)
        with verifier.httpx_client(timeout=30) as client:
            node_id = agent.enroll(client, "audit-node")
        yield Served(verifier, agent, node_id, reader_file, operator_file, work)


def _stockade(*args: object) -> Any:
    return run_stockade(*args, env=_clean_environment())


def _clean_environment() -> dict[str, str]:
    import os

    controlled = ("STOCKADE_VERIFIER", "STOCKADE_CA", "STOCKADE_OPERATOR_TOKEN")
    return {k: v for k, v in os.environ.items() if k not in controlled and "CONTEXT" not in k}


def _log_verify(served: Served, document: Path, *extra: str) -> Any:
    return _stockade(
        "log", "verify", document, "--key", served.log_key,
        "--verifier-key", served.verifier_key, *extra,
    )  # fmt: skip


# -- results show ---------------------------------------------------------------------------


def test_results_show_json_passes_log_verify_as_printed(served: Served) -> None:
    with served.client() as client:
        attested = [served.attest(client) for _ in range(3)]
        api = client.get(
            f"/v1/nodes/{served.node_id}/results?limit=3", headers=_bearer(READER_TOKEN)
        )
    assert api.status_code == 200, api.text
    for result in api.json()["results"]:
        assert isinstance(result["log_index"], int)
        assert result["inclusion_proof"]["log_index"] == result["log_index"]
        assert "checkpoint" in result["inclusion_proof"]

    shown = _stockade(
        "results", "show", "audit-node", "--limit", "3", "--format", "json",
        "--verifier-key", served.verifier_key, *served.options(),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    document = json.loads(shown.stdout)
    assert [r["result_id"] for r in document["results"]] == [
        a["result_id"] for a in reversed(attested)
    ]
    assert [r["log_index"] for r in document["results"]] == [
        a["log_index"] for a in reversed(attested)
    ]
    exported = served.work / "show.json"
    exported.write_text(shown.stdout)  # piped unchanged

    verified = _log_verify(served, exported)
    assert verified.returncode == 0, (verified.stdout, verified.stderr)
    lines = verified.stdout.splitlines()
    assert len(lines) == 3 and all(line.startswith("verified: ") for line in lines), lines
    assert all("EAR verified" in line for line in lines)
    as_json = _log_verify(served, exported, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr
    checked = json.loads(as_json.stdout)
    assert checked["verified"] is True
    assert all(r["verified"] and r["ear_checked"] for r in checked["results"])


def _tampered(source: dict[str, Any], change: Any) -> dict[str, Any]:
    document = copy.deepcopy(source)
    change(document["results"])
    return document


def _set(results: list[dict[str, Any]], name: str, value: Any) -> None:
    results[0][name] = value


def test_a_tampered_export_fails_log_verify(served: Served) -> None:
    with served.client() as client:
        served.attest(client)
        served.attest(client)
    shown = _stockade(
        "results", "show", "audit-node", "--limit", "2", "--format", "json",
        "--verifier-key", served.verifier_key, *served.options(),
    )  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    original = json.loads(shown.stdout)
    first, second = original["results"]

    def forged_claims(results: list[dict[str, Any]]) -> None:
        # The EAR's claims rewritten (signature kept): neither the log nor the key agree.
        header, claims, signature = results[0]["ear"].split(".")
        decoded = json.loads(base64.urlsafe_b64decode(claims + "=" * (-len(claims) % 4)))
        decoded["iat"] += 1
        text = base64.urlsafe_b64encode(json.dumps(decoded).encode()).rstrip(b"=").decode()
        results[0]["ear"] = f"{header}.{text}.{signature}"

    def swapped_receipt(results: list[dict[str, Any]]) -> None:
        results[0]["inclusion_proof"] = second["inclusion_proof"]
        results[0]["log_index"] = second["log_index"]

    def rewritten_checkpoint(results: list[dict[str, Any]]) -> None:
        note = results[0]["inclusion_proof"]["checkpoint"]
        lines = note.split("\n")
        lines[1] = str(int(lines[1]) + 1)  # the size, under the same signature
        results[0]["inclusion_proof"]["checkpoint"] = "\n".join(lines)

    def flipped_proof(results: list[dict[str, Any]]) -> None:
        proof = results[0]["inclusion_proof"]["proof"]
        element = bytearray(base64.b64decode(proof[0]))
        element[0] ^= 1
        proof[0] = base64.b64encode(bytes(element)).decode()

    attacks = {
        # A contraindicated result exported as affirming: the logged entry says otherwise.
        "status": lambda results: _set(results, "status", "contraindicated"),
        # Another (genuine, signed) EAR under this result's receipt: its digest is not logged.
        "ear swapped": lambda results: _set(results, "ear", second["ear"]),
        "ear forged": forged_claims,
        # A receipt of another entry: the logged entry names another result.
        "receipt swapped": swapped_receipt,
        "log index": lambda results: _set(results, "log_index", first["log_index"] + 1),
        "checkpoint": rewritten_checkpoint,
        "receipt removed": lambda results: _set(results, "inclusion_proof", None),
        "audit path": flipped_proof,
    }
    for name, change in attacks.items():
        path = served.work / f"tampered-{name.replace(' ', '-')}.json"
        path.write_text(json.dumps(_tampered(original, change)))
        refused = _log_verify(served, path)
        assert refused.returncode == 1, (name, refused.stdout, refused.stderr)
        assert "NOT VERIFIED: result" in refused.stdout, (name, refused.stdout)
        assert "1 of 2 exported results do not verify" in refused.stderr, (name, refused.stderr)
        # Without the verifier key the log alone still refuses every one of them.
        log_only = _stockade("log", "verify", path, "--key", served.log_key)
        assert log_only.returncode == 1, (name, log_only.stdout)
    # The untouched export still verifies (the attacks above are what failed).
    path = served.work / "untouched.json"
    path.write_text(json.dumps(original))
    assert _log_verify(served, path).returncode == 0


# -- audit results ----------------------------------------------------------------------------


def _page_through(client: httpx.Client, since: str, limit: int, between: Any) -> list[dict]:
    exported: list[dict[str, Any]] = []
    after: int | None = None
    while True:
        params: dict[str, Any] = {"since": since, "limit": limit}
        if after is not None:
            params["after"] = after
        page = client.get("/v1/results", params=params, headers=_bearer(READER_TOKEN))
        assert page.status_code == 200, page.text
        body = page.json()
        exported += body["results"]
        between()
        after = body["next"]
        if after is None:
            return exported


def test_paging_returns_every_result_once_while_results_arrive(served: Served) -> None:
    since = datetime.now(UTC).isoformat()
    with served.client() as client:
        before = [served.attest(client)["result_id"] for _ in range(5)]
        arrived: list[str] = []

        def attest_between_pages() -> None:
            if len(arrived) < 4:
                arrived.append(served.attest(client)["result_id"])

        exported = _page_through(client, since, 2, attest_between_pages)
    ids = [r["result_id"] for r in exported]
    assert len(ids) == len(set(ids)), "a result came twice"
    # Everything stored before paging, and everything that arrived while paging, once.
    assert set(ids) == set(before) | set(arrived), (ids, before, arrived)
    indices = [r["log_index"] for r in exported]
    assert indices == sorted(indices)
    assert all(r["inclusion_proof"]["log_index"] == r["log_index"] for r in exported)


def test_audit_results_cli_follows_pages_while_results_arrive(served: Served) -> None:
    since = datetime.now(UTC).isoformat()
    with served.client() as client:
        before = [served.attest(client)["result_id"] for _ in range(5)]
    arrived: list[str] = []
    stop = threading.Event()

    def keep_attesting() -> None:
        with served.client() as client:
            while not stop.is_set() and len(arrived) < 20:
                arrived.append(served.attest(client)["result_id"])

    background = threading.Thread(target=keep_attesting)
    background.start()
    try:
        exported = _stockade(
            "audit", "results", "--since", since, "--page-size", "1", "--format", "json",
            "--verifier-key", served.verifier_key, *served.options(),
        )  # fmt: skip
    finally:
        stop.set()
        background.join()
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    ids = [r["result_id"] for r in document["results"]]
    assert len(ids) == len(set(ids)), "a result came twice"
    assert set(before) <= set(ids) <= set(before) | set(arrived)
    assert all(r["ear_signature"] == "verified" for r in document["results"])
    path = served.work / "audit.json"
    path.write_text(exported.stdout)
    verified = _log_verify(served, path)
    assert verified.returncode == 0, (verified.stdout, verified.stderr)
    assert len(verified.stdout.splitlines()) == len(ids)


def test_audit_results_range_node_and_csv(served: Served) -> None:
    since = datetime.now(UTC).isoformat()
    with served.client() as client:
        early = [served.attest(client)["result_id"] for _ in range(2)]
        time.sleep(1.1)
        until = datetime.now(UTC).isoformat()
        time.sleep(1.1)
        late = served.attest(client)["result_id"]
    ranged = ("--since", since, "--until", until)
    as_json = _stockade(
        "audit", "results", *ranged, "--node", "audit-node", "--format", "json",
        "--verifier-key", served.verifier_key, *served.options(),
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    results = json.loads(as_json.stdout)["results"]
    assert [r["result_id"] for r in results] == early and late not in early
    as_csv = _stockade(
        "audit", "results", *ranged, "--format", "csv",
        "--verifier-key", served.verifier_key, *served.options(),
    )  # fmt: skip
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(rows[0].keys()) == RESULT_COLUMNS
    assert [row["result_id"] for row in rows] == early
    for row, result in zip(rows, results, strict=True):
        assert row["status"] == result["status"] and row["ear"] == result["ear"]
        assert int(row["log_index"]) == result["log_index"]
        assert json.loads(row["inclusion_proof"]) == result["inclusion_proof"]
        assert int(row["tree_size"]) == result["inclusion_proof"]["tree_size"]
    as_text = _stockade(
        "audit", "results", *ranged, "--verifier-key", served.verifier_key, *served.options(),
    )  # fmt: skip
    assert as_text.returncode == 0, as_text.stderr
    assert "2 results (EARs checked locally)" in as_text.stdout
    assert as_text.stdout.count("verified") == 2 and "NOT VERIFIED" not in as_text.stdout
    other = _stockade(
        "audit", "results", *ranged, "--node", "no-such-node", "--format", "csv",
        "--verifier-key", served.verifier_key, *served.options(),
    )  # fmt: skip
    assert other.returncode == 0 and other.stdout.splitlines() == [",".join(RESULT_COLUMNS)]
    bad = _stockade(
        "audit", "results", "--since", "yesterday", "--verifier-key", served.verifier_key,
        *served.options(),
    )  # fmt: skip
    assert bad.returncode == 2 and "since" in bad.stderr


def test_audit_results_node_filter_with_two_nodes(served: Served, make_software_tpm: Any) -> None:
    since = datetime.now(UTC).isoformat()
    other = DevAgent.create(make_software_tpm())
    with served.client() as client:
        other_id = other.enroll(client, "audit-other")
        theirs = other.attest(client)
        assert theirs.status_code == 200, theirs.text
        ours = served.attest(client)["result_id"]
        page = client.get(
            "/v1/results", params={"since": since, "node": other_id}, headers=_bearer(READER_TOKEN)
        )
    assert [r["result_id"] for r in page.json()["results"]] == [theirs.json()["result_id"]]
    by_name = {}
    for name in ("audit-node", "audit-other"):
        exported = _stockade(
            "audit", "results", "--since", since, "--node", name, "--format", "json",
            "--verifier-key", served.verifier_key, *served.options(),
        )  # fmt: skip
        assert exported.returncode == 0, exported.stderr
        by_name[name] = json.loads(exported.stdout)["results"]
    assert [r["result_id"] for r in by_name["audit-node"]] == [ours]
    assert [r["result_id"] for r in by_name["audit-other"]] == [theirs.json()["result_id"]]
    assert by_name["audit-other"][0]["node"] == "audit-other"
    both = _stockade(
        "audit", "results", "--since", since, "--format", "json",
        "--verifier-key", served.verifier_key, *served.options(),
    )  # fmt: skip
    assert {r["node"] for r in json.loads(both.stdout)["results"]} == {"audit-node", "audit-other"}


def test_audit_results_refuses_an_ear_not_under_the_pinned_key(served: Served) -> None:
    """A verifier (or a man in the middle with its TLS) serving results under another key:
    the CLI exports nothing it could not check as verified and exits 1."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    foreign = ec.generate_private_key(ec.SECP256R1()).public_key()
    key_file = served.work / "foreign.pem"
    key_file.write_bytes(
        foreign.public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    with served.client() as client:
        served.attest(client)
    refused = _stockade(
        "audit", "results", "--format", "json", "--verifier-key", key_file, *served.options()
    )
    assert refused.returncode == 1, refused.stderr
    results = json.loads(refused.stdout)["results"]
    assert results and all(r["ear_signature"].startswith("NOT VERIFIED") for r in results)
    assert all("status" not in r for r in results)


# -- secret releases ---------------------------------------------------------------------------


def test_audit_secret_releases(served: Served) -> None:
    operator = _bearer(OPERATOR_TOKEN)
    with served.client() as client:
        stored = client.put(
            "/v1/secrets/db-password", json={"value": b64(b"s3cret")}, headers=operator
        )
        assert stored.status_code == 200, stored.text
        granted = client.post(
            "/v1/secrets/db-password/grants", json={"selector": "node:audit-node"}, headers=operator
        )
        assert granted.status_code == 200, granted.text
        served.attest(client)
        released = [
            client.post(f"/v1/nodes/{served.node_id}/secrets/db-password", auth=served.agent.auth)
            for _ in range(2)
        ]
        assert all(r.status_code == 200 for r in released), [r.text for r in released]
        page = client.get("/v1/secret-releases?limit=1", headers=_bearer(READER_TOKEN))
        assert page.status_code == 200 and page.json()["next"] is not None, page.text
    as_json = _stockade(
        "audit", "secret-releases", "--secret", "db-password", "--node", "audit-node",
        "--format", "json", *served.options(),
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    releases = json.loads(as_json.stdout)["releases"]
    assert [r["result_id"] for r in releases] == [r.json()["result_id"] for r in released]
    assert all(r["version"] == 1 and r["node_id"] == served.node_id for r in releases)
    assert all("s3cret" not in json.dumps(r) and "value" not in r for r in releases)
    as_csv = _stockade(
        "audit", "secret-releases", "--secret", "db-password", "--format", "csv",
        *served.options(),
    )  # fmt: skip
    assert as_csv.returncode == 0, as_csv.stderr
    rows = list(csv.DictReader(io.StringIO(as_csv.stdout)))
    assert list(rows[0].keys()) == RELEASE_COLUMNS
    assert [int(row["release_id"]) for row in rows] == [r["release_id"] for r in releases]
    as_text = _stockade("audit", "secret-releases", "--secret", "db-password", *served.options())
    assert as_text.returncode == 0, as_text.stderr
    assert "2 secret releases" in as_text.stdout and "db-password" in as_text.stdout
    none = _stockade(
        "audit", "secret-releases", "--secret", "other", "--format", "json", *served.options()
    )
    assert none.returncode == 0 and json.loads(none.stdout)["releases"] == []


# -- credentials and actors ------------------------------------------------------------------


def test_exports_need_a_reader_and_a_reader_cannot_act(served: Served) -> None:
    with served.client() as client:
        for path in (
            "/v1/results",
            "/v1/secret-releases",
            f"/v1/nodes/{served.node_id}/results",
        ):
            assert client.get(path).status_code == 401, path
            assert client.get(path, headers=_bearer("not-a-token-0123456789")).status_code == 401
            assert client.get(path, headers=_bearer(READER_TOKEN)).status_code == 200, path
        reader = _bearer(READER_TOKEN)
        for method, path, body in (
            ("POST", f"/v1/nodes/{served.node_id}/revoke", {}),
            ("POST", f"/v1/nodes/{served.node_id}/allow", {}),
            ("PUT", "/v1/secrets/x", {"value": b64(b"x")}),
            ("PUT", f"/v1/nodes/{served.node_id}/labels", {"labels": {"a": "b"}}),
            ("PUT", "/v1/policies/evil", policy_document("evil")),
        ):
            answer = client.request(method, path, json=body, headers=reader)
            assert answer.status_code == 403, (path, answer.text)
            assert answer.json()["error"] == "operator-role", answer.text
        node = client.get(f"/v1/nodes/{served.node_id}", headers=reader).json()
        assert node["state"] != "revoked" and node["labels"] == {}
    no_token = run_stockade(
        "audit", "results", "--verifier", served.verifier.url, "--ca", served.verifier.ca,
        "--verifier-key", served.verifier_key,
        env=_clean_environment() | {"HOME": str(served.work)},
    )  # fmt: skip
    assert no_token.returncode == 2 and "401" in no_token.stderr, no_token.stderr


def test_a_named_operator_is_the_actor_of_its_events(served: Served) -> None:
    with served.client() as client:
        for action in ("revoke", "allow"):
            answer = client.post(
                f"/v1/nodes/{served.node_id}/{action}", json={}, headers=_bearer(OPERATOR_TOKEN)
            )
            assert answer.status_code == 200, answer.text
        labelled = client.put(
            f"/v1/nodes/{served.node_id}/labels",
            json={"labels": {"role": "db"}},
            headers=_bearer(OPERATOR_TOKEN),
        )
        assert labelled.status_code == 200, labelled.text
        with client.stream(
            "GET", "/v1/events?after=0&follow=false", headers=_bearer(READER_TOKEN)
        ) as response:
            events = [
                json.loads(line.removeprefix("data: "))
                for line in response.iter_lines()
                if line.startswith("data: ")
            ]
        served.attest(client)  # trusted again for the tests after
    acted = [e for e in events if e.get("actor") is not None]
    assert [(e["to"], e["reason"], e["actor"]) for e in acted][-3:] == [
        ("revoked", "revoked", "alice"),
        ("enrolled", "allowed", "alice"),
        ("enrolled", "labels set: role=db", "alice"),
    ], acted
    watched = _stockade("events", "watch", "--until-idle", "--format", "json", *served.options())
    assert watched.returncode == 0, watched.stderr
    lines = [json.loads(line) for line in watched.stdout.splitlines()]
    assert [e["actor"] for e in lines if e.get("actor")][-3:] == ["alice"] * 3
    # Secrets belong to no node: their changes are log lines naming the operator.
    logged = served.verifier.stderr_lines()
    for what in ("secret stored", "secret granted"):
        assert any(what in line and "alice" in line for line in logged), (what, logged[-20:])


def test_csv_cells_are_not_spreadsheet_formulas() -> None:
    """Text from nodes (a reason, a name) reaches the CSV: a cell a spreadsheet would run
    as a formula is quoted with a leading ``'``; receipts and lists are compact JSON."""
    from stockade.cli.audit import _csv_cell

    for hostile in ('=HYPERLINK("http://x")', "+1+1", "-2", "@SUM(A1)", "\tx", "\rx"):
        assert _csv_cell(hostile) == "'" + hostile
    assert _csv_cell("quote: ok") == "quote: ok"
    assert _csv_cell(None) == "" and _csv_cell(7) == "7"
    assert _csv_cell({"b": 1, "a": [1]}) == '{"a":[1],"b":1}'
