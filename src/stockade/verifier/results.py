"""Attestation Results as EAR JWTs (draft-fv-rats-ear), signed ES256 with the verifier's key.

Only the signature: the claims are built once by ``stockade.appraisal.ear``."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import jwt
from jwt.algorithms import ECAlgorithm

from stockade.verifier.tls import SigningKey


def sign_ear(key: SigningKey, claims: Mapping[str, Any]) -> str:
    return jwt.encode(dict(claims), key.private_key, algorithm="ES256", headers={"kid": key.kid})


def decode_ear(token: str, key: SigningKey) -> dict[str, Any]:
    """Verify a stored EAR with our own key; expiry is not checked (history stays readable)."""
    claims: dict[str, Any] = jwt.decode(
        token,
        key.private_key.public_key(),
        algorithms=["ES256"],
        options={"verify_exp": False},
    )
    return claims


def jwks(key: SigningKey) -> dict[str, Any]:
    jwk: dict[str, Any] = ECAlgorithm.to_jwk(key.private_key.public_key(), as_dict=True)
    jwk.update({"kid": key.kid, "alg": "ES256", "use": "sig"})
    return {"keys": [jwk]}
