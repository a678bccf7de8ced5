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
- A blob authenticates nothing: anyone can seal one to the node's public EK and channel key,
  with any PCR selection. The agent keeps a blob only with the verifier's signed release
  statement for it (this secret, this node, exactly these bytes), verified under the verifier
  key the node pinned, and only when the blob's policy binds it to this node's channel key and
  to PCRs the node just attested, never the execution PCR or a resettable one.
"""

from __future__ import annotations

import contextlib
import os
import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from stockade.agent.client import VerifierClient, b64
from stockade.agent.state import AgentState
from stockade.errors import InputError, StockadeError, VerificationFailed
from stockade.evidence.algorithms import Alg
from stockade.evidence.duplication import SealedSecret, unsealable_pcr
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.policy_digest import unseal_policy
from stockade.evidence.public import KeyedHashParameters, ObjectAttributes, Scheme, TpmPublic
from stockade.home import write_atomic
from stockade.statements import SecretRelease, StatementInvalid, VerifierKeys, verify_secret_release

if TYPE_CHECKING:
    from stockade.tpm.node_key import NodeKey

NODE_KEY_FILE = "node-key.pem"
NODE_CERT_FILE = "node.pem"
CA_BUNDLE_FILE = "ca.pem"
SEALED_DIR = "sealed"
RELEASE_SUFFIX = ".release.jwt"  # the verifier's release statement, kept beside the blob
MEMORY_FILESYSTEMS = frozenset({"tmpfs", "ramfs"})


class NotOnTmpfs(InputError):
    """Refused to write a secret to a directory that is not on a memory filesystem."""


class NoChannelKey(StockadeError):
    """The node has no channel key file: its secrets, sealed to that key, cannot be unsealed."""


class ReleaseRefused(VerificationFailed):
    """A released secret was refused and not kept: it is not the verifier's signed release of
    that secret to this node, or its policy does not bind it to this node's channel key and
    attested PCRs."""

    def __init__(self, name: str, reason: str) -> None:
        super().__init__(f"the release of secret {name!r} is refused: {reason}")
        self.name = name
        self.reason = reason


class SecretSource(Protocol):
    """Where released secrets come from (the verifier client)."""

    def release_secret(self, node_id: str, name: str) -> dict[str, Any]: ...


@dataclass(frozen=True)
class AcceptedSecret:
    sealed: SealedSecret
    release: SecretRelease


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
        verifier_keys: VerifierKeys | None = None,
        attested: PcrSelection | None = None,
    ) -> None:
        self.state_dir = state_dir
        self.tcti = tcti
        self.pki_dir = pki_dir or state_dir / "pki"
        self.secret_names = tuple(secrets)
        self.secrets_dir = secrets_dir
        # The verifier keys release statements must verify under (pinned), and the PCRs the
        # node quoted in its last attestation: no secret is accepted without both.
        self.verifier_keys = verifier_keys
        self.attested = attested

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

    def release_path(self, name: str) -> Path:
        return self.state_dir / SEALED_DIR / f"{name}{RELEASE_SUFFIX}"

    def fetch_secret(
        self, client: SecretSource, node_id: str, name: str, *, now: datetime | None = None
    ) -> AcceptedSecret:
        """Ask for the secret sealed to this TPM's current state; keep the (sealed) blob and
        its release statement once ``check_release`` accepts them. Raises ``ReleaseRefused``
        (nothing kept, a copy kept before untouched) otherwise."""
        answer = client.release_secret(node_id, name)
        if not isinstance(answer, Mapping):
            raise ReleaseRefused(name, "the answer is not a JSON object")
        try:
            sealed = SealedSecret.from_json(answer["sealed"])
        except (KeyError, TypeError, ValueError, StockadeError) as error:
            raise ReleaseRefused(name, f"the sealed blob is malformed: {error}") from None
        token = answer.get("release")
        release = self.check_release(sealed, token, node_id, name, now or datetime.now(UTC))
        path = self.sealed_path(name)
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        write_atomic(path, sealed.marshal(), mode=0o600)
        write_atomic(self.release_path(name), f"{token}\n", mode=0o600)
        return AcceptedSecret(sealed, release)

    def check_release(
        self, sealed: SealedSecret, token: object, node_id: str, name: str, now: datetime
    ) -> SecretRelease:
        """What the release statement ``token`` says of ``sealed``, once all of this holds:

        - it verifies under a pinned verifier key and releases exactly these bytes as secret
          ``name`` to node ``node_id`` (``stockade.statements.verify_secret_release``);
        - it names the PCRs the blob is sealed to, none the execution PCR or resettable
          (``unsealable_pcr``), all quoted in this node's last attestation;
        - the blob is a sealed data object whose USER role needs the policy (userWithAuth
          CLEAR), and whose authPolicy is the unseal policy for this node's channel key and the
          values those PCRs hold in this TPM now.

        The TPM enforces the policy either way; checking it here refuses a blob that would
        unseal without the binding the statement claims (a verifier bug)."""
        from stockade.tpm.device import Tpm

        if self.verifier_keys is None:
            raise ReleaseRefused(
                name,
                "no verifier key is pinned on this node (--verifier-key, or the key pinned at "
                "enrollment), so nothing can show the verifier released it",
            )
        if not isinstance(token, str):
            raise ReleaseRefused(
                name,
                "the answer carries no release statement signed by the verifier (a sealed blob "
                "alone proves nothing: anyone can make one from this node's public EK)",
            )
        try:
            release = verify_secret_release(
                token,
                self.verifier_keys,
                node_id=node_id,
                name=name,
                sealed=sealed.marshal(),
                now=now,
            )
        except StatementInvalid as error:
            raise ReleaseRefused(name, str(error)) from None
        problem = selection_problem(sealed.selection, release.pcr_selection, self.attested)
        problem = problem or sealed_object_problem(sealed.public)
        if problem is not None:
            raise ReleaseRefused(name, problem)
        channel_key = self.channel_key()
        with Tpm(self.tcti) as tpm:
            pcrs = tpm.read_pcrs(sealed.selection)
        expected = unseal_policy(sealed.selection, pcrs, channel_key.public.name())
        if sealed.public.auth_policy != expected:
            raise ReleaseRefused(
                name,
                f"its authPolicy {sealed.public.auth_policy.hex()[:16]}... is not the unseal "
                f"policy for this node's channel key and {sealed.selection} as this TPM holds "
                f"them now ({expected.hex()[:16]}...)",
            )
        return release

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
            paths = [self.sealed_path(name), self.release_path(name)]
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


def _stated(selection: Mapping[str, tuple[int, ...]]) -> str:
    return "+".join(f"{bank}:{','.join(map(str, pcrs))}" for bank, pcrs in selection.items())


def selection_problem(
    selection: PcrSelection,
    stated: Mapping[str, tuple[int, ...]],
    attested: PcrSelection | None,
) -> str | None:
    """Why a blob sealed to ``selection``, released as sealed to ``stated``, must be refused
    by a node whose last quote covered ``attested`` (None: it may be accepted)."""
    if dict(stated) != {bank.bank_name: bank.pcrs for bank in selection.banks}:
        return f"the statement says it is sealed to {_stated(stated)!r}, the blob to {selection}"
    if not selection.items():
        return "it is sealed to no PCR"
    for _, index in selection.items():
        reason = unsealable_pcr(index)
        if reason is not None:
            return f"it is sealed to {selection}: {reason}"
    if attested is None:
        return "this agent has not attested yet, so it cannot tell which PCRs it attested"
    quoted = {bank.hash_alg: set(bank.pcrs) for bank in attested.banks}
    outside = [
        f"{bank.bank_name}:{index}"
        for bank in selection.banks
        for index in bank.pcrs
        if index not in quoted.get(bank.hash_alg, set())
    ]
    if outside:
        return (
            f"it is sealed to {', '.join(outside)}, which this node did not attest "
            f"(its last quote: {attested})"
        )
    return None


def sealed_object_problem(public: TpmPublic) -> str | None:
    """Why ``public`` is not a sealed data object only a policy session can unseal."""
    if public.type != Alg.KEYEDHASH or public.parameters != KeyedHashParameters(Scheme(Alg.NULL)):
        return "the object is not a sealed data object (KEYEDHASH with scheme NULL)"
    if public.has(ObjectAttributes.USER_WITH_AUTH):
        return "the object has userWithAuth SET: its empty password would unseal it, no policy"
    return None
