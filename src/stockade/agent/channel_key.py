"""The node's channel key, on the node: made and certified at enrollment, then signing every
call the agent makes to the verifier (``stockade.channel``), inside the TPM.

The key file (a ``TSS2 PRIVATE KEY`` PEM, mode 0600 in the agent's state directory) is what
makes the agent the agent: another process with access to the same TPM, but not to this file,
can neither sign as the node nor satisfy the PolicySigned of the secrets sealed to it.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

from stockade.channel import channel_certify_nonce


@dataclass(frozen=True)
class CertifiedChannelKey:
    """A new channel key and the AK's certification of it, for the activation request."""

    key: Any  # stockade.tpm.node_key.NodeKey
    certify_info: bytes
    signature: bytes


def create_channel_key(
    tcti: str, ak: Any, enrollment_id: str, secret: bytes
) -> CertifiedChannelKey:
    """Create a P-256 signing key in the TPM and certify it with the AK over
    ``channel_certify_nonce(enrollment_id, secret)``; nothing stays loaded."""
    from stockade.tpm.device import Tpm
    from stockade.tpm.node_key import certify_node_key, create_node_key

    with Tpm(tcti) as tpm:
        key = create_node_key(tpm)
        certify_info, signature = certify_node_key(
            tpm, key, ak, channel_certify_nonce(enrollment_id, secret)
        )
    return CertifiedChannelKey(key, certify_info, signature)


class ChannelSigner:
    """Signs request digests with the channel key in the TPM at ``tcti`` (one TPM connection
    per signature, so the agent's other TPM work is never blocked behind it)."""

    def __init__(self, tcti: str, key_path: Path) -> None:
        from stockade.tpm.node_key import load_node_key

        self.tcti = tcti
        self.key = load_node_key(key_path)

    def __call__(self, digest: bytes) -> bytes:
        from stockade.tpm.device import Tpm
        from stockade.tpm.node_key import sign_digest

        with Tpm(self.tcti) as tpm:
            return sign_digest(tpm, self.key, digest)
