"""The verifier started exactly as deploy/kubernetes/10-verifier.yaml starts it, its EK roots
a ConfigMap volume (the kubelet's layout: files behind ``..data`` symlinks, mode 0444)
holding the development EK CA: a machine whose EK chains to the bundled root enrolls; one
whose EK was issued by another CA is refused and never becomes a node.

Only what cannot run here is changed: mount paths become temporary directories, the
listening address 127.0.0.1 and a free port, the database SQLite (or the PostgreSQL of
``STOCKADE_TEST_DATABASE_URL``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.cluster.secret_store import KeyEncryptionKey
from stockade.demo.cluster import AgentProcess, ClusterError, VerifierProcess, wait_for
from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import start_swtpm
from support.cli import run_stockade

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "10-verifier.yaml"


def _verifier_container() -> dict[str, Any]:
    for document in yaml.safe_load_all(MANIFEST.read_text()):
        if document and document["kind"] == "Deployment":
            (container,) = document["spec"]["template"]["spec"]["containers"]
            assert container["name"] == "verifier"
            return dict(container)
    raise AssertionError(f"no verifier Deployment in {MANIFEST}")


def _configmap_volume(directory: Path, files: dict[str, bytes]) -> Path:
    """What the kubelet makes of a ConfigMap: a timestamped directory, ``..data`` pointing at
    it and one symlink per key."""
    stamp = directory / "..2026_12_06_10_00_00.000000001"
    stamp.mkdir(parents=True)
    for name, data in files.items():
        (stamp / name).write_bytes(data)
        (stamp / name).chmod(0o444)
    (directory / "..data").symlink_to(stamp.name)
    for name in files:
        (directory / name).symlink_to(f"..data/{name}")
    return directory


@pytest.fixture(scope="module")
def deployed(
    tmp_path_factory: pytest.TempPathFactory, ek_ca: EkCa, database_url: str | None,
    stockade_home: Path, make_module_tpm: Any,
) -> Any:  # fmt: skip
    work = tmp_path_factory.mktemp("manifest")
    container = _verifier_container()
    mounts = {mount["name"]: mount["mountPath"] for mount in container["volumeMounts"]}
    local = {
        mounts["data"]: work / "data-volume",
        mounts["kek"]: work / "kek-volume",
        mounts["ek-roots"]: work / "ek-roots-volume",
    }
    local[mounts["data"]].mkdir()
    local[mounts["kek"]].mkdir()
    kek = local[mounts["kek"]] / "kek"
    kek.write_text(KeyEncryptionKey.generate().to_text())
    kek.chmod(0o600)
    bundle = ek_ca.root_cert_path.read_bytes() + ek_ca.issuer_cert_path.read_bytes()
    _configmap_volume(local[mounts["ek-roots"]], {"dev-ek-ca.pem": bundle})
    data_dir = None
    args = []
    verifier = VerifierProcess(work / "unused", work / "unused.pem", work / "unused.yaml")
    for arg in container["args"][2:]:
        assert container["args"][:2] == ["verifier", "serve"]
        option, _, value = arg.partition("=")
        for mount, path in local.items():
            value = value.replace(mount, str(path))
        if option == "--host":
            value = "127.0.0.1"
        elif option == "--port":
            value = str(verifier.port)
        elif option == "--database":
            assert value == "$(STOCKADE_DATABASE_URL)"
            value = database_url or f"sqlite:///{work / 'verifier.db'}"
        elif option == "--data-dir":
            data_dir = Path(value)
        args.append(f"{option}={value}")
    assert data_dir is not None and "--ek-ca-dir" in {a.split("=")[0] for a in args}
    data_dir.mkdir(mode=0o700)  # what the init container does
    verifier.data_dir = data_dir
    verifier.serve_args = tuple(args)
    verifier.start()
    other_ca = EkCa.load_or_create(work / "other-vendor-ca")
    genuine = make_module_tpm()
    foreign = start_swtpm("e2e-manifest-foreign", stockade_home, other_ca)
    agents = {
        "genuine": AgentProcess("genuine", genuine.name, verifier, stockade_home,
                                work / "agents" / "genuine"),
        "foreign": AgentProcess("foreign", foreign.name, verifier, stockade_home,
                                work / "agents" / "foreign"),
    }  # fmt: skip
    try:
        for agent in agents.values():
            agent.start()
        yield verifier, agents
    finally:
        for agent in agents.values():
            agent.stop()
        verifier.stop()
        foreign.stop()


def _nodes(verifier: VerifierProcess) -> dict[str, str]:
    result = run_stockade(
        "nodes", "list", "--verifier", verifier.url, "--ca", verifier.ca,
        "--token-file", verifier.reader_token_file, "--format", "json",
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    return {node["name"]: node["state"] for node in json.loads(result.stdout)["nodes"]}


def test_the_manifest_passes_the_bundle_and_no_single_ca_file():
    args = _verifier_container()["args"]
    assert "--ek-ca-dir=/etc/stockade/ek-roots" in args
    assert not any(arg.startswith("--ek-ca=") for arg in args)


def test_a_machine_whose_ek_chains_to_a_bundled_root_enrolls(deployed):
    verifier, agents = deployed
    try:
        # The manifest's enrollment mode is the default, approve: the TPM waits for the
        # operator, enrolled.
        wait_for(lambda: _nodes(verifier).get("genuine") == "pending", 30, "genuine pending")
    except ClusterError:
        raise AssertionError(f"{agents['genuine'].lines()[-5:]}\n{verifier.tail()}") from None


def test_a_machine_whose_ek_another_ca_issued_is_refused(deployed):
    verifier, agents = deployed
    wait_for(lambda: "genuine" in _nodes(verifier), 30, "the genuine node")
    wait_for(
        lambda: any("403 ek-certificate" in line and "does not chain" in line
                    for line in agents["foreign"].lines()),
        30, "the foreign TPM's refusal",
    )  # fmt: skip
    assert "foreign" not in _nodes(verifier)
