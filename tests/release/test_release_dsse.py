"""DSSE envelopes: round trips, and every tampering shown rejected with a typed error."""

from __future__ import annotations

import base64
import json

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, ed25519

from stockade.errors import InputError, VerificationFailed
from stockade.release import dsse
from stockade.release.errors import EnvelopeMalformed, SignatureInvalid
from stockade.release.keys import KeyType, generate_signing_key, keyid

TYPE = "application/vnd.example+json"
PAYLOAD = b'{"hello":"world"}'


@pytest.fixture(params=list(KeyType), ids=lambda kind: kind.value)
def key(request):
    return generate_signing_key(request.param)


@pytest.fixture
def other_key():
    return generate_signing_key(KeyType.ECDSA_P256)


def test_pae_matches_the_specification_example():
    # DSSE protocol.md: PAE("http://example.com/HelloWorld", "hello world")
    assert dsse.pae("http://example.com/HelloWorld", b"hello world") == (
        b"DSSEv1 29 http://example.com/HelloWorld 11 hello world"
    )
    assert dsse.pae("t\u00e9", b"") == b"DSSEv1 3 t\xc3\xa9 0 "  # lengths count UTF-8 bytes


def test_round_trip_through_json(key):
    envelope = dsse.sign(PAYLOAD, TYPE, [key])
    parsed = dsse.Envelope.from_bytes(envelope.to_bytes())
    assert parsed == envelope
    verified = dsse.verify(parsed, TYPE, [key.public_key()])
    assert verified.payload == PAYLOAD
    assert verified.keyids == (keyid(key.public_key()),)
    document = json.loads(envelope.to_bytes())
    assert set(document) == {"payload", "payloadType", "signatures"}
    assert base64.b64decode(document["payload"]) == PAYLOAD
    assert document["signatures"][0]["keyid"] == keyid(key.public_key())


def test_signature_is_over_pae_with_the_standard_algorithm(key):
    envelope = dsse.sign(PAYLOAD, TYPE, [key])
    message = dsse.pae(TYPE, PAYLOAD)
    signature = envelope.signatures[0].sig
    public = key.public_key()
    if isinstance(public, ed25519.Ed25519PublicKey):
        assert len(signature) == 64
        public.verify(signature, message)
    else:
        assert signature[0] == 0x30  # DER SEQUENCE
        public.verify(signature, message, ec.ECDSA(hashes.SHA256()))


def test_tampered_payload_is_rejected(key):
    envelope = dsse.sign(PAYLOAD, TYPE, [key])
    forged = dsse.Envelope(b'{"hello":"mallory"}', TYPE, envelope.signatures)
    with pytest.raises(SignatureInvalid, match="0 valid signature"):
        dsse.verify(forged, TYPE, [key.public_key()])


def test_tampered_payload_type_is_rejected(key):
    envelope = dsse.sign(PAYLOAD, "application/vnd.other+json", [key])
    relabelled = dsse.Envelope(PAYLOAD, TYPE, envelope.signatures)
    with pytest.raises(SignatureInvalid, match="0 valid signature"):
        dsse.verify(relabelled, TYPE, [key.public_key()])


def test_validly_signed_payload_of_another_type_is_rejected(key):
    envelope = dsse.sign(PAYLOAD, "application/vnd.other+json", [key])
    with pytest.raises(SignatureInvalid, match="payloadType"):
        dsse.verify(envelope, TYPE, [key.public_key()])


def test_signature_by_an_untrusted_key_is_rejected(key, other_key):
    envelope = dsse.sign(PAYLOAD, TYPE, [other_key])
    with pytest.raises(SignatureInvalid):
        dsse.verify(envelope, TYPE, [key.public_key()])


def test_untrusted_key_claiming_a_trusted_keyid_is_rejected(key, other_key):
    forged_sig = dsse.sign(PAYLOAD, TYPE, [other_key]).signatures[0].sig
    claimed = dsse.EnvelopeSignature(keyid(key.public_key()), forged_sig)
    with pytest.raises(SignatureInvalid, match="bad signature by trusted key"):
        dsse.verify(dsse.Envelope(PAYLOAD, TYPE, (claimed,)), TYPE, [key.public_key()])


