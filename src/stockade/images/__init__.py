"""Container images: OCI image layouts, cosign-compatible signatures, the trust policy.

- ``layout``: OCI image layout directories (umoci, ``skopeo copy ... oci:``);
- ``reference``: docker references and their normal form;
- ``signature``: simple-signing payloads and cosign's ``sha256-<hex>.sig`` storage;
- ``policy``: the org-signed trust policy (which keys may sign which repositories);
- ``verify``: ``verify_image``, fail closed, typed failures;
- ``errors``: ``ImageError`` (exit 2) and ``ImageRejected`` (exit 1, ``.check``).

Nothing here talks to a TPM or a registry.
"""

from stockade.images.errors import ImageError, ImageRejected
from stockade.images.layout import Descriptor, ImageLayout, parse_image_ref
from stockade.images.policy import Scope, TrustPolicy, load_trust_policy, sign_trust_policy
from stockade.images.reference import ImageReference, parse_reference
from stockade.images.signature import sign_image, simple_signing_payload
from stockade.images.verify import VerifiedImage, verify_image

__all__ = [
    "Descriptor",
    "ImageError",
    "ImageLayout",
    "ImageReference",
    "ImageRejected",
    "Scope",
    "TrustPolicy",
    "VerifiedImage",
    "load_trust_policy",
    "parse_image_ref",
    "parse_reference",
    "sign_image",
    "sign_trust_policy",
    "simple_signing_payload",
    "verify_image",
]
