"""The Stockade OCI hook under real podman, installed through the shipped hooks.d file.

podman runs with a private store (``--root``, ``--runroot``, ``--tmpdir``, ``--hooks-dir`` in a
temporary directory, overlay, runc, no network), never the machine's configuration. The hook
is the shipped ``deploy/oci-hooks.d/stockade.json`` with only its client and socket paths
changed; the admission server is a thread of the test (as in ``stockade agent run
--hook-socket``), configured with podman's graphroot and a layout cache holding the signed
images tagged by their full references.

podman puts no image annotation in the bundle: what binds the container to the verified
image is podman's own storage records (agent/runtime_binding.py). A refused container never
ran: no /out/ran, no record, PCR 13 still zero.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from runtime_support import (
    OTHER_REFERENCE,
    REFERENCE,
    TAG,
    Keys,
    Node,
    change_layer_byte,
    logged_records,
    pcr13,
    sign,
)

from stockade.agent.hook_client import FALLBACK_CLIENT, ClientUnavailable, installed_client
from stockade.agent.oci_hook import (
    ANNOTATION_LAYOUT,
    ANNOTATION_REFERENCE,
    ANNOTATION_TAG,
    DEFAULT_HOOK_SOCKET,
    HookSettings,
    hooks_d_config,
    serving_hook_requests,
)
from stockade.evidence.algorithms import hash_algorithm
from stockade.evidence.cel import parse_cel
from stockade.evidence.execution import ContainerStart

pytestmark = [pytest.mark.swtpm, pytest.mark.tools]

ROOT = Path(__file__).resolve().parents[2]
SHIPPED = ROOT / "deploy" / "oci-hooks.d" / "stockade.json"
WRITE = ("/probe", "write", "/out/ran")
UNSIGNED = "registry.example/stockade/unsigned:1.0"
SIG_TAG_PREFIX = "sha256-"


# -- the shipped file ---------------------------------------------------------------------------


def test_shipped_hooks_d_file_is_what_the_code_renders():
    shipped = json.loads(SHIPPED.read_text())
    assert shipped == hooks_d_config(HookSettings(agent_socket=DEFAULT_HOOK_SOCKET))
    assert shipped["stages"] == ["createRuntime"] and "stage" not in shipped
    assert shipped["when"] == {"always": True}
    assert shipped["hook"]["args"] == [shipped["hook"]["path"], str(DEFAULT_HOOK_SOCKET)]
    assert set(shipped) == {"version", "hook", "when", "stages"}
    assert set(shipped["hook"]) == {"path", "args", "env", "timeout"}


def test_in_process_hooks_d_config_carries_the_settings():
    settings = HookSettings(
        containers_storage=Path("/var/lib/containers/storage"), layout_cache=Path("/c")
    )
    config = hooks_d_config(settings, Path("/usr/bin/stockade-oci-hook"))
    assert config["hook"]["path"] == "/usr/bin/stockade-oci-hook"
    args = config["hook"]["args"]
    assert args[0] == "stockade-oci-hook"
    assert args[args.index("--containers-storage") + 1] == "/var/lib/containers/storage"
    from stockade.agent.oci_hook import parse_settings

    assert parse_settings(args[1:], {}) == settings


# -- podman -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Podman:
    base: Path
    graphroot: Path
    hooks: Path

    def command(self, *args: str | Path) -> list[str]:
        return [
            "podman",
            "--root",
            str(self.graphroot),
            "--runroot",
            str(self.base / "run"),
            "--tmpdir",
            str(self.base / "tmp"),
            "--storage-driver",
            "overlay",
            "--runtime",
            "runc",
            "--cgroup-manager",
            "cgroupfs",
            "--events-backend",
            "none",
            "--hooks-dir",
            str(self.hooks),
            *map(str, args),
        ]

    def __call__(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            self.command(*args), capture_output=True, text=True, check=False, timeout=120
        )

    def ok(self, *args: str | Path) -> str:
        done = self(*args)
        assert done.returncode == 0, f"podman {' '.join(map(str, args))}: {done.stderr}"
        return done.stdout.strip()

    def load(self, layout: Path, name: str) -> str:
        """Pull the layout's ``v1`` into the store and name it ``name``; the image id."""
        image_id = self.ok("pull", "-q", f"oci:{layout}:{TAG}").splitlines()[-1]
        self.ok("tag", image_id, name)
        return image_id

    @staticmethod
    def _flags(node: Node) -> list[str]:
        """What every test container gets: no network, the ulimits podman needs here, and
        the node's output directory at /out."""
        flags = ["--network", "none", "--ulimit", "nofile=1024:1024"]
        return [*flags, "--ulimit", "nproc=1024:1024", "-v", f"{node.out}:/out"]

    def run(
        self, node: Node, image: str, *extra: str, name: str | None = None
    ) -> subprocess.CompletedProcess[str]:
        named = [] if name is None else ["--name", name]
        return self("run", "--rm", *self._flags(node), *named, *extra, image, *WRITE)

    def create(self, node: Node, image: str, name: str) -> str:
        """``podman create`` the WRITE probe as ``name`` (started later); its id."""
        return self.ok("create", "--name", name, *self._flags(node), image, *WRITE)


