"""Signed checkpoints: C2SP signed notes (https://c2sp.org/signed-note) with Ed25519
signatures, carrying C2SP tlog-checkpoint bodies (https://c2sp.org/tlog-checkpoint).

A checkpoint body is three lines, ``<origin>\\n<size>\\n<base64 root>\\n``, then optional
non-empty extension lines. A signed note is that text, one empty line, and one or more
signature lines ``— <key name> <base64(4-byte key id || signature)>\\n``. The key id of an
Ed25519 key is ``SHA-256(name || 0x0A || 0x01 || public key)[:4]``, big-endian.

Verifiers are configured with the keys they trust. A signature whose (name, key id) is
not one of them is ignored (the log's other keys, witnesses nobody asked about); a
signature by a known key that does not verify rejects the whole note (``BadSignature``,
naming the key); fewer verified keys than required rejects it too
(``NotEnoughSignatures``). A witness cosigns a checkpoint by adding its own signature
line (``add_signature``), after checking the log's signature and, when it has seen an
earlier checkpoint, a consistency proof from it (``cosign_checkpoint``).

Pure: no I/O (key files are ``stockade.translog.keys``). Parsing is strict and raises only
``MalformedNote`` / ``MalformedKey``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Collection, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from stockade.translog.errors import (
    BadSignature,
    MalformedKey,
    MalformedNote,
    NotEnoughSignatures,
    NoteRejected,
)
from stockade.translog.merkle import HASH_SIZE, verify_consistency

ALG_ED25519 = 0x01
ED25519_KEY_SIZE = 32
ED25519_SIGNATURE_SIZE = 64
MAX_SIGNATURES = 100
MAX_NOTE_SIZE = 1 << 20
MAX_TREE_SIZE = (1 << 64) - 1
SIGNATURE_PREFIX = "\u2014 ".encode()  # em dash, space
PRIVATE_KEY_PREFIX = "PRIVATE+KEY+"
_DECIMAL = re.compile(rb"0|[1-9][0-9]{0,19}")
_HEX_KEY_ID = re.compile(r"[0-9a-fA-F]{8}")


# -- small strict codecs --------------------------------------------------------------


def _b64decode(text: str | bytes, what: str, error: type[MalformedNote | MalformedKey]) -> bytes:
    """Standard base64 with padding, canonical (re-encodes to the same text)."""
    raw = text.encode("ascii", "replace") if isinstance(text, str) else text
    try:
        decoded = base64.b64decode(raw, validate=True)
    except (binascii.Error, ValueError):
        raise error(f"{what}: not standard base64") from None
    if base64.b64encode(decoded) != raw:
        raise error(f"{what}: not canonical base64")
    return decoded


def _check_text(text: bytes, what: str) -> str:
    """Valid UTF-8 without control characters other than newline, ending in a newline."""
    try:
        decoded = text.decode("utf-8")
    except UnicodeDecodeError as error:
        raise MalformedNote(f"{what}: not UTF-8 at byte offset {error.start}") from None
    for offset, char in enumerate(decoded):
        if char < " " and char != "\n":
            raise MalformedNote(
                f"{what}: control character U+{ord(char):04X} at character {offset}"
            )
    if not decoded.endswith("\n"):
        raise MalformedNote(f"{what}: does not end in a newline")
    return decoded


def check_key_name(name: str) -> None:
    """Key names are non-empty and contain no Unicode spaces, no '+' and no control
    characters (signed-note, "Format")."""
    if not name:
        raise MalformedKey("key name is empty")
    for char in name:
        if char.isspace() or char == "+" or char < " " or char == "\x7f":
            raise MalformedKey(f"key name {name!r} contains {char!r}")


def key_id(name: str, public_key: bytes, algorithm: int = ALG_ED25519) -> int:
    """``SHA-256(name || 0x0A || algorithm || public key)[:4]`` as a big-endian uint32."""
    digest = hashlib.sha256(name.encode() + b"\n" + bytes([algorithm]) + public_key).digest()
    return int.from_bytes(digest[:4], "big")


# -- checkpoints ----------------------------------------------------------------------


@dataclass(frozen=True)
class Checkpoint:
    """A log's tree head: who (``origin``), how many leaves, which root."""

    origin: str
    size: int
    root: bytes
    extensions: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin:
            raise MalformedNote("checkpoint origin is empty")
        for label, line in [("origin", self.origin)] + [
            ("extension line", line) for line in self.extensions
        ]:
            if not line:
                raise MalformedNote(f"checkpoint {label} is empty")
            if any(char < " " for char in line):
                raise MalformedNote(f"checkpoint {label} {line!r} contains a control character")
        if not 0 <= self.size <= MAX_TREE_SIZE:
            raise MalformedNote(f"checkpoint size {self.size} is not a uint64")
        if len(self.root) != HASH_SIZE:
            raise MalformedNote(
                f"checkpoint root hash is {len(self.root)} bytes, a SHA-256 hash is {HASH_SIZE}"
            )

    def body(self) -> bytes:
        """The note text: origin, size, base64 root, extension lines, each ending in a
        newline."""
        lines = [
            self.origin,
            str(self.size),
            base64.b64encode(self.root).decode(),
            *self.extensions,
        ]
        return "".join(line + "\n" for line in lines).encode()

    @classmethod
    def parse(cls, body: bytes) -> Checkpoint:
        """The checkpoint in note text ``body``; ``MalformedNote`` naming the bad line."""
        _check_text(body, "checkpoint")
        lines = body[:-1].split(b"\n")
        if len(lines) < 3:
            raise MalformedNote(f"checkpoint has {len(lines)} lines, at least 3 are required")
        for number, line in enumerate(lines, start=1):
            if not line:
                raise MalformedNote(f"checkpoint line {number} is empty")
        origin, size_line, root_line, *extensions = lines
        if not _DECIMAL.fullmatch(size_line):
            raise MalformedNote(
                f"checkpoint size {size_line[:40]!r} is not a decimal number without leading zeroes"
            )
        size = int(size_line)
        if size > MAX_TREE_SIZE:
            raise MalformedNote(f"checkpoint size {size} is not a uint64")
        root = _b64decode(root_line, "checkpoint root hash", MalformedNote)
        if len(root) != HASH_SIZE:
            raise MalformedNote(
                f"checkpoint root hash is {len(root)} bytes, a SHA-256 hash is {HASH_SIZE}"
            )
        return cls(origin.decode(), size, root, tuple(line.decode() for line in extensions))


