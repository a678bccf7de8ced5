"""dm-verity hash trees, byte for byte what ``veritysetup format DATA HASH`` writes.

Format sources: cryptsetup's "DMVerity" wiki page and veritysetup(8); the
superblock is cryptsetup's ``struct verity_sb`` (lib/verity/verity.c) and the
level layout is the one lib/verity/verity_hash.c computes (format version 1).

The hash device, with the defaults::

    block 0      512-byte superblock, zero-padded to one hash block
    block 1      the top level of the tree: a single hash block
    ...          each lower level, in turn
    last blocks  level 0: one digest per data block

Every digest is H(salt || block) over a whole data or hash block. A hash block
holds 2**floor(log2(hash block size / digest size)) digests, each zero-padded
to a power-of-two size, and the rest of the block is zeros. Levels are added
until one holds a single block; the root hash is the digest of that block. A
one-block image has no tree: its root hash is the digest of the data block and
the hash device is the superblock alone.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO
from uuid import UUID, uuid4

from stockade.release.errors import VerityFormatError, VerityMismatch

Progress = Callable[[int], None]
"""Called with the number of data bytes hashed since the previous call."""

SIGNATURE = b"verity\x00\x00"
FORMAT_VERSION = 1
HASH_TYPE_NORMAL = 1  # 0 is the Chrome OS variant, H(block || salt); not supported
SUPERBLOCK_SIZE = 512
MAX_SALT_SIZE = 256
DEFAULT_BLOCK_SIZE = 4096
DEFAULT_SALT_SIZE = 32
ALGORITHMS = ("sha1", "sha256", "sha512")

# struct verity_sb, little-endian: signature, version, hash_type, uuid, algorithm,
# data_block_size, hash_block_size, data_blocks, salt_size, _pad1[6], salt[256], _pad2[168]
_SUPERBLOCK = struct.Struct("<8sII16s32sIIQH6x256s168x")
assert _SUPERBLOCK.size == SUPERBLOCK_SIZE

_READ_CHUNK = 1 << 20


@dataclass(frozen=True)
class VeritySuperblock:
    """The on-disk header of a hash device (only format version 1 is accepted)."""

    uuid: UUID
    hash_algorithm: str
    data_block_size: int
    hash_block_size: int
    data_blocks: int
    salt: bytes

    def pack(self) -> bytes:
        return _SUPERBLOCK.pack(
            SIGNATURE,
            FORMAT_VERSION,
            HASH_TYPE_NORMAL,
            self.uuid.bytes,
            self.hash_algorithm.encode("ascii"),
            self.data_block_size,
            self.hash_block_size,
            self.data_blocks,
            len(self.salt),
            self.salt,
        )

    @classmethod
    def unpack(cls, raw: bytes) -> VeritySuperblock:
        if len(raw) < SUPERBLOCK_SIZE:
            raise VerityFormatError(
                f"hash device is {len(raw)} bytes, shorter than a {SUPERBLOCK_SIZE}-byte superblock"
            )
        (signature, version, hash_type, uuid_bytes, algorithm, data_bs, hash_bs, blocks,
         salt_size, salt_field) = _SUPERBLOCK.unpack_from(raw)  # fmt: skip
        if signature != SIGNATURE:
            raise VerityFormatError("no dm-verity superblock (signature 'verity' missing)")
        if version != FORMAT_VERSION:
            raise VerityFormatError(f"unsupported verity superblock version {version}")
        if hash_type != HASH_TYPE_NORMAL:
            raise VerityFormatError(f"unsupported verity hash type {hash_type}")
        if salt_size > MAX_SALT_SIZE:
            raise VerityFormatError(f"salt size {salt_size} exceeds {MAX_SALT_SIZE}")
        name = algorithm.rstrip(b"\x00")
        try:
            hash_algorithm = name.decode("ascii")
        except UnicodeDecodeError:
            raise VerityFormatError(f"hash algorithm name {name!r} is not ASCII") from None
        superblock = cls(
            uuid=UUID(bytes=uuid_bytes),
            hash_algorithm=hash_algorithm,
            data_block_size=data_bs,
            hash_block_size=hash_bs,
            data_blocks=blocks,
            salt=salt_field[:salt_size],
        )
        superblock.check()
        return superblock

    def check(self) -> None:
        """Raise ``VerityFormatError`` for parameters veritysetup would not accept."""
        if self.hash_algorithm not in ALGORITHMS:
            raise VerityFormatError(
                f"unsupported hash algorithm {self.hash_algorithm!r} "
                f"(one of {', '.join(ALGORITHMS)})"
            )
        for what, size in (("data", self.data_block_size), ("hash", self.hash_block_size)):
            if not _block_size_ok(size):
                raise VerityFormatError(
                    f"{what} block size {size} is not a power of two from 512 to 524288"
                )
        if len(self.salt) > MAX_SALT_SIZE:
            raise VerityFormatError(f"salt is {len(self.salt)} bytes, at most {MAX_SALT_SIZE}")
        if self.data_blocks < 1:
            raise VerityFormatError("a dm-verity image needs at least one data block")


@dataclass(frozen=True)
class VerityTree:
    """What a hash device commits to: its parameters and the root hash."""

    root_hash: bytes
    superblock: VeritySuperblock
    hash_blocks: int
    """Tree blocks after the superblock (``veritysetup``'s "Hash blocks")."""

    @property
    def salt(self) -> bytes:
        return self.superblock.salt

    @property
    def uuid(self) -> UUID:
        return self.superblock.uuid

    @property
    def hash_algorithm(self) -> str:
        return self.superblock.hash_algorithm

    @property
    def data_block_size(self) -> int:
        return self.superblock.data_block_size

    @property
    def hash_block_size(self) -> int:
        return self.superblock.hash_block_size

    @property
    def data_blocks(self) -> int:
        return self.superblock.data_blocks

    @property
    def data_size(self) -> int:
        return self.data_blocks * self.data_block_size

    @property
    def hash_device_size(self) -> int:
        return (_tree_offset_blocks(self.hash_block_size) + self.hash_blocks) * self.hash_block_size

    def to_json(self) -> dict[str, object]:
        return {
            "root_hash": self.root_hash.hex(),
            "salt": self.salt.hex(),
            "uuid": str(self.uuid),
            "hash_algorithm": self.hash_algorithm,
            "data_block_size": self.data_block_size,
            "hash_block_size": self.hash_block_size,
            "data_blocks": self.data_blocks,
            "hash_blocks": self.hash_blocks,
        }


def _block_size_ok(size: int) -> bool:
    return 512 <= size <= 512 * 1024 and size & (size - 1) == 0


def _tree_offset_blocks(hash_block_size: int) -> int:
    """The tree starts at the first hash block after the superblock."""
    return -(-SUPERBLOCK_SIZE // hash_block_size)


@dataclass(frozen=True)
class _Geometry:
    digest_size: int
    entry_size: int  # digest zero-padded to a power of two
    entries_per_block: int

    @classmethod
    def of(cls, superblock: VeritySuperblock) -> _Geometry:
        digest_size = hashlib.new(superblock.hash_algorithm).digest_size
        entry_size = 1 << (digest_size - 1).bit_length()
        per_block = 1 << ((superblock.hash_block_size // digest_size).bit_length() - 1)
        return cls(digest_size, entry_size, per_block)


def _seeded(superblock: VeritySuperblock) -> hashlib._Hash:
    seed = hashlib.new(superblock.hash_algorithm)
    seed.update(superblock.salt)
    return seed


def _read_exactly(source: BinaryIO, view: memoryview) -> int:
    filled = 0
    while filled < len(view):
        count = source.readinto(view[filled:])  # type: ignore[attr-defined]
        if not count:
            break
        filled += count
    return filled


def _hash_data_blocks(
    source: BinaryIO, superblock: VeritySuperblock, geometry: _Geometry, progress: Progress | None
) -> bytes:
    """Level 0 entries: one padded digest per data block, streamed in 1 MiB reads."""
    block_size = superblock.data_block_size
    seed = _seeded(superblock)
    pad = bytes(geometry.entry_size - geometry.digest_size)
    chunk_blocks = max(1, _READ_CHUNK // block_size)
    buffer = bytearray(chunk_blocks * block_size)
    view = memoryview(buffer)
    entries = bytearray()
    done = 0
    while done < superblock.data_blocks:
        count = min(chunk_blocks, superblock.data_blocks - done)
        wanted = count * block_size
        got = _read_exactly(source, view[:wanted])
        if got < wanted:
            present = done + got // block_size
            raise VerityMismatch(
                f"data image ends after {present} blocks; the hash tree covers "
                f"{superblock.data_blocks}",
                data_block=present,
            )
        for offset in range(0, wanted, block_size):
            digest = seed.copy()
            digest.update(view[offset : offset + block_size])
            entries += digest.digest()
            if pad:
                entries += pad
        done += count
        if progress is not None:
            progress(wanted)
    return bytes(entries)


def _pack_level(entries: bytes, geometry: _Geometry, hash_block_size: int) -> bytes:
    """Entries laid into hash blocks; the last block zero-padded."""
    per_block_bytes = geometry.entries_per_block * geometry.entry_size
    if per_block_bytes == hash_block_size:
        tail = -len(entries) % hash_block_size
        return entries + bytes(tail)
    blocks = bytearray()
    for start in range(0, len(entries), per_block_bytes):
        chunk = entries[start : start + per_block_bytes]
        blocks += chunk + bytes(hash_block_size - len(chunk))
    return bytes(blocks)


def _digest_blocks(blocks: bytes, superblock: VeritySuperblock, geometry: _Geometry) -> bytes:
    seed = _seeded(superblock)
    size = superblock.hash_block_size
    pad = bytes(geometry.entry_size - geometry.digest_size)
    view = memoryview(blocks)
    out = bytearray()
    for offset in range(0, len(blocks), size):
        digest = seed.copy()
        digest.update(view[offset : offset + size])
        out += digest.digest() + pad
    return bytes(out)


def _levels_from_entries(
    level0_entries: bytes, superblock: VeritySuperblock, geometry: _Geometry
) -> tuple[list[bytes], bytes]:
    """Tree levels bottom-up (each a run of hash blocks) and the root hash."""
    if superblock.data_blocks == 1:
        return [], level0_entries[: geometry.digest_size]
    levels = [_pack_level(level0_entries, geometry, superblock.hash_block_size)]
    while len(levels[-1]) > superblock.hash_block_size:
        entries = _digest_blocks(levels[-1], superblock, geometry)
        levels.append(_pack_level(entries, geometry, superblock.hash_block_size))
    root = _digest_blocks(levels[-1], superblock, geometry)[: geometry.digest_size]
    return levels, root


def _hash_device(superblock: VeritySuperblock, levels: list[bytes]) -> bytes:
    header = superblock.pack()
    header += bytes(_tree_offset_blocks(superblock.hash_block_size) * superblock.hash_block_size
                    - len(header))  # fmt: skip
    return header + b"".join(reversed(levels))


def build_hash_device(
    data: BinaryIO, superblock: VeritySuperblock, progress: Progress | None = None
) -> tuple[VerityTree, bytes]:
    """Hash ``superblock.data_blocks`` blocks read from ``data``; the tree and the hash device."""
    superblock.check()
    geometry = _Geometry.of(superblock)
    entries = _hash_data_blocks(data, superblock, geometry, progress)
    levels, root = _levels_from_entries(entries, superblock, geometry)
    hash_blocks = sum(len(level) for level in levels) // superblock.hash_block_size
    return VerityTree(root, superblock, hash_blocks), _hash_device(superblock, levels)


def new_superblock(
    data_size: int,
    *,
    salt: bytes | None = None,
    uuid: UUID | None = None,
    hash_algorithm: str = "sha256",
    data_block_size: int = DEFAULT_BLOCK_SIZE,
    hash_block_size: int = DEFAULT_BLOCK_SIZE,
) -> VeritySuperblock:
    """Parameters for a data image of ``data_size`` bytes; a random salt and UUID unless given.

    The size must be a whole number of data blocks: ``veritysetup`` would silently
    leave a partial last block unprotected, so Stockade refuses it.
    """
    if not _block_size_ok(data_block_size):
        raise VerityFormatError(
            f"data block size {data_block_size} is not a power of two from 512 to 524288"
        )
    if data_size % data_block_size:
        raise VerityFormatError(
            f"data image is {data_size} bytes, not a multiple of the {data_block_size}-byte "
            "data block (its tail would be unprotected); pad it first"
        )
    superblock = VeritySuperblock(
        uuid=uuid if uuid is not None else uuid4(),
        hash_algorithm=hash_algorithm,
        data_block_size=data_block_size,
        hash_block_size=hash_block_size,
        data_blocks=data_size // data_block_size,
        salt=salt if salt is not None else os.urandom(DEFAULT_SALT_SIZE),
    )
    superblock.check()
    return superblock


def format_hash_device(
    data_path: Path,
    hash_path: Path,
    *,
    salt: bytes | None = None,
    uuid: UUID | None = None,
    hash_algorithm: str = "sha256",
    data_block_size: int = DEFAULT_BLOCK_SIZE,
    hash_block_size: int = DEFAULT_BLOCK_SIZE,
    progress: Progress | None = None,
) -> VerityTree:
    """``veritysetup format DATA HASH``: write the hash device for ``data_path``."""
    try:
        with data_path.open("rb") as data:
            superblock = new_superblock(
                os.fstat(data.fileno()).st_size,
                salt=salt,
                uuid=uuid,
                hash_algorithm=hash_algorithm,
                data_block_size=data_block_size,
                hash_block_size=hash_block_size,
            )
            tree, device = build_hash_device(data, superblock, progress)
        hash_path.write_bytes(device)
    except OSError as error:
        raise VerityFormatError(
            f"cannot format '{data_path}' into '{hash_path}': {error.strerror or error}"
        ) from None
    return tree


def _first_bad_stored_block(
    device: bytes, superblock: VeritySuperblock, geometry: _Geometry, root_hash: bytes
) -> int | None:
    """Walk the stored tree from the root down; the hash-device index of the first block that
    does not match its parent's digest, or None when the whole stored tree is authentic."""
    size = superblock.hash_block_size
    offset = _tree_offset_blocks(size)
    # Level sizes bottom-up, as the builder produces them.
    sizes: list[int] = []
    count = superblock.data_blocks
    while count > 1:
        count = -(-count // geometry.entries_per_block)
        sizes.append(count)
    starts: list[int] = []
    position = offset
    for level_size in reversed(sizes):
        starts.append(position)
        position += level_size
    starts.reverse()  # starts[i] = first block of level i
    expected = [root_hash]
    for level in reversed(range(len(sizes))):
        next_expected: list[bytes] = []
        for index in range(sizes[level]):
            block_number = starts[level] + index
            block = device[block_number * size : (block_number + 1) * size]
            digest = _digest_blocks(block, superblock, geometry)[: geometry.digest_size]
            if digest != expected[index]:
                return block_number
            for slot in range(geometry.entries_per_block):
                start = slot * geometry.entry_size
                next_expected.append(block[start : start + geometry.digest_size])
        expected = next_expected
    return None


def verify_hash_device(
    data_path: Path, hash_path: Path, root_hash: bytes, progress: Progress | None = None
) -> VerityTree:
    """``veritysetup verify DATA HASH ROOT``: the data and the stored tree must both produce
    ``root_hash``. On failure, ``VerityMismatch`` names the first bad data block, or the
    first stored hash block that does not match its parent."""
    try:
        device = hash_path.read_bytes()
        with data_path.open("rb") as data:
            superblock = VeritySuperblock.unpack(device)
            geometry = _Geometry.of(superblock)
            entries = _hash_data_blocks(data, superblock, geometry, progress)
    except OSError as error:
        raise VerityFormatError(f"cannot read dm-verity pair: {error.strerror or error}") from None
    levels, computed_root = _levels_from_entries(entries, superblock, geometry)
    hash_blocks = sum(len(level) for level in levels) // superblock.hash_block_size
    tree = VerityTree(computed_root, superblock, hash_blocks)
    if len(device) < tree.hash_device_size:
        raise VerityFormatError(
            f"hash device is {len(device)} bytes; its superblock needs {tree.hash_device_size}"
        )
    expected_device = _hash_device(superblock, levels)
    if computed_root == root_hash and device[: len(expected_device)] == expected_device:
        return tree
    if superblock.data_blocks == 1:
        raise VerityMismatch(
            "data block 0 (byte offset 0) does not match the root hash", data_block=0
        )
    bad_hash_block = _first_bad_stored_block(device, superblock, geometry, root_hash)
    if bad_hash_block == _tree_offset_blocks(superblock.hash_block_size):
        raise VerityMismatch(
            f"root hash {root_hash.hex()} matches neither the hash tree nor the data",
            hash_block=bad_hash_block,
        )
    if bad_hash_block is not None:
        raise VerityMismatch(
            f"hash tree block {bad_hash_block} (byte offset "
            f"{bad_hash_block * superblock.hash_block_size}) does not match its parent",
            hash_block=bad_hash_block,
        )
    level0_start = len(expected_device) - len(levels[0])
    step = geometry.entry_size
    for index in range(superblock.data_blocks):
        block, slot = divmod(index, geometry.entries_per_block)
        at = level0_start + block * superblock.hash_block_size + slot * step
        if device[at : at + step] != entries[index * step : (index + 1) * step]:
            raise VerityMismatch(
                f"data block {index} (byte offset {index * superblock.data_block_size}) "
                "does not match the hash tree",
                data_block=index,
            )
    raise VerityMismatch(
        "the stored hash tree does not have the shape its superblock declares",
        hash_block=_tree_offset_blocks(superblock.hash_block_size),
    )
