"""`verifier serve --ek-ca-dir DIR`: a bundle of TPM vendor and cloud vTPM EK CA certificates,
read from a directory (PEM and DER, nested), refused when others could add a root to it, and
enough for a TPM whose EK chains to one of its roots to enroll."""

from __future__ import annotations

import dataclasses
import os
import shutil
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding
from verifier_support import DevAgent

from stockade.verifier.config import ca_directory_files, load_ca_files
from stockade.verifier.errors import ConfigurationError


def _bundle(ek_ca, directory: Path) -> Path:
    """The development EK CA laid out as a vendor bundle: the root as PEM, the issuing CA as
    DER in a subdirectory, and files that are not certificates beside them."""
    (directory / "intel").mkdir(parents=True)
    shutil.copy(ek_ca.root_cert_path, directory / "root.crt")
    issuer = x509.load_pem_x509_certificate(ek_ca.issuer_cert_path.read_bytes())
    (directory / "intel" / "issuing-ca.cer").write_bytes(issuer.public_bytes(Encoding.DER))
    (directory / "README.md").write_text("Vendor EK roots; fetched from the vendor's site.\n")
    (directory / "intel" / "SHA256SUMS.sig").write_bytes(b"\x00\x01 not a certificate")
    for path in [directory, directory / "intel", *directory.rglob("*")]:
        path.chmod(0o755 if path.is_dir() else 0o644)
    return directory


def test_a_bundle_directory_is_read_recursively_pem_and_der(ek_ca, tmp_path):
    bundle = _bundle(ek_ca, tmp_path / "ek-roots")
    files = ca_directory_files(bundle)
    assert [p.relative_to(bundle).as_posix() for p in files] == [
        "intel/issuing-ca.cer",
        "root.crt",
    ]
    roots, intermediates = load_ca_files(files)
    assert [r.subject for r in roots] == [r.subject for r in ek_ca.trusted_roots()]
    assert len(intermediates) == 1


def test_a_configmap_volume_is_read_through_its_symlinks_once(ek_ca, tmp_path):
    """Kubernetes mounts a ConfigMap as symlinks into a hidden "..<timestamp>" directory."""
    volume = tmp_path / "ek-roots"
    data = volume / "..2026_12_06_08_00_00.123"
    data.mkdir(parents=True)
    shutil.copy(ek_ca.root_cert_path, data / "root.crt")
    (volume / "..data").symlink_to(data.name)
    (volume / "root.crt").symlink_to("..data/root.crt")
    for path in (volume, data):
        path.chmod(0o755)
    (data / "root.crt").chmod(0o444)
    assert ca_directory_files(volume) == [volume / "root.crt"]


def test_a_bundle_with_no_certificate_is_refused(tmp_path):
    empty = tmp_path / "ek-roots"
    empty.mkdir()
    (empty / "README.md").write_text("nothing here yet\n")
    with pytest.raises(ConfigurationError, match="holds no certificate"):
        ca_directory_files(empty)
    with pytest.raises(ConfigurationError, match="not a directory"):
        ca_directory_files(tmp_path / "missing")


@pytest.mark.parametrize("target", ["directory", "subdirectory", "file"])
def test_a_bundle_others_can_write_is_refused(ek_ca, tmp_path, target):
    """The attack: add your own root to a world-writable bundle and enroll a software TPM."""
    bundle = _bundle(ek_ca, tmp_path / "ek-roots")
    path = {
        "directory": bundle,
        "subdirectory": bundle / "intel",
        "file": bundle / "root.crt",
    }[target]
    path.chmod(0o777 if path.is_dir() else 0o666)
    with pytest.raises(ConfigurationError, match="writable by others"):
        ca_directory_files(bundle)


def test_group_write_is_accepted_only_for_this_process_group(ek_ca, tmp_path):
    bundle = _bundle(ek_ca, tmp_path / "ek-roots")
    bundle.chmod(0o775)  # an fsGroup volume: the group is ours
    assert ca_directory_files(bundle)
    os.chown(bundle, -1, os.getegid() + 4242)  # another group could write it
    with pytest.raises(ConfigurationError, match="writable by others"):
        ca_directory_files(bundle)


def test_a_tpm_whose_ek_chains_to_a_bundled_root_enrolls(
    ek_ca, tmp_path, verifier_config, make_client, software_tpm
):
    roots, intermediates = load_ca_files(ca_directory_files(_bundle(ek_ca, tmp_path / "b")))
    config = dataclasses.replace(verifier_config, ek_roots=roots, ek_intermediates=intermediates)
    client = make_client(config)
    node_id = DevAgent.create(software_tpm).enroll(client, "node-bundled")
    assert node_id
