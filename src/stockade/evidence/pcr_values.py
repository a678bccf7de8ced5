"""PCR values per bank, and the composite digest a quote signs over them."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

from stockade.evidence.algorithms import DIGEST_SIZES, HASHES, HashAlgorithm, hash_by_name
from stockade.evidence.errors import EvidenceError
from stockade.evidence.pcr_selection import PcrSelection


def bank_name(hash_alg: int) -> str:
    known = HASHES.get(hash_alg)
    return known.name if known else f"0x{hash_alg:04x}"


@dataclass(frozen=True)
class PcrValues:
    """``banks[hash_alg][pcr_index] = digest``."""

    banks: Mapping[int, Mapping[int, bytes]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        # A value of the wrong length could shift bytes between PCRs and still
        # hash to the quoted digest; every value must be exactly one digest.
        for hash_alg, values in self.banks.items():
            expected = DIGEST_SIZES.get(hash_alg)
            for index, digest in values.items():
                if len(digest) != expected:
                    raise EvidenceError(
                        f"PCR {bank_name(hash_alg)}:{index} value has {len(digest)} bytes, "
                        f"expected {expected}"
                    )

    @classmethod
    def from_selection(cls, selection: PcrSelection, digests: list[bytes]) -> PcrValues:
        """Pair digests, in TPM order, with the PCRs a selection names."""
        items = selection.items()
        if len(items) != len(digests):
            raise EvidenceError(
                f"selection {selection} names {len(items)} PCRs but {len(digests)} values given"
            )
        banks: dict[int, dict[int, bytes]] = {}
        for (hash_alg, index), digest in zip(items, digests, strict=True):
            banks.setdefault(hash_alg, {})[index] = digest
        return cls(banks)

    def get(self, hash_alg: int, index: int) -> bytes | None:
        return self.banks.get(hash_alg, {}).get(index)

    def composite_digest(self, selection: PcrSelection, hash_: HashAlgorithm) -> bytes:
        """H(PCR values in selection order): the pcrDigest of TPMS_QUOTE_INFO."""
        try:
            concatenated = b"".join(
                self.banks[bank.hash_alg][index] for bank in selection.banks for index in bank.pcrs
            )
        except KeyError:
            missing = [
                f"{bank_name(alg)}:{index}"
                for alg, index in selection.items()
                if self.get(alg, index) is None
            ]
            raise EvidenceError(f"no value supplied for quoted PCRs {', '.join(missing)}") from None
        return hash_.digest(concatenated)

    def restricted_to(self, selection: PcrSelection) -> PcrValues:
        """Only the values ``selection`` names."""
        banks = {}
        for bank in selection.banks:
            values = self.banks.get(bank.hash_alg, {})
            banks[bank.hash_alg] = {i: values[i] for i in bank.pcrs if i in values}
        return PcrValues(banks)

    def to_json(self) -> dict[str, dict[str, str]]:
        return {
            bank_name(alg): {str(i): v.hex() for i, v in sorted(values.items())}
            for alg, values in self.banks.items()
        }

    @classmethod
    def from_json(cls, document: Mapping[str, Mapping[str, str]]) -> PcrValues:
        banks: dict[int, dict[int, bytes]] = {}
        try:
            for name, values in document.items():
                algorithm = hash_by_name(name)
                bank = banks.setdefault(algorithm.alg, {})
                for index, digest in values.items():
                    bank[int(index)] = bytes.fromhex(digest)
        except (ValueError, AttributeError, TypeError) as error:
            raise EvidenceError(f"PCR values document is malformed: {error}") from None
        return cls(banks)
