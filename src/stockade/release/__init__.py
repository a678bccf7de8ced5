"""OS releases: dm-verity hash trees, DSSE envelopes, org keys, signed release manifests,
and the Authenticode digest UEFI measures for the kernel."""

from stockade.release.authenticode import authenticode_digest
from stockade.release.build import ReleaseInputs, build_release, verify_artifacts
from stockade.release.dsse import Envelope, EnvelopeSignature, VerifiedPayload
from stockade.release.errors import (
    EnvelopeMalformed,
    KeyExists,
    KeyFileError,
    ManifestMalformed,
    NotPeImage,
    ReleaseError,
    ReleaseInvalid,
    SignatureInvalid,
    VerityFormatError,
    VerityMismatch,
)
from stockade.release.keys import KeyType, generate_key_set, keyid
from stockade.release.manifest import (
    PAYLOAD_TYPE,
    FileDigest,
    KernelFile,
    Manifest,
    UsrImage,
    VerityInfo,
    manifest_digest,
    open_signed_manifest,
    sign_manifest,
)
from stockade.release.verity import (
    VeritySuperblock,
    VerityTree,
    format_hash_device,
    verify_hash_device,
)

__all__ = [
    "PAYLOAD_TYPE",
    "Envelope",
    "EnvelopeMalformed",
    "EnvelopeSignature",
    "FileDigest",
    "KernelFile",
    "KeyExists",
    "KeyFileError",
    "KeyType",
    "Manifest",
    "ManifestMalformed",
    "NotPeImage",
    "ReleaseError",
    "ReleaseInputs",
    "ReleaseInvalid",
    "SignatureInvalid",
    "UsrImage",
    "VerifiedPayload",
    "VerityFormatError",
    "VerityInfo",
    "VerityMismatch",
    "VeritySuperblock",
    "VerityTree",
    "authenticode_digest",
    "build_release",
    "format_hash_device",
    "generate_key_set",
    "keyid",
    "manifest_digest",
    "open_signed_manifest",
    "sign_manifest",
    "verify_artifacts",
    "verify_hash_device",
]
