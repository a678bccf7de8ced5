"""The OCI hook's two clients, and where the agent finds them. It never builds either.

On the container start path every millisecond counts, and a Python interpreter alone costs
more than the whole budget, so with an agent socket the hook is a small client: it forwards
the OCI state on stdin to the hook server's Unix socket and exits 0 only on ``OK <recnum>``;
anything else (an ``ERR`` answer, garbage, silence, no server, input too large) exits 1 with
one line on stderr, so the runtime does not start the container (fail closed).

- The C client, ``stockade_oci_hook_client.c`` (package data), compiled at install time
  (``make hook-client``: static, stripped, warnings as errors) into
  ``stockade-oci-hook-client``. :func:`installed_client` finds it.
- The Python client, ``hook_fallback_client.py`` (:data:`FALLBACK_CLIENT`), run as
  ``python3 -I -S FALLBACK_CLIENT SOCKET`` where no usable C client is installed: slower (one
  bare interpreter start), same answers.

The client runs as root on every container start, so one that others could replace is
refused (:class:`ClientRefused`) and the Python client answers instead.
"""

from __future__ import annotations

import os
import shutil
import stat
import sys
from collections.abc import Mapping
from pathlib import Path

CLIENT_NAME = "stockade-oci-hook-client"
CLIENT_ENV = "STOCKADE_HOOK_CLIENT"
SYSTEM_CLIENT = Path("/usr/lib/stockade") / CLIENT_NAME
C_SOURCE = Path(__file__).with_name("stockade_oci_hook_client.c")
FALLBACK_CLIENT = Path(__file__).with_name("hook_fallback_client.py")


class ClientUnavailable(Exception):
    """No usable installed C client: the hook uses the Python client instead."""


class ClientRefused(ClientUnavailable):
    """An installed C client was found but is not safe to run as root on container starts."""


def client_candidates(
    environ: Mapping[str, str] | None = None, executable: str | None = None
) -> list[Path]:
    """Where the C client may be, in order: ``$STOCKADE_HOOK_CLIENT`` alone if set; else
    beside the interpreter (the venv's ``bin``), on ``PATH``, then ``/usr/lib/stockade``."""
    environ = os.environ if environ is None else environ
    if chosen := environ.get(CLIENT_ENV):
        return [Path(chosen)]
    candidates = [Path(executable or sys.executable).parent / CLIENT_NAME]
    if found := shutil.which(CLIENT_NAME, path=environ.get("PATH", os.defpath)):
        candidates.append(Path(found))
    candidates.append(SYSTEM_CLIENT)
    return candidates


def installed_client(
    environ: Mapping[str, str] | None = None, executable: str | None = None
) -> Path:
    """The installed C client (symlinks resolved), checked by :func:`check_client`.

    Raises :class:`ClientUnavailable` if there is none, :class:`ClientRefused` if the first one
    found is unsafe (the search stops there: a replaceable client is a finding, not a miss).
    """
    candidates = client_candidates(environ, executable)
    for candidate in candidates:
        if candidate.exists():
            return check_client(candidate)
    where = ", ".join(str(c) for c in candidates)
    raise ClientUnavailable(f"no installed {CLIENT_NAME} (looked at {where})")


def check_client(path: Path) -> Path:
    """``path`` resolved, if it is a regular executable file that only its owner (root or
    this user) can change, in a directory only its owner can change; else :class:`ClientRefused`.
    """
    try:
        real = path.resolve(strict=True)
        info = real.stat()
        folder = real.parent.stat()
    except OSError as error:
        raise ClientRefused(f"hook client {path} refused: cannot inspect it ({error})") from None
    shown = str(path) if real == path else f"{path} (-> {real})"

    def refused(why: str) -> ClientRefused:
        return ClientRefused(f"hook client {shown} refused: {why}")

    mode = stat.S_IMODE(info.st_mode)
    if not stat.S_ISREG(info.st_mode):
        raise refused("not a regular file")
    if not mode & stat.S_IXUSR or not os.access(real, os.X_OK):
        raise refused(f"not executable (mode {mode:04o})")
    if mode & (stat.S_IWGRP | stat.S_IWOTH):
        raise refused(f"writable by group or others (mode {mode:04o})")
    if info.st_uid not in (0, os.geteuid()):
        raise refused(f"owned by uid {info.st_uid}, neither root nor this user")
    folder_mode = stat.S_IMODE(folder.st_mode)
    if folder.st_uid not in (0, os.geteuid()):
        raise refused(f"its directory {real.parent} is owned by uid {folder.st_uid}")
    if folder_mode & (stat.S_IWGRP | stat.S_IWOTH) and not folder_mode & stat.S_ISVTX:
        raise refused(
            f"its directory {real.parent} is writable by group or others (mode {folder_mode:04o})"
        )
    return real
