"""verify_quote: a real tpm2_quote verifies, and every attack is rejected by the right check.

Quotes are made by a software AK (``SoftAk`` in conftest.py) that signs TPMS_ATTEST like a
TPM does, so each attack can be built exactly.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

import pytest
import vectors
from cryptography.hazmat.primitives import serialization

from stockade.evidence import (
    Attest,
    AttestType,
    ClockInfo,
    ClockRollback,
    EvidenceError,
    PcrSelection,
    PcrValues,
    QuoteInvalid,
    Signature,
    TpmPublic,
    verify_quote,
)
from stockade.evidence.algorithms import Alg
from stockade.evidence.attest import TPM_GENERATED_VALUE, CertifyInfo
from stockade.evidence.public import ObjectAttributes
from stockade.evidence.signature import EcdsaSignature, RsaSignature
from stockade.evidence.tpm2_tools_files import (
    _read_serialized,
    read_pcr_file,
    read_public_key_file,
    write_pcr_file,
)

NONCE = hashlib.sha256(b"verifier challenge 1").digest()
SELECTION = PcrSelection.parse("sha256:0,1,2,3,7+sha1:0")


# -- the real quote from swtpm -----------------------------------------------------------


def real_pcr_values() -> PcrValues:
    return read_pcr_file(vectors.QUOTE_PCRS)


def test_real_tpm2_quote_verifies():
    ak = TpmPublic.unmarshal_tpm2b(vectors.AK_PUB)
    verified = verify_quote(
        ak,
        vectors.QUOTE_MSG,
        Signature.unmarshal(vectors.QUOTE_SIG),
        nonce=vectors.QUOTE_NONCE,
        pcr_values=real_pcr_values(),
        expected_selection=PcrSelection.parse(vectors.QUOTE_SELECTION),
    )
    assert str(verified.selection) == vectors.QUOTE_SELECTION
    assert verified.clock_info == ClockInfo(3020, 1, 0, True)
    assert verified.pcr_values.to_json() == {
        "sha256": {str(i): "00" * 32 for i in (0, 1, 2, 16)},
        "sha1": {str(i): "00" * 20 for i in (0, 3)},
    }


def test_real_tpm2_quote_verifies_with_the_ak_as_pem_when_accepted():
    ak = TpmPublic.unmarshal_tpm2b(vectors.AK_PUB)
    pem = ak.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    verified = verify_quote(
        read_public_key_file(pem),
        vectors.QUOTE_MSG,
        Signature.unmarshal(vectors.QUOTE_SIG),
        nonce=vectors.QUOTE_NONCE,
        pcr_values=real_pcr_values(),
        accept_bare_key=True,
    )
    assert verified.attest.extra_data == vectors.QUOTE_NONCE


def test_real_pcr_file_is_rewritten_byte_exactly():
    selection, values = _read_serialized(vectors.QUOTE_PCRS)
    assert str(selection) == vectors.QUOTE_SELECTION
    assert write_pcr_file(selection, values) == vectors.QUOTE_PCRS


@pytest.mark.parametrize(
    ("nonce", "values", "check"),
    [
        (bytes.fromhex("abce"), None, "nonce"),
        (b"", None, "nonce"),
        (None, {(Alg.SHA256, 16): b"\x01" * 32}, "pcr-digest"),
        (None, {(Alg.SHA1, 3): b"\xff" * 20}, "pcr-digest"),
    ],
)
def test_real_tpm2_quote_rejects_wrong_inputs(nonce, values, check):
    _, pcrs = _read_serialized(vectors.QUOTE_PCRS)
    banks = {alg: dict(bank) for alg, bank in pcrs.banks.items()}
    for (alg, index), value in (values or {}).items():
        banks[alg][index] = value
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(
            TpmPublic.unmarshal_tpm2b(vectors.AK_PUB),
            vectors.QUOTE_MSG,
            Signature.unmarshal(vectors.QUOTE_SIG),
            nonce=vectors.QUOTE_NONCE if nonce is None else nonce,
            pcr_values=PcrValues(banks),
        )
    assert caught.value.check == check


# -- valid software quotes ---------------------------------------------------------------


@pytest.fixture(params=["rsa_ak", "rsa_pss_ak", "ecc_ak"])
def any_ak(request):
    return request.getfixturevalue(request.param)


def test_valid_quote_verifies_for_each_scheme(any_ak, pcr_values):
    message, signature = any_ak.quote(NONCE, SELECTION, pcr_values)
    assert signature.scheme == any_ak.scheme
    verified = verify_quote(
        any_ak.public,
        message,
        signature,
        nonce=NONCE,
        pcr_values=pcr_values,
        expected_selection=SELECTION,
    )
    assert verified.selection == SELECTION
    assert verified.attest == Attest.unmarshal(message)
    assert verified.clock_info == any_ak.clock
    # exactly the quoted PCRs, with the values supplied
    assert verified.pcr_values.to_json() == {
        "sha256": {str(i): pcr_values.get(Alg.SHA256, i).hex() for i in (0, 1, 2, 3, 7)},
        "sha1": {"0": pcr_values.get(Alg.SHA1, 0).hex()},
    }


def test_bare_public_key_is_refused_unless_the_caller_vouches_for_it(any_ak, pcr_values):
    """A PEM key cannot show it is restricted: the software key here signs a TPMS_ATTEST it
    made up (as any unrestricted TPM key could), and it must not pass as a quote unless the
    caller explicitly accepts the key as an AK."""
    message, signature = any_ak.quote(NONCE, SELECTION, pcr_values)
    pem = any_ak.private.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    key = read_public_key_file(pem)
    with pytest.raises(QuoteInvalid) as refused:
        verify_quote(key, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert refused.value.check == "attestation-key"
    assert "bare public key" in refused.value.detail
    verified = verify_quote(
        key, message, signature, nonce=NONCE, pcr_values=pcr_values, accept_bare_key=True
    )
    assert verified.selection == SELECTION


def test_rsapss_with_any_salt_length_verifies(rsa_pss_ak, pcr_values):
    """A PSS signature whose salt is not the digest length (some TPMs use the maximum)."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import padding

    message = rsa_pss_ak.attest(NONCE, SELECTION, pcr_values).marshal()
    raw = rsa_pss_ak.private.sign(
        message, padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.MAX_LENGTH), hashes.SHA256()
    )
    signature = Signature(RsaSignature(Alg.RSAPSS, Alg.SHA256, raw))
    assert verify_quote(rsa_pss_ak.public, message, signature, nonce=NONCE, pcr_values=pcr_values)


