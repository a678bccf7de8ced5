"""Shared helpers for the evidence tests.

- ``SoftAk``: a software attestation key that builds and signs TPMS_ATTEST the way a TPM
  does, so quotes can be made (and tampered with) without a TPM.
- Reference KDFa / KDFe / TPM2_ActivateCredential written straight from the TPM 2.0
  specification with the standard library (and ``cryptography`` only for RSA/ECDH/AES),
  independent of ``stockade.evidence.kdf`` and ``stockade.evidence.credential``.
- The TCG default EK templates and a small X.509 PKI for EK certificates.

Nothing here imports tpm2_pytss: the evidence layer must be testable on a verifier
without libtss2. Helpers are handed to tests through fixtures (test modules never import
this file).
"""

from __future__ import annotations

import hashlib
import hmac
import struct
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime, timedelta
from types import SimpleNamespace

import pytest
from cryptography import x509
from cryptography.hazmat.decrepit.ciphers.modes import CFB
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID, ObjectIdentifier

from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.attest import (
    TPM_GENERATED_VALUE,
    Attest,
    AttestType,
    ClockInfo,
    QuoteInfo,
)
from stockade.evidence.credential import CredentialBlob
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import (
    EccParameters,
    EccPoint,
    RsaParameters,
    Scheme,
    SymmetricDefinition,
    TpmPublic,
)
from stockade.evidence.signature import EcdsaSignature, RsaSignature, Signature

# -- constants written down from the specifications, not taken from the code ---------------

HASHLIB_NAMES = {Alg.SHA1: "sha1", Alg.SHA256: "sha256", Alg.SHA384: "sha384", Alg.SHA512: "sha512"}
CRYPTOGRAPHY_HASHES = {
    Alg.SHA1: hashes.SHA1,
    Alg.SHA256: hashes.SHA256,
    Alg.SHA384: hashes.SHA384,
    Alg.SHA512: hashes.SHA512,
}

# TPMA_OBJECT bits (Part 2, 8.3.2).
FIXED_TPM = 1 << 1
FIXED_PARENT = 1 << 4
SENSITIVE_DATA_ORIGIN = 1 << 5
USER_WITH_AUTH = 1 << 6
ADMIN_WITH_POLICY = 1 << 7
RESTRICTED = 1 << 16
DECRYPT = 1 << 17
SIGN_ENCRYPT = 1 << 18

# What tpm2_createak gives an AK: 0x00050072.
AK_ATTRIBUTES = (
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | USER_WITH_AUTH | RESTRICTED | SIGN_ENCRYPT
)
# TCG EK Credential Profile 2.0, B.3.3/B.3.4 (template L-1 and L-2): 0x000300B2.
EK_ATTRIBUTES = (
    FIXED_TPM | FIXED_PARENT | SENSITIVE_DATA_ORIGIN | ADMIN_WITH_POLICY | RESTRICTED | DECRYPT
)
# PolicySecret(TPM_RH_ENDORSEMENT), the default EK authPolicy (EK profile B.3.2).
EK_POLICY_A_SHA256 = bytes.fromhex(
    "837197674484b3f81a90cc8d46a5d724fd52d76e06520b64f2a1da1b331469aa"
)
TCG_KP_EK_CERTIFICATE = ObjectIdentifier("2.23.133.8.1")

NOW = datetime(2030, 6, 1, 12, 0, tzinfo=UTC)


def hash_name(alg: int) -> str:
    return HASHLIB_NAMES[Alg(alg)]


def digest(alg: int, data: bytes) -> bytes:
    return hashlib.new(hash_name(alg), data).digest()


def rsa_ek_template() -> TpmPublic:
    """TCG default RSA 2048 EK template: AES-128-CFB storage key, NULL scheme."""
    return TpmPublic(
        type=Alg.RSA,
        name_alg=Alg.SHA256,
        attributes=EK_ATTRIBUTES,
        auth_policy=EK_POLICY_A_SHA256,
        parameters=RsaParameters(
            SymmetricDefinition(Alg.AES, 128, Alg.CFB), Scheme(Alg.NULL), 2048, 0
        ),
        unique=bytes(256),
    )


