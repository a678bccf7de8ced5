"""Fuzz target: the strict JSON reader (``stockade.strict_json``) and the verifier's signed
statements as relying parties check them (``stockade.statements``).

    pip install atheris
    python fuzz/fuzz_statements.py [libFuzzer options] [corpus directory]

``seed_inputs()`` gives a starting corpus: canonical documents and genuine statements.

The reader must return a value or raise ``StrictJsonError``; a document read as canonical
must encode back to exactly its bytes. A statement check must return or raise
``StatementInvalid``; one that passes must be signed by the pinned key (only the seeds are).
``KeysUnusable`` is the only error a key file may raise. Importable without atheris:
tests/core/test_fuzz_statements.py drives ``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    import jwt
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.statements import (
        EAR_PROFILE,
        FLEET_TRUST_TYPE,
        FleetEntry,
        KeysUnusable,
        StatementInvalid,
        VerifierKeys,
        fleet_trust_claims,
        verify_ear,
        verify_fleet_trust,
    )
    from stockade.strict_json import (
        StrictJsonError,
        canonical_json,
        loads_canonical,
        loads_strict,
    )

NOW = datetime(2030, 1, 1, tzinfo=UTC)
KEY = ec.derive_private_key(0x5EED, ec.SECP256R1())
PINNED = VerifierKeys.of(KEY.public_key())
KID = next(iter(PINNED.keys))


def seed_inputs() -> list[bytes]:
    """Canonical documents and statements the pinned key signed."""
    ear = {
        "eat_profile": EAR_PROFILE,
        "iat": int(NOW.timestamp()),
        "exp": int((NOW + timedelta(minutes=5)).timestamp()),
        "submods": {
            "web-1": {
                "ear.status": "affirming",
                "ear.trustworthiness-vector": {"executables": 2},
                "stockade.node-id": "n-1",
                "stockade.result-id": "r-1",
                "stockade.reasons": [],
            }
        },
    }
    fleet = fleet_trust_claims(
        [FleetEntry("n-1", "web-1", "trusted", NOW + timedelta(minutes=5), "r-1")],
        NOW,
        NOW + timedelta(seconds=60),
    )
    return [
        canonical_json(ear),
        canonical_json({"keys": [], "a": [1, 2, {"b": None}], "é": "ü"}),
        jwt.encode(ear, KEY, algorithm="ES256", headers={"kid": KID}).encode(),
        jwt.encode(
            fleet, KEY, algorithm="ES256", headers={"kid": KID, "typ": FLEET_TRUST_TYPE}
        ).encode(),
        PINNED.pem(),
    ]


SEEDS = seed_inputs()
# What the pinned key signed: a token's header and payload segments. (The signature segment
# may differ in the unused bits of its last base64url character and still be the same bytes.)
SIGNED = {tuple(seed.split(b".")[:2]) for seed in SEEDS if seed.count(b".") == 2}


def _signed(data: bytes) -> bool:
    return tuple(data.split(b".")[:2]) in SIGNED


def test_one_input(data: bytes) -> None:
    with contextlib.suppress(StrictJsonError):
        loads_strict(data, "input", max_size=1 << 16)
    try:
        document = loads_canonical(data, "input", max_size=1 << 16)
    except StrictJsonError:
        pass
    else:
        if canonical_json(document) != data:
            raise AssertionError(f"canonical document does not encode back: {data!r}")
    with contextlib.suppress(KeysUnusable):
        VerifierKeys.parse(data, "input")
    token = data.decode("latin-1")
    try:
        verify_ear(token, PINNED, node="n-1", now=NOW)
    except StatementInvalid:
        pass
    else:
        if not _signed(data):
            raise AssertionError(f"an EAR nobody signed verified: {data!r}")
    try:
        verify_fleet_trust(token, PINNED, NOW)
    except StatementInvalid:
        pass
    else:
        if not _signed(data):
            raise AssertionError(f"a fleet statement nobody signed verified: {data!r}")


if __name__ == "__main__":
    fuzz(test_one_input)
