"""TPM2B_PUBLIC / TPMT_PUBLIC (TPM 2.0 Part 2, 12.2) and object names (Part 1, 16).

Parsing keeps every field, so ``marshal()`` gives back the exact bytes a TPM
produced; the object's Name is computed over those bytes.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from enum import IntFlag
from functools import cached_property

from cryptography.hazmat.primitives.asymmetric import ec, rsa

from stockade.evidence.algorithms import Alg, HashAlgorithm, curve, curve_size, hash_algorithm
from stockade.evidence.errors import EvidenceError, UnsupportedAlgorithm
from stockade.evidence.marshal import Reader, Writer

MAX_RSA_KEY_BYTES = 512
MAX_ECC_KEY_BYTES = 128
MAX_DIGEST_BYTES = 64
DEFAULT_RSA_EXPONENT = 65537


class ObjectAttributes(IntFlag):
    """TPMA_OBJECT (Part 2, 8.3)."""

    FIXED_TPM = 1 << 1
    ST_CLEAR = 1 << 2
    FIXED_PARENT = 1 << 4
    SENSITIVE_DATA_ORIGIN = 1 << 5
    USER_WITH_AUTH = 1 << 6
    ADMIN_WITH_POLICY = 1 << 7
    NO_DA = 1 << 10
    ENCRYPTED_DUPLICATION = 1 << 11
    RESTRICTED = 1 << 16
    DECRYPT = 1 << 17
    SIGN_ENCRYPT = 1 << 18
    X509_SIGN = 1 << 19


@dataclass(frozen=True)
class SymmetricDefinition:
    """TPMT_SYM_DEF_OBJECT: NULL, or an algorithm with key size and mode."""

    algorithm: int = Alg.NULL
    key_bits: int = 0
    mode: int = 0

    def write(self, writer: Writer) -> None:
        writer.u16(self.algorithm)
        if self.algorithm != Alg.NULL:
            writer.u16(self.key_bits).u16(self.mode)

    @classmethod
    def read(cls, reader: Reader) -> SymmetricDefinition:
        algorithm = reader.u16("TPMT_SYM_DEF_OBJECT.algorithm")
        if algorithm == Alg.NULL:
            return cls()
        if algorithm == Alg.XOR:
            raise UnsupportedAlgorithm("object symmetric", algorithm)
        return cls(algorithm, reader.u16("keyBits"), reader.u16("mode"))


@dataclass(frozen=True)
class Scheme:
    """A TPMT_*_SCHEME: a scheme id, its hash (if it has one) and extra fields.

    ``extra`` carries ECDAA's count or the XOR keyed-hash scheme's KDF.
    """

    scheme: int = Alg.NULL
    hash_alg: int | None = None
    extra: int | None = None

    def write(self, writer: Writer) -> None:
        writer.u16(self.scheme)
        if self.hash_alg is not None:
            writer.u16(self.hash_alg)
        if self.extra is not None:
            writer.u16(self.extra)

    @classmethod
    def read(cls, reader: Reader, what: str) -> Scheme:
        scheme = reader.u16(f"{what}.scheme")
        if scheme in (Alg.NULL, Alg.RSAES):
            return cls(scheme)
        hash_alg = reader.u16(f"{what}.hashAlg")
        if scheme in (Alg.ECDAA, Alg.XOR):
            return cls(scheme, hash_alg, reader.u16(f"{what}.extra"))
        return cls(scheme, hash_alg)


@dataclass(frozen=True)
class RsaParameters:
    symmetric: SymmetricDefinition
    scheme: Scheme
    key_bits: int
    exponent: int  # 0 on the wire means 65537

    def write(self, writer: Writer) -> None:
        self.symmetric.write(writer)
        self.scheme.write(writer)
        writer.u16(self.key_bits).u32(self.exponent)


@dataclass(frozen=True)
class EccParameters:
    symmetric: SymmetricDefinition
    scheme: Scheme
    curve_id: int
    kdf: Scheme

    def write(self, writer: Writer) -> None:
        self.symmetric.write(writer)
        self.scheme.write(writer)
        writer.u16(self.curve_id)
        self.kdf.write(writer)


@dataclass(frozen=True)
class KeyedHashParameters:
    scheme: Scheme

    def write(self, writer: Writer) -> None:
        self.scheme.write(writer)


@dataclass(frozen=True)
class SymCipherParameters:
    symmetric: SymmetricDefinition

    def write(self, writer: Writer) -> None:
        self.symmetric.write(writer)


Parameters = RsaParameters | EccParameters | KeyedHashParameters | SymCipherParameters


@dataclass(frozen=True)
class EccPoint:
    """TPMS_ECC_POINT: two TPM2B coordinates."""

    x: bytes
    y: bytes

    def marshal(self) -> bytes:
        return Writer().tpm2b(self.x).tpm2b(self.y).bytes()

    @classmethod
    def read(cls, reader: Reader) -> EccPoint:
        return cls(
            reader.tpm2b("TPMS_ECC_POINT.x", MAX_ECC_KEY_BYTES),
            reader.tpm2b("TPMS_ECC_POINT.y", MAX_ECC_KEY_BYTES),
        )


@dataclass(frozen=True)
class TpmPublic:
    """TPMT_PUBLIC. ``unique`` is the RSA modulus, an EccPoint, or a digest."""

    type: int
    name_alg: int
    attributes: int
    auth_policy: bytes
    parameters: Parameters
    unique: bytes | EccPoint

    # -- wire format -------------------------------------------------------

    def marshal(self) -> bytes:
        """TPMT_PUBLIC bytes (no size prefix)."""
        writer = Writer().u16(self.type).u16(self.name_alg).u32(self.attributes)
        writer.tpm2b(self.auth_policy)
        self.parameters.write(writer)
        if isinstance(self.unique, EccPoint):
            writer.raw(self.unique.marshal())
        else:
            writer.tpm2b(self.unique)
        return writer.bytes()

    def marshal_tpm2b(self) -> bytes:
        """TPM2B_PUBLIC bytes, as ``tpm2_createak -u`` writes them."""
        return Writer().tpm2b(self.marshal()).bytes()

    @classmethod
    def unmarshal(cls, data: bytes) -> TpmPublic:
        """Parse a TPMT_PUBLIC that fills ``data`` exactly."""
        reader = Reader(data, "TPMT_PUBLIC")
        public = cls.read(reader)
        reader.expect_end()
        return public

    @classmethod
    def unmarshal_tpm2b(cls, data: bytes) -> TpmPublic:
        """Parse a TPM2B_PUBLIC that fills ``data`` exactly."""
        reader = Reader(data, "TPM2B_PUBLIC")
        size = reader.u16("TPM2B_PUBLIC.size")
        if size != len(data) - 2:
            raise reader.fail(f"size field says {size} bytes but {len(data) - 2} follow")
        return cls.unmarshal(reader.remaining())

    @classmethod
    def read(cls, reader: Reader) -> TpmPublic:
        object_type = reader.u16("TPMT_PUBLIC.type")
        name_alg = reader.u16("TPMT_PUBLIC.nameAlg")
        if name_alg != Alg.NULL:
            hash_algorithm(name_alg)
        attributes = reader.u32("TPMT_PUBLIC.objectAttributes")
        auth_policy = reader.tpm2b("TPMT_PUBLIC.authPolicy", MAX_DIGEST_BYTES)
        parameters: Parameters
        unique: bytes | EccPoint
        if object_type == Alg.RSA:
            parameters = RsaParameters(
                SymmetricDefinition.read(reader),
                Scheme.read(reader, "TPMT_RSA_SCHEME"),
                reader.u16("TPMS_RSA_PARMS.keyBits"),
                reader.u32("TPMS_RSA_PARMS.exponent"),
            )
            unique = reader.tpm2b("TPM2B_PUBLIC_KEY_RSA", MAX_RSA_KEY_BYTES)
        elif object_type == Alg.ECC:
            parameters = EccParameters(
                SymmetricDefinition.read(reader),
                Scheme.read(reader, "TPMT_ECC_SCHEME"),
                reader.u16("TPMS_ECC_PARMS.curveID"),
                Scheme.read(reader, "TPMT_KDF_SCHEME"),
            )
            unique = EccPoint.read(reader)
        elif object_type == Alg.KEYEDHASH:
            parameters = KeyedHashParameters(Scheme.read(reader, "TPMT_KEYEDHASH_SCHEME"))
            unique = reader.tpm2b("TPM2B_DIGEST", MAX_DIGEST_BYTES)
        elif object_type == Alg.SYMCIPHER:
            parameters = SymCipherParameters(SymmetricDefinition.read(reader))
            unique = reader.tpm2b("TPM2B_DIGEST", MAX_DIGEST_BYTES)
        else:
            raise UnsupportedAlgorithm("object type", object_type)
        return cls(object_type, name_alg, attributes, auth_policy, parameters, unique)

    # -- derived -------------------------------------------------------------

    @property
    def name_hash(self) -> HashAlgorithm:
        return hash_algorithm(self.name_alg)

    def name(self) -> bytes:
        """The object's Name: nameAlg || H_nameAlg(TPMT_PUBLIC) (Part 1, 16)."""
        return self.name_alg.to_bytes(2, "big") + self.name_hash.digest(self.marshal())

    def has(self, attribute: ObjectAttributes) -> bool:
        return bool(self.attributes & attribute)

    def public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        """The key as a ``cryptography`` object (RSA and ECC objects only)."""
        return self._public_key

    @cached_property
    def _public_key(self) -> rsa.RSAPublicKey | ec.EllipticCurvePublicKey:
        # Decoding and validating a point costs more than verifying a hash;
        # a frozen TpmPublic decodes its key once.
        try:
            if isinstance(self.parameters, RsaParameters) and isinstance(self.unique, bytes):
                exponent = self.parameters.exponent or DEFAULT_RSA_EXPONENT
                modulus = int.from_bytes(self.unique, "big")
                return rsa.RSAPublicNumbers(exponent, modulus).public_key()
            if isinstance(self.parameters, EccParameters) and isinstance(self.unique, EccPoint):
                size = curve_size(self.parameters.curve_id)
                point = (
                    b"\x04" + self.unique.x.rjust(size, b"\0") + self.unique.y.rjust(size, b"\0")
                )
                return ec.EllipticCurvePublicKey.from_encoded_point(
                    curve(self.parameters.curve_id), point
                )
        except ValueError as error:
            raise EvidenceError(f"TPMT_PUBLIC holds an invalid public key: {error}") from None
        raise EvidenceError(f"object type 0x{self.type:04x} has no asymmetric public key")

    def with_public_key(self, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey) -> TpmPublic:
        """This template with ``unique`` replaced by ``key`` (e.g. an EK from its cert)."""
        if isinstance(key, rsa.RSAPublicKey) and isinstance(self.parameters, RsaParameters):
            numbers = key.public_numbers()
            exponent = 0 if numbers.e == DEFAULT_RSA_EXPONENT else numbers.e
            parameters = replace(self.parameters, key_bits=key.key_size, exponent=exponent)
            modulus = numbers.n.to_bytes((key.key_size + 7) // 8, "big")
            return replace(self, parameters=parameters, unique=modulus)
        if isinstance(key, ec.EllipticCurvePublicKey) and isinstance(
            self.parameters, EccParameters
        ):
            size = curve_size(self.parameters.curve_id)
            if key.curve.name != curve(self.parameters.curve_id).name:
                raise EvidenceError(
                    f"key is on {key.curve.name}, template wants "
                    f"{curve(self.parameters.curve_id).name}"
                )
            ecc_numbers = key.public_numbers()
            point = EccPoint(
                ecc_numbers.x.to_bytes(size, "big"), ecc_numbers.y.to_bytes(size, "big")
            )
            return replace(self, unique=point)
        raise EvidenceError("public key type does not match the TPM template type")


def public_key_matches(
    public: TpmPublic, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey
) -> bool:
    """True when ``public`` holds exactly ``key``."""
    mine = public.public_key()
    if isinstance(mine, rsa.RSAPublicKey) and isinstance(key, rsa.RSAPublicKey):
        return mine.public_numbers() == key.public_numbers()
    if isinstance(mine, ec.EllipticCurvePublicKey) and isinstance(key, ec.EllipticCurvePublicKey):
        return mine.public_numbers() == key.public_numbers() and mine.curve.name == key.curve.name
    return False