def ecc_ek_template() -> TpmPublic:
    """TCG default ECC NIST P-256 EK template: AES-128-CFB, NULL scheme, NULL KDF."""
    return TpmPublic(
        type=Alg.ECC,
        name_alg=Alg.SHA256,
        attributes=EK_ATTRIBUTES,
        auth_policy=EK_POLICY_A_SHA256,
        parameters=EccParameters(
            SymmetricDefinition(Alg.AES, 128, Alg.CFB),
            Scheme(Alg.NULL),
            EccCurve.NIST_P256,
            Scheme(Alg.NULL),
        ),
        unique=EccPoint(bytes(32), bytes(32)),
    )


def sample_pcr_values() -> PcrValues:
    """Distinct, recognisable values for all 24 PCRs of the sha1, sha256 and sha384 banks."""
    return PcrValues(
        {
            alg: {
                index: digest(alg, f"{hash_name(alg)} PCR {index}".encode()) for index in range(24)
            }
            for alg in (Alg.SHA1, Alg.SHA256, Alg.SHA384)
        }
    )


def pcr_digest(values: PcrValues, selection: PcrSelection, alg: int) -> bytes:
    """pcrDigest of TPMS_QUOTE_INFO: H(PCR values concatenated in selection order)."""
    concatenated = b"".join(
        values.banks[bank.hash_alg][index] for bank in selection.banks for index in bank.pcrs
    )
    return digest(alg, concatenated)


# -- a software attestation key ---------------------------------------------------------


@dataclass
class SoftAk:
    """An AK whose private half we hold: signs TPMS_ATTEST bytes like TPM2_Quote does."""

    private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    public: TpmPublic
    scheme: int
    hash_alg: int
    clock: ClockInfo = field(default_factory=lambda: ClockInfo(123_456, 7, 2, True))

    def sign(
        self, message: bytes, *, scheme: int | None = None, hash_alg: int | None = None
    ) -> Signature:
        scheme = self.scheme if scheme is None else scheme
        hash_alg = self.hash_alg if hash_alg is None else hash_alg
        chosen = CRYPTOGRAPHY_HASHES[Alg(hash_alg)]()
        if scheme == Alg.ECDSA:
            assert isinstance(self.private, ec.EllipticCurvePrivateKey)
            r, s = utils.decode_dss_signature(self.private.sign(message, ec.ECDSA(chosen)))
            size = (self.private.curve.key_size + 7) // 8
            return Signature(
                EcdsaSignature(scheme, hash_alg, r.to_bytes(size, "big"), s.to_bytes(size, "big"))
            )
        assert isinstance(self.private, rsa.RSAPrivateKey)
        pad: padding.AsymmetricPadding
        if scheme == Alg.RSASSA:
            pad = padding.PKCS1v15()
        elif scheme == Alg.RSAPSS:
            # A TPM uses a salt as long as the digest.
            pad = padding.PSS(padding.MGF1(chosen), chosen.digest_size)
        else:
            raise AssertionError(f"SoftAk cannot sign with scheme {scheme:#x}")
        return Signature(RsaSignature(scheme, hash_alg, self.private.sign(message, pad, chosen)))

    def attest(
        self,
        nonce: bytes,
        selection: PcrSelection,
        values: PcrValues,
        *,
        hash_alg: int | None = None,
        magic: int = TPM_GENERATED_VALUE,
        clock: ClockInfo | None = None,
    ) -> Attest:
        """The TPMS_ATTEST a TPM would produce for TPM2_Quote."""
        hash_alg = self.hash_alg if hash_alg is None else hash_alg
        return Attest(
            magic=magic,
            type=AttestType.QUOTE,
            qualified_signer=b"\x00\x0b" + hashlib.sha256(b"qualified signer").digest(),
            extra_data=nonce,
            clock_info=clock or self.clock,
            firmware_version=0x2019_1023_0016_3636,
            attested=QuoteInfo(selection, pcr_digest(values, selection, hash_alg)),
        )

    def quote(
        self,
        nonce: bytes,
        selection: PcrSelection,
        values: PcrValues,
        *,
        scheme: int | None = None,
        hash_alg: int | None = None,
        magic: int = TPM_GENERATED_VALUE,
        clock: ClockInfo | None = None,
    ) -> tuple[bytes, Signature]:
        """(TPMS_ATTEST bytes, TPMT_SIGNATURE) exactly as ``tpm2_quote -m/-s`` would give."""
        hash_alg = self.hash_alg if hash_alg is None else hash_alg
        message = self.attest(
            nonce, selection, values, hash_alg=hash_alg, magic=magic, clock=clock
        ).marshal()
        return message, self.sign(message, scheme=scheme, hash_alg=hash_alg)

    def with_public(self, **changes: object) -> SoftAk:
        """The same private key under a TPMT_PUBLIC with some fields changed."""
        return replace(self, public=replace(self.public, **changes))

    def with_scheme(self, scheme: int, hash_alg: int | None) -> SoftAk:
        parameters = replace(self.public.parameters, scheme=Scheme(scheme, hash_alg))
        return self.with_public(parameters=parameters)


