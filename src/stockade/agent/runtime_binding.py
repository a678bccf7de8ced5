"""Which image did the runtime really unpack for this container? The OCI hook's binding.

The hook verifies a signed image (``verify_image``) and records its digests in PCR 13 and the
execution log. That proves nothing unless the rootfs the runtime is about to start is that
image, so before a container is admitted the hook asks the runtime's own records what it
resolved for this container and requires it to be the image just verified. When the hook
cannot tell (an unknown runtime, no record of the container, records it cannot read), it
refuses: a container with no binding never starts.

Three runtimes are bound, chosen by where the bundle is:

- **containers/storage** (podman, CRI-O; the hook setting ``--containers-storage GRAPHROOT``,
  and ``--containers-runroot RUNROOT`` for CRI-O, whose bundles live there): the bundle must be
  ``<root>/<driver>-containers/<id>/userdata`` for the container ``id`` of the OCI state. The
  container's record (``<driver>-containers/containers.json``) names its image id and its
  read-write layer; the image's record (``<driver>-images/images.json``) its manifest
  digests, names and top layer. Bound: the image id is the verified config digest; the
  verified manifest digest is among the image's manifest digests; the read-write layer's
  parent is the image's top layer, and that layer chain's uncompressed digests
  (``<driver>-layers/layers.json``, computed by containers/storage as it unpacked each
  layer) are the verified config's ``rootfs.diff_ids``, in order; the bundle's
  ``root.path`` is that read-write layer's mount (``<graphroot>/overlay/<layer>/merged`` or
  ``<graphroot>/vfs/dir/<layer>``). The image name podman resolved (the container's
  ``image-name``, which must be one of the image's names) is the reference to verify when
  the annotations name none.
- **containerd** (``--containerd-state DIR`` and ``--containerd-address SOCK``): the bundle
  must be ``<state>/io.containerd.runtime.v2.task/<namespace>/<id>``. containerd's metadata,
  read with ``ctr``: the container's image name, the image's target digest (it must be the
  verified manifest: an index is refused), and the container's snapshot, whose parent must
  be the chain ID of the verified config's ``diff_ids``. The bundle's ``rootfs`` is mounted
  by the shim from that snapshot; the hook does not compare the mount itself.
- **umoci** (``stockade run``): ``<bundle>/umoci.json`` names the manifest the bundle was
  unpacked from; it must be the verified manifest.

Not bound anywhere: the bytes on disk after unpacking (a layer directory changed by root on the
node after the pull is not detected), and a runtime whose records root rewrites.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import subprocess
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.agent.oci_hook import MAX_CONFIG_BYTES, ContainerRequest, HookRefused

# containers.json of a busy node holds every container; a generous cap, still bounded.
MAX_RECORDS_BYTES = 64 << 20
CTR_TIMEOUT = 20.0
_SHIM_TASKS = "io.containerd.runtime.v2.task"


@dataclass(frozen=True)
class RuntimeStores:
    """Where the runtimes on this node keep their records (hook settings; ``None``: no such
    runtime here, and its bundles are refused)."""

    containers_storage: Path | None = None
    containers_runroot: Path | None = None
    containerd_state: Path | None = None
    containerd_address: Path | None = None


@dataclass(frozen=True)
class RuntimeImage:
    """What the runtime resolved for one container, to be required equal to the verified image."""

    runtime: str
    """``containers-storage``, ``containerd`` or ``umoci``."""
    reference: str | None
    """The image name the runtime resolved (``None`` for umoci): the reference verified when
    the container's annotations name none."""
    manifest_digests: tuple[str, ...]
    """The verified manifest digest must be one of these."""
    config_digest: str | None = None
    """The image id (config digest) the runtime holds, if it records one."""
    layer_diff_ids: tuple[str, ...] | None = None
    """Uncompressed layer digests of the rootfs's lower layers, bottom first, if recorded."""
    snapshot_parent: str | None = None
    """containerd: the chain ID the container's snapshot sits on."""

    def require(self, container_id: str, manifest_digest: str, config: bytes) -> None:
        """Refuse unless this is the verified image: its manifest digest, and its config
        (``config``, the verified config blob) by digest and layer digests."""
        who = f"container {container_id}"
        if manifest_digest not in self.manifest_digests:
            found = ", ".join(self.manifest_digests) or "none"
            if self.runtime == "umoci":
                raise HookRefused(
                    f"{who}: the bundle was unpacked from manifest {found}, not the verified "
                    f"{manifest_digest}"
                )
            raise HookRefused(
                f"{who}: {self.runtime} resolved manifest {found}, not the verified "
                f"{manifest_digest}"
            )
        config_digest = "sha256:" + hashlib.sha256(config).hexdigest()
        if self.config_digest is not None and self.config_digest != config_digest:
            raise HookRefused(
                f"{who}: {self.runtime} resolved image {self.config_digest}, not the verified "
                f"{config_digest}"
            )
        if self.layer_diff_ids is None and self.snapshot_parent is None:
            return
        diff_ids = _diff_ids(config)
        if self.layer_diff_ids is not None and self.layer_diff_ids != diff_ids:
            raise HookRefused(
                f"{who}: the rootfs's layers are not the verified image's layers "
                f"({len(self.layer_diff_ids)} recorded, {len(diff_ids)} signed)"
            )
        if self.snapshot_parent is not None and self.snapshot_parent != chain_id(diff_ids):
            raise HookRefused(
                f"{who}: the container's snapshot is on {self.snapshot_parent}, not the "
                f"verified image's layers ({chain_id(diff_ids)})"
            )


