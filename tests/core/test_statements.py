"""The verifier's signed statements as a relying party checks them: only under a pinned key,
only the kind asked for, only about the subject asked about, only while valid."""

from __future__ import annotations

import base64
import hashlib
import json
from datetime import UTC, datetime, timedelta

import jwt
import pytest
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.cluster.status import STATUS_TYPE, status_claims, verify_status
from stockade.errors import VerificationFailed
from stockade.statements import (
    EAR_PROFILE,
    FLEET_TRUST_TYPE,
    SECRET_RELEASE_TYPE,
    FleetEntry,
    KeysUnusable,
    SecretRelease,
    StatementInvalid,
    VerifierKeys,
    fleet_trust_claims,
    secret_release_claims,
    verify_ear,
    verify_fleet_trust,
    verify_secret_release,
)

NOW = datetime(2030, 1, 1, 12, 0, tzinfo=UTC)
KEY = ec.generate_private_key(ec.SECP256R1())
PINNED = VerifierKeys.of(KEY.public_key())
KID = next(iter(PINNED.keys))


def sign(claims, key=KEY, **header):
    return jwt.encode(claims, key, algorithm="ES256", headers={"kid": KID, **header})


def ear_claims(node_id="n-1", name="web-1", result_id="r-1", exp=NOW + timedelta(minutes=5)):
    return {
        "eat_profile": EAR_PROFILE,
        "iat": int(NOW.timestamp()),
        "exp": int(exp.timestamp()),
        "submods": {
            name: {
                "ear.status": "affirming",
                "ear.trustworthiness-vector": {"executables": 2},
                "ear.appraisal-policy-id": "p@1",
                "stockade.node-id": node_id,
                "stockade.result-id": result_id,
                "stockade.reasons": [],
                "stockade.boot": {"reset_count": 3, "restart_count": 0, "new_boot": False},
                "stockade.evidence": {"ak-sha256": "aa" * 32, "quote-sha256": "bb" * 32},
            }
        },
    }


def b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def test_a_genuine_ear_verifies_by_node_id_or_name():
    token = sign(ear_claims())
    for node in ("n-1", "web-1"):
        ear = verify_ear(token, PINNED, node=node, result_id="r-1", now=NOW)
        assert (ear.node_id, ear.node_name, ear.status) == ("n-1", "web-1", "affirming")
        assert (ear.reset_count, ear.ak_sha256) == (3, "aa" * 32)


@pytest.mark.parametrize(
    ("token", "why"),
    [
        (lambda: sign(ear_claims(node_id="n-2", name="web-2")), "is about node web-2"),
        (lambda: sign(ear_claims(result_id="r-2")), "is result r-2"),
        (lambda: sign(ear_claims(), ec.generate_private_key(ec.SECP256R1())), "does not verify"),
        (lambda: jwt.encode(ear_claims(), KEY, algorithm="ES256", headers={"kid": "other"}),
         "not a pinned verifier key"),
        (lambda: jwt.encode(ear_claims(), ec.generate_private_key(ec.SECP384R1()),
                            algorithm="ES384", headers={"kid": KID}), "not ES256"),
        (lambda: jwt.encode(ear_claims(), "s" * 32, algorithm="HS256", headers={"kid": KID}),
         "not ES256"),
        (lambda: b64url(b'{"alg":"none","kid":"' + KID.encode() + b'"}') + "."
         + b64url(json.dumps(ear_claims()).encode()) + ".", "not ES256"),
        (lambda: sign({**ear_claims(), "eat_profile": "other"}), "not an EAR"),
        (lambda: sign(ear_claims(), typ=STATUS_TYPE), "has type"),
        (lambda: sign(ear_claims(exp=NOW - timedelta(seconds=1))), "not at"),
        (lambda: sign({**ear_claims(), "iat": "soon"}), "iat"),
        (lambda: "garbage", "not a JWT"),
    ],
    ids=["other-node", "other-result", "impostor", "unpinned-kid", "es384", "hs256-confusion",
         "alg-none", "not-an-ear", "status-as-ear", "expired", "iat-string", "garbage"],
)  # fmt: skip
def test_an_ear_that_is_not_this_nodes_under_the_pinned_key_is_refused(token, why):
    with pytest.raises(StatementInvalid, match=why):
        verify_ear(token(), PINNED, node="n-1", result_id="r-1", now=NOW)


def test_the_booted_release_is_read_from_the_signed_ear_only():
    release = {
        "name": "stockade-os",
        "version": "1.1.0",
        "security_version": 4,
        "digest": "ab" * 32,
    }
    claims = ear_claims()
    claims["submods"]["web-1"]["stockade.release"] = release
    assert verify_ear(sign(claims), PINNED, node="n-1", now=NOW).release == release
    assert verify_ear(sign(ear_claims()), PINNED, node="n-1", now=NOW).release is None
    claims["submods"]["web-1"]["stockade.release"] = {"version": "1.1.0"}
    with pytest.raises(StatementInvalid, match=r"stockade\.release is not a release"):
        verify_ear(sign(claims), PINNED, node="n-1", now=NOW)


