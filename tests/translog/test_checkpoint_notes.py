"""Signed notes and checkpoints (stockade.translog.checkpoint, .keys) and the fuzz target
fuzz/fuzz_checkpoint.py.

The interoperability anchor is the example of Go's golang.org/x/mod/sumdb/note (the
PeterNeumann key: its signer and verifier key strings and the note it signs), which the
C2SP signed-note spec grew out of: Ed25519 is deterministic, so signing that text with that
key must reproduce the published note byte for byte.
"""

from __future__ import annotations

import base64
import contextlib
import importlib.util
import random
import re
import stat
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from stockade.translog import keys
from stockade.translog.checkpoint import (
    MAX_SIGNATURES,
    Checkpoint,
    Note,
    NoteSigner,
    NoteVerifier,
    add_signature,
    cosign_checkpoint,
    key_id,
    open_checkpoint,
    open_note,
    parse_note,
    sign_checkpoint,
    sign_note,
)
from stockade.translog.errors import (
    BadSignature,
    MalformedKey,
    MalformedNote,
    NotEnoughSignatures,
    NoteRejected,
    ProofError,
    TranslogError,
)
from stockade.translog.merkle import EMPTY_ROOT, leaf_hash

GO_VERIFIER_KEY = "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW"
GO_SIGNER_KEY = "PRIVATE+KEY+PeterNeumann+c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz"
GO_TEXT = (
    b"If you think cryptography is the answer to your problem,\n"
    b"then you don't know what your problem is.\n"
)
GO_NOTE = (
    GO_TEXT
    + b"\n"
    + "\u2014 PeterNeumann ".encode()
    + b"x08go/ZJkuBS9UG/SffcvIAQxVBtiFupLLr8pAcElZInNIuGUgYN1FFYC2pZSNXgKvqfqdng"
    + b"otpRZb6KE6RyyBwJnAM=\n"
)
# The checkpoint example of c2sp.org/tlog-checkpoint (its body; the key is not published).
C2SP_BODY = b"example.com/behind-the-sofa\n20852163\nCsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=\n"
ROOT = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
ORIGIN = "log.example/stockade"
FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"


@pytest.fixture(scope="module")
def log_key():
    return NoteSigner.generate(ORIGIN)


@pytest.fixture(scope="module")
def witnesses():
    return [NoteSigner.generate(f"witness.example/w{n}") for n in range(3)]


@pytest.fixture(scope="module")
def checkpoint():
    return Checkpoint(ORIGIN, 8, ROOT)


# -- the Go sumdb/note vector ------------------------------------------------------------


def test_go_note_vector_signs_byte_for_byte():
    signer = NoteSigner.from_key_string(GO_SIGNER_KEY)
    assert signer.key_string() == GO_SIGNER_KEY
    assert signer.verifier.key_string() == GO_VERIFIER_KEY
    assert signer.key_id == 0xC74F20A3
    assert sign_note(GO_TEXT, [signer]) == GO_NOTE


def test_go_note_vector_opens():
    verifier = NoteVerifier.from_key_string(GO_VERIFIER_KEY)
    assert verifier.key_id == key_id("PeterNeumann", verifier.raw_public_key) == 0xC74F20A3
    assert open_note(GO_NOTE, [verifier]) == (GO_TEXT, ["PeterNeumann"])
    altered = GO_NOTE.replace(b"cryptography", b"cryptographY")
    with pytest.raises(BadSignature, match="'PeterNeumann' \\(key id c74f20a3\\) does not verify"):
        open_note(altered, [verifier])


def test_go_verifier_key_manglings_are_rejected():
    """As note_test.go TestNewVerifier: every proper substring and every one-byte change of
    the key string is refused, with MalformedKey."""
    raw = GO_VERIFIER_KEY.encode()
    for start in range(len(raw) + 1):
        for end in range(start + 1, len(raw) + 1):
            if (start, end) == (0, len(raw)):
                continue
            with pytest.raises(MalformedKey):
                NoteVerifier.from_key_string(raw[start:end].decode())
    for position in range(len(raw)):
        changed = bytearray(raw)
        changed[position] += 1
        with pytest.raises(MalformedKey):
            NoteVerifier.from_key_string(changed.decode("utf-8", "replace"))


