"""PCR selections: TPML_PCR_SELECTION (TPM 2.0 Part 2, 10.9.7) and the
tpm2-tools text form ``sha256:0,1,2+sha1:0``.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from stockade.evidence.algorithms import DIGEST_SIZES, HASHES, hash_by_name
from stockade.evidence.errors import EvidenceError, UnsupportedAlgorithm
from stockade.evidence.marshal import Reader, Writer

PCR_COUNT = 24
MAX_BANKS = 16
# TPM2_PCR_SELECT_MAX in the reference implementation: 4 bytes = 32 PCRs.
PCR_SELECT_MAX = 4


@lru_cache(maxsize=1024)
def pcrs_in_bitmap(bitmap: bytes) -> tuple[int, ...]:
    """PCR indices set in a pcrSelect bitmap (bit n of byte k selects PCR 8k+n)."""
    return tuple(
        byte_index * 8 + bit
        for byte_index, byte in enumerate(bitmap)
        for bit in range(8)
        if byte & (1 << bit)
    )


@dataclass(frozen=True)
class BankSelection:
    """One TPMS_PCR_SELECTION: a hash bank and the PCR indices chosen in it."""

    hash_alg: int
    pcrs: tuple[int, ...]
    size_of_select: int = 3

    def bitmap(self) -> bytes:
        bits = bytearray(self.size_of_select)
        for index in self.pcrs:
            bits[index // 8] |= 1 << (index % 8)
        return bytes(bits)

    @property
    def bank_name(self) -> str:
        known = HASHES.get(self.hash_alg)
        return known.name if known else f"0x{self.hash_alg:04x}"


@dataclass(frozen=True)
class PcrSelection:
    """A TPML_PCR_SELECTION, in wire order (which is the order PCR digests follow)."""

    banks: tuple[BankSelection, ...]

    @classmethod
    def parse(cls, text: str) -> PcrSelection:
        """Parse ``sha256:0,1,2+sha1:0-3`` (tpm2-tools PCR bank specifier)."""
        banks: list[BankSelection] = []
        for part in text.strip().split("+"):
            name, sep, indices = part.partition(":")
            if not sep:
                raise EvidenceError(f"PCR selection '{part}' lacks 'bank:' (e.g. sha256:0,1,2)")
            algorithm = hash_by_name(name.strip())
            chosen: set[int] = set()
            for raw_item in indices.split(","):
                item = raw_item.strip()
                if not item:
                    continue
                low, dash, high = item.partition("-")
                try:
                    span = range(int(low, 0), int(high, 0) + 1) if dash else [int(item, 0)]
                except ValueError:
                    raise EvidenceError(f"PCR index '{item}' is not a number") from None
                if not span:
                    raise EvidenceError(f"PCR range '{item}' is empty")
                for index in span:
                    if not 0 <= index < PCR_COUNT:
                        raise EvidenceError(f"PCR index {index} is outside 0..{PCR_COUNT - 1}")
                    chosen.add(index)
            if any(b.hash_alg == algorithm.alg for b in banks):
                raise EvidenceError(f"bank {algorithm.name} is selected twice")
            banks.append(BankSelection(algorithm.alg, tuple(sorted(chosen))))
        return cls(tuple(banks))

    def __str__(self) -> str:
        return "+".join(f"{b.bank_name}:{','.join(map(str, b.pcrs))}" for b in self.banks)

    def items(self) -> list[tuple[int, int]]:
        """(hash_alg, pcr index) in the order the TPM concatenates PCR digests."""
        return [(bank.hash_alg, index) for bank in self.banks for index in bank.pcrs]

    def marshal(self) -> bytes:
        writer = Writer().u32(len(self.banks))
        for bank in self.banks:
            writer.u16(bank.hash_alg).u8(bank.size_of_select).raw(bank.bitmap())
        return writer.bytes()

    @classmethod
    def unmarshal(cls, data: bytes) -> PcrSelection:
        reader = Reader(data, "TPML_PCR_SELECTION")
        selection = cls.read(reader)
        reader.expect_end()
        return selection

    @classmethod
    def read(cls, reader: Reader) -> PcrSelection:
        count = reader.u32("TPML_PCR_SELECTION.count")
        if count > MAX_BANKS:
            raise reader.fail(f"count {count} exceeds {MAX_BANKS} banks")
        banks = []
        for _ in range(count):
            hash_alg = reader.u16("TPMS_PCR_SELECTION.hash")
            if hash_alg not in DIGEST_SIZES:
                raise UnsupportedAlgorithm("PCR bank hash", hash_alg)
            size = reader.u8("TPMS_PCR_SELECTION.sizeofSelect")
            if size > PCR_SELECT_MAX:
                raise reader.fail(f"sizeofSelect {size} exceeds {PCR_SELECT_MAX}")
            pcrs = pcrs_in_bitmap(reader.take(size, "TPMS_PCR_SELECTION.pcrSelect"))
            banks.append(BankSelection(hash_alg, pcrs, size))
        return cls(tuple(banks))

    def same_pcrs(self, other: PcrSelection) -> bool:
        """True when both select the same PCRs in the same banks, in the same order."""
        return [(b.hash_alg, b.pcrs) for b in self.banks if b.pcrs] == [
            (b.hash_alg, b.pcrs) for b in other.banks if b.pcrs
        ]