def test_a_historical_ear_is_checked_without_expiry_only_when_asked():
    old = sign(ear_claims(exp=NOW - timedelta(days=1)))
    assert verify_ear(old, PINNED, node="n-1").result_id == "r-1"
    with pytest.raises(StatementInvalid, match="not at"):
        verify_ear(old, PINNED, node="n-1", now=NOW)


def fleet(entries, issued=NOW, valid=timedelta(seconds=60), key=KEY, typ=FLEET_TRUST_TYPE):
    claims = fleet_trust_claims(entries, issued, issued + valid)
    return sign(claims, key, typ=typ)


def test_fleet_trust_verifies_and_refuses_kind_confusion_and_replay():
    entries = [FleetEntry("n-1", "web-1", "trusted", NOW + timedelta(minutes=5), "r-1")]
    view = verify_fleet_trust(fleet(entries), PINNED, NOW)
    assert view.nodes == tuple(entries)
    with pytest.raises(StatementInvalid, match="has type"):
        verify_fleet_trust(fleet(entries, typ=STATUS_TYPE), PINNED, NOW)
    with pytest.raises(StatementInvalid, match="has type"):
        verify_fleet_trust(sign(ear_claims()), PINNED, NOW)  # an EAR is not a fleet statement
    with pytest.raises(StatementInvalid, match="not at"):
        verify_fleet_trust(fleet(entries), PINNED, NOW + timedelta(seconds=61))
    with pytest.raises(StatementInvalid, match="does not verify"):
        other = ec.generate_private_key(ec.SECP256R1())
        verify_fleet_trust(fleet(entries, key=other), PINNED, NOW)
    bad = fleet_trust_claims(entries, NOW, NOW + timedelta(seconds=60))
    bad["stockade.nodes"][0][3] = True
    with pytest.raises(StatementInvalid, match="malformed"):
        verify_fleet_trust(sign(bad, typ=FLEET_TRUST_TYPE), PINNED, NOW)


def test_node_status_is_checked_against_the_pinned_key_and_the_node_asked():
    claims = status_claims(
        node_id="n-1", name="web-1", state="trusted", trusted=True, result_id="r-1",
        trusted_until=NOW + timedelta(minutes=5), issued_at=NOW,
        expires_at=NOW + timedelta(seconds=60),
    )  # fmt: skip
    token = sign(claims, typ=STATUS_TYPE)
    assert verify_status(token, PINNED, "n-1", NOW).trusted
    assert verify_status(token, PINNED, "web-1", NOW).node_id == "n-1"
    with pytest.raises(VerificationFailed, match="is about node web-1"):
        verify_status(token, PINNED, "web-2", NOW)
    with pytest.raises(VerificationFailed, match="has type"):
        verify_status(sign(claims), PINNED, "n-1", NOW)
    other = VerifierKeys.of(ec.generate_private_key(ec.SECP256R1()).public_key())
    with pytest.raises(VerificationFailed, match="not a pinned verifier key"):
        verify_status(token, other, "n-1", NOW)


def test_a_secret_release_is_bound_to_node_name_and_blob():
    blob = b"sealed-bytes"
    release = SecretRelease(
        "n-1", "db", 3, hashlib.sha256(blob).hexdigest(), "r-1", {"sha256": (0, 7)}
    )
    token = sign(
        secret_release_claims(release, NOW, NOW + timedelta(minutes=5)), typ=SECRET_RELEASE_TYPE
    )
    got = verify_secret_release(token, PINNED, node_id="n-1", name="db", sealed=blob, now=NOW)
    assert got == release
    for kwargs, why in (
        ({"node_id": "n-2"}, "addressed to node"),
        ({"name": "tls"}, "for secret"),
        ({"sealed": b"other"}, "does not name the sealed blob"),
    ):
        arguments = {"node_id": "n-1", "name": "db", "sealed": blob, "now": NOW, **kwargs}
        with pytest.raises(StatementInvalid, match=why):
            verify_secret_release(token, PINNED, **arguments)


def test_pinned_key_files_pem_or_jwks_and_nothing_else():
    pem = PINNED.pem()
    assert VerifierKeys.parse(pem, "f").keys.keys() == PINNED.keys.keys()
    jwk = json.loads(jwt.algorithms.ECAlgorithm.to_jwk(KEY.public_key()))
    assert VerifierKeys.parse(json.dumps({"keys": [jwk]}).encode(), "f").keys.keys() == {KID}
    for bad, why in (
        (b"", "holds no public key"),
        (b'{"keys": 1}', "not a JWK set"),
        (b'{"keys":[],"keys":[]}', "twice"),
        (b"-----BEGIN PUBLIC KEY-----\nAAAA\n-----END PUBLIC KEY-----\n", "unusable"),
    ):
        with pytest.raises(KeysUnusable, match=why):
            VerifierKeys.parse(bad, "f")
    p384 = ec.generate_private_key(ec.SECP384R1()).public_key()
    with pytest.raises(KeysUnusable, match="P-256"):
        VerifierKeys.parse(VerifierKeys({"x": p384}).pem(), "f")  # type: ignore[dict-item]
