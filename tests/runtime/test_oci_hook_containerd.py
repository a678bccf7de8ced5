"""The Stockade OCI hook under a real containerd 1.6 (runc shim v2), in a private root, state
and socket.

containerd 1.6 has no NRI here; a node puts the hook into every container with the CRI
plugin's ``base_runtime_spec``. ``ctr`` has no such option, so the test gives the shim a
runc wrapper (``ctr run --runc-binary``) that adds the shipped hooks.d file's ``hook`` entry
to ``hooks.createRuntime`` of each bundle's config.json before calling runc, which is what
the base spec does. The admission server (a thread of the test) binds each container to
containerd's own metadata, read with ``ctr``: the image name, the image's manifest digest and
the container snapshot's parent chain ID.
"""

from __future__ import annotations

import contextlib
import json
import shutil
import subprocess
import sys
import tempfile
import time
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
    sign,
)
from test_oci_hook_podman import (
    SHIPPED,
    _add_to_cache,
    _assert_log_matches_tpm,
    _assert_never_ran,
    _client_args,
    _manifest_digest,
)

from stockade.agent.oci_hook import HookSettings, serving_hook_requests
from stockade.agent.runtime_binding import chain_id
from stockade.evidence.execution import ContainerStart

pytestmark = [pytest.mark.swtpm, pytest.mark.tools]

NAMESPACE = "stockade-test"
WRITE = ("/probe", "write", "/out/ran")

WRAPPER = """#!{python} -IS
import json, os, sys
args = sys.argv[1:]
if "create" in args and "--bundle" in args:
    path = os.path.join(args[args.index("--bundle") + 1], "config.json")
    with open(path) as handle:
        spec = json.load(handle)
    spec.setdefault("hooks", {{}}).setdefault("createRuntime", []).append({hook})
    with open(path, "w") as handle:
        json.dump(spec, handle)
os.execv({runc!r}, ["runc", *args])
"""


@dataclass(frozen=True)
class Containerd:
    base: Path
    address: Path
    state: Path
    wrapper: Path

    def __call__(self, *args: str | Path) -> subprocess.CompletedProcess[str]:
        command = ["ctr", "--address", str(self.address), "--namespace", NAMESPACE]
        return subprocess.run(
            [*command, *map(str, args)], capture_output=True, text=True, check=False, timeout=120
        )

    def ok(self, *args: str | Path) -> str:
        done = self(*args)
        assert done.returncode == 0, f"ctr {' '.join(map(str, args))}: {done.stderr}"
        return done.stdout

    def load(self, layout: Path, name: str) -> None:
        """Import the layout's ``v1`` alone (not its signature) and name it ``name``."""
        copy = self.base / "import"
        shutil.rmtree(copy, ignore_errors=True)
        shutil.copytree(layout, copy)
        index = json.loads((copy / "index.json").read_text())
        index["manifests"] = [
            m
            for m in index["manifests"]
            if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG
        ]
        (copy / "index.json").write_text(json.dumps(index))
        archive = self.base / "image.tar"
        subprocess.run(["tar", "-C", str(copy), "-cf", str(archive), "."], check=True)
        self.ok("images", "import", "--base-name", "import.example/x", archive)
        self("images", "rm", name)  # the name moves to this image
        self.ok("images", "tag", "--force", f"import.example/x:{TAG}", name)
        self.ok("images", "rm", f"import.example/x:{TAG}")

    def run(self, node: Node, image: str, name: str) -> subprocess.CompletedProcess[str]:
        return self(
            "run", "--rm", "--runc-binary", self.wrapper, "--mount",
            f"type=bind,src={node.out},dst=/out,options=rbind:rw", image, name, *WRITE,
        )  # fmt: skip


