"""Typed errors for container images: unreadable layouts and rejected images.

An ``ImageError`` (exit 2) is input that cannot be read at all: a directory that is not
an OCI image layout, JSON that is not a manifest, a tag that is not there. An
``ImageRejected`` (exit 1) is an image, a signature or a trust policy that was read and
checked and does not hold; ``check`` names which check failed.
"""

from __future__ import annotations

from typing import Final, Literal

from stockade.errors import InputError, VerificationFailed

Check = Literal["unsigned", "untrusted-key", "reference", "digest", "signature", "policy"]

CHECKS: Final[tuple[Check, ...]] = (
    "unsigned",
    "untrusted-key",
    "reference",
    "digest",
    "signature",
    "policy",
)
"""Every value ``ImageRejected.check`` takes:

- ``unsigned``: no signature for the image's manifest digest in the layout;
- ``untrusted-key``: signatures exist, but none verifies under a key the trust policy
  allows for the image's repository (unknown key, key scoped elsewhere, or no scope);
- ``reference``: a trusted signature names another repository or tag;
- ``digest``: a blob whose bytes do not hash to its digest or size, or a signature made
  for another manifest digest;
- ``signature``: a signature that is malformed (annotation, payload, cosign type);
- ``policy``: the trust policy document is unsigned, tampered or signed by an unknown key.
"""


class ImageError(InputError):
    """An image layout, manifest, payload or reference that cannot be read (exit 2)."""


class ImageRejected(VerificationFailed):
    """An image or trust policy that was checked and refused (exit 1)."""

    def __init__(self, check: Check, detail: str) -> None:
        super().__init__(f"image rejected ({check}): {detail}")
        self.check: Check = check
        self.detail = detail
