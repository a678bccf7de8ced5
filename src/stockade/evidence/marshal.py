"""Big-endian TPM 2.0 marshalling (TPM 2.0 Library Part 1, "Marshaling").

``Reader`` never raises anything but ``MalformedStructure``: every read is
bounds-checked and names the structure being decoded.
"""

from __future__ import annotations

import struct

from stockade.evidence.errors import MalformedStructure

_U8 = struct.Struct(">B")
_U16 = struct.Struct(">H")
_U32 = struct.Struct(">I")
_U64 = struct.Struct(">Q")


class Reader:
    """A cursor over one buffer, decoding TPM wire types."""

    __slots__ = ("_data", "offset", "structure")

    def __init__(self, data: bytes, structure: str) -> None:
        self._data = data
        self.offset = 0
        self.structure = structure

    def fail(self, reason: str) -> MalformedStructure:
        return MalformedStructure(self.structure, self.offset, reason)

    def take(self, size: int, what: str = "field") -> bytes:
        end = self.offset + size
        if end > len(self._data):
            raise self.fail(
                f"{what} needs {size} bytes but only {len(self._data) - self.offset} remain"
            )
        chunk = self._data[self.offset : end]
        self.offset = end
        return chunk

    def _unpack(self, layout: struct.Struct, what: str) -> int:
        offset = self.offset
        if offset + layout.size > len(self._data):
            raise self.fail(
                f"{what} needs {layout.size} bytes but only {len(self._data) - offset} remain"
            )
        self.offset = offset + layout.size
        value: int = layout.unpack_from(self._data, offset)[0]
        return value

    def u8(self, what: str = "UINT8") -> int:
        return self._unpack(_U8, what)

    def u16(self, what: str = "UINT16") -> int:
        return self._unpack(_U16, what)

    def u32(self, what: str = "UINT32") -> int:
        return self._unpack(_U32, what)

    def u64(self, what: str = "UINT64") -> int:
        return self._unpack(_U64, what)

    def tpm2b(self, what: str = "TPM2B", max_size: int | None = None) -> bytes:
        """A TPM2B: UINT16 size then that many bytes."""
        size = self._unpack(_U16, what)
        if max_size is not None and size > max_size:
            raise self.fail(f"{what}.size {size} exceeds the maximum {max_size}")
        return self.take(size, what)

    def remaining(self) -> bytes:
        return self.take(len(self._data) - self.offset, "remainder")

    @property
    def at_end(self) -> bool:
        return self.offset == len(self._data)

    def expect_end(self) -> None:
        if not self.at_end:
            raise self.fail(f"{len(self._data) - self.offset} unexpected trailing bytes")


class Writer:
    """Accumulates TPM wire types."""

    __slots__ = ("_parts",)

    def __init__(self) -> None:
        self._parts: list[bytes] = []

    def raw(self, data: bytes) -> Writer:
        self._parts.append(data)
        return self

    def u8(self, value: int) -> Writer:
        return self.raw(struct.pack(">B", value))

    def u16(self, value: int) -> Writer:
        return self.raw(struct.pack(">H", value))

    def u32(self, value: int) -> Writer:
        return self.raw(struct.pack(">I", value))

    def u64(self, value: int) -> Writer:
        return self.raw(struct.pack(">Q", value))

    def tpm2b(self, data: bytes) -> Writer:
        return self.u16(len(data)).raw(data)

    def bytes(self) -> bytes:
        return b"".join(self._parts)


def tpm2b(data: bytes) -> bytes:
    """Wrap ``data`` as a TPM2B (size-prefixed) buffer."""
    return struct.pack(">H", len(data)) + data
