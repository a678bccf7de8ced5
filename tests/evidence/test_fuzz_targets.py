"""Drive the atheris fuzz targets in fuzz/ without atheris: real vectors, their mutations
and a few thousand random inputs through each target's ``test_one_input``."""

from __future__ import annotations

import importlib.util
import random
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest
import vectors
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from stockade.channel import ChannelAuthError
from stockade.evidence import EvidenceError, PcrSelection, make_credential
from stockade.evidence.credential import marshal_credential_file
from stockade.evidence.duplication import seal_secret

FUZZ_DIR = Path(__file__).resolve().parents[2] / "fuzz"
TARGETS = [
    "fuzz_attest",
    "fuzz_public",
    "fuzz_signature",
    "fuzz_pcr_file",
    "fuzz_pcr_selection",
    "fuzz_credential_file",
    "fuzz_certificate",
    "fuzz_sealed_secret",
    "fuzz_channel_headers",
    "fuzz_ak_certificate",
]
# The function in each target's namespace that does the parsing.
PARSER_NAMES = {
    "fuzz_attest": ("Attest", "unmarshal"),
    "fuzz_public": ("TpmPublic", "unmarshal_tpm2b"),
    "fuzz_signature": ("Signature", "unmarshal"),
    "fuzz_pcr_file": (None, "read_pcr_file"),
    "fuzz_pcr_selection": ("PcrSelection", "unmarshal"),
    "fuzz_credential_file": (None, "unmarshal_credential_file"),
    "fuzz_certificate": (None, "load_certificate"),
    "fuzz_sealed_secret": ("SealedSecret", "unmarshal"),
    "fuzz_channel_headers": (None, "parse_signed_request"),
    "fuzz_ak_certificate": (None, "parse_gce_instance"),
}
# The typed "this is not valid" error each target lets pass (EvidenceError unless listed).
TYPED_ERRORS = {"fuzz_channel_headers": lambda: ChannelAuthError("malformed", "typed")}
RANDOM_INPUTS = 2000


