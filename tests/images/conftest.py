"""Fixtures for image signatures: one umoci-built OCI layout per session (copied per
test), image signing keys, and org-signed trust policies."""

from __future__ import annotations

import shutil
import subprocess
from collections.abc import Callable
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from images_support import TAG, public_pem

from stockade.images.layout import ImageLayout
from stockade.images.policy import TrustPolicy, load_trust_policy, sign_trust_policy


def _run(*args: object) -> None:
    subprocess.run([str(arg) for arg in args], check=True, capture_output=True)


@pytest.fixture(scope="session")
def umoci_layout(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """An OCI layout built once by umoci: two files in two layers, tagged v1, unsigned."""
    if shutil.which("umoci") is None:
        pytest.skip("umoci not installed (Debian umoci; scripts/bootstrap.sh)")
    root = tmp_path_factory.mktemp("umoci")
    layout = root / "layout"
    (root / "hello.txt").write_text("hello from a signed image\n")
    (root / "data.bin").write_bytes(bytes(range(256)) * 16)
    _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", f"{layout}:{TAG}")
    _run("umoci", "insert", "--image", f"{layout}:{TAG}", root / "hello.txt", "/hello.txt")
    _run("umoci", "insert", "--image", f"{layout}:{TAG}", root / "data.bin", "/data.bin")
    _run("umoci", "config", "--image", f"{layout}:{TAG}", "--config.cmd", "/bin/true")
    return layout


@pytest.fixture
def layout_dir(umoci_layout: Path, tmp_path: Path) -> Path:
    """A private copy of the session layout, free to sign and tamper with."""
    copy = tmp_path / "layout"
    shutil.copytree(umoci_layout, copy)
    return copy


@pytest.fixture
def layout(layout_dir: Path) -> ImageLayout:
    return ImageLayout.open(layout_dir)


@pytest.fixture(scope="session")
def org_key() -> ed25519.Ed25519PrivateKey:
    return ed25519.Ed25519PrivateKey.generate()


@pytest.fixture(scope="session")
def build_key() -> ec.EllipticCurvePrivateKey:
    """The key the policy trusts for registry.example/org."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def other_key() -> ec.EllipticCurvePrivateKey:
    """A key the policy knows, scoped to registry.example/other only."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def stranger_key() -> ec.EllipticCurvePrivateKey:
    """A key the policy has never heard of."""
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def policy_document(
    build_key: ec.EllipticCurvePrivateKey, other_key: ec.EllipticCurvePrivateKey
) -> dict[str, object]:
    return {
        "version": 1,
        "keys": {"build": public_pem(build_key), "other": public_pem(other_key)},
        "scopes": [
            {"prefix": "registry.example/org", "keys": ["build"]},
            {"prefix": "registry.example/other", "keys": ["other"]},
            {"prefix": "registry.example/org/legacy", "keys": []},
        ],
    }


@pytest.fixture(scope="session")
def make_policy(
    org_key: ed25519.Ed25519PrivateKey,
) -> Callable[[dict[str, object]], TrustPolicy]:
    def make(document: dict[str, object]) -> TrustPolicy:
        return load_trust_policy(sign_trust_policy(document, org_key), [org_key.public_key()])

    return make


@pytest.fixture(scope="session")
def policy(
    make_policy: Callable[[dict[str, object]], TrustPolicy], policy_document: dict[str, object]
) -> TrustPolicy:
    return make_policy(policy_document)