# -- notes ----------------------------------------------------------------------------


@dataclass(frozen=True)
class NoteSignature:
    """One signature line: key name, key id, the signature bytes."""

    name: str
    key_id: int
    signature: bytes

    def line(self) -> bytes:
        blob = self.key_id.to_bytes(4, "big") + self.signature
        return SIGNATURE_PREFIX + self.name.encode() + b" " + base64.b64encode(blob) + b"\n"


@dataclass(frozen=True)
class Note:
    """Note text (ending in a newline) and its signatures, none of them verified."""

    text: bytes
    signatures: tuple[NoteSignature, ...]

    def encode(self) -> bytes:
        if not self.signatures:
            raise MalformedNote("a signed note needs at least one signature")
        if len(self.signatures) > MAX_SIGNATURES:
            raise MalformedNote(
                f"note has {len(self.signatures)} signatures, at most {MAX_SIGNATURES} are allowed"
            )
        return self.text + b"\n" + b"".join(signature.line() for signature in self.signatures)


def _parse_signature_line(line: bytes, number: int) -> NoteSignature:
    what = f"signature line {number}"
    if not line.startswith(SIGNATURE_PREFIX):
        raise MalformedNote(f"{what} does not start with an em dash and a space")
    rest = line[len(SIGNATURE_PREFIX) :]
    name_bytes, space, blob_text = rest.partition(b" ")
    if not space:
        raise MalformedNote(f"{what} has no space between key name and signature")
    name = name_bytes.decode()  # the whole note was checked to be UTF-8
    try:
        check_key_name(name)
    except MalformedKey as error:
        raise MalformedNote(f"{what}: {error}") from None
    blob = _b64decode(blob_text, f"{what} signature", MalformedNote)
    if len(blob) < 5:
        raise MalformedNote(f"{what}: signature is {len(blob)} bytes, less than a key id and one")
    return NoteSignature(name, int.from_bytes(blob[:4], "big"), blob[4:])