def test_pcr_digest_uses_the_signature_hash(rsa_ak, pcr_values):
    """With a NULL-scheme AK a TPM may sign with SHA-384; pcrDigest is then SHA-384 too."""
    ak = rsa_ak.with_scheme(Alg.NULL, None)
    message, signature = ak.quote(NONCE, SELECTION, pcr_values, hash_alg=Alg.SHA384)
    attest = Attest.unmarshal(message)
    assert len(attest.attested.pcr_digest) == 48
    verified = verify_quote(ak.public, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert verified.selection == SELECTION


def test_verified_values_exclude_unquoted_pcrs(rsa_ak, pcr_values):
    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values)
    verified = verify_quote(rsa_ak.public, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert verified.pcr_values.get(Alg.SHA256, 4) is None
    assert verified.pcr_values.get(Alg.SHA384, 0) is None
    assert set(verified.pcr_values.banks) == {Alg.SHA256, Alg.SHA1}


# -- attacks ---------------------------------------------------------------------------


def test_wrong_nonce_is_rejected(any_ak, pcr_values):
    message, signature = any_ak.quote(NONCE, SELECTION, pcr_values)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(
            any_ak.public, message, signature, nonce=NONCE[:-1] + b"\x00", pcr_values=pcr_values
        )
    assert caught.value.check == "nonce"
    assert NONCE.hex() in caught.value.detail


def test_replayed_quote_with_an_old_nonce_is_rejected(rsa_ak, pcr_values):
    old_nonce = hashlib.sha256(b"yesterday's challenge").digest()
    old_message, old_signature = rsa_ak.quote(old_nonce, SELECTION, pcr_values)
    # It was a perfectly good quote for the old challenge...
    assert verify_quote(
        rsa_ak.public, old_message, old_signature, nonce=old_nonce, pcr_values=pcr_values
    )
    # ...and the attacker replays it against today's.
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, old_message, old_signature, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "nonce"


def flip_signature_byte(signature: Signature, index: int) -> Signature:
    body = signature.body
    if isinstance(body, RsaSignature):
        raw = bytearray(body.signature)
        raw[index] ^= 0x01
        return Signature(replace(body, signature=bytes(raw)))
    r = bytearray(body.r)
    r[index % len(r)] ^= 0x01
    return Signature(replace(body, r=bytes(r)))


@pytest.mark.parametrize("index", [0, 17, -1])
def test_flipped_signature_byte_is_rejected(any_ak, pcr_values, index):
    message, signature = any_ak.quote(NONCE, SELECTION, pcr_values)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(
            any_ak.public,
            message,
            flip_signature_byte(signature, index),
            nonce=NONCE,
            pcr_values=pcr_values,
        )
    assert caught.value.check == "signature"


def test_flipped_ecdsa_s_is_rejected(ecc_ak, pcr_values):
    message, signature = ecc_ak.quote(NONCE, SELECTION, pcr_values)
    s = bytearray(signature.body.s)
    s[5] ^= 0x80
    forged = Signature(replace(signature.body, s=bytes(s)))
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(ecc_ak.public, message, forged, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "signature"


def test_message_signed_by_a_different_key_is_rejected(rsa_ak, rsa_pss_ak, ecc_ak, pcr_values):
    # An attacker's own key, declared with the victim AK's scheme.
    attacker = rsa_pss_ak.with_scheme(Alg.RSASSA, Alg.SHA256)
    message, signature = attacker.quote(NONCE, SELECTION, pcr_values)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "signature"
    # An ECDSA signature presented for an RSA AK with a NULL scheme.
    message, signature = ecc_ak.quote(NONCE, SELECTION, pcr_values)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(
            rsa_ak.with_scheme(Alg.NULL, None).public,
            message,
            signature,
            nonce=NONCE,
            pcr_values=pcr_values,
        )
    assert caught.value.check == "signature"


def test_message_changed_after_signing_is_rejected(rsa_ak, pcr_values):
    """E.g. the nonce swapped in after the TPM signed: the signature no longer covers it."""
    attest = rsa_ak.attest(NONCE, SELECTION, pcr_values)
    signature = rsa_ak.sign(attest.marshal())
    fresh = hashlib.sha256(b"verifier challenge 2").digest()
    tampered = replace(attest, extra_data=fresh).marshal()
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, tampered, signature, nonce=fresh, pcr_values=pcr_values)
    assert caught.value.check == "signature"


def with_value(values: PcrValues, alg: int, index: int, value: bytes | None) -> PcrValues:
    banks = {a: dict(bank) for a, bank in values.banks.items()}
    if value is None:
        del banks[alg][index]
    else:
        banks[alg][index] = value
    return PcrValues(banks)


@pytest.mark.parametrize(("alg", "index"), [(Alg.SHA256, 0), (Alg.SHA256, 7), (Alg.SHA1, 0)])
def test_changed_pcr_value_is_rejected(any_ak, pcr_values, alg, index):
    message, signature = any_ak.quote(NONCE, SELECTION, pcr_values)
    lie = with_value(pcr_values, alg, index, hashlib.new(Alg(alg).name.lower(), b"x").digest())
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(any_ak.public, message, signature, nonce=NONCE, pcr_values=lie)
    assert caught.value.check == "pcr-digest"


def test_missing_pcr_value_is_rejected(rsa_ak, pcr_values):
    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values)
    partial = with_value(pcr_values, Alg.SHA256, 3, None)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, message, signature, nonce=NONCE, pcr_values=partial)
    assert caught.value.check == "pcr-digest"
    assert "sha256:3" in caught.value.detail
    without_bank = PcrValues({Alg.SHA256: pcr_values.banks[Alg.SHA256]})
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, message, signature, nonce=NONCE, pcr_values=without_bank)
    assert caught.value.check == "pcr-digest"
    assert "sha1:0" in caught.value.detail


