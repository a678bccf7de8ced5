"""Stockade's local state: where it lives (``$STOCKADE_HOME``, or ``~/.stockade``),
and the two ways it is written safely: whole files replaced atomically, and
directories changed under an exclusive lock.
"""

from __future__ import annotations

import fcntl
import os
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path


def stockade_home() -> Path:
    home = os.environ.get("STOCKADE_HOME")
    return Path(home) if home else Path.home() / ".stockade"


def _write_temporary(path: Path, data: bytes, mode: int) -> Path:
    """``data`` in a temporary file beside ``path`` (mode ``mode``), on disk."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.fchmod(fd, mode)
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view) :]
        os.fsync(fd)
    finally:
        os.close(fd)
    return tmp


def write_atomic(path: Path, content: str | bytes, mode: int = 0o644) -> None:
    """Replace ``path`` with ``content`` so readers see the old file or the new one, never
    a torn write; the data is on disk before the rename."""
    data = content.encode() if isinstance(content, str) else content
    if path.exists() and path.read_bytes() == data:
        os.chmod(path, mode)  # the content stands; the mode asked for still applies
        return
    os.replace(_write_temporary(path, data, mode), path)


def create_exclusive(path: Path, data: bytes, mode: int = 0o644) -> bool:
    """Write ``path`` whole unless it exists; False when it did (it is never replaced). The
    data is written to a temporary file first and linked into place, so it is never torn."""
    tmp = _write_temporary(path, data, mode)
    try:
        os.link(tmp, path)
    except FileExistsError:
        return False
    finally:
        tmp.unlink()
    return True


@contextmanager
def locked(lock_path: Path) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path`` for the block."""
    with lock_path.open("a") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)
