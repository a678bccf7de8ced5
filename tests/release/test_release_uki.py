"""PCR 11 of Unified Kernel Images (``stockade.appraisal.uki``) against Debian 12's
``systemd-measure calculate`` (systemd 252), on UKIs built with objcopy onto Debian's
``linuxx64.efi.stub``; and the PE section reader on synthetic and malformed images."""

from __future__ import annotations

import json
import random
import shutil
import struct
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest

from stockade.appraisal.uki import (
    BANKS,
    BOOT_PHASES,
    MAX_ZERO_FILL,
    UkiMalformed,
    UkiSections,
    UnknownBank,
    measure_json,
    predict_pcr11,
    uki_sections,
)
from stockade.release.authenticode import pe_sections
from stockade.release.errors import NotPeImage
from support.cli import run_stockade
from support.uki import STUB, build_uki

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "fuzz"))
from fuzz_uki import seed_inputs, synthetic_uki
from fuzz_uki import test_one_input as fuzz_one_input

MEASURE = Path("/usr/lib/systemd/systemd-measure")

needs_tools = [
    pytest.mark.tools,
    pytest.mark.skipif(
        not MEASURE.exists(), reason=f"{MEASURE} missing (Debian 12 package systemd)"
    ),
    pytest.mark.skipif(
        not STUB.exists(), reason=f"{STUB} missing (Debian 12 package systemd-boot-efi)"
    ),
    pytest.mark.skipif(shutil.which("objcopy") is None, reason="objcopy missing (binutils)"),
]


def _tool_marks(test):
    for mark in reversed(needs_tools):
        test = mark(test)
    return test