def test_swapped_pcr_values_are_rejected(rsa_ak, pcr_values):
    """Same multiset of values, different PCRs: the composite digest is order-sensitive."""
    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values)
    swapped = with_value(pcr_values, Alg.SHA256, 0, pcr_values.get(Alg.SHA256, 1))
    swapped = with_value(swapped, Alg.SHA256, 1, pcr_values.get(Alg.SHA256, 0))
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, message, signature, nonce=NONCE, pcr_values=swapped)
    assert caught.value.check == "pcr-digest"


def test_pcr_values_of_the_wrong_length_are_rejected(rsa_ak, pcr_values):
    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values)
    pcr0 = pcr_values.get(Alg.SHA256, 0)
    pcr1 = pcr_values.get(Alg.SHA256, 1)
    # Bytes shifted from PCR 1 into PCR 0 still concatenate to the signed digest;
    # PcrValues refuses to hold a value that is not exactly one digest long.
    with pytest.raises(EvidenceError, match="sha256:0 value has 33 bytes"):
        shifted = with_value(pcr_values, Alg.SHA256, 0, pcr0 + pcr1[:1])
        shifted = with_value(shifted, Alg.SHA256, 1, pcr1[1:])
        verify_quote(rsa_ak.public, message, signature, nonce=NONCE, pcr_values=shifted)


