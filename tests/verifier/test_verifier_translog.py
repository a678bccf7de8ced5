"""The transparency log in the verifier: every stored result is an entry, answered with a
receipt that verifies against a checkpoint signed by the log's key; the log API serves
entries and proofs; forged checkpoints and foreign keys are refused; a log rewritten or
truncated behind the verifier's back is caught by the monitor (and, while the verifier
remembers what it signed, refused by the verifier itself)."""

from __future__ import annotations

import base64
import hashlib
import stat
from dataclasses import replace
from typing import Any

import pytest
from sqlalchemy import create_engine, delete, select, text, update
from verifier_support import DevAgent, policy_document, read, reader_headers

from stockade.translog import (
    BadSignature,
    MerkleLog,
    NotEnoughSignatures,
    NoteSigner,
    NoteVerifier,
    ProofError,
    leaf_hash,
    root_of,
    sign_checkpoint,
    verify_consistency,
)
from stockade.translog import store as translog_store
from stockade.translog.checkpoint import Checkpoint, open_checkpoint
from stockade.translog.errors import EntryMismatch
from stockade.translog.monitor import Alert, observe
from stockade.translog.receipt import Receipt, check_result_entry, verify_receipt
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.policies import apply_policy

pytestmark = pytest.mark.swtpm

ORIGIN = "stockade.local/verifier-log"


def _key(client) -> NoteVerifier:
    response = client.get("/v1/log/key")
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    return NoteVerifier.from_key_string(response.text)


def _b64(text: str) -> bytes:
    return base64.b64decode(text)


class ClientSource:
    """The log API through the test client (what ``stockade log monitor`` fetches)."""

    def __init__(self, client) -> None:
        self.client = client

    def _get(self, path: str, **params: Any) -> Any:
        response = self.client.get(path, params=params, headers=reader_headers(self.client))
        assert response.status_code == 200, response.text
        return response.json()

    def checkpoint(self) -> bytes:
        return self._get("/v1/log/checkpoint", format="json")["checkpoint"].encode()

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        document = self._get("/v1/log/proof/consistency", old=old_size, new=new_size)
        return [_b64(element) for element in document["proof"]]

    def entries(self, start: int, end: int) -> list[tuple[bytes, bytes]]:
        rows = self._get("/v1/log/entries", start=start, end=end)["entries"]
        return [(_b64(row["entry"]), _b64(row["leaf_hash"])) for row in rows]


def _with_policy(client):
    """``client`` with the test policy stored as ``serve --policy`` stores it: not an
    operator action, so the log holds only the results these tests count."""
    service = client.app.state.service
    document = policy_document()
    with service.transaction() as session:
        apply_policy(service, session, document["id"], document, service.now())
    service.invalidate_policy()
    return client


@pytest.fixture
def client(make_client):
    return _with_policy(make_client())


@pytest.fixture
def attested(client, software_tpm):
    """A node attested three times: the log holds three results."""
    agent = DevAgent.create(software_tpm)
    agent.enroll(client, "node-log")
    bodies = []
    for _ in range(3):
        response = agent.attest(client)
        assert response.status_code == 200, response.text
        bodies.append(response.json())
    return agent, bodies


def test_results_are_logged_with_receipts_that_verify(client, attested, verifier_config):
    agent, bodies = attested
    key = _key(client)
    assert key.name == ORIGIN
    keys = verifier_config.data_dir / "keys"
    assert (keys / "log-key.pub").read_text().strip() == key.key_string()
    assert stat.S_IMODE((keys / "log-signing-key").stat().st_mode) == 0o600
    assert stat.S_IMODE(keys.stat().st_mode) == 0o700

    for number, body in enumerate(bodies):
        assert body["log_index"] == number
        receipt = Receipt.from_json(body["inclusion_proof"])
        assert (receipt.log_index, receipt.tree_size) == (number, number + 1)
        verified = verify_receipt(receipt, [key], required=[key.name], origin=ORIGIN)
        assert verified.checkpoint.size == number + 1
        entry = verified.entry
        check_result_entry(entry, body)
        assert entry == {
            "type": "attestation-result",
            "result_id": body["result_id"],
            "node_id": agent.node_id,
            "node_name": "node-log",
            "status": "affirming",
            "policy": "test@1",
            "not_after": body["not_after"],
            "issued_at": entry["issued_at"],
            "ear_sha256": hashlib.sha256(body["ear"].encode()).hexdigest(),
        }
        # Canonical JSON: the entry's bytes are exactly the sorted, compact encoding.
        assert receipt.entry.startswith(b'{"ear_sha256":"') and b" " not in receipt.entry
        # Another result's EAR is not this entry's.
        other = bodies[(number + 1) % 3]
        with pytest.raises(EntryMismatch, match="result_id"):
            check_result_entry(entry, {**body, "result_id": other["result_id"]})
        with pytest.raises(EntryMismatch, match="ear_sha256"):
            check_result_entry(entry, {**body, "ear": other["ear"]})

    # The evidence is not in the log: no nonce, quote or PCR values.
    logged = read(client, "/v1/log/entries", params={"start": 0}).json()["entries"]
    for row in logged:
        assert not {"nonce", "quote", "pcrs", "signature"} & set(row) - {"entry"}
        text = _b64(row["entry"]).decode()
        assert "nonce" not in text and "quote" not in text and "pcrs" not in text