def systemd_measure(directory: Path, contents: dict[str, bytes], *extra: str) -> str:
    """``systemd-measure calculate --json=short`` over the section files (all banks)."""
    arguments = []
    for name, data in contents.items():
        path = directory / f"measure-{name}"
        path.write_bytes(data)
        arguments.append(f"--{name}={path}")
    result = subprocess.run(
        [str(MEASURE), "calculate", *arguments, *extra, "--json=short"],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    return result.stdout


def ours(sections: UkiSections, phases: tuple[str, ...] = BOOT_PHASES) -> str:
    predictions = {bank: predict_pcr11(sections, bank, phases) for bank in BANKS}
    return json.dumps(measure_json(predictions), separators=(",", ":"), ensure_ascii=False) + "\n"


def random_bytes(seed: int, size: int) -> bytes:
    return random.Random(seed).randbytes(size)


OSREL = b'ID=stockade\nVERSION_ID="1.2"\nPRETTY_NAME="Stockade OS 1.2"\n'
SECTION_SETS = {
    "minimal": {"linux": random_bytes(1, 4096)},
    "osrel-cmdline-initrd": {
        "linux": random_bytes(2, 1000),
        "osrel": OSREL,
        "cmdline": b"root=/dev/sda1 ro quiet",
        "initrd": random_bytes(3, 777),
    },
    "no-initrd": {"linux": random_bytes(4, 513), "osrel": OSREL, "cmdline": b"quiet"},
    "every-section": {
        "linux": random_bytes(5, 12_345),
        "osrel": OSREL,
        "cmdline": b"console=ttyS0,115200 ro",
        "initrd": random_bytes(6, 70_001),
        "splash": b"BM" + random_bytes(7, 3_001),
        "dtb": b"\xd0\x0d\xfe\xed" + random_bytes(8, 511),
        "pcrpkey": b"-----BEGIN PUBLIC KEY-----\n" + random_bytes(9, 93) + b"\n",
    },
    "splash-dtb-pcrpkey-only": {
        "linux": random_bytes(10, 1),
        "splash": random_bytes(11, 4097),
        "dtb": random_bytes(12, 1),
        "pcrpkey": random_bytes(13, 450),
    },
    "long-cmdline": {
        "linux": random_bytes(14, 2049),
        "cmdline": " ".join(f"opt{n}=value{n}" for n in range(600)).encode(),
        "initrd": random_bytes(15, 1 << 20),
    },
}


@_tool_marks
@pytest.mark.parametrize("name", sorted(SECTION_SETS))
def test_prediction_matches_systemd_measure(name: str, tmp_path: Path) -> None:
    contents = SECTION_SETS[name]
    uki = build_uki(tmp_path, contents)
    sections = uki_sections(uki.read_bytes())
    assert sections == UkiSections(**contents)
    assert ours(sections) == systemd_measure(tmp_path, contents)


@_tool_marks
def test_classic_objcopy_recipe(tmp_path: Path) -> None:
    """The fixed addresses of the recipe systemd's documentation gave before ukify."""
    contents = {
        "osrel": OSREL,
        "cmdline": b"root=/dev/vda2 ro console=ttyS0\n",
        "splash": b"BM" + random_bytes(30, 999),
        "linux": random_bytes(31, 65_537),
        "initrd": random_bytes(32, 100_003),
    }
    addresses = {
        "osrel": 0x20000,
        "cmdline": 0x30000,
        "splash": 0x40000,
        "linux": 0x2000000,
        "initrd": 0x3000000,
    }
    arguments = []
    for name, address in addresses.items():
        (tmp_path / name).write_bytes(contents[name])
        arguments += ["--add-section", f".{name}={tmp_path / name}"]
        arguments += ["--change-section-vma", f".{name}=0x{address:x}"]
    uki = tmp_path / "classic.efi"
    subprocess.run(["objcopy", *arguments, str(STUB), str(uki)], check=True, timeout=60)
    sections = uki_sections(uki.read_bytes())
    assert sections == UkiSections(**contents)
    assert ours(sections) == systemd_measure(tmp_path, contents)


@_tool_marks
def test_cli_prints_what_systemd_measure_prints(tmp_path: Path) -> None:
    contents = SECTION_SETS["osrel-cmdline-initrd"]
    uki = build_uki(tmp_path, contents, gap=0)
    phases = ["--phase=enter-initrd", "--phase=", "--phase=a::b", "--phase=leave-initrd:x"]
    for banks in ([], ["--bank=sha256"], ["--bank=SHA1", "--bank=sha512"]):
        for chosen in ([], phases):
            result = run_stockade(
                "release", "predict-uki", uki, "--format", "json", *banks, *chosen
            )
            assert result.returncode == 0, result.stderr
            assert result.stdout == systemd_measure(tmp_path, contents, *banks, *chosen)


@_tool_marks
def test_text_output_is_systemd_measures(tmp_path: Path) -> None:
    contents = {"linux": random_bytes(20, 300), "cmdline": b"quiet"}
    uki = build_uki(tmp_path, contents)
    result = run_stockade("release", "predict-uki", uki, "--bank", "sha256", "--bank", "sha1")
    assert result.returncode == 0, result.stderr
    expected = subprocess.run(
        [str(MEASURE), "calculate", f"--linux={tmp_path / 'linux'}", "--cmdline",
         str(tmp_path / "cmdline"), "--bank=sha1", "--bank=sha256"],
        capture_output=True, text=True, timeout=60, check=True,
    )  # fmt: skip
    assert result.stdout == expected.stdout
    assert result.stderr == expected.stderr


@_tool_marks
def test_section_loaded_larger_than_its_raw_data(tmp_path: Path) -> None:
    """VirtualSize past SizeOfRawData: the firmware zero-fills, the stub measures it all."""
    contents = {"linux": random_bytes(21, 1000), "osrel": OSREL, "initrd": b"initrd"}
    uki = bytearray(build_uki(tmp_path, contents, gap=0x10000).read_bytes())
    linux = next(s for s in pe_sections(bytes(uki)) if s.name.startswith(b".linux"))
    assert linux.raw_size == 1024
    struct.pack_into("<I", uki, linux.header_offset + 8, 5000)
    sections = uki_sections(bytes(uki))
    loaded = contents["linux"] + bytes(24) + bytes(5000 - 1024)
    assert sections.linux == loaded
    assert ours(sections) == systemd_measure(tmp_path, {**contents, "linux": loaded})


@_tool_marks
def test_the_stub_alone_is_refused_cleanly(tmp_path: Path) -> None:
    for path in (STUB, tmp_path / "missing.efi"):
        result = run_stockade("release", "predict-uki", path)
        assert result.returncode == 2, result.stderr
        assert "Traceback" not in result.stderr
        assert len(result.stderr.strip().splitlines()) == 1
    uki = build_uki(tmp_path, {"linux": b"k"})
    result = run_stockade("release", "predict-uki", uki, "--bank", "md5")
    assert result.returncode == 2
    assert result.stderr.strip() == (
        "stockade: PCR bank 'md5' is not one of sha1, sha256, sha384, sha512"
    )


def test_pinned_value() -> None:
    """Values systemd-measure 252 printed for these three files."""
    sections = UkiSections(
        linux=b"MZ fixed kernel", osrel=b"ID=stockade\n", cmdline=b"console=ttyS0 quiet"
    )
    ready = "enter-initrd:leave-initrd:sysinit:ready"
    sha256 = predict_pcr11(sections, "sha256", ("", ready))
    assert sha256[""].hex() == "3690229902d81cab04c725277e554a5e481346a6c04e2d9435538ab75bbf0df1"
    assert sha256[ready].hex() == "7883a037b8104149b7eb850ce68073161888168a334455c29c8d9767c5afe208"
    sha1 = predict_pcr11(sections, "SHA1", ("", ready))
    assert sha1[""].hex() == "ba8466410bb92e0da6f899cef3fc4556bc885040"
    assert sha1[ready].hex() == "0c9a84b575a3a3a896ee20bf6e9f429a55503e10"
    # Empty sections are absent, as in the stub and in systemd-measure.
    assert predict_pcr11(replace(sections, initrd=b""), "sha256", ("",)) == {"": sha256[""]}


def test_phases_are_normalized_sorted_and_unique() -> None:
    sections = UkiSections(linux=b"k")
    predicted = predict_pcr11(sections, "sha256", ("b", "a::b", ":a:b:", "", ":"))
    assert list(predicted) == ["", "a:b", "b"]
    document = measure_json({"sha256": predicted})
    assert document["sha256"][0] == {"pcr": 11, "hash": predicted[""].hex()}
    assert document["sha256"][1] == {"phase": "a:b", "pcr": 11, "hash": predicted["a:b"].hex()}


def test_default_phases_are_the_stub_and_pcrphase() -> None:
    predicted = predict_pcr11(UkiSections(linux=b"k"))
    assert list(predicted) == ["", *BOOT_PHASES]


def test_section_found_by_prefix_and_the_last_header_wins() -> None:
    image = synthetic_uki(
        [
            (b".linux", b"first", 5, 0x1000),
            (b".linuxZZ", b"second", 6, 0x2000),
            (b".cmdline", b"one", 3, 0x3000),
            (b".cmdline", b"", 0, 0x4000),
            (b".pcrsig", b"{}", 2, 0x5000),
        ]
    )
    assert uki_sections(image) == UkiSections(linux=b"second")


@pytest.mark.parametrize(
    ("image", "error", "reason"),
    [
        (b"", NotPeImage, "no 'MZ' DOS header"),
        (b"MZ" + bytes(100), NotPeImage, "no 'PE\\0\\0' signature"),
        (synthetic_uki([(b".osrel", b"x", 1, 0x1000)]), UkiMalformed, "no .linux section"),
        (synthetic_uki([(b".linux", b"x", 0, 0x1000)]), UkiMalformed, "no .linux section"),
        (
            synthetic_uki([(b".linux", b"x", 0x1001, 0x1000), (b".text", b"y", 1, 0x2000)]),
            UkiMalformed,
            "overlaps section '.text' in memory",
        ),
        (synthetic_uki([(b".linux", b"x", 1, 0x100)]), UkiMalformed, "over the PE headers"),
    ],
)
def test_malformed_images_raise_typed_errors(image: bytes, error: type, reason: str) -> None:
    with pytest.raises(error) as raised:
        uki_sections(image)
    assert reason in str(raised.value)


def test_section_past_size_of_image() -> None:
    image = bytearray(synthetic_uki([(b".linux", b"x", 1, 0x1000)]))
    struct.pack_into("<I", image, 0x40 + 24 + 56, 0x1000)
    with pytest.raises(UkiMalformed, match="past SizeOfImage"):
        uki_sections(bytes(image))


def test_gigabytes_of_zero_fill_are_refused_not_allocated() -> None:
    image = synthetic_uki([(b".linux", b"x", 0xF000_0000, 0x1000)])
    with pytest.raises(UkiMalformed, match="bytes longer than its raw data"):
        uki_sections(image)
    within = synthetic_uki([(b".linux", b"x", 0x200 + MAX_ZERO_FILL, 0x1000)])
    assert len(uki_sections(within).linux) == 0x200 + MAX_ZERO_FILL


def test_raw_data_past_the_end_of_the_file() -> None:
    image = synthetic_uki([(b".linux", b"x" * 600, 600, 0x1000)])
    with pytest.raises(NotPeImage, match="raw data extends past the end of file"):
        uki_sections(image[:-1])


def test_unknown_bank_and_empty_linux() -> None:
    with pytest.raises(UnknownBank, match="md5"):
        predict_pcr11(UkiSections(linux=b"k"), "md5")
    with pytest.raises(UkiMalformed, match=r"no \.linux section"):
        predict_pcr11(UkiSections(linux=b"", osrel=OSREL))


def test_fuzz_target_over_seeds_and_mutations() -> None:
    generator = random.Random(252)
    for seed in seed_inputs():
        fuzz_one_input(seed)
        for _ in range(300):
            mutated = bytearray(seed)
            for _ in range(generator.randint(1, 8)):
                if mutated:
                    mutated[generator.randrange(len(mutated))] = generator.randrange(256)
            fuzz_one_input(bytes(mutated[: generator.randint(0, len(mutated))]))
            fuzz_one_input(bytes(mutated))