def test_bad_magic_signed_by_the_ak_is_rejected(any_ak, pcr_values):
    """A non-restricted key will sign anything, including a forged TPMS_ATTEST; only the
    TPM_GENERATED magic (which a restricted key refuses to sign for outside data) tells."""
    message, signature = any_ak.quote(NONCE, SELECTION, pcr_values, magic=0xFF544346)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(any_ak.public, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "magic"
    assert "ff544346" in caught.value.detail


def test_certify_body_signed_by_the_ak_is_not_a_quote(rsa_ak, pcr_values):
    attest = replace(
        rsa_ak.attest(NONCE, SELECTION, pcr_values),
        type=AttestType.CERTIFY,
        attested=CertifyInfo(vectors.AK_NAME, vectors.AK_NAME),
    )
    message = attest.marshal()
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(
            rsa_ak.public, message, rsa_ak.sign(message), nonce=NONCE, pcr_values=pcr_values
        )
    assert caught.value.check == "type"
    assert "0x8017" in caught.value.detail


def test_quote_body_with_another_type_tag_is_not_a_quote(rsa_ak, pcr_values):
    """A quote body whose type field says TIME is decoded as a raw body and refused."""
    attest = replace(rsa_ak.attest(NONCE, SELECTION, pcr_values), type=AttestType.TIME)
    message = attest.marshal()
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(
            rsa_ak.public, message, rsa_ak.sign(message), nonce=NONCE, pcr_values=pcr_values
        )
    assert caught.value.check == "type"


@pytest.mark.parametrize(
    "expected",
    [
        "sha256:0,1,2,3+sha1:0",
        "sha256:0,1,2,3,7",
        "sha256:0,1,2,3,7+sha1:0,1",
        "sha1:0+sha256:0-3,7",
    ],
)
def test_expected_selection_mismatch_is_rejected(rsa_ak, pcr_values, expected):
    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(
            rsa_ak.public,
            message,
            signature,
            nonce=NONCE,
            pcr_values=pcr_values,
            expected_selection=PcrSelection.parse(expected),
        )
    assert caught.value.check == "pcr-selection"


@pytest.mark.parametrize(
    "missing",
    [
        ObjectAttributes.RESTRICTED,
        ObjectAttributes.SIGN_ENCRYPT,
        ObjectAttributes.FIXED_TPM,
        ObjectAttributes.FIXED_PARENT,
        ObjectAttributes.SENSITIVE_DATA_ORIGIN,
    ],
)
def test_ak_without_a_required_attribute_is_rejected(rsa_ak, pcr_values, missing):
    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values)
    ak = replace(rsa_ak.public, attributes=rsa_ak.public.attributes & ~missing)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(ak, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "attestation-key"
    assert str(missing.name) in caught.value.detail


def test_ak_that_can_also_decrypt_is_rejected(any_ak, pcr_values):
    message, signature = any_ak.quote(NONCE, SELECTION, pcr_values)
    ak = replace(any_ak.public, attributes=any_ak.public.attributes | ObjectAttributes.DECRYPT)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(ak, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "attestation-key"


def test_sha1_signature_is_refused(rsa_ak, ecc_ak, pcr_values):
    for ak in (rsa_ak.with_scheme(Alg.NULL, None), ecc_ak.with_scheme(Alg.NULL, None)):
        message, signature = ak.quote(NONCE, SELECTION, pcr_values, hash_alg=Alg.SHA1)
        assert signature.hash.alg == Alg.SHA1
        for key in (ak.public, ak.public.public_key()):
            with pytest.raises(QuoteInvalid) as caught:
                verify_quote(
                    key,
                    message,
                    signature,
                    nonce=NONCE,
                    pcr_values=pcr_values,
                    accept_bare_key=True,
                )
            assert caught.value.check == "signature"
            assert "sha1" in caught.value.detail


def test_sha1_signature_is_refused_even_for_an_ak_declared_sha1(rsa_ak, pcr_values):
    ak = rsa_ak.with_scheme(Alg.RSASSA, Alg.SHA1)
    message, signature = ak.quote(NONCE, SELECTION, pcr_values)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(ak.public, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "signature"


@pytest.mark.parametrize(
    ("scheme", "hash_alg"),
    [(Alg.RSAPSS, Alg.SHA256), (Alg.RSASSA, Alg.SHA384), (Alg.RSAPSS, Alg.SHA512)],
)
def test_signature_scheme_other_than_the_aks_declared_scheme_is_rejected(
    rsa_ak, pcr_values, scheme, hash_alg
):
    # A valid signature by the AK's own private key, but not in the scheme the AK is bound to.
    message, signature = rsa_ak.quote(
        NONCE, SELECTION, pcr_values, scheme=scheme, hash_alg=hash_alg
    )
    bare = verify_quote(
        rsa_ak.private.public_key(),
        message,
        signature,
        nonce=NONCE,
        pcr_values=pcr_values,
        accept_bare_key=True,
    )
    assert bare.selection == SELECTION  # the signature itself is fine
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "signature"
    assert "restricted to" in caught.value.detail


def test_ecdsa_hash_other_than_declared_is_rejected(ecc_ak, pcr_values):
    message, signature = ecc_ak.quote(NONCE, SELECTION, pcr_values, hash_alg=Alg.SHA384)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(ecc_ak.public, message, signature, nonce=NONCE, pcr_values=pcr_values)
    assert caught.value.check == "signature"


def test_ak_that_is_not_an_asymmetric_key_is_rejected(rsa_ak, pcr_values):
    from stockade.evidence.public import KeyedHashParameters, Scheme

    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values)
    keyed = replace(
        rsa_ak.public,
        type=Alg.KEYEDHASH,
        parameters=KeyedHashParameters(Scheme(Alg.HMAC, Alg.SHA256)),
        unique=bytes(32),
    )
    with pytest.raises(EvidenceError):
        verify_quote(keyed, message, signature, nonce=NONCE, pcr_values=pcr_values)


def test_quote_errors_are_verification_failures_with_exit_code_1(rsa_ak, pcr_values):
    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, message, signature, nonce=b"x", pcr_values=pcr_values)
    assert isinstance(caught.value, EvidenceError)
    assert caught.value.exit_code == 1


# -- clock continuity through verify_quote ------------------------------------------------


def test_previous_clock_is_checked(rsa_ak, pcr_values):
    now = ClockInfo(clock=50_000, reset_count=7, restart_count=2, safe=True)
    message, signature = rsa_ak.quote(NONCE, SELECTION, pcr_values, clock=now)

    def verify(previous: ClockInfo):
        return verify_quote(
            rsa_ak.public,
            message,
            signature,
            nonce=NONCE,
            pcr_values=pcr_values,
            previous_clock=previous,
        )

    assert verify(ClockInfo(40_000, 7, 2, True)).clock_info == now
    assert verify(ClockInfo(90_000, 6, 9, True)).clock_info == now  # earlier boot
    assert verify(ClockInfo(60_000, 7, 1, True)).clock_info == now  # earlier restart
    for previous, check in [
        (ClockInfo(50_000, 7, 2, True), "clock"),  # the same quote again
        (ClockInfo(60_000, 7, 2, True), "clock"),
        (ClockInfo(10, 8, 0, True), "resetCount"),
        (ClockInfo(10, 7, 3, True), "restartCount"),
    ]:
        with pytest.raises(ClockRollback) as caught:
            verify(previous)
        assert caught.value.check == check
        assert isinstance(caught.value, QuoteInvalid)


def test_signature_is_checked_before_anything_is_decoded(rsa_ak, pcr_values):
    """Garbage that does not even parse as TPMS_ATTEST is refused on its signature."""
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(
            rsa_ak.public,
            b"\xff\x54\x43\x47garbage",
            rsa_ak.sign(b"something else"),
            nonce=NONCE,
            pcr_values=pcr_values,
        )
    assert caught.value.check == "signature"
    # Correctly signed garbage is a malformed structure, never anything else.
    with pytest.raises(EvidenceError):
        verify_quote(
            rsa_ak.public,
            b"\xff\x54\x43\x47garbage",
            rsa_ak.sign(b"\xff\x54\x43\x47garbage"),
            nonce=NONCE,
            pcr_values=pcr_values,
        )


def test_quote_of_an_ecdsa_ak_with_short_r(ecc_ak, pcr_values):
    """r and s are TPM2Bs; a TPM may strip leading zeros. The signature still verifies."""
    message = ecc_ak.attest(NONCE, SELECTION, pcr_values).marshal()
    for _ in range(5000):  # ECDSA is randomized: P(r[0] == 0) = 1/256 per signature
        signature = ecc_ak.sign(message)
        if signature.body.r[0] == 0:
            break
    else:
        pytest.fail("no ECDSA signature with a leading zero byte in r in 5000 tries")
    short = Signature(
        EcdsaSignature(
            Alg.ECDSA, Alg.SHA256, signature.body.r.lstrip(b"\0"), signature.body.s.lstrip(b"\0")
        )
    )
    assert len(short.body.r) < 32
    assert verify_quote(ecc_ak.public, message, short, nonce=NONCE, pcr_values=pcr_values)


def test_magic_constant():
    assert int.from_bytes(b"\xffTCG", "big") == TPM_GENERATED_VALUE


def test_quote_without_a_nonce_is_rejected(rsa_ak, pcr_values):
    """A quote over an empty extraData could have been made at any time: no freshness."""
    message, signature = rsa_ak.quote(b"", SELECTION, pcr_values)
    with pytest.raises(QuoteInvalid) as caught:
        verify_quote(rsa_ak.public, message, signature, nonce=b"", pcr_values=pcr_values)
    assert caught.value.check == "nonce"
