"""TPMS_ATTEST, the structure a TPM signs (TPM 2.0 Part 2, 10.12).

Quote and Certify bodies are decoded; other attestation types keep their body
as raw bytes so they still round-trip.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import IntEnum

from stockade.evidence.marshal import Reader, Writer
from stockade.evidence.pcr_selection import PcrSelection

TPM_GENERATED_VALUE = 0xFF544347
MAX_NAME_BYTES = 66
MAX_DATA_BYTES = 66
MAX_DIGEST_BYTES = 64


class AttestType(IntEnum):
    """TPM_ST values for attestation structures (Part 2, 6.9)."""

    NV = 0x8014
    COMMAND_AUDIT = 0x8015
    SESSION_AUDIT = 0x8016
    CERTIFY = 0x8017
    QUOTE = 0x8018
    TIME = 0x8019
    CREATION = 0x801A
    NV_DIGEST = 0x801C


@dataclass(frozen=True)
class ClockInfo:
    """TPMS_CLOCK_INFO: milliseconds since the TPM clock was last cleared, and boot counters."""

    clock: int
    reset_count: int
    restart_count: int
    safe: bool

    def write(self, writer: Writer) -> None:
        writer.u64(self.clock).u32(self.reset_count).u32(self.restart_count).u8(int(self.safe))

    @classmethod
    def read(cls, reader: Reader) -> ClockInfo:
        clock = reader.u64("TPMS_CLOCK_INFO.clock")
        reset_count = reader.u32("TPMS_CLOCK_INFO.resetCount")
        restart_count = reader.u32("TPMS_CLOCK_INFO.restartCount")
        safe = reader.u8("TPMS_CLOCK_INFO.safe")
        if safe > 1:
            raise reader.fail(f"TPMS_CLOCK_INFO.safe is {safe}, not a TPMI_YES_NO")
        return cls(clock, reset_count, restart_count, bool(safe))


@dataclass(frozen=True)
class QuoteInfo:
    """TPMS_QUOTE_INFO."""

    pcr_select: PcrSelection
    pcr_digest: bytes

    def write(self, writer: Writer) -> None:
        writer.raw(self.pcr_select.marshal()).tpm2b(self.pcr_digest)


@dataclass(frozen=True)
class CertifyInfo:
    """TPMS_CERTIFY_INFO: the certified object's Name and qualified Name."""

    name: bytes
    qualified_name: bytes

    def write(self, writer: Writer) -> None:
        writer.tpm2b(self.name).tpm2b(self.qualified_name)


@dataclass(frozen=True)
class RawAttested:
    """An attestation body Stockade does not decode."""

    body: bytes

    def write(self, writer: Writer) -> None:
        writer.raw(self.body)


Attested = QuoteInfo | CertifyInfo | RawAttested


@dataclass(frozen=True)
class Attest:
    """TPMS_ATTEST. ``magic`` and ``type`` are kept as read; the verifier checks them."""

    magic: int
    type: int
    qualified_signer: bytes
    extra_data: bytes
    clock_info: ClockInfo
    firmware_version: int
    attested: Attested

    def marshal(self) -> bytes:
        writer = Writer().u32(self.magic).u16(self.type)
        writer.tpm2b(self.qualified_signer).tpm2b(self.extra_data)
        self.clock_info.write(writer)
        writer.u64(self.firmware_version)
        self.attested.write(writer)
        return writer.bytes()

    @classmethod
    def unmarshal(cls, data: bytes) -> Attest:
        """Parse TPMS_ATTEST bytes exactly as ``tpm2_quote -m`` writes them."""
        reader = Reader(data, "TPMS_ATTEST")
        magic = reader.u32("TPMS_ATTEST.magic")
        attest_type = reader.u16("TPMS_ATTEST.type")
        qualified_signer = reader.tpm2b("TPMS_ATTEST.qualifiedSigner", MAX_NAME_BYTES)
        extra_data = reader.tpm2b("TPMS_ATTEST.extraData", MAX_DATA_BYTES)
        clock_info = ClockInfo.read(reader)
        firmware_version = reader.u64("TPMS_ATTEST.firmwareVersion")
        attested: Attested
        if attest_type == AttestType.QUOTE:
            reader.structure = "TPMS_QUOTE_INFO"
            selection = PcrSelection.read(reader)
            attested = QuoteInfo(selection, reader.tpm2b("pcrDigest", MAX_DIGEST_BYTES))
        elif attest_type == AttestType.CERTIFY:
            reader.structure = "TPMS_CERTIFY_INFO"
            attested = CertifyInfo(
                reader.tpm2b("name", MAX_NAME_BYTES),
                reader.tpm2b("qualifiedName", MAX_NAME_BYTES),
            )
        else:
            attested = RawAttested(reader.remaining())
        reader.expect_end()
        return cls(
            magic,
            attest_type,
            qualified_signer,
            extra_data,
            clock_info,
            firmware_version,
            attested,
        )
