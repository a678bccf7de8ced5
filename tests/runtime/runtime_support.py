"""Helpers for the runtime tests: the static probe program, keys, the trust policy, a node's
files, and the two ways of tampering with an image layout.

The probe (``/probe``) is a statically linked C program: ``/probe write PATH [TEXT]`` writes
a file (on a bind mount, the host sees it: proof that the container ran), ``/probe exit N``
exits with N, and with no arguments it exits 0 (the benchmark's ``/bin/true``).
"""

from __future__ import annotations

import gzip
import hashlib
import json
import os
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec

PROBE_SOURCE = r"""
#include <fcntl.h>
#include <string.h>
#include <unistd.h>
int main(int argc, char **argv) {
  if (argc >= 3 && strcmp(argv[1], "write") == 0) {
    int fd = open(argv[2], O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd < 0) return 3;
    const char *text = argc >= 4 ? argv[3] : "ran\n";
    if (write(fd, text, strlen(text)) < 0) return 4;
    return close(fd) == 0 ? 0 : 5;
  }
  if (argc >= 3 && strcmp(argv[1], "exit") == 0) return argv[2][0] - '0';
  return 0;
}
"""

TAG = "v1"
REFERENCE = "registry.example/stockade/probe:1.0"
OTHER_REFERENCE = "registry.example/stockade/other:1.0"
POLICY_PREFIX = "registry.example/stockade"
DATA_FILE = "data.txt"
DATA_TEXT = b"stockade probe image data\n"


def require_runtime() -> None:
    if os.geteuid() != 0:
        pytest.skip("runc containers need root")
    missing = [tool for tool in ("runc", "umoci", "gcc") if shutil.which(tool) is None]
    if missing:
        pytest.skip(f"{', '.join(missing)} not installed (scripts/bootstrap.sh)")


def run_tool(*command: str | Path) -> None:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise AssertionError(f"{' '.join(map(str, command))} failed: {result.stderr}")


@dataclass(frozen=True)
class Keys:
    org: ec.EllipticCurvePrivateKey
    build: ec.EllipticCurvePrivateKey
    rogue: ec.EllipticCurvePrivateKey


def policy_document(keys: Keys, prefix: str = POLICY_PREFIX) -> dict[str, object]:
    from stockade.release.keys import public_pem

    return {
        "version": 1,
        "keys": {"build": public_pem(keys.build.public_key()).decode()},
        "scopes": [{"prefix": prefix, "keys": ["build"]}],
    }


def sign(layout: Path, reference: str, key: ec.EllipticCurvePrivateKey) -> None:
    from stockade.images import ImageLayout, sign_image

    sign_image(ImageLayout.open(layout), TAG, reference, key)


@dataclass(frozen=True)
class Node:
    """One node's files: its TPM, execution log, trust policy and org key."""

    root: Path
    tcti: str
    log_path: Path
    policy_path: Path
    org_pub: Path
    out: Path
    """Bind-mounted into containers at /out."""

    def settings(self, tcti: str | None = None, agent_socket: Path | None = None, **more):
        """The hook settings of this node (its TPM, log, policy and org key), plus ``more``
        (``layout_cache``, a runtime's store...)."""
        from stockade.agent.oci_hook import HookSettings

        return HookSettings(
            tcti=tcti or self.tcti,
            log_path=self.log_path,
            policy_path=self.policy_path,
            org_keys=(self.org_pub,),
            agent_socket=agent_socket,
            **more,
        )

    def write_policy(self, keys: Keys, prefix: str = POLICY_PREFIX) -> None:
        from stockade.images import sign_trust_policy

        self.policy_path.write_bytes(sign_trust_policy(policy_document(keys, prefix), keys.org))


def change_layer_byte(layout: Path) -> str:
    """Change one byte of /data.txt inside the image's layer and re-digest the layer, the
    manifest and the index, as an attacker with write access to the layout would; returns
    the new manifest digest (which no signature covers)."""
    index_path = layout / "index.json"
    index = json.loads(index_path.read_text())
    entry = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG
    )
    manifest = json.loads(_blob(layout, entry["digest"]).read_bytes())
    config = json.loads(_blob(layout, manifest["config"]["digest"]).read_bytes())
    changed = False
    for number, layer in enumerate(manifest["layers"]):
        raw = gzip.decompress(_blob(layout, layer["digest"]).read_bytes())
        at = raw.find(DATA_TEXT)
        if at < 0:
            continue
        tampered = raw[:at] + b"S" + raw[at + 1 :]
        # Only file content changed: the tar headers (and their checksums) are intact.
        blob = gzip.compress(tampered)
        layer["digest"], layer["size"] = _add_blob(layout, blob), len(blob)
        config["rootfs"]["diff_ids"][number] = "sha256:" + hashlib.sha256(tampered).hexdigest()
        changed = True
    assert changed, "no layer holds data.txt"
    raw_config = json.dumps(config, separators=(",", ":")).encode()
    manifest["config"]["digest"] = _add_blob(layout, raw_config)
    manifest["config"]["size"] = len(raw_config)
    raw_manifest = json.dumps(manifest, separators=(",", ":")).encode()
    entry["digest"], entry["size"] = _add_blob(layout, raw_manifest), len(raw_manifest)
    index_path.write_text(json.dumps(index))
    return entry["digest"]


def change_blob_byte_in_place(layout: Path) -> None:
    """Flip one byte of the layer blob holding /data.txt without re-digesting anything."""
    index = json.loads((layout / "index.json").read_text())
    entry = next(
        m
        for m in index["manifests"]
        if m.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG
    )
    manifest = json.loads(_blob(layout, entry["digest"]).read_bytes())
    for layer in manifest["layers"]:
        path = _blob(layout, layer["digest"])
        raw = gzip.decompress(path.read_bytes())
        if DATA_TEXT in raw:
            data = bytearray(path.read_bytes())
            data[len(data) // 2] ^= 0x01
            path.write_bytes(bytes(data))
            return
    raise AssertionError("no layer holds data.txt")


def _blob(layout: Path, digest: str) -> Path:
    algorithm, _, hexdigest = digest.partition(":")
    return layout / "blobs" / algorithm / hexdigest


def _add_blob(layout: Path, data: bytes) -> str:
    digest = "sha256:" + hashlib.sha256(data).hexdigest()
    _blob(layout, digest).write_bytes(data)
    return digest


def logged_records(node: Node) -> list:
    """The node's execution log, decoded (empty before the first record)."""
    from stockade.evidence.cel import parse_cel
    from stockade.evidence.execution import decode_record

    if not node.log_path.exists():
        return []
    return [decode_record(r.content) for r in parse_cel(node.log_path.read_bytes())]


def pcr13(tcti: str) -> dict[int, bytes]:
    """PCR 13 in every active bank of the TPM at ``tcti``."""
    from stockade.evidence.execution import EXECUTION_PCR
    from stockade.evidence.pcr_selection import BankSelection, PcrSelection
    from stockade.tpm.device import Tpm

    with Tpm(tcti) as tpm:
        algs = [bank.hash_alg for bank in tpm.active_banks().banks]
        values = tpm.read_pcrs(
            PcrSelection(tuple(BankSelection(alg, (EXECUTION_PCR,)) for alg in algs))
        )
    return {alg: values.banks[alg][EXECUTION_PCR] for alg in algs}