def test_checkpoint_api_text_and_json(client, attested):
    key = _key(client)
    text = client.get("/v1/log/checkpoint")
    assert text.status_code == 200 and text.headers["content-type"].startswith("text/plain")
    head, signed_by = open_checkpoint(text.text.encode(), [key], origin=ORIGIN)
    assert (head.size, signed_by) == (3, [ORIGIN])
    document = client.get("/v1/log/checkpoint", params={"format": "json"}).json()
    assert document["size"] == 3 and document["origin"] == ORIGIN
    assert _b64(document["root"]) == head.root
    assert document["checkpoint"] == text.text  # same size: the same signed note
    assert client.get("/v1/log/key", params={"format": "json"}).json() == {
        "origin": ORIGIN,
        "key": key.key_string(),
    }


def test_entries_api(client, attested):
    _, bodies = attested
    document = read(client, "/v1/log/entries", params={"start": 1, "end": 500}).json()
    assert (document["start"], document["end"], document["size"]) == (1, 3, 3)
    assert [row["index"] for row in document["entries"]] == [1, 2]
    for row, body in zip(document["entries"], bodies[1:], strict=True):
        entry = _b64(row["entry"])
        assert leaf_hash(entry) == _b64(row["leaf_hash"])
        assert entry == _b64(body["inclusion_proof"]["entry"])
    assert read(client, "/v1/log/entries", params={"start": 3}).json()["entries"] == []
    for params in ({"start": 4}, {"start": 2, "end": 1}):
        refused = read(client, "/v1/log/entries", params=params)
        assert refused.status_code == 400 and refused.json()["error"] == "range"
    assert read(client, "/v1/log/entries", params={"start": -1}).status_code == 422


def test_inclusion_proof_api(client, attested):
    key = _key(client)
    current = client.get("/v1/log/proof/inclusion", params={"index": 0}).json()
    verified = verify_receipt(Receipt.from_json(current), [key], origin=ORIGIN)
    assert (verified.log_index, verified.checkpoint.size) == (0, 3)
    older = client.get("/v1/log/proof/inclusion", params={"index": 1, "size": 2}).json()
    assert "checkpoint" not in older
    # A receipt for size 2 checks against a size-2 checkpoint, not the current one.
    with pytest.raises(ProofError, match="fetch a proof for that size"):
        verify_receipt(Receipt.from_json(older), [key], checkpoint=current["checkpoint"].encode())
    for params in ({"index": 3}, {"index": 0, "size": 4}):
        refused = client.get("/v1/log/proof/inclusion", params=params)
        assert refused.status_code == 400 and refused.json()["error"] == "range"


def test_consistency_between_two_checkpoints(client, attested):
    agent, _ = attested
    key = _key(client)
    first, _ = open_checkpoint(client.get("/v1/log/checkpoint").text.encode(), [key])
    for _ in range(2):
        assert agent.attest(client).status_code == 200
    answer = client.get("/v1/log/proof/consistency", params={"old": first.size}).json()
    second, _ = open_checkpoint(answer["checkpoint"].encode(), [key])
    assert (first.size, second.size, answer["new_size"]) == (3, 5, 5)
    proof = [_b64(element) for element in answer["proof"]]
    verify_consistency(first.size, second.size, first.root, second.root, proof)
    explicit = client.get("/v1/log/proof/consistency", params={"old": 1, "new": 4}).json()
    assert "checkpoint" not in explicit and explicit["old_size"] == 1
    refused = client.get("/v1/log/proof/consistency", params={"old": 6})
    assert refused.status_code == 400 and refused.json()["error"] == "range"


