"""The node's side of cluster membership: its TPM-resident certificate and its secrets.

- The certificate's key is made once in the TPM (``node-key.pem``, a TSS2 PRIVATE KEY that only
  this TPM can load) and certified by the AK over a fresh nonce; the verifier answers with a
  certificate that expires with the current result, so it is renewed after every affirming one.
- A secret arrives as a TPM2_Import blob sealed to this TPM, to the PCR values just attested and
  to the node's channel key (``channel.key`` in the state directory, 0600): the TPM unseals it
  only in a session that key authorized (TPM2_PolicySigned), so another process using the same
  TPM gets nothing from the blob. The blob (useless elsewhere) is kept under the state
  directory; the plaintext exists only in memory, in a 0600 file on a tmpfs, or on a 0600 Unix
  socket, as the operator chooses.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from stockade.agent.client import VerifierClient, b64
from stockade.agent.state import AgentState
from stockade.errors import InputError, StockadeError
from stockade.evidence.duplication import SealedSecret
from stockade.home import write_atomic

if TYPE_CHECKING:
    from stockade.tpm.node_key import NodeKey

NODE_KEY_FILE = "node-key.pem"
NODE_CERT_FILE = "node.pem"
CA_BUNDLE_FILE = "ca.pem"
SEALED_DIR = "sealed"
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


class NotOnTmpfs(InputError):
    """Refused to write a secret to a directory that is not on a memory filesystem."""


class NoChannelKey(StockadeError):
    """The node has no channel key file: its secrets, sealed to that key, cannot be unsealed."""


@dataclass(frozen=True)
class Issued:
    certificate: Path
    key: Path
    ca_bundle: Path
    serial: str
    not_after: str
    result_id: str


def filesystem_type(path: Path, mountinfo: str | None = None) -> str:
    """The filesystem type of the mount holding ``path`` (from /proc/self/mountinfo)."""
    text = mountinfo if mountinfo is not None else Path("/proc/self/mountinfo").read_text()
    target = os.path.realpath(path)
    best, best_type = "", ""
    for line in text.splitlines():
        fields = line.split()
        if " - " not in line or len(fields) < 5:
            continue
        mount_point = _unescape(fields[4])
        fs_type = line.split(" - ", 1)[1].split()[0]
        inside = target == mount_point or target.startswith(mount_point.rstrip("/") + "/")
        if inside and len(mount_point) >= len(best):
            best, best_type = mount_point, fs_type
    return best_type


def _unescape(field: str) -> str:
    """mountinfo writes space, tab, newline and backslash as 3-digit octal escapes."""
    return re.sub(r"\\([0-7]{3})", lambda match: chr(int(match.group(1), 8)), field)


def require_memory_filesystem(directory: Path) -> None:
    fs_type = filesystem_type(directory)
    if fs_type not in MEMORY_FILESYSTEMS:
        raise NotOnTmpfs(
            f"{directory} is on {fs_type or 'an unknown filesystem'}, not tmpfs: secrets are "
            "never written to disk in the clear (mount a tmpfs there, or use --secrets-socket)"
        )


class Membership:
    """Certificate renewal and secret retrieval for one node (one TPM, one state directory)."""

    def __init__(
        self,
        state_dir: Path,
        tcti: str,
        *,
        pki_dir: Path | None = None,
        secrets: Iterable[str] = (),
        secrets_dir: Path | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.tcti = tcti
        self.pki_dir = pki_dir or state_dir / "pki"
        self.secret_names = tuple(secrets)
        self.secrets_dir = secrets_dir

    # -- certificate ---------------------------------------------------------------------

    @property
    def key_path(self) -> Path:
        return self.pki_dir / NODE_KEY_FILE

    def node_key(self) -> Any:
        """The TPM-resident key, made on first use."""
        from stockade.tpm.device import Tpm
        from stockade.tpm.node_key import create_node_key, load_node_key, save_node_key

        if self.key_path.exists():
            return load_node_key(self.key_path)
        with Tpm(self.tcti) as tpm:
            key = create_node_key(tpm)
        self.pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        save_node_key(key, self.key_path)
        return key

    def renew_certificate(self, client: VerifierClient, node_id: str) -> Issued:
        """Certify the key with the AK over a fresh nonce; store the certificate and CA bundle."""
        from stockade.tpm.ak import AttestationKey
        from stockade.tpm.device import Tpm
        from stockade.tpm.node_key import certify_node_key

        key = self.node_key()
        ak = AttestationKey.load(self.state_dir)
        nonce = client.nonce(node_id).nonce
        with Tpm(self.tcti) as tpm:
            certify_info, signature = certify_node_key(tpm, key, ak, nonce)
        answer = client.certificate(
            node_id,
            {
                "nonce": b64(nonce),
                "key_public": b64(key.public.marshal_tpm2b()),
                "certify_info": b64(certify_info),
                "signature": b64(signature),
            },
        )
        self.pki_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        certificate = self.pki_dir / NODE_CERT_FILE
        bundle = self.pki_dir / CA_BUNDLE_FILE
        write_atomic(bundle, str(answer["ca_bundle"]), mode=0o644)
        write_atomic(certificate, str(answer["certificate"]), mode=0o644)
        return Issued(
            certificate,
            self.key_path,
            bundle,
            str(answer["serial"]),
            str(answer["not_after"]),
            str(answer["result_id"]),
        )

    # -- secrets -------------------------------------------------------------------------

    def sealed_path(self, name: str) -> Path:
        return self.state_dir / SEALED_DIR / f"{name}.sealed"

    def fetch_secret(self, client: VerifierClient, node_id: str, name: str) -> SealedSecret:
        """Ask for the secret sealed to this TPM's current state; keep the (sealed) blob."""
        answer = client.release_secret(node_id, name)
        try:
            sealed = SealedSecret.from_json(answer["sealed"])
        except (KeyError, TypeError, ValueError, StockadeError) as error:
            raise StockadeError(
                f"the verifier's sealed secret {name!r} is malformed: {error}"
            ) from None
        path = self.sealed_path(name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, sealed.marshal(), mode=0o600)
        return sealed

    def unseal(self, name: str) -> bytes:
        """The secret's bytes, unsealed by the TPM now (refused if the PCRs moved)."""
        from stockade.tpm.device import Tpm
        from stockade.tpm.sealed import unseal_secret

        try:
            sealed = SealedSecret.unmarshal(self.sealed_path(name).read_bytes())
        except OSError:
            raise StockadeError(f"no sealed copy of secret {name!r} on this node") from None
        channel_key = self.channel_key()
        with Tpm(self.tcti) as tpm:
            return unseal_secret(tpm, self.ek_kind(), sealed, channel_key)

    def channel_key(self) -> NodeKey:
        """The node's channel key (``NodeKey``), which authorizes every unseal in the TPM."""
        from stockade.tpm.node_key import load_node_key

        path = AgentState(self.state_dir).channel_key_path
        if not path.exists():
            raise NoChannelKey(
                f"no channel key at {path}: secrets are sealed to the key this node made at "
                "enrollment; enroll the node again to make one"
            )
        return load_node_key(path)

    def ek_kind(self) -> Any:
        """The kind of EK the node enrolled with (its AK's parent): secrets are sealed to it."""
        from stockade.tpm.ak import AttestationKey

        return AttestationKey.load(self.state_dir).ek_kind

    def deliver(self, name: str) -> Path | None:
        """Write the unsealed secret to ``<secrets_dir>/<name>`` (tmpfs only, 0600)."""
        if self.secrets_dir is None:
            return None
        self.secrets_dir.mkdir(parents=True, exist_ok=True, mode=0o700)
        require_memory_filesystem(self.secrets_dir)
        target = self.secrets_dir / name
        write_atomic(target, self.unseal(name), mode=0o600)
        return target

    def withdraw(self) -> list[str]:
        """The node is no longer affirmed: remove delivered secret files and the sealed copies
        (the TPM refuses them once the PCRs moved, but a node can fail for other reasons, e.g.
        a release the policy no longer accepts, with its PCRs unchanged). Names removed."""
        removed = []
        for name in self.secret_names:
            paths = [self.sealed_path(name)]
            if self.secrets_dir is not None:
                paths.append(self.secrets_dir / name)
            gone = False
            for path in paths:
                with contextlib.suppress(FileNotFoundError):
                    path.unlink()
                    gone = True
            if gone:
                removed.append(name)
        return removed