def _rsa_ak(scheme: int, hash_alg: int) -> SoftAk:
    private = rsa.generate_private_key(65537, 2048)
    public = TpmPublic(
        type=Alg.RSA,
        name_alg=Alg.SHA256,
        attributes=AK_ATTRIBUTES,
        auth_policy=b"",
        parameters=RsaParameters(SymmetricDefinition(), Scheme(scheme, hash_alg), 2048, 0),
        unique=private.public_key().public_numbers().n.to_bytes(256, "big"),
    )
    return SoftAk(private, public, scheme, hash_alg)


def _ecc_ak() -> SoftAk:
    private = ec.generate_private_key(ec.SECP256R1())
    numbers = private.public_key().public_numbers()
    public = TpmPublic(
        type=Alg.ECC,
        name_alg=Alg.SHA256,
        attributes=AK_ATTRIBUTES,
        auth_policy=b"",
        parameters=EccParameters(
            SymmetricDefinition(),
            Scheme(Alg.ECDSA, Alg.SHA256),
            EccCurve.NIST_P256,
            Scheme(Alg.NULL),
        ),
        unique=EccPoint(numbers.x.to_bytes(32, "big"), numbers.y.to_bytes(32, "big")),
    )
    return SoftAk(private, public, Alg.ECDSA, Alg.SHA256)


@pytest.fixture(scope="session")
def rsa_ak() -> SoftAk:
    """RSA-2048 AK restricted to RSASSA-SHA256 (what tpm2_createak makes by default)."""
    return _rsa_ak(Alg.RSASSA, Alg.SHA256)


@pytest.fixture(scope="session")
def rsa_pss_ak() -> SoftAk:
    """RSA-2048 AK restricted to RSAPSS-SHA256."""
    return _rsa_ak(Alg.RSAPSS, Alg.SHA256)


@pytest.fixture(scope="session")
def ecc_ak() -> SoftAk:
    """NIST P-256 AK restricted to ECDSA-SHA256."""
    return _ecc_ak()


@pytest.fixture(scope="session")
def rsa_ek_key() -> rsa.RSAPrivateKey:
    return rsa.generate_private_key(65537, 2048)


@pytest.fixture(scope="session")
def ecc_ek_key() -> ec.EllipticCurvePrivateKey:
    return ec.generate_private_key(ec.SECP256R1())


@pytest.fixture(scope="session")
def pcr_values() -> PcrValues:
    return sample_pcr_values()


@pytest.fixture(scope="session")
def ek_templates() -> SimpleNamespace:
    return SimpleNamespace(rsa=rsa_ek_template(), ecc=ecc_ek_template())


# -- reference KDFs and ActivateCredential, from the specification ---------------------------