def test_forged_checkpoint_and_foreign_keys_are_refused(client, attested):
    _, bodies = attested
    key = _key(client)
    receipt = Receipt.from_json(bodies[2]["inclusion_proof"])
    assert receipt.checkpoint is not None
    # The note's root replaced: the log's signature no longer verifies.
    head = Checkpoint.parse(receipt.checkpoint.split(b"\n\n")[0] + b"\n")
    forged_body = Checkpoint(head.origin, head.size, bytes(32)).body()
    forged = forged_body + b"\n" + receipt.checkpoint.split(b"\n\n", 1)[1]
    with pytest.raises(BadSignature):
        verify_receipt(receipt, [key], checkpoint=forged)
    # A checkpoint of a forged tree, signed by another key with the log's name: that key is
    # unknown, its signature ignored, and the log's own is missing.
    impostor = NoteSigner.generate(ORIGIN)
    with pytest.raises(NotEnoughSignatures):
        verify_receipt(
            receipt, [key], checkpoint=sign_checkpoint(Checkpoint(ORIGIN, 3, bytes(32)), [impostor])
        )
    # The right checkpoint checked with a key the log does not use.
    with pytest.raises(NotEnoughSignatures):
        verify_receipt(receipt, [impostor.verifier])
    # A proof altered by one bit.
    altered = Receipt(
        receipt.log_index,
        receipt.tree_size,
        receipt.entry,
        (bytes([receipt.proof[0][0] ^ 1]) + receipt.proof[0][1:], *receipt.proof[1:]),
        receipt.checkpoint,
    )
    with pytest.raises(ProofError):
        verify_receipt(altered, [key])


def _rebuild(url: str, entries: list[bytes]) -> None:
    """Rewrite the stored log behind the verifier's back: a fresh tree of ``entries``."""
    engine = create_engine(url)
    try:
        with engine.begin() as connection:
            connection.execute(delete(translog_store.leaves))
            connection.execute(delete(translog_store.subtrees))
            connection.execute(update(translog_store.state).values(size=0))
        MerkleLog(engine).append_many(entries)
    finally:
        engine.dispose()


def _forget_checkpoint(config) -> None:
    (config.data_dir / "state" / "latest-checkpoint").unlink()


def _stored_entries(url: str) -> list[bytes]:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            rows = connection.execute(
                select(translog_store.leaves.c.entry).order_by(translog_store.leaves.c.leaf_index)
            )
            return [bytes(entry) for (entry,) in rows]
    finally:
        engine.dispose()


def test_rewritten_log_is_detected_by_the_monitor(make_client, attested, verifier_config):
    client = make_client()
    key = _key(client)
    url = verifier_config.resolved_database_url
    state = observe(ClientSource(client), key, None).state
    assert state.checkpoint.size == 3 and state.peaks is not None

    # Entry 1 rewritten to a contraindicated result, the tree rebuilt consistently.
    stored = _stored_entries(url)
    stored[1] = stored[1].replace(b'"status":"affirming"', b'"status":"contraindicated"')
    _rebuild(url, stored)
    # The running verifier remembers the root it signed for size 3 and will not sign another.
    refused = client.get("/v1/log/checkpoint")
    assert refused.status_code == 503 and refused.json()["error"] == "log-corrupted"
    # Nor will it start again on the rewritten tree: it remembers the checkpoint on disk.
    with pytest.raises(ConfigurationError, match="does not extend the signed checkpoint of 3"):
        make_client()
    # A verifier whose remembered checkpoint was deleted signs the rewritten tree: the
    # monitor sees the fork.
    _forget_checkpoint(verifier_config)
    restarted = make_client()
    with pytest.raises(Alert) as same_size:
        observe(ClientSource(restarted), key, state)
    assert same_size.value.kind == "fork"
    # ... and once the log grows, the consistency proof from size 3 fails.
    agent, _ = attested
    assert agent.attest(restarted).status_code == 200
    with pytest.raises(Alert) as grown:
        observe(ClientSource(restarted), key, state)
    assert grown.value.kind == "fork" and "does not extend" in grown.value.detail


