"""Fixtures for real runc containers: the probe in umoci-built OCI images, image and org keys,
a signed trust policy, and a node (swtpm + execution log) to run them on."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from runtime_support import (
    DATA_FILE,
    DATA_TEXT,
    PROBE_SOURCE,
    TAG,
    Keys,
    Node,
    require_runtime,
    run_tool,
)


@pytest.fixture(scope="session")
def probe_binary(tmp_path_factory: pytest.TempPathFactory) -> Path:
    require_runtime()
    directory = tmp_path_factory.mktemp("probe")
    source = directory / "probe.c"
    source.write_text(PROBE_SOURCE)
    binary = directory / "probe"
    result = subprocess.run(
        ["gcc", "-static", "-Os", "-s", "-o", str(binary), str(source)],
        capture_output=True,
        text=True,
        check=False,
    )
    if result.returncode != 0:
        pytest.skip(f"cannot build a static probe (libc6-dev's libc.a?): {result.stderr[-300:]}")
    return binary


@pytest.fixture(scope="session")
def base_layout(tmp_path_factory: pytest.TempPathFactory, probe_binary: Path) -> Path:
    """An OCI layout built by umoci: /probe and /data.txt in one layer, tag v1, unsigned."""
    layout = tmp_path_factory.mktemp("images") / "layout"
    data = layout.parent / DATA_FILE
    data.write_bytes(DATA_TEXT)
    run_tool("umoci", "init", "--layout", layout)
    run_tool("umoci", "new", "--image", f"{layout}:{TAG}")
    run_tool("umoci", "insert", "--image", f"{layout}:{TAG}", probe_binary, "/probe")
    run_tool("umoci", "insert", "--image", f"{layout}:{TAG}", data, f"/{DATA_FILE}")
    run_tool("umoci", "config", "--image", f"{layout}:{TAG}", "--config.cmd", "/probe")
    return layout


@pytest.fixture
def image_layout(tmp_path: Path, base_layout: Path) -> Path:
    """A private copy of the unsigned base layout."""
    copy = tmp_path / "layout"
    shutil.copytree(base_layout, copy)
    return copy


@pytest.fixture(scope="session")
def keys() -> Keys:
    return Keys(*(ec.generate_private_key(ec.SECP256R1()) for _ in range(3)))


@pytest.fixture
def node(tmp_path: Path, software_tpm, keys: Keys) -> Node:
    from stockade.release.keys import public_pem

    require_runtime()
    root = tmp_path / "node"
    (root / "out").mkdir(parents=True)
    org_pub = root / "org.pub"
    org_pub.write_bytes(public_pem(keys.org.public_key()))
    made = Node(
        root=root,
        tcti=software_tpm.tcti,
        log_path=root / "run" / "execution.log",
        policy_path=root / "trust-policy.json",
        org_pub=org_pub,
        out=root / "out",
    )
    made.write_policy(keys)
    return made
