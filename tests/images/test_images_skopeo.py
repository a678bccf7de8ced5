"""Interoperability with Debian's skopeo (containers/image) and a real OCI distribution
registry (Debian ``docker-registry``) on 127.0.0.1.

Debian 12's skopeo 1.9.3 is built with sigstore signing *and* verification patched out
("Debian-local change: sigstore disabled"; the sigstore Go libraries are not packaged),
so ``skopeo copy --sign-by-sigstore-private-key`` cannot make a signature here:
``test_debian_skopeo_refuses_to_sign_with_sigstore`` pins that fact and fails the day a
skopeo that can sign is installed, so this file can then verify its signatures.

What Debian's skopeo does do is the cosign storage format: with registries.d
``use-sigstore-attachments: true`` it reads an image's ``sha256-<hex>.sig`` manifest from
a registry, parses each simple-signing layer and its
``dev.cosignproject.cosign/signature`` annotation, and writes its own signature manifest
(its own config blob, so another manifest digest) when copying the image to another
repository. The round trip test pushes a signature Stockade made, lets skopeo carry it to
a mirror, pulls the mirror's image and skopeo's signature manifest back into an OCI
layout and verifies them.
"""

from __future__ import annotations

import json
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives import serialization
from images_support import TAG

from stockade.images.layout import ImageLayout, parse_manifest
from stockade.images.signature import SIGNATURE_ANNOTATION, sign_image, signature_tag
from stockade.images.verify import verify_image

REGISTRY = "/usr/bin/docker-registry"

pytestmark = pytest.mark.tools  # skopeo and docker-registry


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def skopeo(*args: object, check: bool = True) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        ["skopeo", *map(str, args)], capture_output=True, text=True, check=False, timeout=120
    )
    if check and result.returncode != 0:
        raise AssertionError(f"skopeo {' '.join(map(str, args))}: {result.stderr}")
    return result


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A docker-registry serving HTTP on 127.0.0.1:<free port>, storage in a temp dir."""
    if shutil.which("skopeo") is None or not Path(REGISTRY).exists():
        pytest.skip("skopeo and docker-registry needed (Debian packages; scripts/bootstrap.sh)")
    root = tmp_path_factory.mktemp("registry")
    port = free_port()
    config = root / "config.yml"
    config.write_text(
        "version: 0.1\n"
        "log:\n  level: error\n"
        f"storage:\n  filesystem:\n    rootdirectory: {root / 'data'}\n"
        f"http:\n  addr: 127.0.0.1:{port}\n"
    )
    log = (root / "registry.log").open("wb")
    process = subprocess.Popen([REGISTRY, "serve", str(config)], stdout=log, stderr=log)
    address = f"127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                if httpx.get(f"http://{address}/v2/", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if process.poll() is not None or time.monotonic() > deadline:
                raise AssertionError(f"docker-registry did not start: {log.name}")
            time.sleep(0.05)
        yield address
    finally:
        process.terminate()
        process.wait(timeout=10)
        log.close()


@pytest.fixture(scope="module")
def registries_d(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("registries.d")
    (directory / "default.yaml").write_text("default-docker:\n  use-sigstore-attachments: true\n")
    return directory


@pytest.fixture(scope="module")
def accept_anything(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A containers policy.json for the copies (Stockade verifies, not skopeo)."""
    path = tmp_path_factory.mktemp("containers") / "policy.json"
    path.write_text(json.dumps({"default": [{"type": "insecureAcceptAnything"}]}))
    return path


def test_debian_skopeo_refuses_to_sign_with_sigstore(
    registry, registries_d, accept_anything, layout_dir, build_key, tmp_path
):
    key = tmp_path / "sigstore.key"
    key.write_bytes(
        build_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.BestAvailableEncryption(b"passphrase"),
        )
    )
    (tmp_path / "passphrase").write_text("passphrase")
    result = skopeo(
        "--policy", accept_anything, "--registries.d", registries_d,
        "copy", "--dest-tls-verify=false",
        "--sign-by-sigstore-private-key", key, "--sign-passphrase-file", tmp_path / "passphrase",
        f"oci:{layout_dir}:{TAG}", f"docker://{registry}/org/skopeo-signed:{TAG}",
        check=False,
    )  # fmt: skip
    assert result.returncode != 0
    assert "Debian-local change: sigstore disabled" in result.stderr, (
        "this skopeo may sign sigstore signatures: verify them here (see the module docstring)"
        f"\n{result.stderr}"
    )


def test_signature_round_trip_through_skopeo_and_a_registry(
    registry, registries_d, accept_anything, layout_dir, policy_document, make_policy,
    build_key, tmp_path,
):  # fmt: skip
    reference = f"{registry}/org/app:{TAG}"
    document = {
        **policy_document,
        "scopes": [{"prefix": f"{registry}/org", "keys": ["build"]}],
    }
    policy = make_policy(document)
    layout = ImageLayout.open(layout_dir)
    sig_tag = sign_image(layout, TAG, reference, build_key)
    manifest_digest = layout.resolve(TAG).digest
    assert sig_tag == signature_tag(manifest_digest)
    ours = layout.resolve(sig_tag).digest

    common = ("--policy", accept_anything, "--registries.d", registries_d)
    # The image and Stockade's signature manifest, as cosign would have pushed them.
    skopeo(*common, "copy", "--dest-tls-verify=false",
           f"oci:{layout_dir}:{TAG}", f"docker://{reference}")  # fmt: skip
    skopeo(*common, "copy", "--dest-tls-verify=false", "--preserve-digests",
           f"oci:{layout_dir}:{sig_tag}", f"docker://{registry}/org/app:{sig_tag}")  # fmt: skip
    # skopeo finds the attached signature, parses it and writes its own to the mirror.
    skopeo(*common, "copy", "--src-tls-verify=false", "--dest-tls-verify=false",
           f"docker://{reference}", f"docker://{registry}/org/mirror:{TAG}")  # fmt: skip
    tags = httpx.get(f"http://{registry}/v2/org/mirror/tags/list").json()["tags"]
    assert sorted(tags) == sorted([TAG, sig_tag])

    pulled = tmp_path / "pulled"
    # (an OCI layout cannot take attachments: the .sig tag is fetched as an image)
    skopeo(*common, "copy", "--src-tls-verify=false", "--remove-signatures",
           f"docker://{registry}/org/mirror:{TAG}", f"oci:{pulled}:{TAG}")  # fmt: skip
    skopeo(*common, "copy", "--src-tls-verify=false", "--preserve-digests",
           f"docker://{registry}/org/mirror:{sig_tag}", f"oci:{pulled}:{sig_tag}")  # fmt: skip

    mirrored = ImageLayout.open(pulled)
    theirs = mirrored.resolve(sig_tag)
    assert theirs.digest != ours, "skopeo wrote its own signature manifest"
    layers = parse_manifest(mirrored.blob(theirs.digest)).layers
    assert len(layers) == 1
    assert SIGNATURE_ANNOTATION in layers[0].annotations

    verified = verify_image(mirrored, TAG, reference, policy)
    assert verified.manifest_digest == manifest_digest
    assert verified.reference == reference
    assert verified.signer == "build"
    # The signed identity is org/app: the mirror's own name is not what was signed.
    assert verify_image(mirrored, TAG, reference, policy).reference != (
        f"{registry}/org/mirror:{TAG}"
    )