def load_target(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(name, FUZZ_DIR / f"{name}.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module", params=TARGETS)
def target(request) -> ModuleType:
    return load_target(request.param)


@pytest.fixture(scope="module")
def seeds(rsa_ak, ecc_ak, pcr_values, ek_templates, rsa_ek_key, pki):
    message, ecdsa = ecc_ak.quote(b"nonce", PcrSelection.parse("sha256:0-3"), pcr_values)
    rsa_ek = ek_templates.rsa.with_public_key(rsa_ek_key.public_key())
    return {
        "fuzz_attest": [vectors.QUOTE_MSG, message],
        "fuzz_public": [vectors.AK_PUB, vectors.EK_PUB, ecc_ak.public.marshal_tpm2b()],
        "fuzz_signature": [vectors.QUOTE_SIG, ecdsa.marshal()],
        "fuzz_pcr_file": [vectors.QUOTE_PCRS, bytes(168)],
        "fuzz_pcr_selection": [
            PcrSelection.parse(vectors.QUOTE_SELECTION).marshal(),
            vectors.QUOTE_SELECTION.encode(),
        ],
        "fuzz_credential_file": [
            marshal_credential_file(make_credential(rsa_ek, vectors.AK_NAME, b"secret"))
        ],
        "fuzz_certificate": [
            pki.rsa_ek_cert.public_bytes(serialization.Encoding.DER),
            *load_target("fuzz_certificate").seed_inputs(),
        ],
        "fuzz_sealed_secret": [
            seal_secret(
                rsa_ek,
                b"secret",
                PcrSelection.parse("sha256:0-3"),
                pcr_values,
                authorizer_name=vectors.AK_NAME,  # any key's Name: the channel key's here
            ).marshal()
        ],
        "fuzz_channel_headers": load_target("fuzz_channel_headers").seed_inputs(),
        "fuzz_ak_certificate": load_target("fuzz_ak_certificate").seed_inputs(),
    }


def test_targets_import_without_atheris(target):
    if importlib.util.find_spec("atheris") is None:
        assert sys.modules["_harness"].atheris is None
    assert callable(target.test_one_input)
    assert target.instrumented is sys.modules["_harness"].instrumented


def test_real_vectors_pass_through_each_target(target, seeds):
    for data in seeds[target.__name__]:
        assert target.test_one_input(data) is None


def test_truncations_and_single_byte_mutations(target, seeds):
    rng = random.Random(f"mutations {target.__name__}")
    for seed in seeds[target.__name__]:
        for length in range(len(seed)):
            target.test_one_input(seed[:length])
        for _ in range(300):
            mutated = bytearray(seed)
            position = rng.randrange(len(mutated))
            mutated[position] ^= 1 << rng.randrange(8)
            target.test_one_input(bytes(mutated))


def test_random_inputs(target, seeds):
    rng = random.Random(f"random {target.__name__}")
    prefixes = [seed[:n] for seed in seeds[target.__name__] for n in (2, 4, 6, 10)]
    for number in range(RANDOM_INPUTS):
        body = rng.randbytes(rng.randrange(0, 400))
        # half the inputs start like a valid structure so they get past the first fields
        data = rng.choice(prefixes) + body if number % 2 else body
        target.test_one_input(data)


def test_target_lets_evidence_errors_pass_and_crashes_on_anything_else(target, monkeypatch):
    owner_name, function_name = PARSER_NAMES[target.__name__]
    owner = getattr(target, owner_name) if owner_name else target

    def raise_(error):
        def parser(*args, **kwargs):
            raise error

        return parser

    typed = TYPED_ERRORS.get(target.__name__, lambda: EvidenceError("typed"))()
    monkeypatch.setattr(owner, function_name, raise_(typed))
    assert target.test_one_input(b"\x00\x01\x02\x03") is None
    monkeypatch.setattr(owner, function_name, raise_(KeyError("not typed")))
    with pytest.raises(KeyError, match="not typed"):
        target.test_one_input(b"\x00\x01\x02\x03")


@pytest.mark.parametrize("name", ["fuzz_attest", "fuzz_public", "fuzz_signature"])
def test_target_catches_a_broken_round_trip(name, seeds, monkeypatch):
    """A parser that loses information is a crash, not a pass."""
    target = load_target(name)
    cls = getattr(
        target, {"fuzz_attest": "Attest", "fuzz_public": "TpmPublic"}.get(name, "Signature")
    )
    method = "marshal_tpm2b" if name == "fuzz_public" else "marshal"
    original = getattr(cls, method)
    monkeypatch.setattr(cls, method, lambda self: original(self) + b"\x00")
    with pytest.raises(AssertionError, match="does not marshal back"):
        target.test_one_input(seeds[name][0])


def test_channel_seeds_verify_and_a_verifier_accepting_forgeries_is_a_crash(seeds, monkeypatch):
    """The seeds reach the success path of verify_request; a verifier that accepts what the
    key never signed (here: anything that parses) is caught."""
    target = load_target("fuzz_channel_headers")
    for seed, (method, path, query, body, created, nonce) in zip(
        seeds["fuzz_channel_headers"], target.REQUESTS, strict=True
    ):
        verified = target.verify_request(
            method,
            path,
            query,
            body,
            target.headers_of(seed),
            target.PUBLIC_KEY,
            keyid=target.KEYID,
            now=target.NOW,
            max_skew=target.MAX_SKEW,
        )
        assert (verified.created, verified.nonce) == (created, nonce)
    forged = seeds["fuzz_channel_headers"][0].replace(b'nnnn"', b'nnnm"', 1)
    target.test_one_input(forged)  # the real verifier refuses it
    monkeypatch.setattr(
        target, "verify_request", lambda *args, **kwargs: target.parse_signed_request(args[4])[0]
    )
    with pytest.raises(AssertionError, match="never signed"):
        target.test_one_input(forged)


def test_certificate_with_an_invalid_version_is_ignored_by_the_target(seeds):
    target = load_target("fuzz_certificate")
    data = seeds["fuzz_certificate"][0].replace(
        bytes.fromhex("a003020102"), bytes.fromhex("a003020107"), 1
    )
    target.test_one_input(data)


def test_certificate_seeds_reach_a_validated_chain_and_untyped_errors_are_crashes(
    seeds, monkeypatch
):
    """Each seed validates in one of the target's two positions (EK certificate, or the
    CA between its fixed EK certificate and root), so mutations of its extensions reach
    the chain checks; anything but EvidenceError out of them is a crash."""
    target = load_target("fuzz_certificate")
    leaf, intermediate = target.seed_inputs()
    validated = []
    original = target.validate_ek_certificate

    def recording(*args, **kwargs):
        validated.append(original(*args, **kwargs))
        return validated[-1]

    monkeypatch.setattr(target, "validate_ek_certificate", recording)
    target.test_one_input(leaf)
    target.test_one_input(intermediate)
    assert [v.chain for v in validated] == [
        (target.INTERMEDIATE, target.ROOT),
        (target.INTERMEDIATE, target.ROOT),
    ]

    def untyped(*args, **kwargs):
        raise x509.DuplicateExtension("untyped", x509.oid.ExtensionOID.KEY_USAGE)

    monkeypatch.setattr(target, "validate_ek_certificate", untyped)
    with pytest.raises(x509.DuplicateExtension):
        target.test_one_input(leaf)


@pytest.mark.tools
@pytest.mark.skipif(
    importlib.util.find_spec("atheris") is not None, reason="atheris is installed: it would fuzz"
)
@pytest.mark.parametrize("name", TARGETS)
def test_running_a_target_without_atheris_says_what_is_missing(name):
    result = subprocess.run(
        [sys.executable, str(FUZZ_DIR / f"{name}.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 1
    assert "needs atheris" in result.stderr
