"""PCR 11 of a Unified Kernel Image, predicted as systemd 252's ``systemd-measure
calculate`` predicts it and as ``systemd-stub`` and ``systemd-pcrphase`` extend it.

The rules (systemd 252: ``src/boot/efi/stub.c``, ``src/boot/efi/pe.c``,
``src/fundamental/tpm-pcr.c``, ``src/boot/measure.c``), each checked against Debian 12's
``systemd-measure`` by ``tests/release/test_release_uki.py``:

* PCR 11 starts at zero. For each UKI section in the fixed order ``.linux``, ``.osrel``,
  ``.cmdline``, ``.initrd``, ``.splash``, ``.dtb``, ``.pcrpkey`` that is present and not
  empty, the stub extends PCR 11 with the digest of the section name including its
  trailing NUL (``b".linux\\0"``), then with the digest of the section's contents.
  ``.pcrsig`` is located but never measured (it signs the result); 252 knows no
  ``.uname`` or ``.sbat`` UKI section (253 added them).
* The contents are the section as loaded: ``VirtualSize`` bytes at its virtual address,
  which the firmware filled with ``min(VirtualSize, SizeOfRawData)`` bytes of raw data
  and zeros after them (at most ``MAX_ZERO_FILL`` zeros accepted here). A section with
  ``VirtualSize`` 0 counts as absent.
* The stub finds a section by comparing the first ``len(name)`` bytes of each header's
  8-byte name with the wanted name (so ``.linuxZ`` is found as ``.linux``); the last
  matching header in the table wins. Without a ``.linux`` the stub refuses to boot.
* ``systemd-pcrphase`` then extends, at each boot phase, the digest of the phase word
  (no NUL). A phase names the words extended so far joined by ``:``, e.g.
  ``enter-initrd:leave-initrd``; empty words are dropped, and the empty phase is the
  value right after the stub.

Pure: bytes in, digests out. ``UkiMalformed`` names what a UKI lacks or why its loaded
contents would not be what its file says; ``NotPeImage`` (from the PE reader shared with
``release/authenticode.py``) that its headers do not hold.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, fields

from stockade.release.authenticode import (
    PeSection,
    authenticode_digest,
    pe_image_size,
    pe_sections,
)
from stockade.release.errors import ReleaseError

PCR_KERNEL_IMAGE = 11
MEASURED_SECTIONS = (".linux", ".osrel", ".cmdline", ".initrd", ".splash", ".dtb", ".pcrpkey")
BOOT_PHASES = (
    "enter-initrd",
    "enter-initrd:leave-initrd",
    "enter-initrd:leave-initrd:sysinit",
    "enter-initrd:leave-initrd:sysinit:ready",
)
BANKS = ("sha1", "sha256", "sha384", "sha512")
_MAX_SECTIONS = 96  # systemd-stub's pe.c refuses more
# Zeros the loader appends past a section's raw data. Builders never leave any beyond the
# file alignment; a header asking for gigabytes of them is refused, not allocated.
MAX_ZERO_FILL = 1 << 20


class UkiMalformed(ReleaseError):
    """A UKI systemd-stub would not boot, or whose loaded sections the file does not fix."""

    def __init__(self, reason: str, offset: int | None = None) -> None:
        where = f" (section header at byte offset {offset})" if offset is not None else ""
        super().__init__(f"not a usable unified kernel image: {reason}{where}")
        self.reason = reason
        self.offset = offset


class UnknownBank(ReleaseError):
    """A PCR bank other than sha1, sha256, sha384 and sha512."""


@dataclass(frozen=True)
class UkiSections:
    """The contents of a UKI's sections, as loaded; ``None`` or empty is absent."""

    linux: bytes
    osrel: bytes | None = None
    cmdline: bytes | None = None
    initrd: bytes | None = None
    splash: bytes | None = None
    dtb: bytes | None = None
    pcrpkey: bytes | None = None

    def measured(self) -> tuple[tuple[str, bytes], ...]:
        """``(section name, contents)`` in the order the stub measures them."""
        present = ((f".{field.name}", getattr(self, field.name)) for field in fields(self))
        return tuple((name, data) for name, data in present if data)


def _hasher(bank: str) -> str:
    name = bank.lower()
    if name not in BANKS:
        raise UnknownBank(f"PCR bank '{bank}' is not one of {', '.join(BANKS)}")
    return name


def _extend(pcr: bytes, data: bytes, algorithm: str) -> bytes:
    return hashlib.new(algorithm, pcr + hashlib.new(algorithm, data).digest()).digest()


def normalize_phase(phase: str) -> str:
    """A phase as systemd-measure names it: empty words dropped, e.g. ``a::b`` is ``a:b``."""
    return ":".join(word for word in phase.split(":") if word)


def pcr11_after_stub(sections: UkiSections, bank: str = "sha256") -> bytes:
    """PCR 11 once systemd-stub has measured ``sections``, before any boot phase."""
    algorithm = _hasher(bank)
    if not sections.linux:
        raise UkiMalformed("no .linux section: systemd-stub refuses to boot it")
    pcr = bytes(hashlib.new(algorithm).digest_size)
    for name, data in sections.measured():
        pcr = _extend(pcr, name.encode("ascii") + b"\0", algorithm)
        pcr = _extend(pcr, data, algorithm)
    return pcr


