"""The OCI image `make image` builds (scripts/build_image.sh), run as a container by runc.

The build takes 1 to 2 minutes here (mmdebstrap, the wheels, umoci), too long to repeat in
every `make test`: this test runs the image that exists. ``STOCKADE_TEST_IMAGE`` names its OCI
layout (``make test-image`` builds it, then sets it: a missing image is then a failure); without
it, ``build/image/oci`` is used when `make image` made it, and the test is skipped otherwise.
The image's tag is the project's version (``stockade.__version__``, which pyproject.toml reads).
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import uuid
from pathlib import Path

import pytest

from stockade import __version__

pytestmark = pytest.mark.tools

REPO = Path(__file__).resolve().parents[2]
DEFAULT_LAYOUT = REPO / "build" / "image" / "oci"
VENV = "/opt/stockade"


def _layout() -> Path:
    named = os.environ.get("STOCKADE_TEST_IMAGE")
    if named:
        layout = Path(named)
        assert (layout / "index.json").is_file(), f"STOCKADE_TEST_IMAGE={named}: no OCI layout"
        return layout
    if not (DEFAULT_LAYOUT / "index.json").is_file():
        pytest.skip(
            f"no image at {DEFAULT_LAYOUT.relative_to(REPO)}: the build takes 1-2 min, so "
            "`make test` only runs an image `make image` made (`make test-image` does both)"
        )
    return DEFAULT_LAYOUT


def _tools() -> dict[str, str]:
    found = {tool: shutil.which(tool) for tool in ("umoci", "runc")}
    missing = [tool for tool, path in found.items() if path is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/bootstrap.sh)")
    return {tool: str(path) for tool, path in found.items()}


@pytest.fixture(scope="module")
def bundle(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The image unpacked by umoci into a runtime bundle (rootless when not root)."""
    layout = _layout()
    umoci = _tools()["umoci"]
    tags = json.loads((layout / "index.json").read_text())["manifests"]
    names = {m.get("annotations", {}).get("org.opencontainers.image.ref.name") for m in tags}
    assert __version__ in names, f"{layout}: no tag {__version__} in {sorted(map(str, names))}"
    path = tmp_path_factory.mktemp("image") / "bundle"
    rootless = ["--rootless"] if os.geteuid() != 0 else []
    subprocess.run(
        [umoci, "unpack", *rootless, "--image", f"{layout}:{__version__}", str(path)],
        check=True,
        capture_output=True,
        timeout=300,
    )
    return path


def _run(bundle: Path, tmp_path: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """``runc run`` the bundle with ``args`` as the process, in the foreground, no terminal."""
    config_path = bundle / "config.json"
    config = json.loads(config_path.read_text())
    config["process"]["args"] = list(args)
    config["process"]["terminal"] = False
    config_path.write_text(json.dumps(config))
    runc_root = tmp_path / "runc"
    container = f"stockade-image-{uuid.uuid4().hex[:12]}"
    try:
        return subprocess.run(
            [_tools()["runc"], "--root", str(runc_root), "run", "--bundle", str(bundle), container],
            check=False,
            capture_output=True,
            text=True,
            timeout=120,
            stdin=subprocess.DEVNULL,
        )
    finally:
        subprocess.run(
            [_tools()["runc"], "--root", str(runc_root), "delete", "--force", container],
            capture_output=True,
            check=False,
        )


def test_image_config_runs_stockade_as_a_non_root_user(bundle: Path) -> None:
    process = json.loads((bundle / "config.json").read_text())["process"]
    assert process["args"][0] == f"{VENV}/bin/stockade"
    if os.geteuid() == 0:  # a rootless bundle maps the user to the caller
        assert process["user"]["uid"] == 10001
        assert process["user"]["gid"] == 10001


def test_stockade_version_runs_in_the_image(bundle: Path, tmp_path: Path) -> None:
    result = _run(bundle, tmp_path, f"{VENV}/bin/stockade", "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["stockade", __version__]


def test_the_image_carries_the_tpm_stack_and_the_hook_client(bundle: Path, tmp_path: Path) -> None:
    """tpm2-pytss loads against the image's libtss2, tpm2-openssl's provider is installed and
    the prebuilt hook client is where `hook_client` looks first, root-owned and not writable."""
    probe = (
        "import tpm2_pytss, kubernetes, pathlib, sys\n"
        "from stockade.agent.hook_client import installed_client\n"
        "print(installed_client())\n"
        "print(sorted(p.name for p in pathlib.Path('/usr/lib').glob('*/ossl-modules/tpm2.so')))\n"
    )
    result = _run(bundle, tmp_path, f"{VENV}/bin/python", "-c", probe)
    assert result.returncode == 0, result.stderr
    client, providers = result.stdout.splitlines()
    assert client == f"{VENV}/bin/stockade-oci-hook-client"
    assert providers == "['tpm2.so']"