def parse_note(note: bytes) -> Note:
    """Split a signed note into its text and signature lines, strictly (signed-note,
    "Format"); nothing is verified. ``MalformedNote`` saying what is wrong."""
    if len(note) > MAX_NOTE_SIZE:
        raise MalformedNote(f"note is {len(note)} bytes, at most {MAX_NOTE_SIZE} are allowed")
    _check_text(note, "note")
    split = note.rfind(b"\n\n")
    if split < 0:
        raise MalformedNote("note has no empty line between its text and its signatures")
    text, block = note[: split + 1], note[split + 2 :]
    if not block:
        raise MalformedNote("note has no signature lines after its last empty line")
    lines = block[:-1].split(b"\n")
    if len(lines) > MAX_SIGNATURES:
        raise MalformedNote(
            f"note has {len(lines)} signatures, at most {MAX_SIGNATURES} are allowed"
        )
    signatures = tuple(
        _parse_signature_line(line, number) for number, line in enumerate(lines, start=1)
    )
    return Note(text, signatures)


# -- keys -----------------------------------------------------------------------------


class NoteVerifier:
    """A trusted Ed25519 note key: a name and a public key (``key_id`` follows)."""

    def __init__(self, name: str, public_key: Ed25519PublicKey) -> None:
        check_key_name(name)
        self.name = name
        self.public_key = public_key
        self.raw_public_key = public_key.public_bytes_raw()
        self.key_id = key_id(name, self.raw_public_key)

    def __repr__(self) -> str:
        return f"NoteVerifier({self.key_string()!r})"

    def __eq__(self, other: object) -> bool:
        return isinstance(other, NoteVerifier) and self.key_string() == other.key_string()

    def __hash__(self) -> int:
        return hash(self.key_string())

    def key_string(self) -> str:
        """``<name>+<hex key id>+<base64(0x01 || public key)>`` (the Go/C2SP vkey format)."""
        encoded = base64.b64encode(bytes([ALG_ED25519]) + self.raw_public_key).decode()
        return f"{self.name}+{self.key_id:08x}+{encoded}"

    @classmethod
    def from_key_string(cls, text: str) -> NoteVerifier:
        parts = text.strip().split("+", 2)
        if len(parts) != 3:
            raise MalformedKey("verifier key is not <name>+<hex key id>+<base64 key>")
        name, hex_id, encoded = parts
        check_key_name(name)
        if not _HEX_KEY_ID.fullmatch(hex_id):
            raise MalformedKey(f"verifier key {name!r}: key id {hex_id!r} is not 8 hex digits")
        raw = _b64decode(encoded, f"verifier key {name!r}", MalformedKey)
        if len(raw) != 1 + ED25519_KEY_SIZE or raw[0] != ALG_ED25519:
            raise MalformedKey(f"verifier key {name!r} is not an Ed25519 key (0x01 and 32 bytes)")
        try:
            public_key = Ed25519PublicKey.from_public_bytes(raw[1:])
        except ValueError as error:
            raise MalformedKey(f"verifier key {name!r}: {error}") from None
        verifier = cls(name, public_key)
        if verifier.key_id != int(hex_id, 16):
            raise MalformedKey(
                f"verifier key {name!r}: key id {hex_id} does not match the key "
                f"({verifier.key_id:08x})"
            )
        return verifier

    def verify(self, text: bytes, signature: bytes) -> bool:
        if len(signature) != ED25519_SIGNATURE_SIZE:
            return False
        try:
            self.public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


