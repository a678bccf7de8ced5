"""The Stockade OCI hook with real runc containers from umoci-built images.

A refused container must never have run: each test gives it a bind mount at /out and the
command ``/probe write /out/ran``, and checks the file is absent, the execution log has no
record and PCR 13 is still all zeros. An admitted container's records are in the log, and
PCR 13 read from the swtpm equals the replay of that log in every bank.
"""

from __future__ import annotations

import hashlib
import json
import socket
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
from runtime_support import (
    OTHER_REFERENCE,
    REFERENCE,
    TAG,
    Keys,
    Node,
    change_blob_byte_in_place,
    change_layer_byte,
    logged_records,
    pcr13,
    policy_document,
    sign,
)

from stockade.agent.oci_hook import serving_hook_requests
from stockade.agent.run import (
    BindMount,
    ContainerRefused,
    configure_bundle,
    prepared_bundle,
    run_bundle,
    run_image,
)
from stockade.evidence.algorithms import hash_algorithm
from stockade.evidence.cel import parse_cel
from stockade.evidence.execution import (
    EXECUTION_PCR,
    ContainerStart,
    TrustPolicyLoaded,
)
from stockade.images import sign_trust_policy

pytestmark = pytest.mark.swtpm

WRITE = ("/probe", "write", "/out/ran")


def _run(node: Node, layout: Path, tmp_path: Path, name: str, **kwargs) -> int:
    settings = kwargs.pop("settings", None) or node.settings()
    return run_image(
        layout,
        TAG,
        reference=kwargs.pop("reference", REFERENCE),
        settings=settings,
        container_id=name,
        args=kwargs.pop("args", WRITE),
        mounts=[BindMount(node.out, "/out")],
        runc_root=tmp_path / "runc",
        bundle_parent=tmp_path,
        **kwargs,
    )


def _replay(node: Node, algorithms: list[int]) -> dict[int, bytes]:
    records = parse_cel(node.log_path.read_bytes()) if node.log_path.exists() else ()
    result = {}
    for alg in algorithms:
        hasher = hash_algorithm(alg)
        value = bytes(hasher.digest_size)
        for record in records:
            assert record.pcr == EXECUTION_PCR
            assert record.digest(alg) == hasher.digest(record.content)
            value = hash_algorithm(alg).digest(value + record.digest(alg))
        result[alg] = value
    return result


def _assert_never_ran(node: Node) -> None:
    assert not (node.out / "ran").exists(), "the refused container ran"
    assert logged_records(node) == []
    pcrs = pcr13(node.tcti)
    assert all(value == bytes(len(value)) for value in pcrs.values()), "PCR 13 was extended"


def _assert_log_matches_tpm(node: Node) -> None:
    pcrs = pcr13(node.tcti)
    assert pcrs == _replay(node, list(pcrs))
    assert all(value != bytes(len(value)) for value in pcrs.values())


