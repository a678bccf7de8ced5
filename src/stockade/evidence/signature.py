"""TPMT_SIGNATURE (TPM 2.0 Part 2, 11.3.4) and checking it with ``cryptography``."""

from __future__ import annotations

from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa, utils

from stockade.evidence.algorithms import Alg, HashAlgorithm, hash_algorithm
from stockade.evidence.errors import UnsupportedAlgorithm
from stockade.evidence.marshal import Reader, Writer

MAX_RSA_SIGNATURE_BYTES = 512
MAX_ECC_PARAMETER_BYTES = 128


@dataclass(frozen=True)
class RsaSignature:
    """RSASSA (PKCS#1 v1.5) or RSAPSS."""

    scheme: int
    hash_alg: int
    signature: bytes


@dataclass(frozen=True)
class EcdsaSignature:
    scheme: int
    hash_alg: int
    r: bytes
    s: bytes


@dataclass(frozen=True)
class Signature:
    """A parsed TPMT_SIGNATURE."""

    body: RsaSignature | EcdsaSignature

    @property
    def scheme(self) -> int:
        return self.body.scheme

    @property
    def hash(self) -> HashAlgorithm:
        return hash_algorithm(self.body.hash_alg)

    def marshal(self) -> bytes:
        body = self.body
        writer = Writer().u16(body.scheme).u16(body.hash_alg)
        if isinstance(body, RsaSignature):
            writer.tpm2b(body.signature)
        else:
            writer.tpm2b(body.r).tpm2b(body.s)
        return writer.bytes()

    @classmethod
    def unmarshal(cls, data: bytes) -> Signature:
        """Parse TPMT_SIGNATURE bytes exactly as ``tpm2_quote -s`` writes them."""
        reader = Reader(data, "TPMT_SIGNATURE")
        scheme = reader.u16("TPMT_SIGNATURE.sigAlg")
        body: RsaSignature | EcdsaSignature
        if scheme in (Alg.RSASSA, Alg.RSAPSS):
            hash_alg = reader.u16("TPMS_SIGNATURE_RSA.hash")
            body = RsaSignature(
                scheme, hash_alg, reader.tpm2b("TPMS_SIGNATURE_RSA.sig", MAX_RSA_SIGNATURE_BYTES)
            )
        elif scheme == Alg.ECDSA:
            hash_alg = reader.u16("TPMS_SIGNATURE_ECC.hash")
            body = EcdsaSignature(
                scheme,
                hash_alg,
                reader.tpm2b("TPMS_SIGNATURE_ECC.signatureR", MAX_ECC_PARAMETER_BYTES),
                reader.tpm2b("TPMS_SIGNATURE_ECC.signatureS", MAX_ECC_PARAMETER_BYTES),
            )
        else:
            raise UnsupportedAlgorithm("signature scheme", scheme)
        reader.expect_end()
        hash_algorithm(hash_alg)
        return cls(body)

    def verify(self, key: rsa.RSAPublicKey | ec.EllipticCurvePublicKey, message: bytes) -> bool:
        """True when this signature over ``message`` verifies under ``key``."""
        body = self.body
        chosen = self.hash.new()
        try:
            if isinstance(body, RsaSignature) and isinstance(key, rsa.RSAPublicKey):
                pad: padding.AsymmetricPadding
                if body.scheme == Alg.RSASSA:
                    pad = padding.PKCS1v15()
                else:
                    # TPMs sign PSS with the salt as long as the digest, and
                    # verifiers of TPM signatures accept any salt length.
                    pad = padding.PSS(padding.MGF1(chosen), padding.PSS.AUTO)
                key.verify(body.signature, message, pad, chosen)
                return True
            if isinstance(body, EcdsaSignature) and isinstance(key, ec.EllipticCurvePublicKey):
                der = utils.encode_dss_signature(
                    int.from_bytes(body.r, "big"), int.from_bytes(body.s, "big")
                )
                key.verify(der, message, ec.ECDSA(chosen))
                return True
        except (InvalidSignature, ValueError):
            return False
        return False