def _diff_ids(config: bytes) -> tuple[str, ...]:
    try:
        document = json.loads(config)
        ids = document["rootfs"]["diff_ids"]
    except (ValueError, TypeError, KeyError):
        raise HookRefused("the verified image config has no rootfs.diff_ids") from None
    if not isinstance(ids, list) or not all(isinstance(d, str) for d in ids):
        raise HookRefused("the verified image config's rootfs.diff_ids is not a list of digests")
    return tuple(ids)


def chain_id(diff_ids: Sequence[str]) -> str:
    """The OCI chain ID of layers ``diff_ids`` (bottom first): containerd's snapshot names."""
    chain = ""
    for diff_id in diff_ids:
        chain = (
            diff_id
            if not chain
            else "sha256:" + hashlib.sha256(f"{chain} {diff_id}".encode()).hexdigest()
        )
    return chain


def runtime_image(
    request: ContainerRequest, stores: RuntimeStores, root_path: str | None
) -> RuntimeImage:
    """What the runtime resolved for ``request``, from its own records; ``HookRefused`` when
    there is no record to bind to (fail closed). ``root_path`` is the bundle's ``root.path``."""
    bundle = Path(os.path.normpath(request.bundle))
    for root in (stores.containers_storage, stores.containers_runroot):
        if root is not None and bundle.is_relative_to(root) and stores.containers_storage:
            return _containers_storage(request, bundle, root, stores.containers_storage, root_path)
    if stores.containerd_state is not None and bundle.is_relative_to(stores.containerd_state):
        return _containerd(request, bundle, stores)
    umoci = _umoci(request)
    if umoci is not None:
        return umoci
    configured = [
        f"{name} {path}"
        for name, path in (
            ("containers-storage", stores.containers_storage),
            ("containers-runroot", stores.containers_runroot),
            ("containerd-state", stores.containerd_state),
        )
        if path is not None
    ]
    raise HookRefused(
        f"container {request.container_id}: the bundle {request.bundle} has no record of the "
        "image it was unpacked from (no umoci.json, not under "
        f"{' or '.join(configured) or 'a configured runtime store'}); nothing binds its rootfs "
        "to a verified image"
    )


# -- umoci --------------------------------------------------------------------------------------


def _umoci(request: ContainerRequest) -> RuntimeImage | None:
    path = request.bundle / "umoci.json"
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_CONFIG_BYTES)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise HookRefused(f"cannot read {path}: {error.strerror or error}") from None
    document = _object(raw, str(path))
    walk = (document.get("from_descriptor_path") or {}).get("descriptor_walk")
    digests = [d.get("digest") for d in walk or [] if isinstance(d, dict)]
    if not digests or not isinstance(digests[-1], str):
        raise HookRefused(f"{path} names no manifest the bundle was unpacked from")
    return RuntimeImage("umoci", None, (digests[-1],))


# -- containers/storage (podman, CRI-O) ---------------------------------------------------------