def _require_podman() -> None:
    missing = [tool for tool in ("podman", "runc", "conmon") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/bootstrap.sh)")


def _client_args(sock: Path) -> tuple[str, list[str]]:
    try:
        client = installed_client()
    except ClientUnavailable:
        return sys.executable, [sys.executable, "-I", "-S", str(FALLBACK_CLIENT), str(sock)]
    return str(client), [str(client), str(sock)]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory: sockets and overlay's mount options both have length limits."""
    with tempfile.TemporaryDirectory(prefix="pm-") as name:
        yield Path(name)


@pytest.fixture
def podman(node: Node, short_dir: Path) -> Iterator[Podman]:
    _require_podman()
    made = Podman(short_dir, short_dir / "root", short_dir / "hooks")
    made.hooks.mkdir()
    sock = short_dir / "hook.sock"
    # The shipped file, with only the client and the socket changed for this test.
    config = json.loads(SHIPPED.read_text())
    config["hook"]["path"], config["hook"]["args"] = _client_args(sock)
    (made.hooks / "stockade.json").write_text(json.dumps(config))
    try:
        yield made
    finally:
        made("rm", "-af")
        made("rmi", "-af")
        subprocess.run(
            ["umount", "-R", str(made.graphroot / "overlay")], capture_output=True, check=False
        )


def _add_to_cache(cache: Path, layout: Path, name: str) -> None:
    """Copy ``layout``'s blobs into the cache, tag its ``v1`` as ``name`` there, and carry its
    signature tags: a cache of images tagged by full reference (``skopeo copy oci:...``)."""
    if not (cache / "index.json").exists():
        cache.mkdir(parents=True, exist_ok=True)
        (cache / "oci-layout").write_text('{"imageLayoutVersion":"1.0.0"}')
        (cache / "index.json").write_text('{"schemaVersion":2,"manifests":[]}')
    shutil.copytree(layout / "blobs", cache / "blobs", dirs_exist_ok=True)
    index = json.loads((cache / "index.json").read_text())
    for entry in json.loads((layout / "index.json").read_text())["manifests"]:
        ref = entry.get("annotations", {}).get("org.opencontainers.image.ref.name", "")
        if ref == TAG:
            index["manifests"].append(
                {**entry, "annotations": {"org.opencontainers.image.ref.name": name}}
            )
        elif ref.startswith(SIG_TAG_PREFIX):
            index["manifests"].append(entry)
    (cache / "index.json").write_text(json.dumps(index))