def test_a_duplicated_signature_counts_once_against_a_threshold(key, other_key):
    one = dsse.sign(PAYLOAD, TYPE, [key])
    doubled = dsse.Envelope(PAYLOAD, TYPE, one.signatures * 2)
    trusted = [key.public_key(), other_key.public_key()]
    with pytest.raises(SignatureInvalid, match=r"1 valid signature.*2 required"):
        dsse.verify(doubled, TYPE, trusted, threshold=2)
    # Signing twice with the same key (ECDSA signatures differ each time) counts once too.
    twice = dsse.sign(PAYLOAD, TYPE, [key, key])
    with pytest.raises(SignatureInvalid):
        dsse.verify(twice, TYPE, trusted, threshold=2)
    both = dsse.sign(PAYLOAD, TYPE, [key, other_key])
    assert len(dsse.verify(both, TYPE, trusted, threshold=2).keyids) == 2


def test_unknown_keyids_are_ignored_and_a_missing_keyid_is_tried_against_all(key, other_key):
    envelope = dsse.sign(PAYLOAD, TYPE, [other_key, key])
    assert dsse.verify(envelope, TYPE, [key.public_key()]).keyids == (keyid(key.public_key()),)
    anonymous = dsse.Envelope(
        PAYLOAD, TYPE, tuple(dsse.EnvelopeSignature("", s.sig) for s in envelope.signatures)
    )
    assert dsse.verify(anonymous, TYPE, [key.public_key()]).keyids == (keyid(key.public_key()),)


def test_garbage_signature_bytes_are_a_verification_failure(key):
    envelope = dsse.Envelope(
        PAYLOAD, TYPE, (dsse.EnvelopeSignature(keyid(key.public_key()), b"\x30\x02\x01"),)
    )
    with pytest.raises(SignatureInvalid):
        dsse.verify(envelope, TYPE, [key.public_key()])


def test_url_safe_unpadded_base64_is_accepted():
    text = json.dumps({"payload": "-_8", "payloadType": TYPE, "signatures": []})
    assert dsse.Envelope.from_bytes(text.encode()).payload == b"\xfb\xff"


@pytest.mark.parametrize(
    "raw",
    [
        b"",
        b"\xff\xfe",
        b"[]",
        b'{"payload": "e30=", "payloadType": "t"}',
        b'{"payload": 5, "payloadType": "t", "signatures": []}',
        b'{"payload": "e30=", "payloadType": null, "signatures": []}',
        b'{"payload": "not base64!", "payloadType": "t", "signatures": []}',
        b'{"payload": "e30=", "payloadType": "t", "signatures": {}}',
        b'{"payload": "e30=", "payloadType": "t", "signatures": ["x"]}',
        b'{"payload": "e30=", "payloadType": "t", "signatures": [{"keyid": "k"}]}',
        b'{"payload": "e30=", "payloadType": "t", "signatures": [{"sig": "%%"}]}',
        b'{"payload": "e30=", "payloadType": "t", "signatures": [{"keyid": 1, "sig": "AA=="}]}',
    ],
)
def test_malformed_envelopes_are_input_errors(raw):
    with pytest.raises(EnvelopeMalformed) as failure:
        dsse.Envelope.from_bytes(raw)
    assert isinstance(failure.value, InputError) and failure.value.exit_code == 2


def test_every_truncation_of_an_envelope_is_an_input_or_verification_error(key):
    raw = dsse.sign(PAYLOAD, TYPE, [key]).to_bytes()
    for length in range(len(raw.rstrip())):
        try:
            envelope = dsse.Envelope.from_bytes(raw[:length])
        except EnvelopeMalformed:
            continue
        with pytest.raises(VerificationFailed):
            dsse.verify(envelope, TYPE, [key.public_key()])


def test_an_envelope_needs_a_signer_and_a_positive_threshold(key):
    with pytest.raises(EnvelopeMalformed):
        dsse.sign(PAYLOAD, TYPE, [])
    with pytest.raises(EnvelopeMalformed):
        dsse.verify(dsse.sign(PAYLOAD, TYPE, [key]), TYPE, [key.public_key()], threshold=0)
