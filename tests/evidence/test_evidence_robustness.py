"""Every parser either succeeds or raises ``EvidenceError``, never anything else, for every
truncation and every single bit flip of real and synthesized structures, for mutations
hypothesis chooses and for arbitrary bytes. Where parsing succeeds, the structure
re-marshals to exactly the bytes it came from. And a mutated quote never verifies.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from dataclasses import replace

import pytest
import vectors
from cryptography.hazmat.primitives import serialization
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from stockade.evidence import (
    Attest,
    AttestType,
    EvidenceError,
    PcrSelection,
    QuoteInvalid,
    Signature,
    TpmPublic,
    make_credential,
    verify_quote,
)
from stockade.evidence.attest import CertifyInfo, RawAttested
from stockade.evidence.credential import marshal_credential_file, unmarshal_credential_file
from stockade.evidence.ek_certificate import load_certificate
from stockade.evidence.tpm2_tools_files import read_pcr_file, read_public_key_file

# A certificate with a zero or negative serial number (a bit flip away from a real one) loads
# with a deprecation warning; that is cryptography's business, not a failure here.
pytestmark = pytest.mark.filterwarnings("ignore::cryptography.utils.CryptographyDeprecationWarning")

FIXED_SELECTION = PcrSelection.parse("sha256:0,1,2,16+sha1:0,3")
RSA_KEY = TpmPublic.unmarshal_tpm2b(vectors.AK_PUB).public_key()


def only_evidence_errors(action: Callable[[], object]) -> None:
    """Run ``action``; an EvidenceError is a fine outcome, anything else propagates."""
    with contextlib.suppress(EvidenceError):
        action()


def parse_attest(data: bytes) -> None:
    attest = Attest.unmarshal(data)
    assert attest.marshal() == data


def parse_tpm2b_public(data: bytes) -> None:
    public = TpmPublic.unmarshal_tpm2b(data)
    assert public.marshal_tpm2b() == data
    only_evidence_errors(public.name)
    only_evidence_errors(public.public_key)


def parse_tpmt_public(data: bytes) -> None:
    public = TpmPublic.unmarshal(data)
    assert public.marshal() == data


def parse_signature(data: bytes, ecc_key=None) -> None:
    signature = Signature.unmarshal(data)
    assert signature.marshal() == data
    # verifying a parsed signature answers True/False, it never raises
    assert signature.verify(RSA_KEY, vectors.QUOTE_MSG) in (True, False)
    if ecc_key is not None:
        assert signature.verify(ecc_key, vectors.QUOTE_MSG) in (True, False)


def parse_pcr_selection(data: bytes) -> None:
    selection = PcrSelection.unmarshal(data)
    assert selection.marshal() == data


def parse_pcr_file(data: bytes) -> None:
    only_evidence_errors(lambda: read_pcr_file(data))
    read_pcr_file(data, FIXED_SELECTION)


def parse_credential_file(data: bytes) -> None:
    blob = unmarshal_credential_file(data)
    assert marshal_credential_file(blob) == data


def parse_public_key_file(data: bytes) -> None:
    read_public_key_file(data)


PARSERS: dict[str, Callable[[bytes], None]] = {
    "TPMS_ATTEST": parse_attest,
    "TPM2B_PUBLIC": parse_tpm2b_public,
    "TPMT_PUBLIC": parse_tpmt_public,
    "TPMT_SIGNATURE": parse_signature,
    "TPML_PCR_SELECTION": parse_pcr_selection,
    "PCR file": parse_pcr_file,
    "credential file": parse_credential_file,
    "certificate": load_certificate,
    "public key file": parse_public_key_file,
}


@pytest.fixture(scope="module")
def seeds(rsa_ak, ecc_ak, pcr_values, ek_templates, rsa_ek_key, ecc_ek_key, pki):
    """Real and synthesized valid inputs for each parser."""
    quote_message, ecdsa = ecc_ak.quote(b"nonce", FIXED_SELECTION, pcr_values)
    certify = replace(
        Attest.unmarshal(quote_message),
        type=AttestType.CERTIFY,
        attested=CertifyInfo(vectors.AK_NAME, vectors.AK_NAME),
    ).marshal()
    raw = replace(
        Attest.unmarshal(quote_message), type=AttestType.TIME, attested=RawAttested(bytes(25))
    ).marshal()
    rsa_ek = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    ecc_ek = ek_templates.ecc.with_public_key(ecc_ek_key.public_key())
    return {
        "TPMS_ATTEST": [vectors.QUOTE_MSG, quote_message, certify, raw],
        "TPM2B_PUBLIC": [
            vectors.AK_PUB,
            vectors.EK_PUB,
            ecc_ak.public.marshal_tpm2b(),
            ecc_ek.marshal_tpm2b(),
        ],
        "TPMT_PUBLIC": [vectors.AK_PUB[2:], ecc_ak.public.marshal()],
        "TPMT_SIGNATURE": [vectors.QUOTE_SIG, ecdsa.marshal()],
        "TPML_PCR_SELECTION": [
            FIXED_SELECTION.marshal(),
            PcrSelection.parse("sha384:0-23").marshal(),
        ],
        "PCR file": [vectors.QUOTE_PCRS],
        "credential file": [
            marshal_credential_file(make_credential(rsa_ek, vectors.AK_NAME, b"secret")),
            marshal_credential_file(make_credential(ecc_ek, vectors.AK_NAME, b"secret")),
        ],
        "certificate": [
            pki.ecc_ek_cert.public_bytes(serialization.Encoding.DER),
            pki.rsa_ek_cert.public_bytes(serialization.Encoding.DER)[:300],  # truncated too
        ],
        "public key file": [vectors.AK_PUB, ecc_ak.public.marshal_tpm2b()],
    }


def test_seeds_are_valid(seeds):
    """The unmutated seeds parse (except the deliberately truncated certificate)."""
    for name, inputs in seeds.items():
        for data in inputs:
            if name == "certificate" and len(data) == 300:
                continue
            PARSERS[name](data)


def run_all(parser: Callable[[bytes], None], inputs) -> list[str]:
    failures = []
    for label, data in inputs:
        try:
            parser(data)
        except EvidenceError:
            continue
        except Exception as error:  # the property under test: nothing but EvidenceError
            failures.append(f"{label}: {type(error).__name__}: {error}")
    return failures


def truncations(seed: bytes):
    for length in range(len(seed)):
        yield f"prefix of {length} bytes", seed[:length]


def bit_flips(seed: bytes):
    for bit in range(len(seed) * 8):
        mutated = bytearray(seed)
        mutated[bit // 8] ^= 1 << (bit % 8)
        yield f"bit {bit} flipped", bytes(mutated)


@pytest.mark.parametrize("name", PARSERS)
def test_every_truncation_is_parsed_or_an_evidence_error(seeds, name):
    for seed in seeds[name]:
        failures = run_all(PARSERS[name], truncations(seed))
        assert not failures, f"{name}: {len(failures)} bad outcomes, e.g. {failures[:3]}"


@pytest.mark.parametrize("name", ["TPMS_ATTEST", "TPM2B_PUBLIC", "TPMT_PUBLIC", "TPMT_SIGNATURE"])
def test_every_strict_prefix_of_a_tpm_structure_is_rejected(seeds, name):
    for seed in seeds[name]:
        # an undecoded (raw) attestation body has no length of its own: only its header counts
        is_raw = name == "TPMS_ATTEST" and isinstance(Attest.unmarshal(seed).attested, RawAttested)
        complete = len(seed) - len(Attest.unmarshal(seed).attested.body) if is_raw else len(seed)
        for _, prefix in truncations(seed[:complete]):
            with pytest.raises(EvidenceError):
                PARSERS[name](prefix)


@pytest.mark.parametrize("name", list(PARSERS))
def test_every_bit_flip_is_parsed_or_an_evidence_error(seeds, name):
    for seed in seeds[name]:
        failures = run_all(PARSERS[name], bit_flips(seed))
        assert not failures, f"{name}: {len(failures)} bad outcomes, e.g. {failures[:3]}"


def test_signature_verify_never_raises_for_ecc_keys(seeds, ecc_ak):
    key = ecc_ak.public.public_key()
    for seed in seeds["TPMT_SIGNATURE"]:
        failures = run_all(lambda d: parse_signature(d, key), bit_flips(seed))
        assert not failures, failures[:3]


# -- hypothesis: mutations it chooses, and arbitrary bytes ------------------------------

mutation_settings = settings(
    max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


@st.composite
def mutated(draw, seeds_for_parser):
    data = bytearray(draw(st.sampled_from(seeds_for_parser)))
    for _ in range(draw(st.integers(1, 8))):
        operation = draw(st.sampled_from(["flip", "set", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(len(data) - 1, 0)))
        if operation == "flip" and data:
            data[position] ^= 1 << draw(st.integers(0, 7))
        elif operation == "set" and data:
            data[position] = draw(st.sampled_from([0x00, 0xFF, 0x7F, 0x80, 0x01]))
        elif operation == "insert":
            data[position:position] = draw(st.binary(min_size=1, max_size=4))
        elif operation == "delete" and data:
            del data[position : position + draw(st.integers(1, 4))]
        elif operation == "truncate":
            del data[position:]
    return bytes(data)


@pytest.mark.parametrize("name", PARSERS)
@mutation_settings
@given(data=st.data())
def test_hypothesis_mutations_are_parsed_or_evidence_errors(seeds, name, data):
    only_evidence_errors(lambda: PARSERS[name](data.draw(mutated(seeds[name]))))


@pytest.mark.parametrize("name", PARSERS)
@settings(max_examples=200, deadline=None)
@given(data=st.binary(max_size=700))
def test_arbitrary_bytes_are_parsed_or_evidence_errors(name, data):
    only_evidence_errors(lambda: PARSERS[name](data))


@pytest.mark.parametrize("name", ["TPMS_ATTEST", "TPM2B_PUBLIC", "TPMT_SIGNATURE"])
@settings(max_examples=200, deadline=None)
@given(
    header=st.sampled_from(
        [
            bytes.fromhex("ff5443478018"),  # TPMS_ATTEST quote
            bytes.fromhex("ff5443478017"),  # TPMS_ATTEST certify
            bytes.fromhex("00000001000b"),  # TPMT_PUBLIC RSA/SHA-256 (after a size)
            bytes.fromhex("00000023000b"),  # TPMT_PUBLIC ECC/SHA-256
            bytes.fromhex("0014000b"),  # TPMT_SIGNATURE RSASSA/SHA-256
            bytes.fromhex("0018000b"),  # TPMT_SIGNATURE ECDSA/SHA-256
        ]
    ),
    body=st.binary(max_size=400),
)
def test_plausible_headers_with_arbitrary_bodies(name, header, body):
    """Random bytes rarely get past the first field; a valid header makes them go deeper."""
    data = header + body
    only_evidence_errors(lambda: PARSERS[name](data))
    if name == "TPM2B_PUBLIC":  # with a correct size prefix
        sized = (len(data) - 2).to_bytes(2, "big") + data[2:] if len(data) >= 2 else data
        only_evidence_errors(lambda: PARSERS[name](sized))


pcr_selection_texts = st.text(max_size=60) | st.from_regex(
    r"((sha1|sha256|sha384|SHA512|md5|)(:|-|)[0-9a-fx, \-]{0,16}\+?){1,3}", fullmatch=True
)


@settings(max_examples=150, deadline=None)
@given(pcr_selection_texts)
def test_pcr_selection_text_is_parsed_or_an_evidence_error(text):
    try:
        selection = PcrSelection.parse(text)
    except EvidenceError:
        return
    assert all(0 <= index < 24 for _, index in selection.items())
    assert PcrSelection.parse(str(selection)) == selection
    assert PcrSelection.unmarshal(selection.marshal()) == selection


# -- a mutated quote never verifies --------------------------------------------------------


REAL_AK = TpmPublic.unmarshal_tpm2b(vectors.AK_PUB)
REAL_SIGNATURE = Signature.unmarshal(vectors.QUOTE_SIG)
REAL_VALUES = read_pcr_file(vectors.QUOTE_PCRS)


def verify_real(message: bytes, signature: Signature):
    return verify_quote(
        REAL_AK, message, signature, nonce=vectors.QUOTE_NONCE, pcr_values=REAL_VALUES
    )


def test_unmutated_real_quote_verifies():
    assert verify_real(vectors.QUOTE_MSG, REAL_SIGNATURE).attest.extra_data == b"\xab\xcd"


def test_every_bit_flip_of_the_real_quote_message_is_rejected_on_its_signature():
    for label, message in [*bit_flips(vectors.QUOTE_MSG), *truncations(vectors.QUOTE_MSG)]:
        with pytest.raises(QuoteInvalid) as caught:
            verify_real(message, REAL_SIGNATURE)
        assert caught.value.check == "signature", label


def test_every_bit_flip_of_the_real_quote_signature_is_rejected():
    for label, data in [*bit_flips(vectors.QUOTE_SIG), *truncations(vectors.QUOTE_SIG)]:
        try:
            signature = Signature.unmarshal(data)
        except EvidenceError:
            continue
        with pytest.raises(QuoteInvalid) as caught:
            verify_real(vectors.QUOTE_MSG, signature)
        assert caught.value.check == "signature", label


@pytest.fixture(params=["rsa_ak", "rsa_pss_ak", "ecc_ak"])
def signed_quote(request, pcr_values):
    ak = request.getfixturevalue(request.param)
    message, signature = ak.quote(b"fresh nonce", FIXED_SELECTION, pcr_values)
    return ak, message, signature


@settings(
    max_examples=100,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(data=st.data())
def test_hypothesis_mutated_quotes_never_verify(signed_quote, pcr_values, data):
    ak, message, signature = signed_quote
    which = data.draw(st.sampled_from(["message", "signature", "both"]))
    new_message = data.draw(mutated([message])) if which != "signature" else message
    new_signature = signature.marshal()
    if which != "message":
        new_signature = data.draw(mutated([new_signature]))
    if new_message == message and same_signature_values(new_signature, signature):
        return  # e.g. an insert undone by a truncate, or a leading zero added to r: no change
    with pytest.raises(EvidenceError):
        verify_quote(
            ak.public,
            new_message,
            Signature.unmarshal(new_signature),
            nonce=b"fresh nonce",
            pcr_values=pcr_values,
        )


def same_signature_values(data: bytes, original: Signature) -> bool:
    """True when ``data`` encodes the same scheme, hash and numbers as ``original``."""
    try:
        parsed = Signature.unmarshal(data)
    except EvidenceError:
        return False

    def numbers(signature: Signature) -> tuple[object, ...]:
        body = signature.body
        values = (body.signature,) if hasattr(body, "signature") else (body.r, body.s)
        return (body.scheme, body.hash_alg, *(int.from_bytes(v, "big") for v in values))

    return numbers(parsed) == numbers(original)
