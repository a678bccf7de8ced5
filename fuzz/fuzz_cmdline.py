"""Fuzz target: kernel command lines (``stockade.release.cmdline``) and the /usr binding
of release manifests (``usrhash_parameter``, ``bind_usrhash``).

    pip install atheris
    python fuzz/fuzz_cmdline.py [libFuzzer options] [corpus directory]

A good corpus is a few real command lines (``/proc/cmdline`` of some machines), or
``seed_inputs()`` below. Each byte is one character, as the kernel reads it.

Splitting never raises; parsing and binding succeed or raise ``CmdlineRefused``; any other
exception is a bug. So is an accepted command line that the kernel and systemd split
differently, whose parameters as written do not parse back to the same parameters, or
that binding turns into one without exactly one ``usrhash=`` of the root hash. Importable
without atheris: tests/release/test_cmdline.py drives ``test_one_input`` directly.
"""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from stockade.release.cmdline import (
        CmdlineRefused,
        check_usr_binding,
        kernel_split,
        parse_cmdline,
        systemd_split,
    )
    from stockade.release.manifest import bind_usrhash, usrhash_parameter

ROOT = bytes(range(32))


def seed_inputs() -> list[bytes]:
    """Command lines accepted, refused and read two ways, for a starting corpus."""
    good = ROOT.hex()
    return [
        b"BOOT_IMAGE=/boot/vmlinuz-6.1.0-18-amd64 root=UUID=0b6f1e7e-3b1a-4d3c-9d0e-4c1f2a3b4c5d"
        b" ro quiet",
        f"console=ttyS0 ro usrhash={good}".encode(),
        f'ro usrhash={good} "usrhash={"ff" * 32}"'.encode(),
        b'dyndbg="file drivers/usb/* +p" "acpi_osi=Windows 2020" ro',
        b'ro quiet "',
        b'x=a"b c"d mount.usr=/dev/sdb2 systemd.verity_usr_options=ignore-corruption -- x',
    ]


def test_one_input(data: bytes) -> None:
    text = data.decode("latin-1")
    kernel = [(word.key, word.value) for word in kernel_split(text)]
    systemd = [_key_value(word) for word in systemd_split(text)]
    try:
        cmdline = parse_cmdline(text)
    except CmdlineRefused:
        cmdline = None
    if cmdline is not None:
        parsed = [(parameter.key, parameter.value) for parameter in cmdline.parameters]
        if not kernel == systemd == parsed:
            raise AssertionError(f"accepted a command line read two ways: {text!r}")
        rejoined = " ".join(parameter.text for parameter in cmdline.parameters)
        if parse_cmdline(rejoined) != cmdline:
            raise AssertionError(f"parameters as written do not parse back: {text!r}")
        with contextlib.suppress(CmdlineRefused):
            check_usr_binding(cmdline)
    try:
        bound = bind_usrhash(text, ROOT)
    except CmdlineRefused:
        return
    usrhash = usrhash_parameter(bound)
    if usrhash is None or usrhash.value != ROOT.hex():
        raise AssertionError(f"binding {text!r} gave {bound!r}")


def _key_value(word: str) -> tuple[str, str | None]:
    key, equals, value = word.partition("=")
    return (key, value) if equals else (key, None)


if __name__ == "__main__":
    fuzz(test_one_input)