def test_rewritten_entry_row_is_detected_by_the_monitor(make_client, attested, verifier_config):
    """Only the stored entry changed (not its leaf hash): the tree and its proofs are the
    same, but the entry served no longer hashes to them."""
    client = make_client()
    key = _key(client)
    state = observe(ClientSource(client), key, None, check_entries=False).state
    agent, _ = attested
    assert agent.attest(client).status_code == 200
    engine = create_engine(verifier_config.resolved_database_url)
    with engine.begin() as connection:
        connection.execute(
            update(translog_store.leaves)
            .where(translog_store.leaves.c.leaf_index == 3)
            .values(entry=b'{"type":"attestation-result"}')
        )
    engine.dispose()
    # Consistency alone passes (the hashes are intact) ...
    assert observe(ClientSource(client), key, state, check_entries=False).state.checkpoint.size == 4
    # ... checking the entries catches the rewritten row.
    with pytest.raises(Alert) as caught:
        observe(ClientSource(client), key, state)
    assert caught.value.kind == "entries" and "entry 3" in caught.value.detail


def test_truncated_log_is_refused_and_detected(make_client, attested, verifier_config):
    client = make_client()
    key = _key(client)
    url = verifier_config.resolved_database_url
    state = observe(ClientSource(client), key, None).state
    _rebuild(url, _stored_entries(url)[:2])
    refused = client.get("/v1/log/checkpoint")
    assert refused.status_code == 503 and "checkpoint of 3" in refused.json()["detail"]
    with pytest.raises(ConfigurationError, match="has 2 entries, but a checkpoint of 3"):
        make_client()
    _forget_checkpoint(verifier_config)
    with pytest.raises(Alert) as caught:
        observe(ClientSource(make_client()), key, state)
    assert caught.value.kind == "rollback"


def test_a_result_and_its_log_entry_commit_together(make_client, software_tpm, verifier_config):
    """A result whose transaction fails is neither stored nor logged."""
    client = _with_policy(make_client())
    agent = DevAgent.create(software_tpm)
    node_id = agent.enroll(client, "node-atomic")
    service = client.app.state.service
    original = service.translog.append

    def failing(connection, entry):
        original(connection, entry)
        raise RuntimeError("the database fails after the append")

    service.translog.append = failing
    assert agent.attest(client).status_code == 500
    service.translog.append = original
    assert client.get("/v1/log/checkpoint", params={"format": "json"}).json()["size"] == 0
    assert read(client, f"/v1/nodes/{node_id}/results").json()["results"] == []
    response = agent.attest(client)
    assert response.status_code == 200 and response.json()["log_index"] == 0


def test_log_key_is_kept_across_restarts_and_bound_to_its_origin(make_client, verifier_config):
    first = _key(make_client())
    assert _key(make_client()) == first
    with pytest.raises(ConfigurationError, match="transparency log key"):
        make_client(replace(verifier_config, log_origin="other.example/log"))


# -- a database that lost commits (issue 21) --------------------------------------------------


def _result_count(url: str) -> int:
    engine = create_engine(url)
    try:
        with engine.connect() as connection:
            return len(connection.execute(text("SELECT id FROM results")).all())
    finally:
        engine.dispose()


def test_an_attestation_on_a_log_that_lost_its_tail_is_refused_and_rolled_back(
    make_client, attested, verifier_config
):
    """The database lost the newest log commits under the running verifier: the next
    attestation answers 503 ``log-corrupted``, stores nothing, and so do the ones after."""
    client = make_client()
    agent, _ = attested
    url = verifier_config.resolved_database_url
    _rebuild(url, _stored_entries(url)[:2])
    results = _result_count(url)
    for _ in range(2):
        refused = agent.attest(client)
        assert refused.status_code == 503, refused.text
        assert refused.json()["error"] == "log-corrupted"
        assert "has 2 entries, but a checkpoint of 3" in refused.json()["detail"]
    assert _result_count(url) == results and len(_stored_entries(url)) == 2


def test_a_log_regrown_to_the_signed_size_is_refused_not_extended_from_cached_peaks(
    make_client, attested, verifier_config
):
    """Lost, then regrown to the size this verifier signed with other entries: reusing the
    peaks cached from the lost tree used to write subtrees its leaves do not hash to and
    answer 200. The stored tree is checked instead, and the append refused."""
    client = make_client()
    agent, _ = attested
    url = verifier_config.resolved_database_url
    stored = _stored_entries(url)
    _rebuild(url, [*stored[:2], stored[2].replace(b"affirming", b"contraindicated")])
    refused = agent.attest(client)
    assert refused.status_code == 503 and refused.json()["error"] == "log-corrupted"
    assert "does not extend the signed checkpoint of 3" in refused.json()["detail"]
    engine = create_engine(url)
    try:
        log = MerkleLog(engine)
        assert log.size() == 3 and log.root() == root_of(_stored_entries(url))
    finally:
        engine.dispose()