@pytest.fixture
def containerd(short_dir: Path) -> Iterator[Containerd]:
    missing = [
        t for t in ("containerd", "ctr", "runc", "containerd-shim-runc-v2") if not shutil.which(t)
    ]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/bootstrap.sh)")
    config = short_dir / "containerd.toml"
    made = Containerd(short_dir, short_dir / "c.sock", short_dir / "state", short_dir / "runc")
    config.write_text(
        f'version = 2\nroot = "{short_dir / "root"}"\nstate = "{made.state}"\n'
        f'[grpc]\n  address = "{made.address}"\n'
        '[plugins."io.containerd.grpc.v1.cri"]\n  disable = true\n'
    )
    # The hook entry of the shipped hooks.d file, with this test's client and socket.
    hook = json.loads(SHIPPED.read_text())["hook"]
    hook["path"], hook["args"] = _client_args(short_dir / "hook.sock")
    made.wrapper.write_text(
        WRAPPER.format(python=sys.executable, hook=repr(hook), runc=shutil.which("runc"))
    )
    made.wrapper.chmod(0o755)
    with open(short_dir / "containerd.log", "wb") as log:
        daemon = subprocess.Popen(["containerd", "--config", str(config)], stdout=log, stderr=log)
    try:
        for _ in range(100):
            if made("version").returncode == 0:
                break
            time.sleep(0.05)
        else:
            pytest.skip(f"containerd did not start: {(short_dir / 'containerd.log').read_text()}")
        yield made
    finally:
        for task in made("tasks", "ls", "-q").stdout.split():
            made("tasks", "kill", "-s", "KILL", task)
        for container in made("containers", "ls", "-q").stdout.split():
            made("containers", "rm", container)
        daemon.terminate()
        with contextlib.suppress(subprocess.TimeoutExpired):
            daemon.wait(timeout=10)
        if daemon.poll() is None:
            daemon.kill()
            daemon.wait()
        subprocess.run(["umount", "-R", str(short_dir / "root")], capture_output=True, check=False)


@pytest.fixture
def short_dir() -> Iterator[Path]:
    with tempfile.TemporaryDirectory(prefix="cd-") as name:
        yield Path(name)


@pytest.fixture
def serving(node: Node, containerd: Containerd, short_dir: Path) -> Iterator[HookSettings]:
    settings = node.settings(
        layout_cache=short_dir / "cache",
        containerd_state=containerd.state,
        containerd_address=containerd.address,
    )
    with serving_hook_requests(short_dir / "hook.sock", settings):
        yield settings


@pytest.fixture
def signed(keys: Keys, image_layout: Path, containerd: Containerd, short_dir: Path) -> Path:
    sign(image_layout, REFERENCE, keys.build)
    _add_to_cache(short_dir / "cache", image_layout, REFERENCE)
    containerd.load(image_layout, REFERENCE)
    return image_layout


@pytest.fixture
def other_layout(image_layout: Path, tmp_path: Path) -> Path:
    other = tmp_path / "other"
    shutil.copytree(image_layout, other)
    change_layer_byte(other)
    return other


def test_signed_image_runs_under_containerd_and_is_measured(node, containerd, serving, signed):
    done = containerd.run(node, REFERENCE, "signed")
    assert done.returncode == 0, done.stderr
    assert (node.out / "ran").read_text() == "ran\n"
    _policy, start = logged_records(node)
    assert isinstance(start, ContainerStart)
    assert start.container_id == "signed"
    assert start.image_reference == REFERENCE
    assert start.manifest_digest == _manifest_digest(signed)
    _assert_log_matches_tpm(node)


def test_unsigned_image_never_runs_under_containerd(
    node, containerd, serving, signed, other_layout, short_dir
):
    _add_to_cache(short_dir / "cache", other_layout, OTHER_REFERENCE)
    containerd.load(other_layout, OTHER_REFERENCE)
    _assert_never_ran(containerd.run(node, OTHER_REFERENCE, "unsigned"), node, "unsigned")


def test_retagged_image_never_runs_under_containerd(
    node, containerd, serving, signed, other_layout
):
    containerd.load(other_layout, REFERENCE)  # the signed name now points at other content
    _assert_never_ran(containerd.run(node, REFERENCE, "retagged"), node, "not the verified")


def test_containerd_without_its_settings_is_refused(node, containerd, signed, short_dir):
    settings = node.settings(layout_cache=short_dir / "cache")
    with serving_hook_requests(short_dir / "hook.sock", settings):
        _assert_never_ran(containerd.run(node, REFERENCE, "unbound"), node, "no record")


def test_snapshot_parent_is_the_chain_id_of_the_signed_layers(containerd, signed):
    containerd.ok("containers", "create", REFERENCE, "probe-snap", "/probe")
    info = json.loads(containerd.ok("containers", "info", "probe-snap"))
    snapshot = json.loads(
        containerd.ok(
            "snapshots", "--snapshotter", info["Snapshotter"], "info", info["SnapshotKey"]
        )
    )
    index = json.loads((signed / "index.json").read_text())
    manifest_digest = next(
        m["digest"] for m in index["manifests"]
        if m["annotations"]["org.opencontainers.image.ref.name"] == TAG
    )  # fmt: skip
    blobs = signed / "blobs" / "sha256"
    manifest = json.loads((blobs / manifest_digest.removeprefix("sha256:")).read_text())
    config = json.loads((blobs / manifest["config"]["digest"].removeprefix("sha256:")).read_text())
    assert snapshot["Parent"] == chain_id(config["rootfs"]["diff_ids"])