def _containers_storage(
    request: ContainerRequest, bundle: Path, root: Path, graphroot: Path, root_path: str | None
) -> RuntimeImage:
    who = f"container {request.container_id}"
    parts = bundle.relative_to(root).parts
    if len(parts) != 3 or not parts[0].endswith("-containers") or parts[2] != "userdata":
        raise HookRefused(f"{who}: the bundle {bundle} is not a containers/storage container's")
    driver = parts[0].removesuffix("-containers")
    if parts[1] != request.container_id:
        raise HookRefused(f"{who}: the bundle {bundle} belongs to container {parts[1]}")
    container = _record(
        graphroot / f"{driver}-containers",
        ("containers.json", "volatile-containers.json"),
        request.container_id,
        who,
        "container",
    )
    image_id = _field(container, "image", who)
    layer_id = _field(container, "layer", who)
    image = _record(
        graphroot / f"{driver}-images", ("images.json",), image_id, who, f"image {image_id}"
    )
    names = image.get("names") or []
    if not isinstance(names, list) or not all(isinstance(n, str) for n in names):
        raise HookRefused(f"{who}: image {image_id}'s names are malformed")
    digests = [image.get("digest"), *(image.get("digests") or [])]
    manifests = tuple(dict.fromkeys(d for d in digests if isinstance(d, str) and d))
    reference = _image_name(container, names, who)

    layers = _records(graphroot / f"{driver}-layers", ("layers.json", "volatile-layers.json"), who)
    top = _field(image, "layer", who) if image.get("layer") else None
    rw = layers.get(layer_id)
    if rw is None:
        raise HookRefused(f"{who}: containers/storage has no record of its layer {layer_id}")
    if (rw.get("parent") or None) != top:
        raise HookRefused(
            f"{who}: its layer {layer_id} sits on {rw.get('parent') or 'nothing'}, not on image "
            f"{image_id}'s top layer {top}"
        )
    chain: list[str] = []
    seen: set[str] = set()
    current = top
    while current is not None:
        if current in seen or len(seen) > 1000:
            raise HookRefused(f"{who}: the layer chain of image {image_id} loops")
        seen.add(current)
        layer = layers.get(current)
        if layer is None:
            raise HookRefused(f"{who}: containers/storage has no record of layer {current}")
        diff = layer.get("diff-digest")
        if not isinstance(diff, str) or not diff:
            raise HookRefused(f"{who}: layer {current} has no recorded uncompressed digest")
        chain.append(diff)
        parent = layer.get("parent")
        current = parent if isinstance(parent, str) and parent else None
    chain.reverse()

    mounts = {
        "overlay": graphroot / "overlay" / layer_id / "merged",
        "vfs": graphroot / "vfs" / "dir" / layer_id,
    }
    expected = mounts.get(driver)
    if expected is None:
        raise HookRefused(f"{who}: containers/storage driver {driver!r} is not supported")
    if root_path is None or Path(os.path.normpath(root_path)) != expected:
        raise HookRefused(f"{who}: its root {root_path} is not the mount of its layer ({expected})")
    return RuntimeImage(
        "containers-storage",
        reference,
        manifests,
        config_digest=_digest_of_id(image_id, who),
        layer_diff_ids=tuple(chain),
    )


def _image_name(container: Mapping[str, Any], names: list[str], who: str) -> str | None:
    """The image name podman (``image-name``) or CRI-O (``image-name`` too) recorded for the
    container; it must be one of the image's names, or it is not what was resolved."""
    raw = container.get("metadata")
    if not isinstance(raw, str) or not raw:
        return None
    try:
        metadata = json.loads(raw)
    except ValueError:
        raise HookRefused(f"{who}: its containers/storage metadata is not JSON") from None
    name = metadata.get("image-name") if isinstance(metadata, dict) else None
    if not isinstance(name, str) or not name:
        return None
    if name not in names:
        raise HookRefused(f"{who}: its image name {name} is not a name of the image it runs")
    return name


def _digest_of_id(image_id: str, who: str) -> str:
    if len(image_id) != 64 or any(c not in "0123456789abcdef" for c in image_id):
        raise HookRefused(f"{who}: image id {image_id!r} is not a sha256 digest")
    return f"sha256:{image_id}"


def _field(record: Mapping[str, Any], name: str, who: str) -> str:
    value = record.get(name)
    if not isinstance(value, str) or not value:
        raise HookRefused(f"{who}: its containers/storage record has no {name}")
    return value


def _read_list(path: Path, who: str) -> list[dict[str, Any]] | None:
    try:
        with open(path, "rb") as handle:
            raw = handle.read(MAX_RECORDS_BYTES + 1)
    except FileNotFoundError:
        return None
    except OSError as error:
        raise HookRefused(f"{who}: cannot read {path}: {error.strerror or error}") from None
    if len(raw) > MAX_RECORDS_BYTES:
        raise HookRefused(f"{who}: {path} is larger than {MAX_RECORDS_BYTES} bytes")
    try:
        value = json.loads(raw) if raw.strip() else []
    except (ValueError, UnicodeDecodeError):
        raise HookRefused(f"{who}: {path} is not JSON") from None
    if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
        raise HookRefused(f"{who}: {path} is not a list of records")
    return value


