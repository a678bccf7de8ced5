"""Kernel command lines as the Linux kernel and systemd read them, and the parameters a
release may not carry because they could mount a /usr other than its dm-verity image.

Pure: no I/O.

Two programs split a command line, and a release's /usr binding holds only if both read
the words Stockade checked:

- The kernel: ``parse_args()`` (``kernel/params.c``) calls ``next_arg()``
  (``lib/cmdline.c``) word by word. Whitespace (``isspace()``, ``lib/ctype.c``: space,
  ``\\t \\n \\v \\f \\r`` and byte 0xA0) separates words outside double quotes; every
  ``"`` toggles quoting. A word that starts with ``"`` loses it, and loses a ``"`` at its
  end; a value that starts with ``"`` loses it and a ``"`` at the end of the word; every
  other quote stays. The name is what precedes the first ``=`` (an ``=`` at the very
  start does not count). ``--`` ends the kernel's parameters: the words after it are
  init's arguments (``init/main.c``, ``start_kernel()``).
- systemd: ``proc_cmdline_strv_internal()`` (``src/basic/proc-cmdline.c``) splits all of
  ``/proc/cmdline``, ``--`` and what follows included, with ``extract_first_word()``
  (``src/basic/extract-word.c``) under ``EXTRACT_UNQUOTE|EXTRACT_RELAX|
  EXTRACT_RETAIN_ESCAPE``: separators are space, ``\\t \\n \\r``; single and double quotes
  are removed wherever they are; an unbalanced quote runs to the end; backslashes stay
  (releases whose ``proc_cmdline_parse()`` passed ``EXTRACT_QUOTES|EXTRACT_RELAX`` read them
  as escapes). The name is what precedes the first ``=``. In the initrd, generators that
  pass ``PROC_CMDLINE_STRIP_RD_PREFIX`` (systemd-veritysetup-generator among them) read
  ``rd.X`` as ``X`` (``mangle_word()``). The last of repeated parameters wins.

Names compare with ``-`` and ``_`` equal: the kernel's ``parameq()``, systemd's
``proc_cmdline_key_streq()`` (``systemd.verity_usr_options`` is also
``systemd.verity-usr-options``; ``.`` is not interchangeable).

``parse_cmdline`` gives a command line one meaning or none. It refuses characters other
than printable ASCII and spaces, backslashes, single quotes, quotes anywhere but around a
whole parameter (``"key=value"``) or a whole value (``key="value"``) (the ``next_arg()``
of older kernels, then in ``kernel/params.c``, kept the closing quote of ``"key"``),
``--``, and every string the two readings above split differently.
``check_usr_binding`` then refuses the parameters that decide /usr otherwise than through
``usrhash=``.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from itertools import zip_longest

from stockade.release.errors import ManifestMalformed

# x86 COMMAND_LINE_SIZE (arch/x86/include/asm/setup.h) is 2048 bytes with the NUL; the
# kernel truncates a longer command line, so the words at its end would not be read.
MAX_LENGTH = 2047
KERNEL_WHITESPACE = frozenset(" \t\n\v\f\r\xa0")
SYSTEMD_WHITESPACE = frozenset(" \t\n\r")
USRHASH = "usrhash"

_CANONICAL_WORD = re.compile(r'[^"]+|"[^"= ]+=[^"]*"|[^"=]+="[^"]*"')


class CmdlineRefused(ManifestMalformed):
    """A kernel command line with more than one reading, or with a parameter that could
    mount a /usr other than the dm-verity device its ``usrhash=`` opens; names the
    parameter."""


@dataclass(frozen=True)
class KernelWord:
    """One parameter as ``next_arg()`` returns it (``value`` None without ``=``) and the
    text it was read from, quotes included."""

    key: str
    value: str | None
    text: str


@dataclass(frozen=True)
class Parameter:
    """One parameter of a command line both the kernel and systemd read alike."""

    text: str
    key: str
    value: str | None

    @property
    def name(self) -> str:
        """The key with ``-`` read as ``_`` and one leading ``rd.`` dropped: what systemd's
        generators match in the initrd."""
        return self.key.replace("-", "_").removeprefix("rd.")


@dataclass(frozen=True)
class KernelCommandLine:
    parameters: tuple[Parameter, ...]

    def named(self, name: str) -> tuple[Parameter, ...]:
        """Every parameter whose ``name`` is ``name`` (written with ``_``, without ``rd.``)."""
        return tuple(parameter for parameter in self.parameters if parameter.name == name)


@dataclass(frozen=True)
class UsrHash:
    """One ``usrhash=`` of a command line: as written, and its value as systemd reads it."""

    text: str
    value: str


def kernel_split(text: str) -> list[KernelWord]:
    """``text`` (one character per byte) split as ``parse_args()`` splits it, ``--`` and
    the words after it included (``next_arg()`` also splits init's arguments)."""
    text = text.partition("\0")[0]
    words = []
    position = _skip(text, 0, KERNEL_WHITESPACE)
    while position < len(text):
        word, position = _next_arg(text, position)
        words.append(word)
        position = _skip(text, position, KERNEL_WHITESPACE)
    return words


def systemd_split(text: str) -> list[str]:
    """``text`` (one character per byte) split into words as systemd splits
    ``/proc/cmdline``."""
    text = text.partition("\0")[0]
    words: list[str] = []
    position = 0
    while True:
        position = _skip(text, position, SYSTEMD_WHITESPACE)
        if position >= len(text):
            return words
        word: list[str] = []
        quote = ""
        while position < len(text):
            char = text[position]
            if quote:
                if char == quote:
                    quote = ""
                else:
                    word.append(char)
            elif char in "'\"":
                quote = char
            elif char in SYSTEMD_WHITESPACE:
                break
            else:
                word.append(char)
            position += 1
        words.append("".join(word))


def parse_cmdline(text: str) -> KernelCommandLine:
    """The parameters of ``text``, which the kernel and systemd read alike;
    ``CmdlineRefused`` when they would not, or when another reading is possible."""
    if len(text) > MAX_LENGTH:
        raise CmdlineRefused(
            f"kernel command line is {len(text)} characters long; the kernel keeps "
            f"{MAX_LENGTH} and drops the rest"
        )
    for offset, char in enumerate(text):
        if not " " <= char <= "~":
            raise CmdlineRefused(
                f"kernel command line has {char!r} at offset {offset}: only printable ASCII "
                "and spaces are accepted (the kernel also splits on \\v, \\f and byte 0xA0, "
                "systemd does not; control bytes and non-ASCII pass bootloaders differently)"
            )
        if char == "\\":
            raise CmdlineRefused(
                f"kernel command line has a backslash at offset {offset}: the kernel keeps "
                "it, systemd keeps it or reads an escape depending on its version"
            )
        if char == "'":
            raise CmdlineRefused(
                f"kernel command line has a single quote at offset {offset}: systemd "
                "removes it and quotes what follows, the kernel keeps it"
            )
    kernel = kernel_split(text)
    systemd = [_key_value(word) for word in systemd_split(text)]
    for word, read in zip_longest(kernel, systemd):
        if word is None or read is None or (word.key, word.value) != read:
            where = repr(word.text) if word is not None else "the end"
            raise CmdlineRefused(
                f"kernel command line is read two ways at {where}: the kernel reads "
                f"{_describe((word.key, word.value)) if word else 'nothing'}, systemd "
                f"reads {_describe(read) if read else 'nothing'}"
            )
    parameters = []
    for word in kernel:
        if word.key == "--" and word.value is None:
            raise CmdlineRefused(
                "kernel command line has '--': the kernel hands the words after it to "
                "init as arguments, while systemd still reads them as parameters"
            )
        if not _CANONICAL_WORD.fullmatch(word.text):
            raise CmdlineRefused(
                f"kernel command line parameter {word.text}: quotes may only surround a "
                'whole parameter ("key=value") or a whole value (key="value")'
            )
        parameters.append(Parameter(word.text, word.key, word.value))
    return KernelCommandLine(tuple(parameters))


# Parameters that decide /usr, or what runs instead of the software on it, otherwise than
# through usrhash=. systemd-fstab-generator (src/fstab-generator/fstab-generator.c,
# parse_proc_cmdline_item(), determine_usr(), add_sysroot_usr_mount()) mounts /usr from
# /dev/mapper/usr when usrhash= is given, unless mount.usr= names another source; it takes
# the type from mount.usrfstype= or else rootfstype=, and adds mount.usrflags= to the options.
# rootflags= stays allowed: some versions copy it to the /usr options too, but with the type
# detected from the verified image, options tune a mount of the dm-verity device only.
_REFUSED = {
    "mount.usr": "mounts /usr from the source it names instead of the dm-verity device "
    "usrhash= opens",
    "mount.usrfstype": "sets the type of the /usr mount: a type that ignores its source "
    "(virtiofs, 9p, tmpfs, overlay) mounts something other than the dm-verity device",
    "mount.usrflags": "adds options to the /usr mount (an overlay's lowerdir= and upperdir=)",
    "rootfstype": "is also the type of the /usr mount when mount.usrfstype= is absent "
    "(systemd-fstab-generator copies it): a type that ignores its source mounts something "
    "other than the dm-verity device",
    "systemd.mount_extra": "adds mounts, which may cover /usr or a directory in it",
    "init": "runs another PID 1 than systemd from the dm-verity /usr after the initrd",
    "rdinit": "runs another program from the initrd than the one that opens /usr with its "
    "root hash",
    "bootconfig": "adds parameters from a bootconfig in the initrd or the kernel that the "
    "signed command line does not show (its init.* keys follow '--' in /proc/cmdline, "
    "where systemd reads them)",
}

# What systemd-veritysetup-generator reads (src/veritysetup/veritysetup-generator.c,
# parse_proc_cmdline_item()); each may be given once, so that no later one overrides it.
VERITY_PARAMETERS = (
    "systemd.verity",
    "veritytab",
    "roothash",
    "systemd.verity_root_data",
    "systemd.verity_root_hash",
    "systemd.verity_root_options",
    USRHASH,
    "systemd.verity_usr_data",
    "systemd.verity_usr_hash",
    "systemd.verity_usr_options",
)

# systemd-veritysetup's options (src/veritysetup/veritysetup.c, parse_options()). The
# settings only describe the hash tree: under other ones the signed root hash matches no
# tree unless its hash is broken, so verity fails. Two flags let blocks that do not match
# it be read.
_WEAKENING_OPTIONS = {
    "ignore-corruption": "returns blocks whose hash does not match instead of failing",
    "check-at-most-once": "verifies a block on its first read only, so a device that "
    "changes it afterwards is believed",
}
_OPTION_FLAGS = frozenset(
    {"noauto", "auto", "nofail", "fail", "_netdev", "restart-on-corruption",
     "panic-on-corruption", "ignore-zero-blocks"}
)  # fmt: skip
_OPTION_SETTINGS = frozenset(
    {"superblock", "format", "data-block-size", "hash-block-size", "data-blocks",
     "hash-offset", "salt", "uuid", "hash", "fec-device", "fec-offset", "fec-roots",
     "root-hash-signature"}
)  # fmt: skip
# parse_boolean() (src/basic/parse-util.c), compared without regard to case.
_TRUE = frozenset({"1", "yes", "y", "true", "t", "on"})


def check_usr_binding(cmdline: KernelCommandLine) -> UsrHash | None:
    """The ``usrhash=`` of ``cmdline`` (None without one), after refusing
    (``CmdlineRefused``, naming the parameter) each parameter that lets /usr be something
    other than the dm-verity device ``usrhash=`` opens, or weakens that device:
    ``mount.usr=``, ``mount.usrfstype=``, ``mount.usrflags=``, ``rootfstype=``,
    ``systemd.mount-extra=``, ``init=``, ``rdinit=``, ``bootconfig``, ``systemd.verity=``
    with a false value, ``ignore-corruption`` or ``check-at-most-once`` (or an option
    systemd-veritysetup does not know) in ``systemd.verity_usr_options=``, any parameter
    systemd-veritysetup-generator reads given twice (``usrhash=`` too), and ``usrhash``
    without a value or spelled otherwise. ``rd.`` and ``-``/``_`` spellings count as the
    parameter itself."""
    for parameter in cmdline.parameters:
        reason = _REFUSED.get(parameter.name)
        if reason is not None:
            raise CmdlineRefused(f"kernel command line parameter {parameter.text} {reason}")
    for name in VERITY_PARAMETERS:
        given = cmdline.named(name)
        if len(given) > 1:
            raise CmdlineRefused(
                f"kernel command line gives {name} {len(given)} times "
                f"({', '.join(parameter.text for parameter in given)}): systemd takes the "
                "last, so a release states it once"
            )
    for parameter in cmdline.named("systemd.verity"):
        if parameter.value is not None and parameter.value.lower() not in _TRUE:
            raise CmdlineRefused(
                f"kernel command line parameter {parameter.text}: a release keeps systemd's "
                f"dm-verity setup on (a false systemd.verity= turns it off, and {USRHASH}= "
                "no longer opens /usr)"
            )
    for parameter in cmdline.named("systemd.verity_usr_options"):
        _check_verity_options(parameter)
    for parameter in cmdline.named(USRHASH):
        if parameter.key != USRHASH:
            raise CmdlineRefused(
                f"kernel command line parameter {parameter.text}: a release binds /usr "
                f"with {USRHASH}= as systemd spells it, read in the initrd and after it"
            )
        if parameter.value is None:
            raise CmdlineRefused(
                f"kernel command line parameter {parameter.text} has no value, which "
                "systemd ignores"
            )
        return UsrHash(parameter.text, parameter.value)
    return None


def _check_verity_options(parameter: Parameter) -> None:
    for option in (parameter.value or "").split(","):
        setting = option.partition("=")[0]
        weakening = _WEAKENING_OPTIONS.get(option)
        if weakening is not None:
            raise CmdlineRefused(
                f"kernel command line parameter {parameter.text}: {option} {weakening}"
            )
        known = option in _OPTION_FLAGS or ("=" in option and setting in _OPTION_SETTINGS)
        if option and not known:
            raise CmdlineRefused(
                f"kernel command line parameter {parameter.text}: dm-verity option "
                f"{option!r} is not one Stockade knows to keep /usr verified"
            )


def _skip(text: str, position: int, whitespace: frozenset[str]) -> int:
    while position < len(text) and text[position] in whitespace:
        position += 1
    return position


def _next_arg(text: str, start: int) -> tuple[KernelWord, int]:
    """``next_arg()`` on the word at ``start``: the word and where it ends. The C code cuts
    the word in place with NULs; ``None`` stands for those here."""
    quoted = text[start] == '"'
    begin = start + 1 if quoted else start
    in_quote = quoted
    equals = 0
    length = 0
    while begin + length < len(text):
        char = text[begin + length]
        if char in KERNEL_WHITESPACE and not in_quote:
            break
        if equals == 0 and char == "=":
            equals = length
        if char == '"':
            in_quote = not in_quote
        length += 1
    chars: list[str | None] = list(text[begin : begin + length])
    value_start: int | None = None
    if equals:
        chars[equals] = None
        value_start = equals + 1
        if value_start < length and chars[value_start] == '"':
            value_start += 1
            if chars[length - 1] == '"':
                chars[length - 1] = None
    if quoted and length > 0 and chars[length - 1] == '"':
        chars[length - 1] = None
    key = _c_string(chars, 0)
    value = None if value_start is None else _c_string(chars, value_start)
    return KernelWord(key, value, text[start : begin + length]), begin + length


def _c_string(chars: list[str | None], start: int) -> str:
    out = []
    for char in chars[start:]:
        if char is None:
            break
        out.append(char)
    return "".join(out)


def _key_value(word: str) -> tuple[str, str | None]:
    key, equals, value = word.partition("=")
    return (key, value) if equals else (key, None)


def _describe(read: tuple[str, str | None]) -> str:
    key, value = read
    return repr(key) if value is None else f"{key!r} = {value!r}"
