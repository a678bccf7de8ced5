"""Kernel command lines read as the kernel and systemd read them, and the release policy
for the parameters that decide /usr: splits against known kernel and systemd behaviour
(and against this machine's systemd generators where they are installed), refusals of
lines read two ways and of every dangerous parameter in every spelling, and the fuzz
target fuzz/fuzz_cmdline.py driven without atheris."""

from __future__ import annotations

import importlib.util
import os
import random
import re
import subprocess
from pathlib import Path
from types import ModuleType

import pytest

from stockade.release.cmdline import (
    MAX_LENGTH,
    CmdlineRefused,
    UsrHash,
    check_usr_binding,
    kernel_split,
    parse_cmdline,
    systemd_split,
)
from stockade.release.errors import ManifestMalformed
from stockade.release.manifest import bind_usrhash, usrhash_parameter

GOOD = "ab" * 32
EVIL = "ee" * 32
GENERATORS = Path("/usr/lib/systemd/system-generators")
TARGET = Path(__file__).resolve().parents[2] / "fuzz" / "fuzz_cmdline.py"
DEBIAN = (
    "BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 "
    "root=UUID=0b6f1e7e-3b1a-4d3c-9d0e-4c1f2a3b4c5d ro quiet"
)


def pairs(words: list[str]) -> list[tuple[str, str | None]]:
    result: list[tuple[str, str | None]] = []
    for word in words:
        key, equals, value = word.partition("=")
        result.append((key, value) if equals else (key, None))
    return result


# Splits: lib/cmdline.c next_arg() and systemd's extract_first_word() (UNQUOTE, RELAX,
# RETAIN_ESCAPE), each on the cases where their rules show.


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  a   b  ", [("a", None), ("b", None)]),
        ('param="value with spaces"', [("param", "value with spaces")]),
        ('"param=value with spaces"', [("param", "value with spaces")]),
        ('x=a"b c"d', [("x", 'a"b c"d')]),  # quotes inside a word stay, and still group
        ('"a"b c', [('a"b', None), ("c", None)]),
        ('a="b"c', [("a", 'b"c')]),
        ('a=""', [("a", "")]),
        ('"quiet"', [("quiet", None)]),
        ('"unbalanced rest', [("unbalanced rest", None)]),
        ("=foo", [("=foo", None)]),  # an = at the start is no separator
        ("=a=b", [("=a", "b")]),
        ("a='b c'", [("a", "'b"), ("c'", None)]),  # single quotes are plain characters
        ("a\\ b", [("a\\", None), ("b", None)]),  # so are backslashes
        ("a\vb\fc\xa0d", [("a", None), ("b", None), ("c", None), ("d", None)]),
        ("root=UUID=1 -- single", [("root", "UUID=1"), ("--", None), ("single", None)]),
        ("a\0b c", [("a", None)]),
    ],
)
def test_kernel_split_reads_as_next_arg_does(text, expected):
    assert [(word.key, word.value) for word in kernel_split(text)] == expected


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("  a   b  ", ["a", "b"]),
        ("\"foobar\" 'waldo'", ["foobar", "waldo"]),
        ('x=a"b c"d', ["x=ab cd"]),  # quotes removed wherever they are
        ("a='b c'", ["a=b c"]),
        ("a\\ b", ["a\\", "b"]),  # EXTRACT_RETAIN_ESCAPE: the backslash stays
        ('"unbalanced rest', ["unbalanced rest"]),  # EXTRACT_RELAX
        ('a""b ""', ["ab", ""]),
        ("a\vb\xa0c\fd", ["a\vb\xa0c\fd"]),  # not separators for systemd
        ("ro -- usrhash=x", ["ro", "--", "usrhash=x"]),  # read past --
    ],
)
def test_systemd_split_reads_as_extract_first_word_does(text, expected):
    assert systemd_split(text) == expected


def test_a_debian_command_line_is_accepted_as_written():
    cmdline = parse_cmdline(DEBIAN)
    assert [(parameter.key, parameter.value) for parameter in cmdline.parameters] == [
        ("BOOT_IMAGE", "/boot/vmlinuz-6.1.0-18-amd64"),
        ("root", "UUID=0b6f1e7e-3b1a-4d3c-9d0e-4c1f2a3b4c5d"),
        ("ro", None),
        ("quiet", None),
    ]
    assert check_usr_binding(cmdline) is None
    assert bind_usrhash(DEBIAN, bytes.fromhex(GOOD)) == f"{DEBIAN} usrhash={GOOD}"


