"""``stockade audit actions`` against a real ``stockade verifier serve`` over TLS, with a
named credentials file (alice: operator, bob: reader):

- every policy and secret-store action alice takes comes out once, naming her, across page
  boundaries (``--page-size``), with ``--actor``/``--since``/``--until`` filters;
- the JSON export passes ``stockade log verify`` as printed; a copy with the actor (or the
  subject, or the detail) changed fails it; so does an action whose receipt is another's;
- CSV parses with the csv module, with the same columns; no secret value anywhere;
- no token is refused.
"""

from __future__ import annotations

import base64
import copy
import csv
import hashlib
import io
import json
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

from stockade.cli.audit import ACTION_COLUMNS
from stockade.cluster.secret_store import KeyEncryptionKey
from support.cli import run_stockade
from support.verifier_serve import QUOTE_ONLY_APPRAISER, ServedVerifier

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "verifier"))
from verifier_support import policy_document

pytestmark = [pytest.mark.tools]

OPERATOR_TOKEN = "alice-operator-token-0123456789abcdef"
READER_TOKEN = "bob-reader-token-0123456789abcdef"
SECRET_VALUE = b"hunter2-the-actual-secret-value"
SECRET_B64 = base64.b64encode(SECRET_VALUE).decode()


def _digest(token: str) -> str:
    return "sha256:" + hashlib.sha256(token.encode()).hexdigest()


@dataclass
class Served:
    verifier: ServedVerifier
    reader_file: Path
    work: Path
    performed: list[tuple[str, str]]

    @property
    def log_key(self) -> Path:
        return self.verifier.data_dir / "keys" / "log-key.pub"

    def options(self) -> list[str]:
        return [
            "--verifier", self.verifier.url, "--ca", str(self.verifier.ca),
            "--token-file", str(self.reader_file),
        ]  # fmt: skip


def _clean_environment() -> dict[str, str]:
    import os

    controlled = ("STOCKADE_VERIFIER", "STOCKADE_CA", "STOCKADE_OPERATOR_TOKEN")
    return {k: v for k, v in os.environ.items() if k not in controlled and "CONTEXT" not in k}


def _stockade(*args: object) -> Any:
    return run_stockade(*args, env=_clean_environment())


def _act(client: httpx.Client) -> list[tuple[str, str]]:
    """Alice's policy and secret-store actions; ``(action, subject)`` each."""
    alice = {"Authorization": f"Bearer {OPERATOR_TOKEN}"}
    policy = policy_document("audited")
    calls = [
        ("policy.store", "audited@1", "PUT", "/v1/policies/audited", {"json": policy}),
        ("policy.activate", "audited@1", "PUT", "/v1/active-policy", {"json": {"id": "audited"}}),
        ("secret.put", "db", "PUT", "/v1/secrets/db", {"json": {"value": SECRET_B64}}),
        ("secret.put", "db", "PUT", "/v1/secrets/db", {"json": {"value": SECRET_B64}}),
        ("secret.grant", "db", "POST", "/v1/secrets/db/grants",
         {"json": {"selector": "label:role=db"}}),
        ("secret.revoke", "db", "DELETE", "/v1/secrets/db/grants",
         {"params": {"selector": "label:role=db"}}),
        ("secret.delete", "db", "DELETE", "/v1/secrets/db", {}),
    ]  # fmt: skip
    for _, _, method, path, extra in calls:
        answer = client.request(method, path, headers=alice, **extra)
        assert answer.status_code == 200, answer.text
    return [(action, subject) for action, subject, *_ in calls]


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Served]:
    work = tmp_path_factory.mktemp("audit-actions")
    credentials = work / "credentials"
    credentials.write_text(
        f"alice operator {_digest(OPERATOR_TOKEN)}\nbob reader {_digest(READER_TOKEN)}\n"
    )
    credentials.chmod(0o600)
    kek = work / "kek"
    kek.write_text(KeyEncryptionKey.generate().to_text() + "\n")
    kek.chmod(0o600)
    reader_file = work / "bob-token"
    reader_file.write_text(READER_TOKEN + "\n")
    verifier = ServedVerifier(
        work / "data",
        prelude=QUOTE_ONLY_APPRAISER,
        extra=("--credentials-file", str(credentials), "--kek-file", str(kek)),
    )
    with verifier:
        with verifier.httpx_client(timeout=30) as client:
            performed = _act(client)
        yield Served(verifier, reader_file, work, performed)


