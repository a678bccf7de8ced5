"""agent/runtime_binding.py on hand-made containers/storage records: every way the records can
fail to tie a container to the verified image refuses (fail closed). Real podman and
containerd are in test_oci_hook_podman.py and test_oci_hook_containerd.py."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest

from stockade.agent.oci_hook import ContainerRequest, HookRefused, HookSettings, parse_settings
from stockade.agent.runtime_binding import RuntimeStores, chain_id, runtime_image

CID = "c" * 64
IMAGE = "1" * 64
TOP, BASE, RW = "a" * 64, "b" * 64, "d" * 64
MANIFEST = "sha256:" + "2" * 64
DIFF = ("sha256:" + "3" * 64, "sha256:" + "4" * 64)
CONFIG = json.dumps({"rootfs": {"type": "layers", "diff_ids": list(DIFF)}}).encode()
CONFIG_DIGEST = "sha256:" + hashlib.sha256(CONFIG).hexdigest()


def _store(graph: Path, image_id: str = IMAGE) -> None:
    (graph / "overlay-containers" / CID / "userdata").mkdir(parents=True)
    (graph / "overlay-images").mkdir()
    (graph / "overlay-layers").mkdir()
    metadata = json.dumps({"image-name": "registry.example/a:1", "image-id": image_id})
    (graph / "overlay-containers" / "containers.json").write_text(
        json.dumps([{"id": CID, "image": image_id, "layer": RW, "metadata": metadata}])
    )
    (graph / "overlay-images" / "images.json").write_text(
        json.dumps(
            [{"id": image_id, "digest": MANIFEST, "names": ["registry.example/a:1"], "layer": TOP}]
        )
    )
    (graph / "overlay-layers" / "layers.json").write_text(
        json.dumps(
            [
                {"id": BASE, "diff-digest": DIFF[0]},
                {"id": TOP, "parent": BASE, "diff-digest": DIFF[1]},
                {"id": RW, "parent": TOP},
            ]
        )
    )


def _replace_with_directory(graph: Path) -> None:
    path = graph / "overlay-containers" / "containers.json"
    path.unlink()
    path.mkdir()


def _request(graph: Path, root: str | None = None, cid: str = CID) -> ContainerRequest:
    return ContainerRequest(
        container_id=cid,
        bundle=graph / "overlay-containers" / CID / "userdata",
        annotations={},
        args=("/a",),
        env_names=(),
        root_path=root if root is not None else str(graph / "overlay" / RW / "merged"),
    )


def _resolve(graph: Path, request: ContainerRequest):
    return runtime_image(request, RuntimeStores(containers_storage=graph), request.root_path)


def test_a_consistent_store_binds(tmp_path):
    image_id = CONFIG_DIGEST.removeprefix("sha256:")
    _store(tmp_path, image_id)
    resolved = _resolve(tmp_path, _request(tmp_path))
    assert resolved.reference == "registry.example/a:1"
    assert resolved.layer_diff_ids == DIFF
    resolved.require(CID, MANIFEST, CONFIG)
    with pytest.raises(HookRefused, match="resolved manifest"):
        resolved.require(CID, "sha256:" + "9" * 64, CONFIG)
    other_config = json.dumps({"rootfs": {"diff_ids": list(DIFF)}}).encode()
    with pytest.raises(HookRefused, match="resolved image"):
        resolved.require(CID, MANIFEST, other_config)


def test_layers_not_the_signed_ones_are_refused(tmp_path):
    config = json.dumps({"rootfs": {"diff_ids": [DIFF[1], DIFF[0]]}}).encode()
    _store(tmp_path, hashlib.sha256(config).hexdigest())
    resolved = _resolve(tmp_path, _request(tmp_path))
    with pytest.raises(HookRefused, match="not the verified image's layers"):
        resolved.require(CID, MANIFEST, config)


def test_a_root_that_is_not_the_containers_layer_is_refused(tmp_path):
    _store(tmp_path)
    with pytest.raises(HookRefused, match="is not the mount of its layer"):
        _resolve(tmp_path, _request(tmp_path, root="/srv/elsewhere"))


def test_a_bundle_of_another_container_is_refused(tmp_path):
    _store(tmp_path)
    with pytest.raises(HookRefused, match="belongs to container"):
        _resolve(tmp_path, _request(tmp_path, cid="e" * 64))


@pytest.mark.parametrize(
    ("damage", "why"),
    [
        (lambda g: (g / "overlay-containers" / "containers.json").write_text("{"), "not JSON"),
        (lambda g: (g / "overlay-containers" / "containers.json").write_text("[]"), "no record"),
        (lambda g: (g / "overlay-images" / "images.json").unlink(), "no containers/storage"),
        (lambda g: (g / "overlay-layers" / "layers.json").write_text("[]"), "no record of its"),
        (lambda g: (g / "overlay-layers" / "layers.json").unlink(), "no containers/storage"),
        (_replace_with_directory, "cannot read"),
        (lambda g: (g / "overlay-images" / "images.json").write_text('[{"id": 1}]'), "no record"),
    ],
)
def test_missing_or_unreadable_records_refuse(tmp_path, damage, why):
    _store(tmp_path)
    damage(tmp_path)
    with pytest.raises(HookRefused, match=why):
        _resolve(tmp_path, _request(tmp_path))


def test_a_bundle_of_no_known_runtime_is_refused(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    request = ContainerRequest("x", bundle, {}, ("/a",), ())
    with pytest.raises(HookRefused, match="no record of the image it was unpacked from"):
        runtime_image(request, RuntimeStores(), None)


def test_umoci_binding(tmp_path):
    bundle = tmp_path / "bundle"
    bundle.mkdir()
    walk = {"from_descriptor_path": {"descriptor_walk": [{"digest": MANIFEST}]}}
    (bundle / "umoci.json").write_text(json.dumps(walk))
    resolved = runtime_image(ContainerRequest("x", bundle, {}, ("/a",), ()), RuntimeStores(), None)
    resolved.require("x", MANIFEST, CONFIG)
    with pytest.raises(HookRefused, match="unpacked from manifest"):
        resolved.require("x", "sha256:" + "9" * 64, CONFIG)


def test_containerd_bundle_without_an_address_is_refused(tmp_path):
    bundle = tmp_path / "io.containerd.runtime.v2.task" / "k8s.io" / "x"
    bundle.mkdir(parents=True)
    request = ContainerRequest("x", bundle, {}, ("/a",), ())
    with pytest.raises(HookRefused, match="no containerd address"):
        runtime_image(request, RuntimeStores(containerd_state=tmp_path), None)


def test_chain_id():
    assert chain_id([DIFF[0]]) == DIFF[0]
    expected = "sha256:" + hashlib.sha256(f"{DIFF[0]} {DIFF[1]}".encode()).hexdigest()
    assert chain_id(DIFF) == expected


def test_store_settings_from_flags_and_environment():
    settings = parse_settings(
        ["--containers-storage", "/g", "--containerd-state=/s"],
        {"STOCKADE_CONTAINERD_ADDRESS": "/run/c.sock", "STOCKADE_CONTAINERS_RUNROOT": "/r"},
    )
    assert settings == HookSettings(
        containers_storage=Path("/g"),
        containers_runroot=Path("/r"),
        containerd_state=Path("/s"),
        containerd_address=Path("/run/c.sock"),
    )
    assert parse_settings(settings.to_args(), {}) == settings