@pytest.mark.parametrize(
    "text",
    [
        DEBIAN,
        "console=tty0 console=ttyS0,115200n8 ro quiet splash loglevel=3",
        'root=/dev/vda2 rootflags=subvol=@ dyndbg="file drivers/usb/* +p" "acpi_osi=Windows 2020"',
        "systemd.verity=1 systemd.verity_usr_options=panic-on-corruption",
        "systemd.verity systemd.verity-usr-options=restart-on-corruption,ignore-zero-blocks",
        "systemd.verity_usr_data=PARTLABEL=usr-a systemd.verity_usr_hash=PARTLABEL=usr-a-verity",
        f"roothash={'12' * 32} systemd.swap-extra=/dev/vdb3 rd.shell=0",
        f'usrhash="{GOOD}" ro',
        f'"usrhash={GOOD}" ro',
        f'x="b usrhash={EVIL}" usrhash={GOOD}',
    ],
)
def test_command_lines_that_keep_usr_bound_are_accepted(text):
    cmdline = parse_cmdline(text)
    assert [(parameter.key, parameter.value) for parameter in cmdline.parameters] == pairs(
        systemd_split(text)
    )
    bound = bind_usrhash(text, bytes.fromhex(GOOD))
    usrhash = usrhash_parameter(bound)
    assert usrhash is not None and usrhash.value == GOOD


@pytest.mark.parametrize(
    ("text", "reason"),
    [
        ('ro quiet "', "quotes may only surround"),
        ('"quiet"', "quotes may only surround"),  # older next_arg() kept the closing quote
        ('"a b=c"', "quotes may only surround"),
        ('x=a"b c"d', "read two ways"),
        ('a="b"c', "read two ways"),
        ('"a"=b', "read two ways"),
        ('a=b" c', "read two ways"),
        ("=x", "read two ways"),
        ("a='b c'", "single quote"),
        ("a\\ b", "backslash"),
        ("a\tb", "'\\t' at offset 1"),
        ("a\vb", "'\\x0b' at offset 1"),
        ("caf\xe9", "'é' at offset 3"),
        ("a\0b", "'\\x00' at offset 1"),
        ("ro -- single", "'--'"),
        ('ro "--"', "'--'"),
        ("x" * (MAX_LENGTH + 1), f"keeps {MAX_LENGTH}"),
    ],
)
def test_command_lines_with_more_than_one_reading_are_refused(text, reason):
    with pytest.raises(CmdlineRefused, match=re.escape(reason)):
        parse_cmdline(text)
    if reason == "read two ways":
        kernel = [(word.key, word.value) for word in kernel_split(text)]
        assert kernel != pairs(systemd_split(text))


def test_refusals_are_manifest_errors_not_tracebacks():
    assert issubclass(CmdlineRefused, ManifestMalformed)


# The release policy.

FORGED = f'ro usrhash={GOOD} "usrhash={EVIL}"'


def test_a_quoted_second_usrhash_is_a_second_usrhash_parameter_and_refused():
    cmdline = parse_cmdline(FORGED)
    assert [parameter.value for parameter in cmdline.named("usrhash")] == [GOOD, EVIL]
    twice = f'usrhash 2 times \\(usrhash={GOOD}, "usrhash={EVIL}"\\)'
    with pytest.raises(CmdlineRefused, match=twice):
        check_usr_binding(cmdline)