def _export(served: Served, *extra: str) -> Any:
    return _stockade("audit", "actions", *extra, *served.options())


def _alice(document: dict[str, Any]) -> list[dict[str, Any]]:
    return [action for action in document["actions"] if action["actor"] == "alice"]


def test_audit_actions_pages_every_action_once_naming_the_operator(served: Served) -> None:
    exported = _export(served, "--format", "json", "--page-size", "2")
    assert exported.returncode == 0, exported.stderr
    document = json.loads(exported.stdout)
    mine = _alice(document)
    assert [(a["action"], a["subject"]) for a in mine] == served.performed
    indices = [a["log_index"] for a in document["actions"]]
    assert indices == sorted(set(indices))
    assert all(a["inclusion_proof"]["log_index"] == a["log_index"] for a in mine)
    assert SECRET_B64 not in exported.stdout and SECRET_VALUE.decode() not in exported.stdout
    by_actor = json.loads(_export(served, "--format", "json", "--actor", "alice").stdout)
    assert {a["actor"] for a in by_actor["actions"]} == {"alice"}
    assert [a["id"] for a in by_actor["actions"]] == [a["id"] for a in mine]
    nobody = json.loads(_export(served, "--format", "json", "--actor", "mallory").stdout)
    assert nobody["actions"] == []
    first = mine[0]["time"]
    before = json.loads(_export(served, "--format", "json", "--until", first).stdout)
    assert [a for a in before["actions"] if a["actor"] == "alice"] == []


def test_the_json_export_passes_log_verify_and_a_tampered_one_fails(served: Served) -> None:
    exported = _export(served, "--format", "json")
    assert exported.returncode == 0, exported.stderr
    path = served.work / "actions.json"
    path.write_text(exported.stdout)  # as printed
    verified = _stockade("log", "verify", path, "--key", served.log_key)
    assert verified.returncode == 0, (verified.stdout, verified.stderr)
    lines = verified.stdout.splitlines()
    assert len(lines) == len(json.loads(exported.stdout)["actions"]) >= 7
    assert all(line.startswith("verified: operator-action ") for line in lines), lines
    assert any(" by alice " in line for line in lines)
    as_json = _stockade("log", "verify", path, "--key", served.log_key, "--format", "json")
    assert as_json.returncode == 0 and json.loads(as_json.stdout)["verified"] is True

    source = json.loads(exported.stdout)
    first = next(i for i, a in enumerate(source["actions"]) if a["actor"] == "alice")

    def tampered(change: Any) -> Path:
        document = copy.deepcopy(source)
        change(document["actions"])
        out = served.work / "tampered.json"
        out.write_text(json.dumps(document))
        return out

    changes = {
        "actor": lambda actions: actions[first].update(actor="bob"),
        "subject": lambda actions: actions[first].update(subject="other"),
        "detail": lambda actions: actions[first].update(detail="nothing happened"),
        "swapped receipt": lambda actions: actions[first].update(
            inclusion_proof=actions[first + 1]["inclusion_proof"],
            log_index=actions[first + 1]["log_index"],
        ),
    }
    for name, change in changes.items():
        refused = _stockade("log", "verify", tampered(change), "--key", served.log_key)
        assert refused.returncode == 1, (name, refused.stdout, refused.stderr)
        assert "NOT VERIFIED: operator action" in refused.stdout, name


def test_audit_actions_csv_and_text(served: Served) -> None:
    exported = _export(served, "--format", "csv")
    assert exported.returncode == 0, exported.stderr
    rows = list(csv.reader(io.StringIO(exported.stdout)))
    assert rows[0] == ACTION_COLUMNS
    body = [dict(zip(ACTION_COLUMNS, row, strict=True)) for row in rows[1:]]
    assert [(r["action"], r["subject"]) for r in body if r["actor"] == "alice"] == (
        served.performed
    )
    assert SECRET_B64 not in exported.stdout
    text = _export(served, "--format", "text")
    assert text.returncode == 0, text.stderr
    assert "operator actions" in text.stdout and "secret.delete" in text.stdout


def test_audit_actions_needs_a_token(served: Served) -> None:
    refused = _stockade(
        "audit", "actions", "--verifier", served.verifier.url, "--ca", served.verifier.ca
    )
    assert refused.returncode != 0
    assert "Traceback" not in refused.stderr
