"""Note key files: a signer's private key (``PRIVATE+KEY+<name>+<id>+<base64>``, mode 0600)
and its verifier key (``<name>+<id>+<base64>``), one key string and a newline each, the
formats Go's ``golang.org/x/mod/sumdb/note`` and the C2SP tools read and write."""

from __future__ import annotations

import os
from pathlib import Path

from stockade.translog.checkpoint import NoteSigner, NoteVerifier
from stockade.translog.errors import MalformedKey


def _read(path: Path, what: str) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not UTF-8"
        raise MalformedKey(f"cannot read {what} '{path}': {reason or error}") from None


def _write_new(path: Path, content: str, mode: int) -> None:
    """Create ``path`` with ``content``; never replace an existing file."""
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except FileExistsError:
        raise MalformedKey(f"'{path}' exists; refusing to overwrite a key") from None
    except OSError as error:
        raise MalformedKey(f"cannot create '{path}': {error.strerror or error}") from None
    try:
        os.fchmod(fd, mode)
        os.write(fd, content.encode())
        os.fsync(fd)
    finally:
        os.close(fd)


def write_key_pair(signer: NoteSigner, private_path: Path, public_path: Path) -> None:
    """Write ``signer``'s private key (0600) and verifier key (0644); refuse to overwrite."""
    _write_new(private_path, signer.key_string() + "\n", 0o600)
    _write_new(public_path, signer.verifier.key_string() + "\n", 0o644)


def load_signer(path: Path) -> NoteSigner:
    return NoteSigner.from_key_string(_read(path, "note signer key"))


def load_verifier(path: Path) -> NoteVerifier:
    return NoteVerifier.from_key_string(_read(path, "note verifier key"))


def load_or_create_signer(private_path: Path, public_path: Path, name: str) -> NoteSigner:
    """The signer in ``private_path``, or a new Ed25519 key named ``name`` written there
    (with its verifier key in ``public_path``) when there is none yet. An existing key
    with another name is an error: a log's key name is its identity."""
    if private_path.exists():
        signer = load_signer(private_path)
        if signer.name != name:
            raise MalformedKey(f"'{private_path}' holds the key of {signer.name!r}, not {name!r}")
        return signer
    signer = NoteSigner.generate(name)
    private_path.parent.mkdir(parents=True, exist_ok=True)
    write_key_pair(signer, private_path, public_path)
    return signer
