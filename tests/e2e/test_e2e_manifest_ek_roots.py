"""The verifier started exactly as deploy/kubernetes/10-verifier.yaml starts it, its EK roots
a ConfigMap volume (the kubelet's layout: files behind ``..data`` symlinks, mode 0444)
holding the development EK CA: a machine whose EK chains to the bundled root enrolls; one
whose EK was issued by another CA is refused and never becomes a node.

Only what cannot run here is changed: mount paths become temporary directories, the
listening address 127.0.0.1 and a free port, the database SQLite (or the PostgreSQL of
``STOCKADE_TEST_DATABASE_URL``). What the operator and the init containers do before the
verifier starts is done as the manifest says: the shared keys from ``stockade verifier keys``
and a server certificate from the operator's CA, copied 0600 into the keys directory (the
file list read from the ``keys`` init container's script), then ``stockade verifier
migrate``; the verifier then runs with ``--no-migrate``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from stockade.cluster.secret_store import KeyEncryptionKey
from stockade.demo.cluster import AgentProcess, ClusterError, VerifierProcess, wait_for
from stockade.tpm.ekca import EkCa
from stockade.tpm.swtpm import start_swtpm
from support.cli import run_stockade
from support.operator_tls import operator_ca

MANIFEST = Path(__file__).resolve().parents[2] / "deploy" / "kubernetes" / "10-verifier.yaml"


def _verifier_container() -> dict[str, Any]:
    for document in yaml.safe_load_all(MANIFEST.read_text()):
        if document and document["kind"] == "Deployment":
            (container,) = document["spec"]["template"]["spec"]["containers"]
            assert container["name"] == "verifier"
            return dict(container)
    raise AssertionError(f"no verifier Deployment in {MANIFEST}")


def _init_container_copies() -> list[str]:
    """The key files the ``keys`` init container copies from the Secret, read from its
    script's ``for f in ...; do`` list."""
    for document in yaml.safe_load_all(MANIFEST.read_text()):
        if document and document["kind"] == "Deployment":
            for init in document["spec"]["template"]["spec"]["initContainers"]:
                if init["name"] == "keys":
                    script = init["command"][-1].replace("\\\n", " ")
                    listed = script.split("for f in", 1)[1].split(";", 1)[0]
                    return listed.split()
    raise AssertionError(f"no keys init container in {MANIFEST}")


@dataclass
class ManifestVerifier(VerifierProcess):
    """As the manifest runs it: shared keys (tokens too) in ``--keys-dir``, served with the
    operator's certificate, which clients check against the operator's CA."""

    keys_dir: Path | None = None
    operator_ca: Path | None = None

    @property
    def ca(self) -> Path:
        assert self.operator_ca is not None
        return self.operator_ca

    @property
    def reader_token_file(self) -> Path:
        assert self.keys_dir is not None
        return self.keys_dir / "reader-token"


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
    data_dir = keys_dir = None
    args = []
    operator = work / "operator"
    verifier = ManifestVerifier(work / "unused", work / "unused.pem", work / "unused.yaml")
    database = database_url or f"sqlite:///{work / 'verifier.db'}"
    for arg in container["args"][2:]:
        assert container["args"][:2] == ["verifier", "serve"]
        if "=" not in arg:  # a flag (--no-migrate)
            args.append(arg)
            continue
        option, _, value = arg.partition("=")
        for mount, path in local.items():
            value = value.replace(mount, str(path))
        if option == "--host":
            value = "127.0.0.1"
        elif option == "--port":
            value = str(verifier.port)
        elif option == "--database":
            assert value == "$(STOCKADE_DATABASE_URL)"
            value = database
        elif option == "--data-dir":
            data_dir = Path(value)
        elif option == "--keys-dir":
            keys_dir = Path(value)
        args.append(f"{option}={value}")
    assert data_dir is not None and "--ek-ca-dir" in {a.split("=")[0] for a in args}
    assert keys_dir is not None and "--no-migrate" in args
    # The operator's part: the shared keys, made once, and a server certificate its own CA
    # issued for the Service names (here also for 127.0.0.1, where the test connects).
    made = run_stockade("verifier", "keys", "--out", work / "secret")
    assert made.returncode == 0, made.stderr
    _, server_cert, server_key = operator_ca(operator)
    # The init containers' part: data and keys directories 0700, the keys copied 0600 (as
    # the `keys` init container's script does), then `verifier migrate`.
    data_dir.mkdir(mode=0o700)
    keys_dir.mkdir(mode=0o700)
    for name in _init_container_copies():
        source = {"tls-server.pem": server_cert, "tls-server-key.pem": server_key}.get(
            name, work / "secret" / name
        )
        (keys_dir / name).write_bytes(source.read_bytes())
        (keys_dir / name).chmod(0o600)
    migrated = run_stockade("verifier", "migrate", "--database", database)
    assert migrated.returncode == 0, migrated.stderr
    verifier.data_dir = data_dir
    verifier.keys_dir = keys_dir
    verifier.operator_ca = operator / "ca.pem"
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
