"""Fuzz target: signed notes, checkpoint bodies and note keys (``stockade.translog.checkpoint``).

    pip install atheris
    python fuzz/fuzz_checkpoint.py [libFuzzer options] [corpus directory]

A good corpus is a few signed checkpoints: ``seed_notes()`` below, or a real log's
``/checkpoint``.

Parsing and opening must succeed or raise a ``TranslogError`` (``MalformedNote``,
``MalformedKey``, ``NoteRejected``); any other exception is a bug. A note or checkpoint
body that parses must encode back to exactly its bytes; a note that opens must carry a
verified signature by a known key; a verifier key string that parses must survive its own
``key_string()``. Importable without atheris: tests/translog/test_checkpoint_notes.py
drives ``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

    from stockade.translog.checkpoint import (
        Checkpoint,
        NoteSigner,
        NoteVerifier,
        open_checkpoint,
        open_note,
        parse_note,
        sign_checkpoint,
    )
    from stockade.translog.errors import TranslogError

LOG = NoteSigner("log.example/stockade", Ed25519PrivateKey.from_private_bytes(bytes(range(32))))
WITNESS = NoteSigner("witness.example/w1", Ed25519PrivateKey.from_private_bytes(bytes(32)))
VERIFIERS = [LOG.verifier, WITNESS.verifier]


def seed_notes() -> list[bytes]:
    """Checkpoints signed by the target's keys, for a starting corpus."""
    root = bytes.fromhex("5dc9da79a70659a9ad559cb701ded9a2ab9d823aad2f4960cfe370eff4604328")
    return [
        sign_checkpoint(Checkpoint("log.example/stockade", 8, root), [LOG]),
        sign_checkpoint(Checkpoint("log.example/stockade", 8, root, ("ext",)), [LOG, WITNESS]),
        sign_checkpoint(Checkpoint("log.example/stockade", 0, root), [WITNESS]),
    ]


def test_one_input(data: bytes) -> None:
    try:
        note = parse_note(data)
    except TranslogError:
        note = None
    if note is not None and note.encode() != data:
        raise AssertionError(f"note does not encode back to its bytes: {data!r}")
    try:
        checkpoint = Checkpoint.parse(data if note is None else note.text)
    except TranslogError:
        pass
    else:
        if checkpoint.body() != (data if note is None else note.text):
            raise AssertionError(f"checkpoint does not encode back to its bytes: {data!r}")
    try:
        text, verified = open_note(data, VERIFIERS)
    except TranslogError:
        pass
    else:
        if not verified or note is None or text != note.text:
            raise AssertionError(f"note opened without a verified signature: {data!r}")
        signed = {(signature.name, signature.key_id) for signature in note.signatures}
        if not signed & {(key.name, key.key_id) for key in VERIFIERS}:
            raise AssertionError(f"note opened without a known key's signature: {data!r}")
    with contextlib.suppress(TranslogError):
        open_checkpoint(data, VERIFIERS, required=[LOG.name], origin=LOG.name)
    try:
        key = NoteVerifier.from_key_string(data.decode("utf-8", "replace"))
    except TranslogError:
        return
    if NoteVerifier.from_key_string(key.key_string()) != key:
        raise AssertionError(f"verifier key does not survive key_string(): {data!r}")


if __name__ == "__main__":
    fuzz(test_one_input)
