"""`stockade log verify|checkpoint|monitor` as subprocesses: offline receipt verification
(exit 0 verified, 1 not, 2 unreadable), and a monitor following a real `stockade verifier
serve` (TLS on 127.0.0.1) whose log grows, is forked behind its back, or is shown a state
file from a forked or longer log: one line per new checkpoint, an ALERT line on stderr and
exit 1 otherwise.

Entries are appended straight into the verifier's database (the results that fill it in
production are tested in tests/verifier/test_verifier_translog.py): the monitor checks the
log, not what is in it.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from sqlalchemy import create_engine, delete, update

from stockade.tpm.ekca import EkCa
from stockade.translog import (
    Checkpoint,
    MerkleLog,
    NoteSigner,
    attestation_result_entry,
    sign_checkpoint,
)
from stockade.translog import store as translog_store
from stockade.translog.keys import load_signer
from stockade.translog.receipt import Receipt
from support.cli import run_stockade, stockade_command
from support.verifier_serve import ServedVerifier

ORIGIN = "stockade.local/verifier-log"
CONTROLLED = ("STOCKADE_VERIFIER", "STOCKADE_CA", "STOCKADE_OPERATOR_TOKEN")


def stockade(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    clean = {k: v for k, v in os.environ.items() if k not in CONTROLLED}
    return run_stockade(*args, env={**clean, **(env or {})})


def _entry(number: int) -> bytes:
    return attestation_result_entry(
        result_id=f"r-{number}",
        node_id="n-1",
        node_name="node-1",
        status="affirming",
        policy="test@1",
        not_after="2026-01-01T00:02:00.000Z",
        issued_at="2026-01-01T00:00:00.000Z",
        ear=f"header.claims-{number}.signature",
    )


# -- offline verification ----------------------------------------------------------------


@pytest.fixture
def offline(tmp_path: Path) -> dict[str, Path | str]:
    """A log of 7 results, its key, a checkpoint of it, and an evidence response for
    result 5 carrying its receipt."""
    engine = create_engine(f"sqlite:///{tmp_path / 'log.db'}")
    translog_store.create_tables(engine)
    log = MerkleLog(engine)
    log.append_many([_entry(n) for n in range(7)])
    signer = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(log.checkpoint(ORIGIN), [signer])
    receipt = Receipt(5, 7, log.entry(5), tuple(log.inclusion_proof(5, 7)), note)
    engine.dispose()
    response = {
        "result_id": "r-5",
        "status": "affirming",
        "ear": "header.claims-5.signature",
        "log_index": 5,
        "inclusion_proof": receipt.to_json(),
    }
    paths: dict[str, Path | str] = {
        "result": tmp_path / "result.json",
        "receipt": tmp_path / "receipt.json",
        "checkpoint": tmp_path / "checkpoint.txt",
        "key": tmp_path / "log-key.pub",
        "key_string": signer.verifier.key_string(),
        "signer": signer.key_string(),
    }
    Path(paths["result"]).write_text(json.dumps(response))
    receipt_only = receipt.to_json()
    del receipt_only["checkpoint"]
    Path(paths["receipt"]).write_text(json.dumps(receipt_only))
    Path(paths["checkpoint"]).write_bytes(note)
    Path(paths["key"]).write_text(signer.verifier.key_string() + "\n")
    return paths


def test_verify_offline(offline) -> None:
    verified = stockade("log", "verify", str(offline["result"]), "--key", str(offline["key"]))
    assert verified.returncode == 0, verified.stderr
    assert "attestation-result r-5 (node-1, affirming) is entry 5" in verified.stdout
    as_json = stockade(
        "log", "verify", str(offline["receipt"]), "--checkpoint", str(offline["checkpoint"]),
        "--key", str(offline["key_string"]), "--format", "json",
    )  # fmt: skip
    assert as_json.returncode == 0, as_json.stderr
    document = json.loads(as_json.stdout)
    assert document["verified"] is True and document["log_index"] == 5
    assert document["size"] == 7 and document["entry"]["result_id"] == "r-5"


def test_verify_offline_refusals(offline, tmp_path: Path) -> None:
    result = json.loads(Path(offline["result"]).read_text())
    # Another result claiming this receipt: the logged entry is not its.
    other = tmp_path / "other.json"
    other.write_text(json.dumps({**result, "ear": "header.claims-6.signature"}))
    mismatch = stockade("log", "verify", str(other), "--key", str(offline["key"]))
    assert mismatch.returncode == 1 and "ear_sha256" in mismatch.stderr
    # A key the log does not use: its checkpoint carries no signature by it.
    wrong = NoteSigner.generate(ORIGIN).verifier.key_string()
    foreign = stockade("log", "verify", str(offline["result"]), "--key", wrong)
    assert foreign.returncode == 1 and "not signed by required key" in foreign.stderr
    # A checkpoint whose root was replaced under the log's signature.
    note = Path(offline["checkpoint"]).read_bytes()
    body, signatures = note.split(b"\n\n", 1)
    head = Checkpoint.parse(body + b"\n")
    forged = tmp_path / "forged.txt"
    forged.write_bytes(Checkpoint(ORIGIN, head.size, bytes(32)).body() + b"\n" + signatures)
    rejected = stockade(
        "log", "verify", str(offline["receipt"]), "--checkpoint", str(forged),
        "--key", str(offline["key"]),
    )  # fmt: skip
    assert rejected.returncode == 1 and "does not verify" in rejected.stderr
    # The log's own key signing a tree without this entry (a split view): the proof fails.
    signer = NoteSigner.from_key_string(str(offline["signer"]))
    split = tmp_path / "split.txt"
    split.write_bytes(sign_checkpoint(Checkpoint(ORIGIN, 7, bytes(32)), [signer]))
    refused = stockade(
        "log", "verify", str(offline["receipt"]), "--checkpoint", str(split),
        "--key", str(offline["key"]),
    )  # fmt: skip
    assert refused.returncode == 1 and "inclusion proof" in refused.stderr
    # Unreadable input: exit 2, one line.
    garbage = tmp_path / "garbage.json"
    garbage.write_text("{not json")
    unreadable = stockade("log", "verify", str(garbage), "--key", str(offline["key"]))
    assert unreadable.returncode == 2 and len(unreadable.stderr.strip().splitlines()) == 1
    missing = stockade("log", "verify", str(offline["receipt"]), "--key", str(offline["key"]))
    assert missing.returncode == 2 and "no checkpoint" in missing.stderr


# -- against a running verifier ----------------------------------------------------------


@dataclass
class Verifier(ServedVerifier):
    """``stockade verifier serve`` in a child process, restartable on the same port; its log
    written behind its back."""

    @property
    def database_url(self) -> str:
        return f"sqlite:///{self.data_dir / 'verifier.db'}"

    def append(self, entries: list[bytes]) -> None:
        engine = create_engine(self.database_url)
        try:
            MerkleLog(engine).append_many(entries)
        finally:
            engine.dispose()

    def rebuild(self, entries: list[bytes]) -> None:
        """Replace the stored log with a fresh tree of ``entries`` (behind its back)."""
        engine = create_engine(self.database_url)
        try:
            with engine.begin() as connection:
                connection.execute(delete(translog_store.leaves))
                connection.execute(delete(translog_store.subtrees))
                connection.execute(update(translog_store.state).values(size=0))
            MerkleLog(engine).append_many(entries)
        finally:
            engine.dispose()

    @property
    def reader_token(self) -> Path:
        return self.data_dir / "reader-token"

    def get(self, path: str, token: bool = True, **params: object) -> httpx.Response:
        """A GET with the reader token (entries need one; checkpoints, keys and proofs do not)."""
        bearer = self.reader_token.read_text().strip()
        return httpx.get(
            f"{self.url}{path}",
            params=params,
            headers={"Authorization": f"Bearer {bearer}"} if token else None,
            verify=ssl.create_default_context(cafile=str(self.ca)),
            timeout=10,
        )


@pytest.fixture
def verifier(tmp_path: Path, ek_ca: EkCa) -> Iterator[Verifier]:
    home = {"STOCKADE_HOME": str(tmp_path / "home")}
    with Verifier(tmp_path / "verifier", ek_ca=ek_ca.root_cert_path, env=home) as running:
        yield running


def _monitor(
    verifier: Verifier, *args: str, token: bool = True
) -> subprocess.CompletedProcess[str]:
    reader = ("--token-file", str(verifier.reader_token)) if token else ()
    return stockade(
        "log", "monitor", "--verifier", verifier.url, "--ca", str(verifier.ca), "--once",
        *reader, *args,
    )  # fmt: skip


def test_checkpoint_pins_the_key_and_monitor_follows(verifier: Verifier, tmp_path: Path) -> None:
    pin, state, note = tmp_path / "log-key.pub", tmp_path / "state.json", tmp_path / "cp.txt"
    verifier.append([_entry(n) for n in range(5)])
    fetched = stockade(
        "log", "checkpoint", "--verifier", verifier.url, "--ca", str(verifier.ca),
        "--pin", str(pin), "--out", str(note), "--format", "json",
    )  # fmt: skip
    assert fetched.returncode == 0, fetched.stderr
    assert "pinned the log key" in fetched.stderr
    assert pin.read_text() == (verifier.data_dir / "keys" / "log-key.pub").read_text()
    document = json.loads(fetched.stdout)
    assert (document["size"], document["origin"], document["verified"]) == (5, ORIGIN, True)
    assert note.read_text() == document["checkpoint"]

    first = _monitor(verifier, "--pin", str(pin), "--state", str(state))
    assert first.returncode == 0, first.stderr
    assert f"{ORIGIN} size 5" in first.stdout and "first checkpoint seen" in first.stdout
    assert json.loads(state.read_text())["checkpoint"] == note.read_text()

    verifier.append([_entry(n) for n in range(5, 12)])
    second = _monitor(verifier, "--key", str(pin), "--state", str(state), "--format", "json")
    assert second.returncode == 0, second.stderr
    line = json.loads(second.stdout)
    assert (line["size"], line["previous_size"], line["new"], line["entries_checked"]) == (
        12,
        5,
        True,
        7,
    )
    unchanged = _monitor(verifier, "--key", str(pin), "--state", str(state))
    assert unchanged.returncode == 0 and "unchanged" in unchanged.stdout

    # The receipt of an entry, checked offline against the pinned checkpoint of size 5.
    receipt = verifier.get("/v1/log/proof/inclusion", index=3, size=5).json()
    receipt_file = tmp_path / "receipt.json"
    receipt_file.write_text(json.dumps(receipt))
    verified = stockade(
        "log", "verify", str(receipt_file), "--checkpoint", str(note), "--key", str(pin)
    )
    assert verified.returncode == 0, verified.stderr
    assert "entry 3 of stockade.local/verifier-log at size 5" in verified.stdout


def test_monitor_alerts_on_a_wrong_key(verifier: Verifier) -> None:
    verifier.append([_entry(0)])
    wrong = NoteSigner.generate(ORIGIN).verifier.key_string()
    alert = _monitor(verifier, "--key", wrong)
    assert alert.returncode == 1
    assert alert.stderr.startswith("ALERT: transparency log") and "SIGNATURE" in alert.stderr


def test_monitor_alerts_on_forked_and_rolled_back_state(verifier: Verifier, tmp_path: Path) -> None:
    """A state file holding a checkpoint the log's key signed for another history: of the
    same size (fork) and longer than the log (rollback)."""
    verifier.append([_entry(n) for n in range(6)])
    key = str(verifier.data_dir / "keys" / "log-key.pub")
    signer = load_signer(verifier.data_dir / "keys" / "log-signing-key")
    for size, kind in ((6, "FORK"), (4, "FORK"), (9, "ROLLBACK")):
        state = tmp_path / f"state-{size}.json"
        forked = sign_checkpoint(Checkpoint(ORIGIN, size, bytes([size]) * 32), [signer])
        state.write_text(json.dumps({"checkpoint": forked.decode(), "peaks": None}))
        alert = _monitor(verifier, "--key", key, "--state", str(state))
        assert alert.returncode == 1, alert.stdout + alert.stderr
        assert f"ALERT: transparency log {ORIGIN}" in alert.stderr and kind in alert.stderr
        assert json.loads(state.read_text())["checkpoint"] == forked.decode()  # kept
    # A state signed by another key is refused, not trusted.
    other = NoteSigner.generate(ORIGIN)
    state = tmp_path / "foreign.json"
    foreign = sign_checkpoint(Checkpoint(ORIGIN, 6, bytes(32)), [other])
    state.write_text(json.dumps({"checkpoint": foreign.decode(), "peaks": None}))
    refused = _monitor(verifier, "--key", key, "--state", str(state))
    assert refused.returncode == 1 and "not signed by required key" in refused.stderr


def test_running_monitor_alerts_when_the_log_is_rewritten(
    verifier: Verifier, tmp_path: Path
) -> None:
    """The monitor runs; the log grows (one line per checkpoint); then it is rewritten
    behind the verifier's back. The running verifier refuses to sign the rewritten tree (and
    would refuse to start on it); one restarted without its remembered checkpoint signs it,
    and the monitor stops with an ALERT."""
    key = str(verifier.data_dir / "keys" / "log-key.pub")
    entries = [_entry(n) for n in range(4)]
    verifier.append(entries)
    command = stockade_command(
        "log", "monitor", "--verifier", verifier.url, "--ca", verifier.ca, "--key", key,
        "--state", tmp_path / "state.json", "--interval", "0.2",
        "--token-file", verifier.reader_token,
    )  # fmt: skip
    monitor = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert monitor.stdout is not None
        assert "size 4 " in monitor.stdout.readline()
        verifier.append([_entry(4)])
        assert "size 5 " in monitor.stdout.readline()
        rewritten = [*entries, _entry(4)]
        rewritten[2] = rewritten[2].replace(b"affirming", b"contraindicated")
        verifier.rebuild(rewritten)
        refused = verifier.get("/v1/log/checkpoint")
        assert refused.status_code == 503 and refused.json()["error"] == "log-corrupted"
        verifier.stop()
        (verifier.data_dir / "state" / "latest-checkpoint").unlink()
        verifier.start()
        assert monitor.wait(timeout=30) == 1
        stderr = monitor.stderr.read() if monitor.stderr else ""
        assert f"ALERT: transparency log {ORIGIN}" in stderr and "FORK" in stderr
    finally:
        if monitor.poll() is None:
            monitor.kill()
            monitor.wait()


def test_log_api_serves_base64_and_the_key(verifier: Verifier) -> None:
    verifier.append([_entry(0), _entry(1)])
    key = verifier.get("/v1/log/key", token=False).text.strip()
    assert key == (verifier.data_dir / "keys" / "log-key.pub").read_text().strip()
    rows = verifier.get("/v1/log/entries", start=0, end=2).json()["entries"]
    assert [base64.b64decode(row["entry"]) for row in rows] == [_entry(0), _entry(1)]
    # Checkpoints, the key and proofs are public; the entries (who got which result) are not.
    for path, params in (
        ("/v1/log/checkpoint", {}),
        ("/v1/log/proof/inclusion", {"index": 0}),
        ("/v1/log/proof/consistency", {"old": 1}),
    ):
        assert verifier.get(path, token=False, **params).status_code == 200, path
    refused = verifier.get("/v1/log/entries", token=False, start=0)
    assert refused.status_code == 401 and refused.json()["error"] == "read-token"


def test_monitor_needs_the_reader_token_only_for_entries(verifier: Verifier) -> None:
    verifier.append([_entry(0), _entry(1)])
    key = str(verifier.data_dir / "keys" / "log-key.pub")
    refused = _monitor(verifier, "--key", key, token=False)
    assert refused.returncode == 2, refused.stdout + refused.stderr
    assert refused.stderr.count("\n") == 1 and "401 read-token" in refused.stderr
    signatures_only = _monitor(verifier, "--key", key, "--no-entries", token=False)
    assert signatures_only.returncode == 0, signatures_only.stderr
    assert f"{ORIGIN} size 2" in signatures_only.stdout
