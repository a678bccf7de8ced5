"""The trust policy's serial and expiry (format version 2): read strictly, covered by the org's
signature, an expired policy refused; format version 1 still read, as serial 0 that never
expires (docs/images.md, "Rollback")."""

from __future__ import annotations

import base64
import datetime
import json

import pytest

from stockade.images.errors import ImageError, ImageRejected
from stockade.images.policy import (
    MAX_SERIAL,
    PAYLOAD_TYPE,
    load_trust_policy,
    parse_trust_policy,
    policy_summary,
    sign_trust_policy,
)
from stockade.release import dsse
from stockade.strict_json import canonical_json

EXPIRES = "2030-01-01T00:00:00Z"
EXPIRY = datetime.datetime(2030, 1, 1, tzinfo=datetime.UTC)


@pytest.fixture
def versioned(policy_document):
    """The conftest's policy as format version 2: serial 3, expiring at EXPIRES."""
    return {**policy_document, "version": 2, "serial": 3, "expires": EXPIRES}


def test_serial_and_expiry_are_read_from_a_version_2_policy(versioned, org_key):
    policy = load_trust_policy(sign_trust_policy(versioned, org_key), [org_key.public_key()])
    assert (policy.version, policy.serial, policy.expires) == (2, 3, EXPIRY)
    summary = policy_summary(policy)
    assert (summary["version"], summary["serial"], summary["expires"]) == (2, 3, EXPIRES)


def test_a_version_1_policy_is_serial_0_and_never_expires(policy_document, org_key):
    policy = load_trust_policy(
        sign_trust_policy(policy_document, org_key),
        [org_key.public_key()],
        now=datetime.datetime(9999, 1, 1, tzinfo=datetime.UTC),
    )
    assert (policy.version, policy.serial, policy.expires) == (1, 0, None)
    assert policy_summary(policy)["expires"] is None


@pytest.mark.parametrize("field", ["serial", "expires"])
def test_editing_serial_or_expiry_breaks_the_signature(versioned, org_key, field):
    """The attack on the new fields: raise an old policy's serial (so it passes as newer)
    or push its expiry out, keeping the org's signature. Both are in the signed payload."""
    envelope = json.loads(sign_trust_policy(versioned, org_key))
    edited = dict(versioned, **{field: 99 if field == "serial" else "2099-01-01T00:00:00Z"})
    envelope["payload"] = base64.b64encode(canonical_json(edited)).decode()
    with pytest.raises(ImageRejected) as refused:
        load_trust_policy(json.dumps(envelope).encode(), [org_key.public_key()])
    assert refused.value.check == "policy"


def test_serial_and_expiry_change_the_digest(versioned, make_policy):
    digests = {
        make_policy(versioned).digest,
        make_policy({**versioned, "serial": 4}).digest,
        make_policy({**versioned, "expires": "2031-01-01T00:00:00Z"}).digest,
    }
    assert len(digests) == 3


def test_an_expired_policy_is_refused_when_the_time_is_given(versioned, org_key):
    envelope = sign_trust_policy(versioned, org_key)
    keys = [org_key.public_key()]
    second = datetime.timedelta(seconds=1)
    assert load_trust_policy(envelope, keys, now=EXPIRY - second).serial == 3
    for late in (EXPIRY, EXPIRY + second):
        with pytest.raises(ImageRejected, match=r"serial 3\) expired at 2030-01-01T00:00:00Z"):
            load_trust_policy(envelope, keys, now=late)
    policy = load_trust_policy(envelope, keys)  # no time: the caller checks
    assert policy.expired(EXPIRY) and not policy.expired(EXPIRY - second)
    with pytest.raises(ImageRejected) as refused:
        policy.check_current(EXPIRY)
    assert refused.value.check == "policy"


@pytest.mark.parametrize("serial", [0, -1, MAX_SERIAL + 1, True, 1.0, "1", None], ids=repr)
def test_a_serial_that_is_not_a_positive_integer_is_refused(versioned, org_key, serial):
    with pytest.raises(ImageError, match="serial"):
        sign_trust_policy({**versioned, "serial": serial}, org_key)


def test_the_largest_serial_is_accepted(versioned, make_policy):
    assert make_policy({**versioned, "serial": MAX_SERIAL}).serial == MAX_SERIAL


@pytest.mark.parametrize(
    "expires",
    [
        "2030-01-01T00:00:00+00:00",
        "2030-01-01T00:00:00.5Z",
        "2030-01-01 00:00:00Z",
        "2030-02-30T00:00:00Z",
        "2030-01-01T24:00:00Z",
        "2030-1-01T00:00:00Z",
        "",
        1893456000,
        None,
    ],
    ids=repr,
)
def test_an_expiry_that_is_not_rfc3339_utc_is_refused(versioned, org_key, expires):
    with pytest.raises(ImageError, match="expires"):
        sign_trust_policy({**versioned, "expires": expires}, org_key)


@pytest.mark.parametrize(
    ("change", "drop"),
    [
        ({}, "serial"),  # version 2 without serial
        ({}, "expires"),  # version 2 without expiry
        ({"version": 1}, None),  # a version 1 policy cannot carry serial and expiry
        ({"version": 3}, None),
        ({"version": 2.0}, None),
    ],
)
def test_the_fields_must_be_exactly_those_of_the_version(versioned, org_key, change, drop):
    document = {**versioned, **change}
    if drop:
        del document[drop]
    with pytest.raises(ImageError, match="version"):
        sign_trust_policy(document, org_key)


def test_a_non_canonical_serial_is_refused(versioned, org_key):
    """``3.0`` or ``03`` for the serial: not the canonical payload the org signs."""
    payload = canonical_json(versioned)
    for text in (b'"serial":3.0', b'"serial":3e0'):
        forged = payload.replace(b'"serial":3', text)
        envelope = dsse.sign(forged, PAYLOAD_TYPE, [org_key]).to_bytes()
        with pytest.raises(ImageError):
            load_trust_policy(envelope, [org_key.public_key()])
    with pytest.raises(ImageError):
        parse_trust_policy(payload.replace(b'"serial":3', b'"serial":03'))