@pytest.fixture
def serving(node: Node, podman: Podman, short_dir: Path) -> Iterator[HookSettings]:
    """The admission server the hooks.d client talks to, bound to podman's store."""
    settings = node.settings(
        layout_cache=short_dir / "cache",
        containers_storage=podman.graphroot,
    )
    with serving_hook_requests(short_dir / "hook.sock", settings):
        yield settings


@pytest.fixture
def signed(keys: Keys, image_layout: Path, podman: Podman, short_dir: Path) -> str:
    """The signed probe image, in podman's store and the cache as REFERENCE; its image id."""
    sign(image_layout, REFERENCE, keys.build)
    _add_to_cache(short_dir / "cache", image_layout, REFERENCE)
    return podman.load(image_layout, REFERENCE)


@pytest.fixture
def other_layout(image_layout: Path, tmp_path: Path) -> Path:
    """The probe image with one byte of /data.txt changed: other content, no signature."""
    other = tmp_path / "other"
    shutil.copytree(image_layout, other)
    for sig in (other / "index.json",):
        index = json.loads(sig.read_text())
        index["manifests"] = [
            m
            for m in index["manifests"]
            if not m.get("annotations", {})
            .get("org.opencontainers.image.ref.name", "")
            .startswith(SIG_TAG_PREFIX)
        ]
        sig.write_text(json.dumps(index))
    change_layer_byte(other)
    return other


def _assert_log_matches_tpm(node: Node) -> None:
    pcrs = pcr13(node.tcti)
    records = parse_cel(node.log_path.read_bytes())
    for alg, value in pcrs.items():
        hasher = hash_algorithm(alg)
        replay = bytes(hasher.digest_size)
        for record in records:
            replay = hasher.digest(replay + hasher.digest(record.content))
        assert value == replay


def _assert_refused(done: subprocess.CompletedProcess[str], node: Node, why: str) -> None:
    assert done.returncode != 0, "podman ran a container the hook should refuse"
    assert why in done.stderr, done.stderr
    assert not (node.out / "ran").exists(), "the refused container ran"
    assert not any(isinstance(r, ContainerStart) for r in logged_records(node))


def _assert_never_ran(done: subprocess.CompletedProcess[str], node: Node, why: str) -> None:
    _assert_refused(done, node, why)
    assert logged_records(node) == []
    assert all(v == bytes(len(v)) for v in pcr13(node.tcti).values()), "PCR 13 was extended"


def _manifest_digest(layout: Path) -> str:
    index = json.loads((layout / "index.json").read_text())
    return next(
        m["digest"]
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG
    )


def test_signed_image_runs_under_podman_and_is_measured(
    node, podman, serving, signed, image_layout
):
    done = podman.run(node, REFERENCE, name="signed")
    assert done.returncode == 0, done.stderr
    assert (node.out / "ran").read_text() == "ran\n"
    policy_record, start = logged_records(node)
    assert isinstance(start, ContainerStart)
    assert start.image_reference == REFERENCE
    assert start.manifest_digest == _manifest_digest(image_layout)
    assert start.config_digest == f"sha256:{signed}"
    assert start.args == WRITE
    assert len(start.container_id) == 64
    assert start.trust_policy_digest == policy_record.digest
    _assert_log_matches_tpm(node)


def test_unsigned_image_never_runs_under_podman(node, podman, serving, other_layout, short_dir):
    _add_to_cache(short_dir / "cache", other_layout, UNSIGNED)
    podman.load(other_layout, UNSIGNED)
    _assert_never_ran(podman.run(node, UNSIGNED), node, "unsigned")


def test_image_unknown_to_the_cache_never_runs(node, podman, serving, signed, other_layout):
    podman.load(other_layout, OTHER_REFERENCE)
    _assert_never_ran(podman.run(node, OTHER_REFERENCE), node, "has no image tagged")


