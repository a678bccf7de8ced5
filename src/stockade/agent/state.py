"""The agent's durable state: its AK (``ak.pub``/``ak.priv``) and, once enrolled,
``node.json`` with the node id the verifier assigned. A restarted agent reuses both,
so it does not enroll again. ``verifier-keys.pem`` holds the verifier statement keys the
agent pinned: written once, never replaced by the agent."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stockade.errors import InputError
from stockade.home import create_exclusive, write_atomic
from stockade.statements import VerifierKeys

NODE_FILE = "node.json"
EXECUTIONS_FILE = "execution-log.json"
# The node channel key: a P-256 signing key in the TPM (TSS2 PRIVATE KEY PEM, 0600), certified
# by the AK at enrollment; it signs every request to the verifier and authorises unsealing.
CHANNEL_KEY_FILE = "channel.key"
# The verifier's statement keys (PEM), pinned at enrollment or from --verifier-key.
VERIFIER_KEYS_FILE = "verifier-keys.pem"


class VerifierKeyMismatch(InputError):
    """The verifier key given differs from the one this node pinned."""


@dataclass(frozen=True)
class Enrolled:
    node_id: str
    name: str
    verifier: str


@dataclass(frozen=True)
class AgentState:
    directory: Path

    @property
    def node_file(self) -> Path:
        return self.directory / NODE_FILE

    @property
    def channel_key_path(self) -> Path:
        return self.directory / CHANNEL_KEY_FILE

    @property
    def verifier_keys_path(self) -> Path:
        return self.directory / VERIFIER_KEYS_FILE

    def pinned_verifier_keys(self) -> VerifierKeys | None:
        """The pinned verifier keys, or None when none are pinned yet."""
        if not self.verifier_keys_path.exists():
            return None
        return VerifierKeys.load(self.verifier_keys_path)

    def pin_verifier_keys(self, keys: VerifierKeys, source: str) -> VerifierKeys:
        """Pin ``keys`` (from ``source``) unless keys are pinned already: then they must be
        the same keys, else ``VerifierKeyMismatch`` naming both. The pinned file is never
        replaced; an operator re-pins by removing it."""
        pinned = self.pinned_verifier_keys()
        if pinned is None:
            try:
                self.directory.mkdir(parents=True, exist_ok=True)
                created = create_exclusive(self.verifier_keys_path, keys.pem())
            except OSError as error:
                raise InputError(
                    f"cannot pin the verifier key in {self.verifier_keys_path}: {error}"
                ) from None
            if created:
                return keys
            pinned = VerifierKeys.load(self.verifier_keys_path)  # another process pinned
        if set(pinned.keys) != set(keys.keys):
            raise VerifierKeyMismatch(
                f"{source} holds verifier key {_kids(keys)}, but this node pinned "
                f"{_kids(pinned)} in {self.verifier_keys_path}: secrets are accepted only "
                "under the pinned key. If the verifier's key really changed, remove that file "
                "to pin the given one"
            )
        return pinned

    def has_ak(self) -> bool:
        return (self.directory / "ak.pub").exists() and (self.directory / "ak.priv").exists()

    def enrolled(self) -> Enrolled | None:
        if not self.node_file.exists():
            return None
        try:
            document = json.loads(self.node_file.read_text())
            return Enrolled(
                str(document["node_id"]), str(document["name"]), str(document["verifier"])
            )
        except (OSError, ValueError, KeyError, TypeError) as error:
            raise InputError(f"agent state '{self.node_file}' is unreadable: {error}") from None

    def save_enrolled(self, enrolled: Enrolled) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        document = {
            "node_id": enrolled.node_id,
            "name": enrolled.name,
            "verifier": enrolled.verifier,
        }
        write_atomic(self.node_file, json.dumps(document, indent=2) + "\n", mode=0o600)

    def forget_enrollment(self) -> None:
        self.node_file.unlink(missing_ok=True)
        (self.directory / EXECUTIONS_FILE).unlink(missing_ok=True)

    def execution_log_next(self) -> int:
        """The first execution-log record the verifier has not acknowledged (0 if unknown)."""
        try:
            value = json.loads((self.directory / EXECUTIONS_FILE).read_text())["next"]
        except (OSError, ValueError, KeyError, TypeError):
            return 0
        return value if isinstance(value, int) and value >= 0 else 0

    def save_execution_log_next(self, recnum: int) -> None:
        self.directory.mkdir(parents=True, exist_ok=True)
        write_atomic(
            self.directory / EXECUTIONS_FILE, json.dumps({"next": recnum}) + "\n", mode=0o600
        )


def _kids(keys: VerifierKeys) -> str:
    return ", ".join(f"kid {kid}" for kid in sorted(keys.keys))