@pytest.mark.parametrize(
    "parameter",
    [
        f'"usrhash={EVIL}"',
        f'usrhash="{EVIL}"',
        f"rd.usrhash={EVIL}",
        f"rd.usrhash={GOOD}",
        "usrhash",
        "mount.usr=/dev/sdb2",
        '"mount.usr=/dev/sdb2"',
        'mount.usr="/dev/sdb2"',
        "mount.usr=gpt-auto",
        "rd.mount.usr=/dev/sdb2",
        "mount.usrfstype=virtiofs",
        "mount.usrflags=lowerdir=/run/usr",
        "rootfstype=virtiofs",
        '"rootfstype=9p"',
        "systemd.mount-extra=/dev/sdc1:/usr",
        "systemd.mount_extra=/dev/sdc1:/usr/bin",
        "rd.systemd.mount-extra=/dev/sdc1:/usr",
        "init=/bin/sh",
        '"init=/bin/sh"',
        "rdinit=/bin/sh",
        "bootconfig",
        "systemd.verity=0",
        "systemd.verity=no",
        '"systemd.verity=false"',
        'systemd.verity="Off"',
        "rd.systemd.verity=0",
        "systemd.verity=maybe",
        "systemd.verity_usr_options=ignore-corruption",
        "systemd.verity-usr-options=panic-on-corruption,ignore-corruption",
        '"systemd.verity_usr-options=check-at-most-once"',
        "rd.systemd.verity_usr_options=ignore-corruption",
        "systemd.verity_usr_options=ignore-corruption=1",
        "systemd.verity_usr_options=superblock",
        "systemd.verity_usr_data=/dev/sdb2 systemd.verity-usr-data=/dev/sdc2",
        "systemd.verity_usr_options=panic-on-corruption rd.systemd.verity_usr_options=nofail",
        f"roothash={'12' * 32} rd.roothash={'34' * 32}",
        "systemd.verity systemd.verity=1",
    ],
)
def test_parameters_that_could_mount_another_usr_are_refused_in_every_spelling(parameter):
    text = f"console=ttyS0 ro usrhash={GOOD} {parameter}"
    with pytest.raises(CmdlineRefused) as refused:
        check_usr_binding(parse_cmdline(text))
    assert parameter.split()[-1] in str(refused.value)
    with pytest.raises(CmdlineRefused):
        bind_usrhash(text, bytes.fromhex(GOOD))
    with pytest.raises(CmdlineRefused):
        bind_usrhash(f"console=ttyS0 ro {parameter}", bytes.fromhex(GOOD))


def test_the_one_usrhash_is_returned_as_written_and_as_read():
    assert check_usr_binding(parse_cmdline(f'ro "usrhash={GOOD}"')) == UsrHash(
        f'"usrhash={GOOD}"', GOOD
    )
    with pytest.raises(CmdlineRefused, match=f"carries usrhash={EVIL}, but"):
        bind_usrhash(f"ro usrhash={EVIL}", bytes.fromhex(GOOD))
    with pytest.raises(CmdlineRefused, match="usrhash 2 times"):
        bind_usrhash(f"ro usrhash={GOOD} usrhash={GOOD}", bytes.fromhex(GOOD))


# This machine's systemd, where it is installed: what the refused lines would do.


def run_generator(name: str, cmdline: str, out: Path, *, initrd: bool) -> dict[str, str]:
    generator = GENERATORS / name
    if not generator.exists():
        pytest.skip(f"{generator} is not installed")
    out.mkdir()
    env = {
        **os.environ,
        "SYSTEMD_PROC_CMDLINE": cmdline,
        "SYSTEMD_LOG_LEVEL": "emerg",
        "SYSTEMD_IN_INITRD": "1" if initrd else "0",
        "SYSTEMD_FSTAB": "/dev/null",
        "SYSTEMD_SYSROOT_FSTAB": "/dev/null",
    }
    subprocess.run([generator, out, out, out], env=env, capture_output=True, check=True)
    return {path.name: path.read_text() for path in out.iterdir() if path.is_file()}


def usr_root_hash_systemd_opens(cmdline: str, out: Path, *, initrd: bool = False) -> str | None:
    units = run_generator("systemd-veritysetup-generator", cmdline, out, initrd=initrd)
    unit = units.get("systemd-veritysetup@usr.service")
    if unit is None:
        return None
    match = re.search(r"attach 'usr' '[^']*' '[^']*' '([0-9a-f]+)'", unit)
    assert match is not None, unit
    return match.group(1)


@pytest.mark.tools
@pytest.mark.parametrize(
    ("text", "initrd", "opened"),
    [
        (FORGED, False, EVIL),
        (f"ro usrhash={GOOD} 'usrhash={EVIL}'", False, EVIL),
        (f"ro usrhash={GOOD} rd.usrhash={EVIL}", True, EVIL),
    ],
)
def test_systemd_opens_usr_with_a_root_hash_the_old_check_never_saw(tmp_path, text, initrd, opened):
    """The forged artifacts: this machine's systemd-veritysetup-generator opens /usr with
    ``opened``, where ``str.split`` saw usrhash=<good> alone; each line is refused."""
    assert [word for word in text.split() if word.startswith("usrhash=")] == [f"usrhash={GOOD}"]
    assert usr_root_hash_systemd_opens(text, tmp_path / "units", initrd=initrd) == opened
    with pytest.raises(CmdlineRefused):
        usrhash_parameter(text)


@pytest.mark.tools
@pytest.mark.parametrize(
    "text",
    [
        f"ro usrhash={GOOD}",
        f'ro usrhash="{GOOD}" quiet',
        f'"usrhash={GOOD}" quiet',
        f'x="b usrhash={EVIL}" usrhash={GOOD}',
        f'"x=usrhash={EVIL} y" usrhash={GOOD} z="{EVIL}"',
    ],
)
def test_the_usrhash_accepted_is_the_one_systemd_opens(tmp_path, text):
    usrhash = usrhash_parameter(text)
    assert usrhash is not None
    assert usr_root_hash_systemd_opens(text, tmp_path / "units") == usrhash.value == GOOD