# -- checkpoint bodies ---------------------------------------------------------------------


def test_checkpoint_body_format(checkpoint):
    assert checkpoint.body() == (
        b"log.example/stockade\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n"
    )
    assert Checkpoint.parse(checkpoint.body()) == checkpoint
    extended = Checkpoint(ORIGIN, 0, EMPTY_ROOT, ("a b", "c"))
    assert extended.body().endswith(b"\na b\nc\n")
    assert Checkpoint.parse(extended.body()) == extended


def test_c2sp_example_body_parses():
    parsed = Checkpoint.parse(C2SP_BODY)
    assert (parsed.origin, parsed.size) == ("example.com/behind-the-sofa", 20852163)
    assert parsed.root == base64.b64decode("CsUYapGGPo4dkMgIAUqom/Xajj7h2fB2MPA3j2jxq2I=")
    assert parsed.body() == C2SP_BODY


@pytest.mark.parametrize(
    ("body", "message"),
    [
        (b"origin\n8\n", "at least 3"),
        (b"origin\n08\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "leading zeroes"),
        (b"origin\n-1\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "decimal"),
        (b"origin\n+1\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "decimal"),
        (b"origin\n 1\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "decimal"),
        (b"origin\n18446744073709551616\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "uint64"),
        (
            b"origin\n" + b"9" * 5000 + b"\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n",
            "decimal",
        ),
        (b"origin\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyh=\n", "canonical"),
        (b"origin\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg\n", "base64"),
        (b"origin\n8\nXcnaeacG-WamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "base64"),
        (b"origin\n8\nAAAA\n", "3 bytes"),
        (b"origin\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=", "newline"),
        (b"\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "line 1 is empty"),
        (b"origin\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n\next\n", "line 4 is empty"),
        (b"orig\tin\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "control character"),
        (b"origin\r\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "control character"),
        (b"orig\xffin\n8\nXcnaeacGWamtVZy3Ad7ZoqudgjqtL0lgz+Nw7/RgQyg=\n", "UTF-8"),
    ],
)
def test_malformed_checkpoint_bodies(body, message):
    with pytest.raises(MalformedNote, match=message):
        Checkpoint.parse(body)


def test_checkpoint_fields_are_checked():
    for origin, size, root, extensions in [
        ("", 1, ROOT, ()),
        ("a\nb", 1, ROOT, ()),
        ("a", -1, ROOT, ()),
        ("a", 1 << 64, ROOT, ()),
        ("a", 1, ROOT[:31], ()),
        ("a", 1, ROOT, ("",)),
        ("a", 1, ROOT, ("x\ny",)),
    ]:
        with pytest.raises(MalformedNote):
            Checkpoint(origin, size, root, extensions)


# -- opening notes: known, unknown and bad keys --------------------------------------------


def test_log_signed_checkpoint_opens(log_key, checkpoint):
    note = sign_checkpoint(checkpoint, [log_key])
    assert open_checkpoint(note, [log_key.verifier], origin=ORIGIN) == (checkpoint, [ORIGIN])


def test_signature_by_an_unknown_key_is_ignored(log_key, witnesses, checkpoint):
    stranger = NoteSigner.generate("stranger.example/key")
    note = sign_checkpoint(checkpoint, [stranger, log_key])
    assert open_checkpoint(note, [log_key.verifier]) == (checkpoint, [ORIGIN])
    # an unknown key's signature is not even checked: garbage from it changes nothing
    garbage = Note(parse_note(note).text, (stranger.sign(b"other text\n"),)).encode()
    cosigned = add_signature(garbage, log_key)
    assert open_checkpoint(cosigned, [log_key.verifier]) == (checkpoint, [ORIGIN])


def test_same_name_other_key_and_same_id_other_name_are_unknown(log_key, checkpoint):
    """A rotated key (same name, another id) and a key id collision under another name are
    other keys: ignored, never checked against the known key."""
    rotated = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(checkpoint, [rotated, log_key])
    assert open_checkpoint(note, [log_key.verifier])[1] == [ORIGIN]
    text = parse_note(note).text
    impostor = Note(
        text, (log_key.sign(text).__class__("other.example", log_key.key_id, bytes(64)),)
    ).encode()
    with pytest.raises(NotEnoughSignatures, match="0 verified"):
        open_checkpoint(impostor, [log_key.verifier])


def test_only_unknown_keys_is_rejected(checkpoint):
    stranger = NoteSigner.generate("stranger.example/key")
    known = NoteSigner.generate(ORIGIN)
    note = sign_checkpoint(checkpoint, [stranger])
    with pytest.raises(NotEnoughSignatures, match="0 verified signature"):
        open_checkpoint(note, [known.verifier])


def test_bad_signature_by_a_known_key_is_rejected_with_its_name(log_key, witnesses, checkpoint):
    note = sign_checkpoint(checkpoint, [log_key, witnesses[0]])
    forged = note.replace(b"\n8\n", b"\n9\n")
    with pytest.raises(BadSignature) as raised:
        open_checkpoint(forged, [log_key.verifier])
    assert ORIGIN in str(raised.value)
    assert f"{log_key.key_id:08x}" in str(raised.value)
    assert raised.value.exit_code == 1
    # a good log signature does not save a note whose known witness signature is bad
    parsed = parse_note(note)
    bad_witness = Note(
        parsed.text,
        (parsed.signatures[0], witnesses[0].sign(b"something else\n")),
    ).encode()
    with pytest.raises(BadSignature, match=re.escape("witness.example/w0")):
        open_checkpoint(bad_witness, [log_key.verifier, witnesses[0].verifier])
    # a known key's signature of the wrong length is a bad signature too
    short = Note(
        parsed.text,
        (parsed.signatures[0].__class__(ORIGIN, log_key.key_id, b"\x01" * 10),),
    ).encode()
    with pytest.raises(BadSignature, match="64 bytes, this one is 10"):
        open_checkpoint(short, [log_key.verifier])


def test_required_signatures(log_key, witnesses, checkpoint):
    note = sign_checkpoint(checkpoint, [log_key, witnesses[0], witnesses[1]])
    everyone = [log_key.verifier, *(w.verifier for w in witnesses)]
    assert open_checkpoint(note, everyone, required=3)[1] == [
        ORIGIN,
        "witness.example/w0",
        "witness.example/w1",
    ]
    with pytest.raises(NotEnoughSignatures, match=r"3 verified signature.*4 required"):
        open_checkpoint(note, everyone, required=4)
    assert open_checkpoint(note, everyone, required=[ORIGIN, "witness.example/w1"])[0] == (
        checkpoint
    )
    assert open_checkpoint(note, everyone, required=ORIGIN)[0] == checkpoint
    with pytest.raises(NotEnoughSignatures, match=re.escape("required key(s) witness.example/w2")):
        open_checkpoint(note, everyone, required=[ORIGIN, "witness.example/w2"])
    with pytest.raises(NoteRejected, match="at least one"):
        open_checkpoint(note, everyone, required=0)


def test_one_key_signing_twice_counts_once(log_key, checkpoint):
    note = sign_checkpoint(checkpoint, [log_key])
    doubled = note + parse_note(note).signatures[0].line()
    assert open_checkpoint(doubled, [log_key.verifier])[1] == [ORIGIN]
    with pytest.raises(NotEnoughSignatures):
        open_checkpoint(doubled, [log_key.verifier], required=2)


def test_checkpoint_of_another_log_is_rejected(log_key):
    other = Checkpoint("other.example/log", 1, ROOT)
    note = sign_checkpoint(other, [log_key])
    with pytest.raises(NoteRejected, match=re.escape("other.example/log")):
        open_checkpoint(note, [log_key.verifier], origin=ORIGIN)


def test_conflicting_verifier_configuration_is_refused(log_key):
    # two different keys with the same name and (forced) the same id cannot both be trusted
    other = NoteVerifier(ORIGIN, NoteSigner.generate(ORIGIN).private_key.public_key())
    other.key_id = log_key.key_id
    with pytest.raises(MalformedKey, match="share name"):
        open_note(
            sign_checkpoint(Checkpoint(ORIGIN, 1, ROOT), [log_key]), [log_key.verifier, other]
        )


# -- witnesses -------------------------------------------------------------------------------


def test_witness_cosigns_and_verifiers_accept_the_cosigned_checkpoint(log_key, witnesses):
    old = Checkpoint(
        ORIGIN, 2, bytes.fromhex("fac54203e7cc696cf0dfcb42c92a1d9dbaf70ad9e621f4bd8d98662f00e3c125")
    )
    new = Checkpoint(
        ORIGIN, 5, bytes.fromhex("4e3bbb1f7b478dcfe71fb631631519a3bca12c9aefca1612bfce4c13a86264d4")
    )
    proof = [
        bytes.fromhex("5f083f0a1a33ca076a95279832580db3e0ef4584bdff1f54c8a360f50de3031e"),
        bytes.fromhex("bc1a0643b12e4d2d7c77918f44e0f4f79a838b6cf9ec5b5c283e1f4d88599e6b"),
    ]
    note = sign_checkpoint(new, [log_key])
    seen, cosigned = cosign_checkpoint(
        note, witnesses[0], log_key=log_key.verifier, previous=old, proof=proof
    )
    assert seen == new
    _, cosigned = cosign_checkpoint(cosigned, witnesses[1], log_key=log_key.verifier)
    verifiers = [log_key.verifier, witnesses[0].verifier, witnesses[1].verifier]
    assert open_checkpoint(cosigned, verifiers, required=3)[1] == [
        ORIGIN,
        "witness.example/w0",
        "witness.example/w1",
    ]
    # cosigning again replaces the witness's own signature instead of adding one
    again = add_signature(cosigned, witnesses[0])
    assert len(parse_note(again).signatures) == 3
    assert open_checkpoint(again, verifiers, required=3)[0] == new


def test_witness_refuses_what_it_must_not_cosign(log_key, witnesses, checkpoint):
    note = sign_checkpoint(checkpoint, [log_key])
    stranger = NoteSigner.generate(ORIGIN)
    with pytest.raises(NotEnoughSignatures):
        cosign_checkpoint(note, witnesses[0], log_key=stranger.verifier)
    bigger = Checkpoint(ORIGIN, 9, ROOT)
    with pytest.raises(ProofError, match="never shrinks"):
        cosign_checkpoint(note, witnesses[0], log_key=log_key.verifier, previous=bigger)
    same_size_other_root = Checkpoint(ORIGIN, 8, EMPTY_ROOT)
    with pytest.raises(ProofError, match="forked or rewritten"):
        cosign_checkpoint(
            note, witnesses[0], log_key=log_key.verifier, previous=same_size_other_root
        )
    with pytest.raises(ProofError):
        cosign_checkpoint(
            note,
            witnesses[0],
            log_key=log_key.verifier,
            previous=Checkpoint(ORIGIN, 3, leaf_hash(b"x")),
            proof=[leaf_hash(b"y")],
        )
    with pytest.raises(NoteRejected, match="previous checkpoint is for log"):
        cosign_checkpoint(
            note,
            witnesses[0],
            log_key=log_key.verifier,
            previous=Checkpoint("other.example", 1, ROOT),
        )
    with pytest.raises(NoteRejected, match="expected"):
        cosign_checkpoint(
            sign_checkpoint(Checkpoint("other.example", 1, ROOT), [log_key]),
            witnesses[0],
            log_key=log_key.verifier,
        )


# -- strict note parsing -------------------------------------------------------------------


def _line(name: str, blob: bytes) -> bytes:
    return "\u2014 ".encode() + name.encode() + b" " + base64.b64encode(blob) + b"\n"


GOOD_BLOB = b"\x01\x02\x03\x04" + bytes(64)


@pytest.mark.parametrize(
    ("note", "message"),
    [
        (b"text\n" + _line("k", GOOD_BLOB), "no empty line"),
        (b"text\n\n", "no signature lines"),
        (b"text\n\n- k " + base64.b64encode(GOOD_BLOB) + b"\n", "em dash"),
        (b"text\n\n" + _line("k", GOOD_BLOB)[:-1], "newline"),
        (b"text\n\n" + _line("k+1", GOOD_BLOB), "'\\+'"),
        (b"text\n\n" + _line("", GOOD_BLOB), "empty"),
        (b"text\n\n" + _line("k\u00a0x", GOOD_BLOB), "contains"),
        (b"text\n\n" + "\u2014 k".encode() + b"\n", "no space"),
        (b"text\n\n" + _line("k", b"\x01\x02\x03\x04"), "less than a key id"),
        (b"text\n\n" + "\u2014 k AAA=x\n".encode(), "base64"),
        (b"text\n\n" + "\u2014 k AAB=\n".encode(), "canonical"),
        (b"text\n\n" + "\u2014 k AAAAAAAA \n".encode(), "base64"),
        (b"te\txt\n\n" + _line("k", GOOD_BLOB), "control character"),
        (b"text\r\n\n" + _line("k", GOOD_BLOB), "control character"),
        (b"te\xc3xt\n\n" + _line("k", GOOD_BLOB), "UTF-8"),
        (b"text\n\n" + _line("k", GOOD_BLOB) + b"trailing\n", "em dash"),
        (b"text\n\n" + _line("k", GOOD_BLOB) * (MAX_SIGNATURES + 1), "at most 100"),
        (b"x" * (1 << 20) + b"\n\n" + _line("k", GOOD_BLOB), "at most"),
    ],
)
def test_malformed_notes(note, message):
    with pytest.raises(MalformedNote, match=message):
        parse_note(note)


def test_note_text_may_hold_empty_lines_and_splits_at_the_last_one(log_key):
    text = b"first\n\nsecond\n"
    note = sign_note(text, [log_key])
    assert open_note(note, [log_key.verifier])[0] == text
    assert parse_note(note).encode() == note


def test_at_most_100_signatures(log_key, checkpoint):
    note = sign_checkpoint(checkpoint, [log_key])
    strangers = b"".join(_line(f"s{n}", GOOD_BLOB) for n in range(MAX_SIGNATURES - 1))
    assert open_checkpoint(note + strangers, [log_key.verifier])[0] == checkpoint
    with pytest.raises(MalformedNote, match="at most 100"):
        open_checkpoint(note + strangers + _line("one-more", GOOD_BLOB), [log_key.verifier])
    with pytest.raises(MalformedNote, match="at most 100"):
        add_signature(note + strangers, NoteSigner.generate("w"))


def test_sign_note_checks_its_text(log_key):
    for text in [b"no newline", b"tab\t\n", b"\xff\n"]:
        with pytest.raises(MalformedNote):
            sign_note(text, [log_key])
    with pytest.raises(MalformedNote, match="at least one signer"):
        sign_note(b"text\n", [])


def test_every_bit_flip_of_a_signed_checkpoint_is_rejected(log_key, witnesses, checkpoint):
    note = sign_checkpoint(checkpoint, [log_key, witnesses[0]])
    verifiers = [log_key.verifier, witnesses[0].verifier]
    assert open_checkpoint(note, verifiers, required=2)[0] == checkpoint
    for position in range(len(note)):
        for bit in range(8):
            flipped = bytearray(note)
            flipped[position] ^= 1 << bit
            with pytest.raises(TranslogError):
                open_checkpoint(bytes(flipped), verifiers, required=2, origin=ORIGIN)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=400))
def test_arbitrary_bytes_raise_only_typed_errors(data):
    verifier = NoteVerifier.from_key_string(GO_VERIFIER_KEY)
    for action in (
        lambda: parse_note(data),
        lambda: Checkpoint.parse(data),
        lambda: open_checkpoint(data, [verifier]),
        lambda: NoteVerifier.from_key_string(data.decode("utf-8", "replace")),
        lambda: NoteSigner.from_key_string(data.decode("utf-8", "replace")),
    ):
        with contextlib.suppress(TranslogError):
            action()


@settings(max_examples=300, deadline=None)
@given(
    st.lists(
        st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=0, max_size=30),
        min_size=0,
        max_size=6,
    ),
    st.lists(st.sampled_from(["\u2014 ", "\n", " ", "+", "=", "AAAA"]), max_size=8),
)
def test_note_shaped_text_raises_only_typed_errors(lines, pieces):
    data = ("\n".join(lines) + "\n\n" + "".join(pieces)).encode()
    verifier = NoteVerifier.from_key_string(GO_VERIFIER_KEY)
    with contextlib.suppress(TranslogError):
        open_checkpoint(data, [verifier])


# -- key strings and key files ---------------------------------------------------------------


def test_key_strings_round_trip(log_key):
    assert NoteSigner.from_key_string(log_key.key_string()).verifier == log_key.verifier
    assert NoteVerifier.from_key_string(log_key.verifier.key_string()) == log_key.verifier
    assert repr(log_key.verifier).startswith("NoteVerifier('log.example/stockade+")
    assert "PRIVATE" not in repr(log_key)


@pytest.mark.parametrize(
    "text",
    [
        "",
        "name",
        "name+abc",
        "name+c74f20a3+",
        "na me+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a4+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+AhpcQcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+Ahpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10TW",
        "PeterNeumann+c74f20a3+ARpc2QcUPDhMQegwxbzhKqiBfsVkmqq/LDE4izWy10",
        GO_SIGNER_KEY,
    ],
)
def test_bad_verifier_keys(text):
    with pytest.raises(MalformedKey):
        NoteVerifier.from_key_string(text)


@pytest.mark.parametrize(
    "text",
    [
        GO_VERIFIER_KEY,
        "PRIVATE+KEY+PeterNeumann+c74f20a4+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3+AoEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
        "PRIVATE+KEY+PeterNeumann+c74f20a3",
        "PRIVATE+KEY++c74f20a3+AYEKFALVFGyNhPJEMzD1QIDr+Y7hfZx09iUvxdXHKDFz",
    ],
)
def test_bad_signer_keys(text):
    with pytest.raises(MalformedKey):
        NoteSigner.from_key_string(text)


def test_key_files(tmp_path):
    private, public = tmp_path / "log.key", tmp_path / "log.pub"
    signer = keys.load_or_create_signer(private, public, ORIGIN)
    assert stat.S_IMODE(private.stat().st_mode) == 0o600
    assert private.read_text() == signer.key_string() + "\n"
    assert public.read_text() == signer.verifier.key_string() + "\n"
    assert keys.load_or_create_signer(private, public, ORIGIN).key_string() == signer.key_string()
    assert keys.load_verifier(public) == signer.verifier
    with pytest.raises(MalformedKey, match="refusing to overwrite"):
        keys.write_key_pair(NoteSigner.generate(ORIGIN), private, tmp_path / "other.pub")
    with pytest.raises(MalformedKey, match=re.escape("not 'another.example'")):
        keys.load_or_create_signer(private, public, "another.example")
    with pytest.raises(MalformedKey, match="cannot read"):
        keys.load_signer(tmp_path / "missing.key")
    (tmp_path / "bad.pub").write_bytes(b"\xff\xfe")
    with pytest.raises(MalformedKey, match="not UTF-8"):
        keys.load_verifier(tmp_path / "bad.pub")


# -- the fuzz target ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def target():
    spec = importlib.util.spec_from_file_location(
        "fuzz_checkpoint", FUZZ_DIR / "fuzz_checkpoint.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_fuzz_target_imports_without_atheris(target):
    if importlib.util.find_spec("atheris") is None:
        assert sys.modules["_harness"].atheris is None
    assert callable(target.test_one_input)


def test_fuzz_target_on_seeds_mutations_and_random_inputs(target):
    rng = random.Random("fuzz_checkpoint")
    seeds = [*target.seed_notes(), GO_NOTE, C2SP_BODY, GO_VERIFIER_KEY.encode()]
    inputs = list(seeds)
    for seed in seeds:
        for _ in range(150):
            mutated = bytearray(seed)
            for _ in range(rng.randrange(1, 4)):
                choice = rng.randrange(3)
                position = rng.randrange(len(mutated) + 1)
                if choice == 0 and position < len(mutated):
                    mutated[position] ^= 1 << rng.randrange(8)
                elif choice == 1:
                    mutated[position:position] = bytes([rng.choice(b"\n +=A\xe2\x80\x94")])
                else:
                    del mutated[position : position + rng.randrange(1, 8)]
            inputs.append(bytes(mutated))
        inputs += [seed[:cut] for cut in range(0, len(seed), 7)]
    inputs += [rng.randbytes(rng.randrange(0, 200)) for _ in range(1000)]
    for data in inputs:
        assert target.test_one_input(data) is None


def test_fuzz_target_catches_a_round_trip_bug(target, monkeypatch):
    note = target.seed_notes()[0]
    monkeypatch.setattr(Note, "encode", lambda self: b"")
    with pytest.raises(AssertionError, match="encode back"):
        target.test_one_input(note)
