"""``stockade run``: unpack a signed image with umoci and run it with runc, hook installed.

The bundle's config.json gets the Stockade OCI hook as its one ``createRuntime`` hook (run by
runc in the runtime namespace after the container is set up, before ``pivot_root``; a failing
``createRuntime`` hook makes runc tear the container down before the user's program is ever
executed) and the annotations that name the image (layout, tag, expected reference) for it.

The container is run with ``runc run`` (not detached, no terminal) so its exit status is
``runc``'s. A refusal by the hook is told apart from a container that ran and failed by runc's
own JSON log (``--log``), which records ``error running hook`` with the hook's stderr.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from stockade.agent.oci_hook import (
    ANNOTATION_LAYOUT,
    ANNOTATION_REFERENCE,
    ANNOTATION_TAG,
    PROG,
    HookSettings,
    oci_hook_entry,
)
from stockade.errors import InputError, StockadeError, VerificationFailed

HOOK_TIMEOUT_SECONDS = 60
_CONTAINER_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")


class RunError(StockadeError):
    """umoci or runc could not prepare or run the container (not a refusal)."""

    exit_code = 2


class ContainerRefused(VerificationFailed):
    """The Stockade hook refused the container; it never ran."""

    def __init__(self, container_id: str, reason: str) -> None:
        super().__init__(f"container {container_id} refused: {reason}")
        self.container_id = container_id
        self.reason = reason


@dataclass(frozen=True)
class BindMount:
    source: Path
    destination: str
    readonly: bool = False

    @classmethod
    def parse(cls, spec: str) -> BindMount:
        """``SRC:DST`` or ``SRC:DST:ro``; both paths absolute."""
        parts = spec.split(":")
        if len(parts) not in (2, 3) or (len(parts) == 3 and parts[2] not in ("ro", "rw")):
            raise InputError(f"--mount {spec!r}: expected SRC:DST or SRC:DST:ro")
        source, destination = Path(parts[0]), parts[1]
        if not source.is_absolute() or not destination.startswith("/"):
            raise InputError(f"--mount {spec!r}: both paths must be absolute")
        return cls(source, destination, len(parts) == 3 and parts[2] == "ro")

    def to_oci(self) -> dict[str, Any]:
        options = ["rbind", "ro" if self.readonly else "rw"]
        return {
            "destination": self.destination,
            "type": "bind",
            "source": str(self.source),
            "options": options,
        }


def hook_executable() -> Path:
    """The absolute path of ``stockade-oci-hook`` (beside this Python, or on PATH)."""
    beside = Path(sys.executable).with_name(PROG)
    if beside.is_file():
        return beside
    found = shutil.which(PROG)
    if found is None:
        raise RunError(f"{PROG} is not installed (pip install -e . puts it beside python)")
    return Path(found).resolve()


def _tool(name: str) -> str:
    found = shutil.which(name)
    if found is None:
        raise RunError(f"{name} is not installed (Debian package {name}; scripts/bootstrap.sh)")
    return found


def unpack(layout: Path, tag: str, bundle: Path) -> None:
    """``umoci unpack`` the image into a new bundle directory."""
    if bundle.exists():
        raise InputError(f"bundle directory {bundle} already exists")
    result = subprocess.run(
        [_tool("umoci"), "unpack", "--image", f"{layout}:{tag}", str(bundle)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        detail = " ".join(result.stderr.split())[-400:]
        raise RunError(f"umoci unpack {layout}:{tag} failed: {detail}")


def configure_bundle(
    bundle: Path,
    *,
    layout: Path,
    tag: str,
    reference: str,
    settings: HookSettings,
    args: Sequence[str] = (),
    mounts: Sequence[BindMount] = (),
    hook: Path | None = None,
    with_hook: bool = True,
) -> dict[str, Any]:
    """Edit the bundle's config.json: command, no terminal, bind mounts, annotations, hook."""
    path = bundle / "config.json"
    try:
        config: dict[str, Any] = json.loads(path.read_text())
    except (OSError, ValueError) as error:
        raise RunError(f"cannot read {path}: {error}") from None
    process = config.setdefault("process", {})
    if args:
        process["args"] = list(args)
    if not process.get("args"):
        raise InputError("the image has no command; give one after --")
    process["terminal"] = False
    config.setdefault("mounts", []).extend(m.to_oci() for m in mounts)
    annotations = config.setdefault("annotations", {})
    annotations[ANNOTATION_LAYOUT] = str(layout.resolve())
    annotations[ANNOTATION_TAG] = tag
    annotations[ANNOTATION_REFERENCE] = reference
    hooks = config.setdefault("hooks", {})
    if with_hook:
        executable = hook or hook_executable()
        hooks["createRuntime"] = [
            oci_hook_entry(settings, executable, Path(sys.executable), HOOK_TIMEOUT_SECONDS)
        ]
    else:
        hooks.pop("createRuntime", None)
    tmp = path.with_name("config.json.tmp")
    tmp.write_text(json.dumps(config, indent=2))
    os.replace(tmp, path)
    return config


