"""Attestation Results as EAR JWTs (draft-fv-rats-ear), signed ES256 with the verifier's key."""

from __future__ import annotations

import base64
from collections.abc import Mapping
from datetime import datetime
from typing import Any

import jwt
from jwt.algorithms import ECAlgorithm

from stockade.statements import EAR_PROFILE
from stockade.verifier.tls import SigningKey

AR4SI = {"none": 0, "affirming": 2, "warning": 32, "contraindicated": 96}
TRUST_CLAIMS = ("instance-identity", "configuration", "executables", "hardware", "file-system")


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


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def ear_claims(
    *,
    node_id: str,
    node_name: str,
    result_id: str,
    status: str,
    trust_vector: Mapping[str, int],
    reasons: list[str],
    policy_ref: str,
    nonce: bytes,
    issued_at: datetime,
    not_after: datetime,
    verifier_build: str,
    reset_count: int,
    restart_count: int,
    new_boot: bool,
) -> dict[str, Any]:
    """The protocol's EAR claims from plain values (``stockade.appraisal.ear`` builds the same
    from an Appraisal; this one serves appraisers that are not the core)."""
    return {
        "eat_profile": EAR_PROFILE,
        "iat": int(issued_at.timestamp()),
        "exp": int(not_after.timestamp()),
        "ear.verifier-id": {"developer": "stockade", "build": verifier_build},
        "eat_nonce": b64url(nonce),
        "submods": {
            node_name: {
                "ear.status": status,
                "ear.trustworthiness-vector": dict(trust_vector),
                "ear.appraisal-policy-id": policy_ref,
                "stockade.node-id": node_id,
                "stockade.result-id": result_id,
                "stockade.reasons": list(reasons),
                "stockade.boot": {
                    "reset_count": reset_count,
                    "restart_count": restart_count,
                    "new_boot": new_boot,
                },
            }
        },
    }