def kdfa_reference(hash_alg: int, key: bytes, label: bytes, u: bytes, v: bytes, bits: int) -> bytes:
    """TPM 2.0 Part 1, 11.4.10.2: KDFa(hashAlg, key, label, contextU, contextV, bits).

    K(i) = HMAC(key, [i]_4 || label || 0x00 || contextU || contextV || [bits]_4),
    output = K(1) || K(2) || ... truncated to ``bits``.
    """
    assert bits % 8 == 0
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        data = struct.pack(">I", counter) + label + b"\x00" + u + v + struct.pack(">I", bits)
        out += hmac.new(key, data, hash_name(hash_alg)).digest()
        counter += 1
    return out[: bits // 8]


def kdfe_reference(hash_alg: int, z: bytes, label: bytes, u: bytes, v: bytes, bits: int) -> bytes:
    """TPM 2.0 Part 1, 11.4.10.3: KDFe(hashAlg, Z, label, partyUInfo, partyVInfo, bits).

    K(i) = Hash([i]_4 || Z || label || 0x00 || partyUInfo || partyVInfo), concatenated and
    truncated to ``bits``.
    """
    assert bits % 8 == 0
    out = b""
    counter = 1
    while len(out) * 8 < bits:
        data = struct.pack(">I", counter) + z + label + b"\x00" + u + v
        out += hashlib.new(hash_name(hash_alg), data).digest()
        counter += 1
    return out[: bits // 8]


class IntegrityCheckFailed(Exception):
    """The reference ActivateCredential's outer HMAC did not match (TPM_RC_INTEGRITY)."""


def activate_credential_reference(
    ek_private: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
    ek_public: TpmPublic,
    object_name: bytes,
    blob: CredentialBlob,
) -> bytes:
    """What TPM2_ActivateCredential does (Part 1, 24; Annex B.10.4 / C.6.1), in software.

    Raises ``IntegrityCheckFailed`` when the HMAC does not match, and ``ValueError`` when
    an RSA EK cannot decrypt the seed.
    """
    name_alg = ek_public.name_alg
    size = hashlib.new(hash_name(name_alg)).digest_size
    if isinstance(ek_private, rsa.RSAPrivateKey):
        chosen = CRYPTOGRAPHY_HASHES[Alg(name_alg)]
        seed = ek_private.decrypt(
            blob.encrypted_secret,
            padding.OAEP(padding.MGF1(chosen()), chosen(), b"IDENTITY\x00"),
        )
    else:
        # encrypted_secret is a TPMS_ECC_POINT: the ephemeral public key Q_e.
        (x_size,) = struct.unpack_from(">H", blob.encrypted_secret, 0)
        x = blob.encrypted_secret[2 : 2 + x_size]
        (y_size,) = struct.unpack_from(">H", blob.encrypted_secret, 2 + x_size)
        y = blob.encrypted_secret[4 + x_size : 4 + x_size + y_size]
        assert 4 + x_size + y_size == len(blob.encrypted_secret)
        ephemeral = ec.EllipticCurvePublicNumbers(
            int.from_bytes(x, "big"), int.from_bytes(y, "big"), ek_private.curve
        ).public_key()
        z_x = ek_private.exchange(ec.ECDH(), ephemeral)
        coordinate = (ek_private.curve.key_size + 7) // 8
        ek_x = ek_private.public_key().public_numbers().x.to_bytes(coordinate, "big")
        seed = kdfe_reference(name_alg, z_x, b"IDENTITY", x, ek_x, size * 8)

    # credentialBlob = TPM2B_DIGEST integrityHMAC || encIdentity
    (hmac_size,) = struct.unpack_from(">H", blob.credential_blob, 0)
    integrity = blob.credential_blob[2 : 2 + hmac_size]
    enc_identity = blob.credential_blob[2 + hmac_size :]
    hmac_key = kdfa_reference(name_alg, seed, b"INTEGRITY", b"", b"", size * 8)
    expected = hmac.new(hmac_key, enc_identity + object_name, hash_name(name_alg)).digest()
    if not hmac.compare_digest(expected, integrity):
        raise IntegrityCheckFailed("integrityHMAC does not match")

    parameters = ek_public.parameters
    assert isinstance(parameters, RsaParameters | EccParameters)
    key_bits = parameters.symmetric.key_bits
    sym_key = kdfa_reference(name_alg, seed, b"STORAGE", object_name, b"", key_bits)
    decryptor = Cipher(algorithms.AES(sym_key), CFB(bytes(16))).decryptor()
    plain = decryptor.update(enc_identity) + decryptor.finalize()
    (secret_size,) = struct.unpack_from(">H", plain, 0)
    assert secret_size == len(plain) - 2, "encIdentity is not one TPM2B_DIGEST"
    return plain[2:]


@pytest.fixture(scope="session")
def spec() -> SimpleNamespace:
    """The reference implementations above, for tests to call."""
    return SimpleNamespace(
        kdfa=kdfa_reference,
        kdfe=kdfe_reference,
        activate_credential=activate_credential_reference,
        IntegrityCheckFailed=IntegrityCheckFailed,
    )


# -- X.509 for EK certificates -----------------------------------------------------------


CertKey = rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey


def _name(common_name: str) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Test TPM Vendor"),
            x509.NameAttribute(NameOID.COMMON_NAME, common_name),
        ]
    )