def predict_pcr11(
    sections: UkiSections,
    bank: str = "sha256",
    phases: Iterable[str] = ("", *BOOT_PHASES),
) -> dict[str, bytes]:
    """PCR 11 in ``bank`` at each of ``phases`` (``""``: right after the stub), keyed by
    the normalized phase, sorted and without repeats as systemd-measure lists them."""
    algorithm = _hasher(bank)
    after_stub = pcr11_after_stub(sections, algorithm)
    predicted = {}
    for phase in sorted({normalize_phase(phase) for phase in phases}):
        pcr = after_stub
        for word in phase.split(":") if phase else ():
            pcr = _extend(pcr, word.encode("utf-8", "surrogateescape"), algorithm)
        predicted[phase] = pcr
    return predicted


def measure_json(predictions: Mapping[str, Mapping[str, bytes]]) -> dict[str, list[object]]:
    """``{bank: {phase: pcr}}`` in the shape ``systemd-measure calculate --json`` prints:
    banks sorted, one object per phase, no ``phase`` key for the empty phase."""
    document: dict[str, list[object]] = {}
    for bank in sorted(predictions):
        entries: list[object] = []
        for phase, pcr in predictions[bank].items():
            entry: dict[str, object] = {"phase": phase} if phase else {}
            entry.update({"pcr": PCR_KERNEL_IMAGE, "hash": pcr.hex()})
            entries.append(entry)
        document[bank] = entries
    return document


def uki_sections(image: bytes) -> UkiSections:
    """The measured sections of the UKI ``image`` as the firmware loads them and
    systemd-stub 252 finds them."""
    sections = pe_sections(image)
    size_of_headers, size_of_image = pe_image_size(image)
    if not 0 < len(sections) <= _MAX_SECTIONS:
        raise UkiMalformed(f"{len(sections)} sections; systemd-stub takes 1 to {_MAX_SECTIONS}")
    found: dict[str, PeSection] = {}
    for section in sections:
        for name in MEASURED_SECTIONS:
            if section.name.startswith(name.encode("ascii")):
                found[name] = section
    contents: dict[str, bytes] = {}
    for name, section in found.items():
        if section.virtual_size == 0:
            continue
        _check_mapping(name, section, sections, size_of_headers, size_of_image)
        copied = min(section.virtual_size, section.raw_size)
        if section.virtual_size - copied > MAX_ZERO_FILL:
            raise UkiMalformed(
                f"{name} is loaded {section.virtual_size - copied} bytes longer than its raw "
                f"data (at most {MAX_ZERO_FILL} zeros are accepted)",
                section.header_offset,
            )
        data = image[section.raw_pointer : section.raw_pointer + copied]
        contents[name[1:]] = data + bytes(section.virtual_size - copied)
    if "linux" not in contents:
        raise UkiMalformed("no .linux section: systemd-stub refuses to boot it")
    return UkiSections(**contents)


def _check_mapping(
    name: str,
    section: PeSection,
    sections: tuple[PeSection, ...],
    size_of_headers: int,
    size_of_image: int,
) -> None:
    start, end = section.virtual_address, section.virtual_address + section.virtual_size
    if start < size_of_headers:
        raise UkiMalformed(f"{name} is mapped over the PE headers", section.header_offset)
    if end > size_of_image:
        raise UkiMalformed(
            f"{name} ends at 0x{end:x}, past SizeOfImage 0x{size_of_image:x}",
            section.header_offset,
        )
    for other in sections:
        if other is section:
            continue
        other_end = other.virtual_address + (other.virtual_size or other.raw_size)
        if other.virtual_address < end and start < other_end:
            label = other.name.rstrip(b"\0").decode("ascii", "replace")
            raise UkiMalformed(
                f"{name} overlaps section '{label}' in memory, so its loaded contents depend "
                "on the firmware's loader",
                section.header_offset,
            )


RUNNING_PHASE = BOOT_PHASES[-1]  # what PCR 11 holds while the system runs (an attestation)


@dataclass(frozen=True)
class UkiReference:
    """A UKI release as a policy accepts it: what the firmware measures of it into PCR 4
    (its Authenticode SHA-256) and PCR 11 in sha256 once the system runs
    (``RUNNING_PHASE``), from ``uki_reference`` or ``stockade release predict-uki
    --policy-entry``."""

    name: str
    authenticode: bytes
    pcr11: bytes

    def to_document(self) -> dict[str, str]:
        return {"name": self.name, "authenticode": self.authenticode.hex(),
                "pcr11": self.pcr11.hex()}  # fmt: skip


def uki_reference(name: str, image: bytes) -> UkiReference:
    """The policy entry of the UKI ``image`` (``UkiMalformed``/``NotPeImage`` when it is
    not one systemd-stub would boot)."""
    pcr11 = predict_pcr11(uki_sections(image), "sha256", (RUNNING_PHASE,))[RUNNING_PHASE]
    return UkiReference(name, authenticode_digest(image, "sha256"), pcr11)