def _hook_refusal(log_path: Path) -> str | None:
    """The hook's stderr from runc's JSON log when a hook made the start fail."""
    try:
        lines = log_path.read_text(errors="replace").splitlines()
    except OSError:
        return None
    for line in reversed(lines):
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        message = entry.get("msg", "") if isinstance(entry, dict) else ""
        if "error running hook" in message:
            _, _, stderr = message.partition("stderr: ")
            stderr = stderr.strip().removeprefix(f"{PROG}: ")
            return stderr or " ".join(message.split())
    return None


def run_bundle(
    bundle: Path,
    container_id: str,
    *,
    runc_root: Path | None = None,
    stdout: IO[Any] | int | None = None,
    stderr: IO[Any] | int | None = None,
) -> int:
    """``runc run`` the bundle in the foreground; the container's exit status.

    Raises ``ContainerRefused`` when the hook refused it (the container never ran).
    """
    if not _CONTAINER_ID.match(container_id):
        raise InputError(f"container id {container_id!r} is not [A-Za-z0-9_.-]{{1,128}}")
    runc = [_tool("runc")]
    if runc_root is not None:
        runc += ["--root", str(runc_root)]
    with tempfile.TemporaryDirectory(prefix="stockade-runc-") as scratch:
        log_path = Path(scratch) / "runc.log"
        command = [
            *runc,
            "--log",
            str(log_path),
            "--log-format",
            "json",
            "run",
            "--bundle",
            str(bundle),
            container_id,
        ]
        try:
            result = subprocess.run(
                command, stdin=subprocess.DEVNULL, stdout=stdout, stderr=stderr, check=False
            )
        finally:
            delete_container(container_id, runc_root)
        if result.returncode != 0:
            reason = _hook_refusal(log_path)
            if reason is not None:
                raise ContainerRefused(container_id, reason)
        return result.returncode


def delete_container(container_id: str, runc_root: Path | None = None) -> None:
    """``runc delete --force``; a container that is already gone is fine."""
    runc = [_tool("runc")] + (["--root", str(runc_root)] if runc_root is not None else [])
    subprocess.run(
        [*runc, "delete", "--force", container_id],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        check=False,
    )


@contextlib.contextmanager
def prepared_bundle(
    layout: Path,
    tag: str,
    *,
    reference: str,
    settings: HookSettings,
    args: Sequence[str] = (),
    mounts: Sequence[BindMount] = (),
    bundle_parent: Path | None = None,
    keep: bool = False,
) -> Iterator[Path]:
    """Unpack and configure a bundle in a fresh directory, removed afterwards unless ``keep``."""
    parent = Path(tempfile.mkdtemp(prefix="stockade-bundle-", dir=bundle_parent))
    bundle = parent / "bundle"
    try:
        unpack(layout, tag, bundle)
        configure_bundle(
            bundle,
            layout=layout,
            tag=tag,
            reference=reference,
            settings=settings,
            args=args,
            mounts=mounts,
        )
        yield bundle
    finally:
        if not keep:
            shutil.rmtree(parent, ignore_errors=True)


def run_image(
    layout: Path,
    tag: str,
    *,
    reference: str,
    settings: HookSettings,
    container_id: str | None = None,
    args: Sequence[str] = (),
    mounts: Sequence[BindMount] = (),
    runc_root: Path | None = None,
    bundle_parent: Path | None = None,
    keep_bundle: bool = False,
) -> int:
    """Unpack, configure and run one image; the container's exit status."""
    cid = container_id or f"stockade-{os.getpid()}-{os.urandom(4).hex()}"
    with prepared_bundle(
        layout,
        tag,
        reference=reference,
        settings=settings,
        args=args,
        mounts=mounts,
        bundle_parent=bundle_parent,
        keep=keep_bundle,
    ) as bundle:
        return run_bundle(bundle, cid, runc_root=runc_root)