def make_certificate(
    subject: str,
    public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey,
    *,
    issuer: str | None = None,
    issuer_key: CertKey,
    ca: bool | None = True,
    key_cert_sign: bool | None = True,
    eku: list[ObjectIdentifier] | None = None,
    not_before: datetime = NOW - timedelta(days=365),
    not_after: datetime = NOW + timedelta(days=365),
    serial: int | None = None,
) -> x509.Certificate:
    """A certificate. ``ca=None`` omits BasicConstraints, ``key_cert_sign=None`` KeyUsage."""
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(subject))
        .issuer_name(_name(issuer or subject))
        .public_key(public_key)
        .serial_number(serial or x509.random_serial_number())
        .not_valid_before(not_before)
        .not_valid_after(not_after)
    )
    if ca is not None:
        builder = builder.add_extension(x509.BasicConstraints(ca=ca, path_length=None), True)
    if key_cert_sign is not None:
        builder = builder.add_extension(
            x509.KeyUsage(
                digital_signature=False,
                content_commitment=False,
                key_encipherment=not key_cert_sign,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=key_cert_sign,
                crl_sign=key_cert_sign,
                encipher_only=False,
                decipher_only=False,
            ),
            True,
        )
    if eku is not None:
        builder = builder.add_extension(x509.ExtendedKeyUsage(eku), False)
    return builder.sign(issuer_key, hashes.SHA256())


@dataclass(frozen=True)
class Pki:
    """A vendor root CA, an intermediate under it, and EK certificates under the latter."""

    root: x509.Certificate
    root_key: ec.EllipticCurvePrivateKey
    intermediate: x509.Certificate
    intermediate_key: ec.EllipticCurvePrivateKey
    rsa_ek_cert: x509.Certificate
    ecc_ek_cert: x509.Certificate
    # leaf(public_key, **make_certificate options): an EK certificate from the intermediate
    leaf: Callable[..., x509.Certificate]
    certificate: Callable[..., x509.Certificate] = make_certificate


@pytest.fixture(scope="session")
def pki(rsa_ek_key: rsa.RSAPrivateKey, ecc_ek_key: ec.EllipticCurvePrivateKey) -> Pki:
    root_key = ec.generate_private_key(ec.SECP384R1())
    root = make_certificate("Vendor Root CA", root_key.public_key(), issuer_key=root_key)
    intermediate_key = ec.generate_private_key(ec.SECP256R1())
    intermediate = make_certificate(
        "Vendor EK CA 01",
        intermediate_key.public_key(),
        issuer="Vendor Root CA",
        issuer_key=root_key,
    )

    def leaf(
        public_key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, **kwargs: object
    ) -> x509.Certificate:
        options: dict[str, object] = {
            "issuer": "Vendor EK CA 01",
            "issuer_key": intermediate_key,
            "ca": False,
            "key_cert_sign": False,
            "eku": [TCG_KP_EK_CERTIFICATE],
        }
        options.update(kwargs)
        return make_certificate("EK", public_key, **options)

    return Pki(
        root=root,
        root_key=root_key,
        intermediate=intermediate,
        intermediate_key=intermediate_key,
        rsa_ek_cert=leaf(rsa_ek_key.public_key()),
        ecc_ek_cert=leaf(ecc_ek_key.public_key(), eku=[ExtendedKeyUsageOID.ANY_EXTENDED_KEY_USAGE]),
        leaf=leaf,
    )