@pytest.mark.tools
@pytest.mark.parametrize(
    ("parameter", "field", "value"),
    [
        ("mount.usr=/dev/sdb2", "What", "/dev/sdb2"),
        ('"mount.usr=/dev/sdb2"', "What", "/dev/sdb2"),
        ("mount.usrfstype=virtiofs", "Type", "virtiofs"),
        ("rootfstype=virtiofs", "Type", "virtiofs"),
    ],
)
def test_systemd_mounts_usr_as_the_refused_parameters_say(tmp_path, parameter, field, value):
    """In the initrd, systemd-fstab-generator mounts /usr from /dev/mapper/usr, unless
    these parameters say otherwise; each is refused."""

    def usr_mount(cmdline: str, out: Path) -> str:
        units = run_generator("systemd-fstab-generator", cmdline, out, initrd=True)
        mounts = [
            unit
            for unit in units.values()
            if re.search(r"^Where=/sys(usr|root)/usr$", unit, re.M)
            and not re.search(r"^What=/sysusr/usr$", unit, re.M)
        ]
        assert len(mounts) == 1, units
        return mounts[0]

    assert "What=/dev/mapper/usr\n" in usr_mount(f"ro usrhash={GOOD}", tmp_path / "plain")
    text = f"root=/dev/vda2 ro usrhash={GOOD} {parameter}"
    assert f"{field}={value}\n" in usr_mount(text, tmp_path / "forged")
    with pytest.raises(CmdlineRefused, match=re.escape(parameter)):
        usrhash_parameter(text)


# fuzz/fuzz_cmdline.py without atheris.


@pytest.fixture(scope="module")
def target() -> ModuleType:
    spec = importlib.util.spec_from_file_location("fuzz_cmdline", TARGET)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def mutate(rng: random.Random, data: bytes) -> bytes:
    buffer = bytearray(data)
    for _ in range(rng.randint(1, 4)):
        position = rng.randrange(len(buffer) + 1)
        choice = rng.random()
        if choice < 0.4 and buffer:
            buffer[min(position, len(buffer) - 1)] = rng.choice(b" \"'=-_.a\\\t\xa0")
        elif choice < 0.7:
            buffer[position:position] = rng.choice([b'"', b" ", b"=", b"usrhash=", b"rd.", b"--"])
        else:
            del buffer[position : position + rng.randint(1, 6)]
    return bytes(buffer)


def test_fuzz_target_passes_seeds_mutations_and_random_inputs(target):
    rng = random.Random("fuzz_cmdline")
    seeds = target.seed_inputs()
    for seed in seeds:
        target.test_one_input(seed)
        for length in range(len(seed)):
            target.test_one_input(seed[:length])
        for _ in range(300):
            target.test_one_input(mutate(rng, seed))
    for _ in range(3000):
        target.test_one_input(bytes(rng.choice(b" \"=a-_.\\'\t") for _ in range(rng.randrange(16))))


def test_fuzz_target_lets_refusals_pass_and_crashes_on_anything_else(target, monkeypatch):
    def refuse(*args, **kwargs):
        raise CmdlineRefused("typed")

    monkeypatch.setattr(target, "parse_cmdline", refuse)
    monkeypatch.setattr(target, "bind_usrhash", refuse)
    assert target.test_one_input(b"ro quiet") is None

    def crash(*args, **kwargs):
        raise KeyError("not typed")

    monkeypatch.setattr(target, "parse_cmdline", crash)
    with pytest.raises(KeyError, match="not typed"):
        target.test_one_input(b"ro quiet")


def test_fuzz_target_catches_a_parser_that_accepts_a_line_read_two_ways(target, monkeypatch):
    """Had parse_cmdline gone by the kernel's reading alone, the forged line's relatives
    would pass; the target's cross-check with systemd's reading is a crash."""
    from stockade.release.cmdline import KernelCommandLine, Parameter

    def kernel_only(text):
        return KernelCommandLine(
            tuple(Parameter(word.text, word.key, word.value) for word in kernel_split(text))
        )

    monkeypatch.setattr(target, "parse_cmdline", kernel_only)
    with pytest.raises(AssertionError, match="read two ways"):
        target.test_one_input(f'ro x=a"b usrhash={EVIL}"'.encode())