class NoteSigner:
    """An Ed25519 note signing key with its name (a log's key, or a witness's)."""

    def __init__(self, name: str, private_key: Ed25519PrivateKey) -> None:
        self.verifier = NoteVerifier(name, private_key.public_key())
        self.name = name
        self.private_key = private_key
        self.key_id = self.verifier.key_id

    def __repr__(self) -> str:
        return f"NoteSigner({self.name!r}, key id {self.key_id:08x})"

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        return cls(name, Ed25519PrivateKey.generate())

    def sign(self, text: bytes) -> NoteSignature:
        return NoteSignature(self.name, self.key_id, self.private_key.sign(text))

    def key_string(self) -> str:
        """``PRIVATE+KEY+<name>+<hex key id>+<base64(0x01 || seed)>`` (the Go note skey
        format). Secret: write it only to a 0600 file."""
        seed = self.private_key.private_bytes_raw()
        encoded = base64.b64encode(bytes([ALG_ED25519]) + seed).decode()
        return f"{PRIVATE_KEY_PREFIX}{self.name}+{self.key_id:08x}+{encoded}"

    @classmethod
    def from_key_string(cls, text: str) -> NoteSigner:
        text = text.strip()
        if not text.startswith(PRIVATE_KEY_PREFIX):
            raise MalformedKey("signer key does not start with PRIVATE+KEY+")
        parts = text[len(PRIVATE_KEY_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise MalformedKey("signer key is not PRIVATE+KEY+<name>+<hex key id>+<base64 key>")
        name, hex_id, encoded = parts
        check_key_name(name)
        if not _HEX_KEY_ID.fullmatch(hex_id):
            raise MalformedKey(f"signer key {name!r}: key id {hex_id!r} is not 8 hex digits")
        raw = _b64decode(encoded, f"signer key {name!r}", MalformedKey)
        if len(raw) != 1 + ED25519_KEY_SIZE or raw[0] != ALG_ED25519:
            raise MalformedKey(f"signer key {name!r} is not an Ed25519 key (0x01 and 32 bytes)")
        try:
            private_key = Ed25519PrivateKey.from_private_bytes(raw[1:])
        except ValueError as error:
            raise MalformedKey(f"signer key {name!r}: {error}") from None
        signer = cls(name, private_key)
        if signer.key_id != int(hex_id, 16):
            raise MalformedKey(
                f"signer key {name!r}: key id {hex_id} does not match the key ({signer.key_id:08x})"
            )
        return signer


# -- signing and opening --------------------------------------------------------------


def sign_note(text: bytes, signers: Sequence[NoteSigner]) -> bytes:
    """``text`` (ending in a newline) signed by every one of ``signers``."""
    _check_text(text, "note text")
    if not signers:
        raise MalformedNote("a signed note needs at least one signer")
    return Note(text, tuple(signer.sign(text) for signer in signers)).encode()


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[NoteSigner]) -> bytes:
    return sign_note(checkpoint.body(), signers)


def add_signature(note: bytes, signer: NoteSigner) -> bytes:
    """``note`` with ``signer``'s signature over its text added (a witness cosigning); a
    signature already there by the same key (name and id) is replaced. The existing
    signatures are kept as they are, unverified: use ``cosign_checkpoint`` to check the
    log's signature first."""
    parsed = parse_note(note)
    kept = tuple(
        signature
        for signature in parsed.signatures
        if (signature.name, signature.key_id) != (signer.name, signer.key_id)
    )
    return Note(parsed.text, (*kept, signer.sign(parsed.text))).encode()


def _verifier_table(verifiers: Sequence[NoteVerifier]) -> dict[tuple[str, int], NoteVerifier]:
    table: dict[tuple[str, int], NoteVerifier] = {}
    for verifier in verifiers:
        slot = (verifier.name, verifier.key_id)
        if slot in table and table[slot] != verifier:
            raise MalformedKey(
                f"two different verifier keys share name {verifier.name!r} and key id "
                f"{verifier.key_id:08x}"
            )
        table[slot] = verifier
    return table


def open_note(
    note: bytes,
    verifiers: Sequence[NoteVerifier],
    *,
    required: int | Collection[str] = 1,
) -> tuple[bytes, list[str]]:
    """Verify ``note`` against the trusted ``verifiers``; return its text and the names of
    the known keys whose signatures verified (in note order, each once).

    Signatures whose (key name, key id) is not a known key are ignored. A known key's
    signature that does not verify raises ``BadSignature``. ``required`` is how many
    distinct key names must have verified (at least 1), or the names that must all have
    verified; otherwise ``NotEnoughSignatures``.
    """
    parsed = parse_note(note)
    table = _verifier_table(verifiers)
    if isinstance(required, str):
        required = [required]
    if isinstance(required, int):
        if required < 1:
            raise NoteRejected(f"a note needs at least one verified signature, not {required}")
        names_required: list[str] = []
        count_required = required
    else:
        names_required = list(dict.fromkeys(required))
        count_required = 1
    verified: list[str] = []
    for signature in parsed.signatures:
        verifier = table.get((signature.name, signature.key_id))
        if verifier is None:
            continue
        if not verifier.verify(parsed.text, signature.signature):
            detail = (
                f"an Ed25519 signature is {ED25519_SIGNATURE_SIZE} bytes, this one is "
                f"{len(signature.signature)}"
                if len(signature.signature) != ED25519_SIGNATURE_SIZE
                else "the note text or the signature was altered"
            )
            raise BadSignature(signature.name, signature.key_id, detail)
        if signature.name not in verified:
            verified.append(signature.name)
    missing = [name for name in names_required if name not in verified]
    if missing:
        raise NotEnoughSignatures(
            f"note is not signed by required key(s) {', '.join(missing)}; verified: "
            f"{', '.join(verified) or 'none'}"
        )
    if len(verified) < count_required:
        raise NotEnoughSignatures(
            f"note has {len(verified)} verified signature(s) from known keys "
            f"({', '.join(verified) or 'none'}), {count_required} required"
        )
    return parsed.text, verified


def open_checkpoint(
    note: bytes,
    verifiers: Sequence[NoteVerifier],
    *,
    required: int | Collection[str] = 1,
    origin: str | None = None,
) -> tuple[Checkpoint, list[str]]:
    """``open_note`` then ``Checkpoint.parse`` of its text; with ``origin``, the checkpoint
    must be that log's (``NoteRejected`` otherwise)."""
    text, verified = open_note(note, verifiers, required=required)
    checkpoint = Checkpoint.parse(text)
    if origin is not None and checkpoint.origin != origin:
        raise NoteRejected(f"checkpoint is for log {checkpoint.origin!r}, expected {origin!r}")
    return checkpoint, verified


def cosign_checkpoint(
    note: bytes,
    witness: NoteSigner,
    *,
    log_key: NoteVerifier,
    origin: str | None = None,
    previous: Checkpoint | None = None,
    proof: Sequence[bytes] = (),
) -> tuple[Checkpoint, bytes]:
    """What a witness does: check the log's signature on ``note`` and that the checkpoint
    is that log's (``origin``, by default the log key's name, as tlog-checkpoint
    recommends), check that it extends ``previous`` (the last checkpoint this witness
    cosigned for the log) by the consistency ``proof``, and add the witness's signature.
    Returns the checkpoint and the cosigned note; ``NoteRejected`` or ``ProofError``
    saying why not."""
    checkpoint, _ = open_checkpoint(
        note, [log_key], required=[log_key.name], origin=origin or log_key.name
    )
    if previous is not None:
        if previous.origin != checkpoint.origin:
            raise NoteRejected(
                f"previous checkpoint is for log {previous.origin!r}, this one for "
                f"{checkpoint.origin!r}"
            )
        verify_consistency(previous.size, checkpoint.size, previous.root, checkpoint.root, proof)
    return checkpoint, add_signature(note, witness)
