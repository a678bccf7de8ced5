"""dm-verity hash trees against ``veritysetup`` (Debian cryptsetup-bin), both directions.

Our hash file must be byte-identical to ``veritysetup format --salt S --uuid U`` and
``veritysetup verify`` must accept our tree; one flipped byte must fail both verifiers.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path
from uuid import UUID

import pytest

from stockade.release.errors import VerityFormatError, VerityMismatch
from stockade.release.verity import (
    VeritySuperblock,
    format_hash_device,
    new_superblock,
    verify_hash_device,
)

SALT = bytes.fromhex("5a" * 31 + "01")
UUID_ = UUID("0f1e2d3c-4b5a-4968-8776-a5b4c3d2e1f0")
BLOCK = 4096

needs_veritysetup = pytest.mark.skipif(
    shutil.which("veritysetup") is None,
    reason="veritysetup not installed (Debian cryptsetup-bin; scripts/bootstrap.sh)",
)


def write_image(path: Path, size: int, seed: int = 1) -> Path:
    path.write_bytes(random.Random(seed).randbytes(size))
    return path


def veritysetup_format(data: Path, hash_path: Path, *options: str) -> str:
    result = subprocess.run(
        ["veritysetup", "format", "--salt", SALT.hex(), "--uuid", str(UUID_), *options,
         str(data), str(hash_path)],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    for line in result.stdout.splitlines():
        if line.startswith("Root hash:"):
            return line.split(":", 1)[1].strip()
    raise AssertionError(result.stdout)


def veritysetup_verify(data: Path, hash_path: Path, root: bytes) -> int:
    return subprocess.run(
        ["veritysetup", "verify", str(data), str(hash_path), root.hex()],
        capture_output=True, check=False,
    ).returncode  # fmt: skip


@pytest.mark.tools
@needs_veritysetup
@pytest.mark.parametrize(
    "blocks",
    [1, 2, 127, 128, 129, 128 * 128, 128 * 128 + 1, 768, 1025],
    ids=lambda n: f"{n}-blocks",
)
def test_hash_file_is_byte_identical_to_veritysetup(tmp_path, blocks):
    data = write_image(tmp_path / "data", blocks * BLOCK, seed=blocks)
    theirs_path, ours_path = tmp_path / "theirs", tmp_path / "ours"
    their_root = veritysetup_format(data, theirs_path)
    tree = format_hash_device(data, ours_path, salt=SALT, uuid=UUID_)
    assert ours_path.read_bytes() == theirs_path.read_bytes()
    assert tree.root_hash.hex() == their_root
    assert tree.data_blocks == blocks
    assert tree.hash_device_size == ours_path.stat().st_size
    assert veritysetup_verify(data, ours_path, tree.root_hash) == 0
    assert verify_hash_device(data, ours_path, tree.root_hash) == tree


@pytest.mark.tools
@needs_veritysetup
@pytest.mark.parametrize(
    ("algorithm", "data_block", "hash_block", "blocks"),
    [
        ("sha256", 512, 512, 300),  # three levels: 16 digests per 512-byte hash block
        ("sha256", 1024, 4096, 200),
        ("sha1", 4096, 4096, 300),  # 20-byte digests padded to 32
        ("sha512", 4096, 1024, 100),
    ],
)
def test_other_parameters_match_veritysetup(tmp_path, algorithm, data_block, hash_block, blocks):
    data = write_image(tmp_path / "data", blocks * data_block, seed=blocks)
    their_root = veritysetup_format(
        data, tmp_path / "theirs", "--hash", algorithm,
        "--data-block-size", str(data_block), "--hash-block-size", str(hash_block),
    )  # fmt: skip
    tree = format_hash_device(
        data, tmp_path / "ours", salt=SALT, uuid=UUID_, hash_algorithm=algorithm,
        data_block_size=data_block, hash_block_size=hash_block,
    )  # fmt: skip
    assert (tmp_path / "ours").read_bytes() == (tmp_path / "theirs").read_bytes()
    assert tree.root_hash.hex() == their_root
    verify_hash_device(data, tmp_path / "ours", tree.root_hash)


@pytest.mark.tools
@needs_veritysetup
def test_veritysetup_tree_verifies_with_stockade_and_random_salt_differs(tmp_path):
    data = write_image(tmp_path / "data", 40 * BLOCK)
    root = bytes.fromhex(veritysetup_format(data, tmp_path / "theirs"))
    tree = verify_hash_device(data, tmp_path / "theirs", root)
    assert (tree.salt, tree.uuid) == (SALT, UUID_)
    fresh = format_hash_device(data, tmp_path / "fresh")
    assert len(fresh.salt) == 32 and fresh.salt != SALT and fresh.root_hash != root


@pytest.mark.tools
@needs_veritysetup
@pytest.mark.parametrize("blocks", [1, 129, 1025])
def test_one_flipped_data_byte_fails_both_and_stockade_names_the_block(tmp_path, blocks):
    data = write_image(tmp_path / "data", blocks * BLOCK, seed=7)
    tree = format_hash_device(data, tmp_path / "hash", salt=SALT, uuid=UUID_)
    bad_block = blocks // 2
    image = bytearray(data.read_bytes())
    image[bad_block * BLOCK + 1234] ^= 0x04
    data.write_bytes(image)
    assert veritysetup_verify(data, tmp_path / "hash", tree.root_hash) != 0
    with pytest.raises(VerityMismatch) as failure:
        verify_hash_device(data, tmp_path / "hash", tree.root_hash)
    assert failure.value.data_block == bad_block
    assert f"data block {bad_block} " in str(failure.value)


@pytest.mark.tools
@needs_veritysetup
def test_a_flipped_hash_tree_byte_fails_both_and_names_the_hash_block(tmp_path):
    data = write_image(tmp_path / "data", 300 * BLOCK)
    tree = format_hash_device(data, tmp_path / "hash", salt=SALT, uuid=UUID_)
    # 300 blocks: superblock, top block (1), level 0 in blocks 2..4.
    device = bytearray((tmp_path / "hash").read_bytes())
    device[3 * BLOCK + 100] ^= 0x80
    (tmp_path / "hash").write_bytes(device)
    assert veritysetup_verify(data, tmp_path / "hash", tree.root_hash) != 0
    with pytest.raises(VerityMismatch) as failure:
        verify_hash_device(data, tmp_path / "hash", tree.root_hash)
    assert failure.value.hash_block == 3
    assert failure.value.data_block is None


def test_wrong_root_hash_is_rejected(tmp_path):
    data = write_image(tmp_path / "data", 3 * BLOCK)
    tree = format_hash_device(data, tmp_path / "hash")
    wrong = bytes([tree.root_hash[0] ^ 1]) + tree.root_hash[1:]
    with pytest.raises(VerityMismatch, match="matches neither"):
        verify_hash_device(data, tmp_path / "hash", wrong)


def test_a_salt_changed_in_the_superblock_is_rejected(tmp_path):
    data = write_image(tmp_path / "data", 3 * BLOCK)
    tree = format_hash_device(data, tmp_path / "hash", salt=SALT)
    device = bytearray((tmp_path / "hash").read_bytes())
    device[88] ^= 1  # first salt byte (struct verity_sb: salt at offset 88)
    (tmp_path / "hash").write_bytes(device)
    with pytest.raises(VerityMismatch):
        verify_hash_device(data, tmp_path / "hash", tree.root_hash)


def test_a_truncated_data_image_names_the_first_missing_block(tmp_path):
    data = write_image(tmp_path / "data", 300 * BLOCK)
    tree = format_hash_device(data, tmp_path / "hash")
    data.write_bytes(data.read_bytes()[: 250 * BLOCK])
    with pytest.raises(VerityMismatch) as failure:
        verify_hash_device(data, tmp_path / "hash", tree.root_hash)
    assert failure.value.data_block == 250


def test_a_shorter_hash_device_is_malformed(tmp_path):
    data = write_image(tmp_path / "data", 300 * BLOCK)
    tree = format_hash_device(data, tmp_path / "hash")
    (tmp_path / "hash").write_bytes((tmp_path / "hash").read_bytes()[: 3 * BLOCK])
    with pytest.raises(VerityFormatError, match="needs"):
        verify_hash_device(data, tmp_path / "hash", tree.root_hash)


@pytest.mark.parametrize(
    ("raw", "message"),
    [
        (b"", "shorter than"),
        (b"\x00" * 512, "signature"),
        (b"verity\x00\x00" + (2).to_bytes(4, "little") + bytes(500), "version 2"),
        (b"verity\x00\x00" + (1).to_bytes(4, "little") + bytes(500), "hash type 0"),
    ],
)
def test_bad_superblocks_are_typed_errors(raw, message):
    with pytest.raises(VerityFormatError, match=message):
        VeritySuperblock.unpack(raw)


def test_superblock_round_trips_and_rejects_unknown_algorithms():
    superblock = new_superblock(5 * BLOCK, salt=SALT, uuid=UUID_)
    packed = superblock.pack()
    assert len(packed) == 512 and packed.startswith(b"verity\x00\x00")
    assert VeritySuperblock.unpack(packed) == superblock
    md5 = packed[:32] + b"md5".ljust(32, b"\x00") + packed[64:]
    with pytest.raises(VerityFormatError, match="md5"):
        VeritySuperblock.unpack(md5)


@pytest.mark.parametrize(
    ("size", "options", "message"),
    [
        (BLOCK + 1, {}, "not a multiple"),
        (0, {}, "at least one"),
        (BLOCK, {"data_block_size": 3000}, "power of two"),
        (BLOCK, {"hash_block_size": 256}, "power of two"),
        (BLOCK, {"salt": bytes(257)}, "at most 256"),
        (BLOCK, {"hash_algorithm": "md5"}, "unsupported"),
    ],
)
def test_parameters_veritysetup_would_reject_are_refused(size, options, message):
    with pytest.raises(VerityFormatError, match=message):
        new_superblock(size, **options)


def test_progress_reports_every_data_byte(tmp_path):
    data = write_image(tmp_path / "data", 600 * BLOCK)
    seen: list[int] = []
    tree = format_hash_device(data, tmp_path / "hash", progress=seen.append)
    assert sum(seen) == 600 * BLOCK and len(seen) > 1
    seen.clear()
    verify_hash_device(data, tmp_path / "hash", tree.root_hash, progress=seen.append)
    assert sum(seen) == 600 * BLOCK
