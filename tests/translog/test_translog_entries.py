"""Log entries and receipts (pure): one canonical encoding per record, strict parsing with
typed errors, unknown entry types accepted, receipts round-tripping through JSON."""

from __future__ import annotations

import hashlib
import json

import pytest

from stockade.translog import MerkleLog, NoteSigner, create_tables, sign_checkpoint
from stockade.translog.entries import (
    ATTESTATION_RESULT,
    attestation_result_entry,
    canonical_json,
    parse_entry,
)
from stockade.translog.errors import EntryMismatch, MalformedEntry, MalformedReceipt
from stockade.translog.receipt import Receipt, check_result_entry, verify_receipt
from stockade.verifier.db import make_engine

FIELDS = {
    "result_id": "r-1",
    "node_id": "n-1",
    "node_name": "nöde-1",
    "status": "affirming",
    "policy": "prod@3",
    "not_after": "2026-01-01T00:02:00.000Z",
    "issued_at": "2026-01-01T00:00:00.000Z",
}


def test_attestation_result_entry_is_canonical_and_parses_back():
    entry = attestation_result_entry(**FIELDS, ear="a.b.c")
    assert entry == canonical_json(json.loads(entry))
    assert b" " not in entry and "nöde-1".encode() in entry  # UTF-8, not \\u escapes
    document = parse_entry(entry)
    assert document == {
        **FIELDS,
        "type": ATTESTATION_RESULT,
        "ear_sha256": hashlib.sha256(b"a.b.c").hexdigest(),
    }
    assert list(document) == sorted(document)


def test_unknown_entry_types_are_accepted_for_later_records():
    entry = canonical_json({"type": "a-type-from-the-future", "container": "sha256:00", "seq": 3})
    assert parse_entry(entry)["seq"] == 3


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b'{"type": "x"}', "not canonical"),
        (b'{"b":1,"a":2,"type":"x"}', "not canonical"),
        (b'{"type":"x","type":"y"}', "twice"),
        (b"[1,2]", "not an object"),
        (b'{"a":1}', "no string 'type'"),
        (b'{"type":""}', "no string 'type'"),
        (b'{"type":"x","v":NaN}', "NaN"),
        (b"\xff", "not UTF-8"),
        (b"{", "not JSON"),
        (canonical_json({"type": ATTESTATION_RESULT, "result_id": "r"}), "no string 'node_id'"),
        (b"{" + b" " * 70000 + b"}", "at most"),
    ],
)
def test_malformed_entries(data, message):
    with pytest.raises(MalformedEntry, match=message):
        parse_entry(data)


def test_receipts_round_trip_and_refuse_malformed_json(tmp_path):
    engine = make_engine(f"sqlite:///{tmp_path / 'log.db'}")
    create_tables(engine)
    log = MerkleLog(engine)
    entries = [
        attestation_result_entry(**{**FIELDS, "result_id": f"r-{n}"}, ear=f"e{n}") for n in range(5)
    ]
    log.append_many(entries)
    signer = NoteSigner.generate("example.org/log")
    note = sign_checkpoint(log.checkpoint("example.org/log"), [signer])
    receipt = Receipt(2, 5, entries[2], tuple(log.inclusion_proof(2, 5)), note)
    engine.dispose()
    assert Receipt.from_json(json.loads(json.dumps(receipt.to_json()))) == receipt
    verified = verify_receipt(receipt, [signer.verifier], origin="example.org/log")
    assert verified.entry["result_id"] == "r-2"
    check_result_entry(verified.entry, {"result_id": "r-2", "ear": "e2", "status": "affirming"})
    with pytest.raises(EntryMismatch, match="status"):
        check_result_entry(verified.entry, {"result_id": "r-2", "ear": "e2", "status": "warning"})
    document = receipt.to_json()
    for change, message in [
        ({"log_index": -1}, "log_index"),
        ({"tree_size": True}, "tree_size"),
        ({"entry": "!!"}, "entry is not base64"),
        ({"proof": "abc"}, "proof is not a list"),
        ({"proof": [1]}, r"proof\[0\]"),
        ({"checkpoint": 5}, "checkpoint is not a string"),
    ]:
        with pytest.raises(MalformedReceipt, match=message):
            Receipt.from_json({**document, **change})
    with pytest.raises(MalformedReceipt, match="no checkpoint"):
        verify_receipt(Receipt(2, 5, entries[2], receipt.proof), [signer.verifier])
