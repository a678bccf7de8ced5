"""dm-verity hash tree build of a 256 MiB image: Stockade against ``veritysetup format``
on the same image in the same run, as a ratio (issue 3, "Measure")."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from bench.timing import Row, median_seconds
from stockade.release.verity import format_hash_device, verify_hash_device

IMAGE_SIZE = 256 << 20
SALT = bytes(range(32))


def run(rounds: int) -> list[Row]:
    rounds = max(1, min(rounds, 5))  # each round hashes 256 MiB
    with tempfile.TemporaryDirectory(prefix="stockade-bench-verity-") as scratch:
        work = Path(scratch)
        image = work / "usr.img"
        with image.open("wb") as out:
            for _ in range(IMAGE_SIZE >> 24):
                out.write(os.urandom(1 << 24))
        ours_path, theirs_path = work / "ours.verity", work / "theirs.verity"
        tree = format_hash_device(image, ours_path, salt=SALT)  # warms the page cache
        ours = median_seconds(lambda: format_hash_device(image, ours_path, salt=SALT), rounds)
        verify = median_seconds(
            lambda: verify_hash_device(image, ours_path, tree.root_hash), rounds
        )
        rows: list[Row] = [
            ("dm-verity format 256 MiB (stockade)", ours * 1e3, "ms"),
            ("dm-verity verify 256 MiB (stockade)", verify * 1e3, "ms"),
        ]
        if shutil.which("veritysetup") is None:
            return rows
        command = ["veritysetup", "format", "--salt", SALT.hex(), str(image), str(theirs_path)]

        def theirs_once() -> None:
            subprocess.run(command, check=True, capture_output=True)

        theirs = median_seconds(theirs_once, rounds)
        if theirs_path.read_bytes()[4096:] != ours_path.read_bytes()[4096:]:
            raise AssertionError("veritysetup and Stockade built different trees")
        return [
            *rows,
            ("dm-verity format 256 MiB (veritysetup)", theirs * 1e3, "ms"),
            ("  stockade / veritysetup (format)", ours / theirs, "x"),
        ]
