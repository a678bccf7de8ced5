"""What the image tests share besides fixtures: the tag and reference every test image
carries, and a key's public PEM. (A test module importing ``conftest`` gets whichever
directory's conftest pytest loaded last, so these live here.)"""

from __future__ import annotations

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

TAG = "v1"
REFERENCE = "registry.example/org/app:v1"


def public_pem(key: ec.EllipticCurvePrivateKey) -> str:
    return (
        key.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode("ascii")
    )
