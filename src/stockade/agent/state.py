"""The agent's durable state: its AK (``ak.pub``/``ak.priv``) and, once enrolled,
``node.json`` with the node id the verifier assigned. A restarted agent reuses both,
so it does not enroll again."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

from stockade.errors import InputError
from stockade.home import write_atomic

NODE_FILE = "node.json"
EXECUTIONS_FILE = "execution-log.json"
# The node channel key: a P-256 signing key in the TPM (TSS2 PRIVATE KEY PEM, 0600), certified
# by the AK at enrollment; it signs every request to the verifier and authorises unsealing.
CHANNEL_KEY_FILE = "channel.key"


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