def _records(directory: Path, files: Sequence[str], who: str) -> dict[str, dict[str, Any]]:
    found: dict[str, dict[str, Any]] = {}
    read_any = False
    for name in files:
        entries = _read_list(directory / name, who)
        if entries is None:
            continue
        read_any = True
        for entry in entries:
            key = entry.get("id")
            if isinstance(key, str):
                if key in found:
                    raise HookRefused(f"{who}: {directory} records {key} twice")
                found[key] = entry
    if not read_any:
        raise HookRefused(f"{who}: no containers/storage records in {directory}")
    return found


def _record(directory: Path, files: Sequence[str], key: str, who: str, what: str) -> dict[str, Any]:
    record = _records(directory, files, who).get(key)
    if record is None:
        raise HookRefused(
            f"{who}: containers/storage in {directory.parent} has no record of {what}"
        )
    return record


# -- containerd ---------------------------------------------------------------------------------


def _containerd(request: ContainerRequest, bundle: Path, stores: RuntimeStores) -> RuntimeImage:
    who = f"container {request.container_id}"
    assert stores.containerd_state is not None
    parts = bundle.relative_to(stores.containerd_state).parts
    if len(parts) != 3 or parts[0] != _SHIM_TASKS or parts[2] != request.container_id:
        raise HookRefused(f"{who}: the bundle {bundle} is not a containerd task's")
    namespace = parts[1]
    if stores.containerd_address is None:
        raise HookRefused(f"{who}: no containerd address configured to read its metadata")
    info = _object(
        _ctr(stores.containerd_address, namespace, who, "containers", "info", request.container_id),
        f"containerd's record of {who}",
    )
    image_name = info.get("Image")
    snapshotter = info.get("Snapshotter")
    key = info.get("SnapshotKey")
    if not all(isinstance(v, str) and v for v in (image_name, snapshotter, key)):
        raise HookRefused(f"{who}: containerd records no image or snapshot for it")
    assert isinstance(image_name, str) and isinstance(snapshotter, str) and isinstance(key, str)
    listing = _ctr(stores.containerd_address, namespace, who, "images", "ls", f"name=={image_name}")
    targets = []
    for line in listing.decode("utf-8", "replace").splitlines()[1:]:
        columns = line.split()
        if len(columns) >= 3 and columns[0] == image_name:
            if "index" in columns[1] or "list" in columns[1]:
                raise HookRefused(
                    f"{who}: containerd's image {image_name} is an index; the hook binds one "
                    "platform's manifest"
                )
            targets.append(columns[2])
    if len(targets) != 1:
        raise HookRefused(f"{who}: containerd has no single image named {image_name}")
    snapshot = _object(
        _ctr(
            stores.containerd_address,
            namespace,
            who,
            "snapshots",
            "--snapshotter",
            snapshotter,
            "info",
            key,
        ),
        f"containerd's snapshot {key}",
    )
    parent = snapshot.get("Parent")
    if not isinstance(parent, str) or not parent:
        raise HookRefused(f"{who}: its snapshot {key} sits on no image layers")
    return RuntimeImage("containerd", image_name, (targets[0],), snapshot_parent=parent)


def _ctr(address: Path, namespace: str, who: str, *args: str) -> bytes:
    ctr = shutil.which("ctr")
    if ctr is None:
        raise HookRefused(f"{who}: ctr is not installed; containerd's records cannot be read")
    try:
        done = subprocess.run(
            [ctr, "--address", str(address), "--namespace", namespace, *args],
            capture_output=True,
            timeout=CTR_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as error:
        raise HookRefused(f"{who}: cannot ask containerd ({error})") from None
    if done.returncode != 0:
        text = " ".join(done.stderr.decode("utf-8", "replace").split())[:200]
        raise HookRefused(f"{who}: containerd refused 'ctr {' '.join(args)}': {text}")
    return done.stdout


def _object(raw: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(raw)
    except (ValueError, UnicodeDecodeError):
        raise HookRefused(f"{what} is not JSON") from None
    if not isinstance(value, dict):
        raise HookRefused(f"{what} is not a JSON object")
    return value
