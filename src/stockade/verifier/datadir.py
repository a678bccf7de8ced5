"""The verifier's data directory and SQLite files are the owner's alone.

The directory holds the signing keys, the tokens and (by default) the database: a verifier
refuses to start when others may enter it. Under Kubernetes a volume carries the pod's
``fsGroup`` with group access; group access is accepted only when that group is the process's
own (``os.getegid()``). Key files stay 0600 whatever the directory.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from sqlalchemy.engine import make_url
from sqlalchemy.exc import ArgumentError

from stockade.verifier.errors import ConfigurationError

SQLITE_SUFFIXES = ("", "-wal", "-shm", "-journal")


def prepare_data_dir(path: Path) -> None:
    """Create ``path`` 0700, or refuse (``ConfigurationError``) an existing one that others
    may read, write or enter, or that a group other than the process's may."""
    try:
        path.mkdir(parents=True, exist_ok=True, mode=0o700)
        status = path.stat()
    except OSError as error:
        raise ConfigurationError(f"cannot create the data directory {path}: {error}") from None
    if not stat.S_ISDIR(status.st_mode):
        raise ConfigurationError(f"the data directory {path} is not a directory")
    mode = stat.S_IMODE(status.st_mode)
    others = mode & 0o007
    group = mode & 0o070
    if others or (group and status.st_gid != os.getegid()):
        who = "others" if others else f"group {status.st_gid}"
        raise ConfigurationError(
            f"the data directory {path} (mode {mode:04o}) is open to {who}; it holds the "
            f"verifier's keys and tokens: chmod 700 {path}"
        )


def sqlite_path(url: str) -> Path | None:
    """The file of a SQLite URL, or None (another database, in-memory, or a URI)."""
    try:
        parsed = make_url(url)
    except ArgumentError:
        return None
    if parsed.get_backend_name() != "sqlite":
        return None
    database = parsed.database
    if not database or database == ":memory:" or database.startswith("file:"):
        return None
    return Path(database)


def prepare_database_file(url: str) -> None:
    """For a SQLite database file: create it 0600 before any engine opens it (SQLite gives its
    ``-wal``, ``-shm`` and journal files the database file's mode), and take group and other
    access away from files a previous version left open."""
    path = sqlite_path(url)
    if path is None:
        return
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    except FileExistsError:
        pass
    except OSError as error:
        raise ConfigurationError(f"cannot create the database file {path}: {error}") from None
    else:
        os.close(fd)
    for suffix in SQLITE_SUFFIXES:
        member = path.with_name(path.name + suffix)
        try:
            mode = stat.S_IMODE(member.stat().st_mode)
            if mode & 0o077:
                member.chmod(mode & 0o700)
        except FileNotFoundError:
            continue
        except OSError as error:
            raise ConfigurationError(
                f"cannot make the database file {member} owner-only: {error}"
            ) from None