def test_retagged_image_never_runs_under_podman(node, podman, serving, signed, other_layout):
    """Other content under the signed name: the cache's signed image verifies, but podman
    resolved another manifest for the container."""
    other_id = podman.load(other_layout, "registry.example/stockade/scratch:1")
    podman.ok("tag", other_id, REFERENCE)  # the name moves to the other image
    _assert_never_ran(podman.run(node, REFERENCE), node, "not the verified")


def test_signed_annotations_on_an_unsigned_image_never_run(
    node, podman, serving, signed, image_layout, other_layout
):
    """The attack that was open: annotations naming the signed layout on another image."""
    podman.load(other_layout, OTHER_REFERENCE)
    notes = []
    for key, value in (
        (ANNOTATION_LAYOUT, str(image_layout)),
        (ANNOTATION_TAG, TAG),
        (ANNOTATION_REFERENCE, REFERENCE),
    ):
        notes += ["--annotation", f"{key}={value}"]
    _assert_never_ran(podman.run(node, OTHER_REFERENCE, *notes), node, "not the verified")


def test_revoked_signer_never_runs_under_podman(node, keys: Keys, podman, serving, signed):
    assert podman.run(node, REFERENCE).returncode == 0
    (node.out / "ran").unlink()
    before = logged_records(node)
    node.write_policy(Keys(keys.org, keys.rogue, keys.build))  # build's key no longer trusted
    done = podman.run(node, REFERENCE)
    assert done.returncode != 0 and not (node.out / "ran").exists()
    assert "untrusted-key" in done.stderr, done.stderr
    assert logged_records(node) == before


def test_storage_record_naming_another_image_is_refused(
    node, podman, serving, signed, other_layout
):
    """A container created from the signed image whose record is then edited to name
    another image: the binding reads the record, and the record is not the verified image."""
    other_id = podman.load(other_layout, OTHER_REFERENCE)
    podman.create(node, REFERENCE, "edited")
    records = podman.graphroot / "overlay-containers" / "containers.json"
    containers = json.loads(records.read_text())
    (container,) = containers
    container["image"] = other_id
    records.write_text(json.dumps(containers))
    done = podman("start", "-a", "edited")
    _assert_never_ran(done, node, "is not a name of the image it runs")


def test_container_layer_on_another_image_is_refused(node, podman, serving, signed, other_layout):
    """The record names the signed image, but the container's layer sits on another
    image's layers: the rootfs is not the signed image's."""
    other_id = podman.load(other_layout, OTHER_REFERENCE)
    podman.create(node, OTHER_REFERENCE, "moved")
    records = podman.graphroot / "overlay-containers" / "containers.json"
    containers = json.loads(records.read_text())
    (container,) = containers
    assert container["image"] == other_id
    container["image"] = signed
    container["metadata"] = json.dumps(
        {**json.loads(container["metadata"]), "image-name": REFERENCE, "image-id": signed}
    )
    records.write_text(json.dumps(containers))
    _assert_never_ran(podman("start", "-a", "moved"), node, "not on image")


def test_podman_without_a_store_setting_is_refused(node, podman, short_dir, signed):
    """A hook server that is not told where podman's store is cannot bind: it refuses."""
    settings = node.settings(layout_cache=short_dir / "cache")
    with serving_hook_requests(short_dir / "hook.sock", settings):
        _assert_never_ran(podman.run(node, REFERENCE), node, "no record of the image")


def test_concurrent_podman_starts_keep_log_and_pcr_in_step(node, podman, serving, signed):
    results: list[int] = []

    def start(number: int) -> None:
        done = podman(
            "run",
            "--rm",
            "--network",
            "none",
            "--ulimit",
            "nofile=1024:1024",
            "--ulimit",
            "nproc=1024:1024",
            REFERENCE,
            "/probe",
        )
        results.append(done.returncode)

    threads = [threading.Thread(target=start, args=(n,)) for n in range(4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert results == [0, 0, 0, 0]
    assert sum(isinstance(r, ContainerStart) for r in logged_records(node)) == 4
    _assert_log_matches_tpm(node)