def test_signed_image_runs_and_is_measured(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    assert _run(node, image_layout, tmp_path, "signed-1") == 0
    assert (node.out / "ran").read_text() == "ran\n"

    policy_record, start = logged_records(node)
    assert isinstance(policy_record, TrustPolicyLoaded)
    assert isinstance(start, ContainerStart)
    manifest = json.loads((image_layout / "index.json").read_text())["manifests"][0]
    assert start.container_id == "signed-1"
    assert start.image_reference == REFERENCE
    assert start.manifest_digest == manifest["digest"]
    assert start.config_digest.startswith("sha256:")
    assert start.args == WRITE
    assert "PATH" in start.env_names and all("=" not in n for n in start.env_names)
    assert any(m.destination == "/out" and m.source == str(node.out) for m in start.mounts)
    assert start.trust_policy_digest == policy_record.digest
    assert start.time.endswith("Z")
    _assert_log_matches_tpm(node)


def test_policy_measured_again_only_when_it_changes(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    assert _run(node, image_layout, tmp_path, "p-1", args=("/probe",)) == 0
    assert _run(node, image_layout, tmp_path, "p-2", args=("/probe",)) == 0
    node.write_policy(keys, prefix="registry.example")  # a different policy, same key
    assert _run(node, image_layout, tmp_path, "p-3", args=("/probe",)) == 0
    kinds = [type(r).__name__ for r in logged_records(node)]
    assert kinds == [
        "TrustPolicyLoaded",
        "ContainerStart",
        "ContainerStart",
        "TrustPolicyLoaded",
        "ContainerStart",
    ]
    first, _, _, second, last = logged_records(node)
    assert first.digest != second.digest == last.trust_policy_digest
    _assert_log_matches_tpm(node)


def test_container_exit_status_is_returned(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    assert _run(node, image_layout, tmp_path, "exit-7", args=("/probe", "exit", "7")) == 7
    assert [type(r).__name__ for r in logged_records(node)] == [
        "TrustPolicyLoaded",
        "ContainerStart",
    ]


@pytest.mark.parametrize(
    ("case", "check"),
    [
        ("unsigned", "unsigned"),
        ("untrusted-key", "untrusted-key"),
        ("other-repository", "reference"),
        ("tampered-layer", "unsigned"),
    ],
)
def test_refused_images_never_run(node, keys: Keys, image_layout, tmp_path, case, check):
    if case == "untrusted-key":
        sign(image_layout, REFERENCE, keys.rogue)
    elif case == "other-repository":
        sign(image_layout, OTHER_REFERENCE, keys.build)
    elif case == "tampered-layer":
        sign(image_layout, REFERENCE, keys.build)
        change_layer_byte(image_layout)  # re-digested: umoci unpacks it happily
    with pytest.raises(ContainerRefused) as refused:
        _run(node, image_layout, tmp_path, f"refused-{case}")
    assert check in refused.value.reason
    assert "\n" not in refused.value.reason
    _assert_never_ran(node)


def test_layer_changed_after_unpack_is_refused(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    with prepared_bundle(
        image_layout,
        TAG,
        reference=REFERENCE,
        settings=node.settings(),
        args=WRITE,
        mounts=[BindMount(node.out, "/out")],
        bundle_parent=tmp_path,
    ) as bundle:
        change_blob_byte_in_place(image_layout)  # the layout's blob no longer has its digest
        with pytest.raises(ContainerRefused) as refused:
            run_bundle(bundle, "tampered-in-place", runc_root=tmp_path / "runc")
    assert "digest" in refused.value.reason
    _assert_never_ran(node)


def _closed_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def test_unreachable_tpm_refuses(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    settings = node.settings(tcti=f"swtpm:host=127.0.0.1,port={_closed_port()}")
    with pytest.raises(ContainerRefused) as refused:
        _run(node, image_layout, tmp_path, "no-tpm", settings=settings)
    assert "TPM" in refused.value.reason
    _assert_never_ran(node)


def test_missing_annotation_refuses(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    with prepared_bundle(
        image_layout,
        TAG,
        reference=REFERENCE,
        settings=node.settings(),
        args=WRITE,
        mounts=[BindMount(node.out, "/out")],
        bundle_parent=tmp_path,
    ) as bundle:
        config = json.loads((bundle / "config.json").read_text())
        del config["annotations"]["dev.stockade.image.reference"]
        (bundle / "config.json").write_text(json.dumps(config))
        with pytest.raises(ContainerRefused) as refused:
            run_bundle(bundle, "no-annotation", runc_root=tmp_path / "runc")
    assert "dev.stockade.image.reference" in refused.value.reason
    _assert_never_ran(node)


def test_unreadable_policy_refuses(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    node.policy_path.write_bytes(node.policy_path.read_bytes().replace(b'"payload"', b'"x"'))
    with pytest.raises(ContainerRefused):
        _run(node, image_layout, tmp_path, "bad-policy")
    _assert_never_ran(node)


def test_policy_signed_by_another_org_refuses(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    node.policy_path.write_bytes(sign_trust_policy(policy_document(keys), keys.rogue))
    with pytest.raises(ContainerRefused) as refused:
        _run(node, image_layout, tmp_path, "rogue-policy")
    assert "policy" in refused.value.reason
    _assert_never_ran(node)


def test_without_hook_the_container_runs_unmeasured(node, keys: Keys, image_layout, tmp_path):
    """The control for every refusal above: the same bundle without the hook does run."""
    with prepared_bundle(
        image_layout,
        TAG,
        reference=REFERENCE,
        settings=node.settings(),
        args=WRITE,
        mounts=[BindMount(node.out, "/out")],
        bundle_parent=tmp_path,
    ) as bundle:
        configure_bundle(
            bundle,
            layout=image_layout,
            tag=TAG,
            reference=REFERENCE,
            settings=node.settings(),
            with_hook=False,
        )
        assert run_bundle(bundle, "no-hook", runc_root=tmp_path / "runc") == 0
    assert (node.out / "ran").exists()
    assert logged_records(node) == []


# -- the fast path: a tiny hook client and the admission server --------------------------------


def test_agent_socket_admits_and_refuses(node, keys: Keys, image_layout, tmp_path):
    sock = tmp_path / "hook.sock"
    with serving_hook_requests(sock, node.settings()):
        settings = node.settings(agent_socket=sock)
        with pytest.raises(ContainerRefused) as refused:
            _run(node, image_layout, tmp_path, "sock-unsigned", settings=settings)
        assert "unsigned" in refused.value.reason
        _assert_never_ran(node)

        sign(image_layout, REFERENCE, keys.build)
        assert _run(node, image_layout, tmp_path, "sock-signed", settings=settings) == 0
    assert (node.out / "ran").exists()
    assert [type(r).__name__ for r in logged_records(node)] == [
        "TrustPolicyLoaded",
        "ContainerStart",
    ]
    assert logged_records(node)[1].container_id == "sock-signed"
    _assert_log_matches_tpm(node)


def test_agent_socket_down_refuses(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    settings = node.settings(agent_socket=tmp_path / "nobody-listens.sock")
    with pytest.raises(ContainerRefused) as refused:
        _run(node, image_layout, tmp_path, "sock-down", settings=settings)
    assert "cannot be reached" in refused.value.reason
    _assert_never_ran(node)


def test_record_digests_are_of_the_content(node, keys: Keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    assert _run(node, image_layout, tmp_path, "digests", args=("/probe",)) == 0
    for record in parse_cel(node.log_path.read_bytes()):
        assert record.digest(0x000B) == hashlib.sha256(record.content).digest()


def test_concurrent_starts_keep_log_and_pcr_in_step(node, keys: Keys, image_layout, tmp_path):
    """Hooks racing for the log's lock: record order is extend order, so the replay holds."""
    sign(image_layout, REFERENCE, keys.build)
    names = [f"race-{n}" for n in range(4)]
    with ThreadPoolExecutor(len(names)) as pool:
        statuses = list(
            pool.map(lambda n: _run(node, image_layout, tmp_path, n, args=("/probe",)), names)
        )
    assert statuses == [0] * len(names)
    starts = [r for r in logged_records(node) if isinstance(r, ContainerStart)]
    assert sorted(r.container_id for r in starts) == names
    assert [type(r).__name__ for r in logged_records(node)].count("TrustPolicyLoaded") == 1
    _assert_log_matches_tpm(node)


def test_bundle_unpacked_from_another_image_is_refused(
    node, keys: Keys, image_layout, tmp_path, probe_binary
):
    """The annotations name the signed tag, but the rootfs came from an unsigned image."""
    from runtime_support import run_tool

    sign(image_layout, REFERENCE, keys.build)
    run_tool("umoci", "new", "--image", f"{image_layout}:evil")
    run_tool("umoci", "insert", "--image", f"{image_layout}:evil", probe_binary, "/probe")
    with prepared_bundle(
        image_layout,
        "evil",
        reference=REFERENCE,
        settings=node.settings(),
        args=WRITE,
        mounts=[BindMount(node.out, "/out")],
        bundle_parent=tmp_path,
    ) as bundle:
        config = json.loads((bundle / "config.json").read_text())
        config["annotations"]["dev.stockade.image.tag"] = TAG
        (bundle / "config.json").write_text(json.dumps(config))
        with pytest.raises(ContainerRefused) as refused:
            run_bundle(bundle, "evil-rootfs", runc_root=tmp_path / "runc")
    assert "unpacked from manifest" in refused.value.reason
    _assert_never_ran(node)