def test_the_newest_checkpoint_is_on_disk_when_its_receipt_is_returned(
    client, attested, verifier_config
):
    _, bodies = attested
    key = _key(client)
    remembered = (verifier_config.data_dir / "state" / "latest-checkpoint").read_bytes()
    checkpoint, _ = open_checkpoint(remembered, [key], origin=ORIGIN)
    receipt = Receipt.from_json(bodies[-1]["inclusion_proof"])
    assert checkpoint.size == receipt.tree_size == 3 and remembered == receipt.checkpoint
    state = verifier_config.data_dir / "state"
    assert stat.S_IMODE(state.stat().st_mode) == 0o700
    assert stat.S_IMODE((state / "latest-checkpoint").stat().st_mode) == 0o600


def test_replicas_sharing_a_database_accept_each_others_growth(
    make_client, attested, verifier_config, tmp_path
):
    """Two replicas, one database, the same keys, a remembered checkpoint each: each signs
    only heads that extend its own newest, and accepts the other's appends."""
    first = make_client()
    other_dir = tmp_path / "replica-2"
    (other_dir / "keys").mkdir(parents=True, mode=0o700)
    other_dir.chmod(0o700)
    for source in (verifier_config.data_dir / "keys").iterdir():  # replicas share the keys
        (other_dir / "keys" / source.name).write_bytes(source.read_bytes())
        (other_dir / "keys" / source.name).chmod(0o600)
    shared = verifier_config.resolved_database_url
    second = make_client(replace(verifier_config, data_dir=other_dir, database_url=shared))
    key = _key(first)
    assert _key(second) == key
    agent, _ = attested
    heads: list[Checkpoint] = []
    for round_ in range(6):
        replica = (first, second)[round_ % 2]
        body = agent.attest(replica).json()
        verified = verify_receipt(Receipt.from_json(body["inclusion_proof"]), [key])
        assert verified.checkpoint.size == 4 + round_
        heads.append(verified.checkpoint)
        head = replica.get("/v1/log/checkpoint")
        assert head.status_code == 200
    last = heads[-1]
    for head in heads[:-1]:
        proof = ClientSource(first).consistency_proof(head.size, last.size)
        verify_consistency(head.size, last.size, head.root, last.root, proof)
    for data_dir, size in ((verifier_config.data_dir, 8), (other_dir, 9)):
        remembered = (data_dir / "state" / "latest-checkpoint").read_bytes()
        assert open_checkpoint(remembered, [key])[0].size == size


def _entry_named(name: str) -> bytes:
    return b'{"name":"%s","type":"test"}' % name.encode()


def test_receipts_signed_out_of_order_stay_on_one_chain_and_a_lost_commit_is_never_signed(
    tmp_path,
):
    """Receipts are signed after their commits, in any order: each checkpoint is signed only
    when it is consistent with the newest one signed. An append whose commit the database
    then lost is refused its receipt once another tree of that size was signed."""
    from datetime import UTC, datetime

    from stockade.translog import create_tables
    from stockade.verifier.db import make_engine
    from stockade.verifier.integrity import STATE_DIRECTORY, CheckpointFile
    from stockade.verifier.transparency import LogUnavailable, TransparencyLog

    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    state = CheckpointFile(tmp_path / STATE_DIRECTORY)
    log = TransparencyLog(engine, NoteSigner.generate(ORIGIN), lambda: datetime.now(UTC), state)

    def committed(entry: bytes):
        with engine.begin() as connection:
            return log.append(connection, entry)

    first, second = committed(_entry_named("a0")), committed(_entry_named("a1"))
    later = log.receipt(second, _entry_named("a1"))  # the later commit is signed first
    earlier = log.receipt(first, _entry_named("a0"))
    key = log.signer.verifier
    for receipt in (later, earlier):
        verify_receipt(receipt, [key])
    assert open_checkpoint(state.path.read_bytes(), [key])[0].size == 2

    lost = committed(
        _entry_named("lost")
    )  # committed, then lost by the database before its receipt
    with engine.begin() as connection:
        connection.execute(
            delete(translog_store.leaves).where(translog_store.leaves.c.leaf_index == 2)
        )
        connection.execute(update(translog_store.state).values(size=2))
    replacement = committed(
        _entry_named("replacement")
    )  # the database still extends what was signed
    verify_receipt(log.receipt(replacement, _entry_named("replacement")), [key])
    with pytest.raises(LogUnavailable, match="refuses to append or sign"):
        log.receipt(lost, _entry_named("lost"))
    assert log.latest is not None and log.latest.root == replacement.root
    engine.dispose()
