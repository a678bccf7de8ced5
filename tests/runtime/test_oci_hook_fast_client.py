"""The OCI hook's two clients: the C one (``stockade_oci_hook_client.c``, built at install time)
and the Python fallback (``hook_fallback_client.py``). Each exits 0 only on ``OK <recnum>``
from the hook server and refuses (exit 1, one line on stderr) on everything else; for every
case below both give the same exit code and the same stderr, byte for byte. The agent finds
the installed C client without a compiler, and refuses one that others could replace."""

from __future__ import annotations

import ast
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from stockade.agent import hook_client
from stockade.agent.hook_client import (
    C_SOURCE,
    CLIENT_ENV,
    CLIENT_NAME,
    FALLBACK_CLIENT,
    ClientRefused,
    ClientUnavailable,
    check_client,
    installed_client,
)
from stockade.agent.oci_hook import HookSettings, oci_hook_entry

ROOT = Path(__file__).resolve().parents[2]
STATE = b'{"ociVersion":"1.0.2","id":"c1","status":"creating","bundle":"/b"}'
MAX_STATE = 1 << 20
# What `make lint` and `make hook-client` must keep (the Makefile's HOOK_CFLAGS is the one place).
REQUIRED_FLAGS = {
    "-std=c11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-Wpedantic",
    "-Wformat=2",
    "-Wconversion",
    "-D_FORTIFY_SOURCE=2",
    "-fanalyzer",
}


def makefile_cflags() -> list[str]:
    text = (ROOT / "Makefile").read_text().replace("\\\n", " ")
    found = re.search(r"^HOOK_CFLAGS\s*:=(.*)$", text, re.MULTILINE)
    assert found, "the Makefile has no HOOK_CFLAGS"
    return found.group(1).split()


def gcc() -> str:
    compiler = shutil.which("gcc")
    if compiler is None:
        pytest.skip("no gcc (Debian gcc, libc6-dev; scripts/bootstrap.sh)")
    return compiler


def build(directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    binary = directory / CLIENT_NAME
    done = subprocess.run(
        [gcc(), *makefile_cflags(), "-static", "-s", "-o", str(binary), str(C_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    binary.chmod(0o755)
    return binary


@pytest.fixture(scope="module")
def c_client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build(tmp_path_factory.mktemp("c-client") / "bin")


@pytest.fixture(params=[pytest.param("c", marks=pytest.mark.tools), "python"])
def client(request: pytest.FixtureRequest) -> list[str]:
    """The command line of one client, before its SOCKET [TIMEOUT] arguments."""
    if request.param == "c":
        return [str(request.getfixturevalue("c_client"))]
    return [sys.executable, "-I", "-S", str(FALLBACK_CLIENT)]


@pytest.fixture
def short_dir() -> Iterator[Path]:
    """A short directory for sockets (sun_path holds 107 bytes; pytest's tmp_path can be longer)."""
    with tempfile.TemporaryDirectory(prefix="hc-") as name:
        yield Path(name)


@dataclass
class Server:
    """One connection: reads the state to its end, then answers (or holds the line silently)."""

    path: Path
    answer: bytes | None
    seen: list[bytes]
    release: threading.Event
    thread: threading.Thread


def serve_once(path: Path, answer: bytes | None) -> Server:
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    seen: list[bytes] = []
    release = threading.Event()

    def run() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                chunks = []
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                seen.append(b"".join(chunks))
                if answer is None:
                    release.wait(30)
                else:
                    conn.sendall(answer)

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return Server(path, answer, seen, release, thread)


def run_client(
    command: list[str], *args: str, state: bytes = STATE
) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [*command, *args], input=state, capture_output=True, timeout=30, check=False
    )


def refused(text: str) -> bytes:
    return f"stockade-oci-hook: refused container: {text}\n".encode()


def answered(shown: bytes) -> bytes:
    return b"stockade-oci-hook: refused container: the hook agent answered '%s'\n" % shown


# -- the C source -----------------------------------------------------------------------------


@pytest.mark.tools
def test_c_client_compiles_clean_with_every_warning_and_the_analyzer(tmp_path):
    flags = makefile_cflags()
    assert set(flags) >= REQUIRED_FLAGS
    done = subprocess.run(
        [gcc(), *flags, "-c", "-o", str(tmp_path / "client.o"), str(C_SOURCE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert (done.returncode, done.stderr) == (0, "")


def test_c_source_is_package_data():
    text = (ROOT / "pyproject.toml").read_text()
    assert f"agent/{C_SOURCE.name}" in text
    assert C_SOURCE.is_file()


# -- both clients, same answers -----------------------------------------------------------------


def test_ok_admits_and_the_state_is_forwarded_whole(client, short_dir):
    server = serve_once(short_dir / "s", b"OK 17\n")
    done = run_client(client, str(server.path))
    server.thread.join(5)
    assert (done.returncode, done.stderr) == (0, b"")
    assert server.seen == [STATE]


def test_a_state_of_exactly_one_mebibyte_is_forwarded(client, short_dir):
    state = b"{" + b" " * (MAX_STATE - 2) + b"}"
    server = serve_once(short_dir / "s", b"OK 1")
    done = run_client(client, str(server.path), state=state)
    server.thread.join(5)
    assert (done.returncode, done.stderr) == (0, b"")
    assert server.seen == [state]


@pytest.mark.parametrize(
    ("answer", "stderr"),
    [
        (
            b"ERR refused container c1: image unsigned\n",
            b"stockade-oci-hook: refused container c1: image unsigned\n",
        ),
        (b"ERR one\nline\x00\x1b[31m \r\n", b"stockade-oci-hook: one?line??[31m\n"),
        (b"OK\n", answered(b"OK")),
        (b"OK \n", answered(b"OK")),
        (b"OK 12x\n", answered(b"OK 12x")),
        (b"OK -1\n", answered(b"OK -1")),
        (b" OK 1\n", answered(b" OK 1")),
        (b"ok 1\n", answered(b"ok 1")),
        (b"ERR \n", answered(b"ERR")),
        (b"", answered(b"")),
        (b"MAYBE\x00\x07\n", answered(b"MAYBE??")),
        (b"\xff\xfe" + b"x" * 300, answered(b"\xff\xfe" + b"x" * 198)),
    ],
    ids=[
        "err",
        "err-control-bytes",
        "ok-alone",
        "ok-space",
        "ok-not-digits",
        "ok-negative",
        "leading-space",
        "lower-case",
        "err-empty",
        "silence-then-close",
        "garbage",
        "long-garbage",
    ],
)
def test_anything_but_ok_refuses_with_one_line(client, short_dir, answer, stderr):
    server = serve_once(short_dir / "s", answer)
    done = run_client(client, str(server.path))
    server.thread.join(5)
    assert (done.returncode, done.stderr) == (1, stderr)
    assert server.seen == [STATE]


def test_an_answer_longer_than_4096_bytes_is_cut_there(client, short_dir):
    server = serve_once(short_dir / "s", b"ERR " + b"y" * 10_000)
    done = run_client(client, str(server.path))
    server.thread.join(5)
    assert (done.returncode, done.stderr) == (1, b"stockade-oci-hook: " + b"y" * 4092 + b"\n")


def test_a_silent_server_times_out(client, short_dir):
    server = serve_once(short_dir / "s", None)
    try:
        done = run_client(client, str(server.path), "1")
    finally:
        server.release.set()
    server.thread.join(5)
    assert (done.returncode, done.stderr) == (
        1,
        refused("no answer from the hook agent: timed out"),
    )
    assert server.seen == [STATE]


def test_no_server_refuses(client, short_dir):
    path = short_dir / "nobody-listens"
    done = run_client(client, str(path))
    reason = f"the hook agent at {path} cannot be reached (No such file or directory)"
    assert (done.returncode, done.stderr) == (1, refused(reason))
    path.write_text("not a socket")
    done = run_client(client, str(path))
    reason = f"the hook agent at {path} cannot be reached (Connection refused)"
    assert (done.returncode, done.stderr) == (1, refused(reason))


def test_oversized_state_is_refused_before_connecting(client, short_dir):
    path = short_dir / "s"
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    listener.bind(str(path))
    listener.listen(1)
    listener.settimeout(0.2)
    with listener:
        done = run_client(client, str(path), state=b"x" * (MAX_STATE + 1))
        with pytest.raises(TimeoutError):
            listener.accept()  # nobody connected
    assert (done.returncode, done.stderr) == (
        1,
        refused("the container state on stdin is too large"),
    )


@pytest.mark.parametrize(
    ("args", "stderr"),
    [
        ((), refused("usage: stockade-oci-hook-client SOCKET [TIMEOUT_SECONDS]")),
        (("/s", "0"), refused("usage: stockade-oci-hook-client SOCKET [TIMEOUT_SECONDS]")),
        (("/s", "61"), refused("usage: stockade-oci-hook-client SOCKET [TIMEOUT_SECONDS]")),
        (("/s", "1s"), refused("usage: stockade-oci-hook-client SOCKET [TIMEOUT_SECONDS]")),
        (("/s", "1", "2"), refused("usage: stockade-oci-hook-client SOCKET [TIMEOUT_SECONDS]")),
        (("",), refused("bad socket path")),
        (("/" + "p" * 107,), refused("bad socket path: /" + "p" * 107)),
        (
            ("/bad\npath",),
            refused("the hook agent at /bad?path cannot be reached (No such file or directory)"),
        ),
    ],
    ids=["none", "zero", "too-long", "not-digits", "extra", "empty", "path-too-long", "newline"],
)
def test_bad_usage_refuses(client, args, stderr):
    done = run_client(client, *args)
    assert (done.returncode, done.stderr) == (1, stderr)


# -- the Python client stays cheap and alone ----------------------------------------------------


def test_the_fallback_client_imports_only_builtins():
    tree = ast.parse(FALLBACK_CLIENT.read_text())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported.add("." * node.level + (node.module or ""))
    assert imported == {"_socket", "posix", "sys"}


# -- finding the installed client ---------------------------------------------------------------


@pytest.mark.tools
def test_the_agent_finds_the_installed_client_without_a_compiler(tmp_path, monkeypatch, short_dir):
    venv_bin = tmp_path / "venv" / "bin"
    installed = build(venv_bin)  # as `make hook-client` does, beside the interpreter
    no_gcc = tmp_path / "empty-path"
    no_gcc.mkdir()
    monkeypatch.setenv("PATH", str(no_gcc))
    monkeypatch.delenv(CLIENT_ENV, raising=False)
    monkeypatch.setattr(sys, "executable", str(venv_bin / "python"))
    assert shutil.which("gcc") is None and shutil.which("cc") is None
    before = sorted(venv_bin.iterdir())

    def no_processes(*args, **kwargs):
        raise AssertionError(f"the agent ran a program: {args}")

    monkeypatch.setattr(subprocess, "Popen", no_processes)
    entry = oci_hook_entry(
        HookSettings(agent_socket=short_dir / "s"), Path("/h"), Path("/usr/bin/python3")
    )
    monkeypatch.undo()
    assert entry["path"] == str(installed)
    assert entry["args"] == [str(installed), str(short_dir / "s")]
    assert sorted(venv_bin.iterdir()) == before  # nothing built, nothing cached

    server = serve_once(short_dir / "s", b"OK 5\n")
    done = subprocess.run(
        entry["args"], input=STATE, capture_output=True, timeout=30, env={}, check=False
    )
    server.thread.join(5)
    assert (done.returncode, done.stderr) == (0, b"")


def test_the_search_order(tmp_path):
    beside = tmp_path / "venv" / "bin"
    on_path = tmp_path / "path"
    for directory in (beside, on_path):
        directory.mkdir(parents=True)
    python = str(beside / "python")
    environ = {"PATH": str(on_path)}
    with pytest.raises(ClientUnavailable, match="no installed stockade-oci-hook-client"):
        installed_client(environ, python)
    for directory in (on_path, beside):
        (directory / CLIENT_NAME).write_bytes(b"#!/bin/false\n")
        (directory / CLIENT_NAME).chmod(0o755)
        assert installed_client(environ, python) == (directory / CLIENT_NAME).resolve()
    chosen = tmp_path / "chosen"
    chosen.write_bytes(b"#!/bin/false\n")
    chosen.chmod(0o700)
    assert installed_client({**environ, CLIENT_ENV: str(chosen)}, python) == chosen.resolve()
    with pytest.raises(ClientUnavailable, match="looked at /nowhere"):
        installed_client({**environ, CLIENT_ENV: "/nowhere"}, python)
    candidates = hook_client.client_candidates({"PATH": ""}, python)
    assert candidates == [beside / CLIENT_NAME, Path("/usr/lib/stockade") / CLIENT_NAME]


def test_the_built_client_is_installed_beside_the_interpreter():
    """`make hook-client` (which `make test` and `make demo` run) put it in the venv's bin."""
    beside = Path(sys.executable).parent / CLIENT_NAME
    if not beside.exists():
        pytest.skip(f"{beside} not built (make hook-client)")
    assert installed_client({"PATH": ""}) == beside.resolve()


def _fake_client(directory: Path, mode: int = 0o755) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / CLIENT_NAME
    path.write_bytes(b"#!/bin/false\n")
    path.chmod(mode)
    return path


@pytest.mark.parametrize(
    ("mode", "folder_mode", "why"),
    [
        (0o775, 0o755, "writable by group or others (mode 0775)"),
        (0o757, 0o755, "writable by group or others (mode 0757)"),
        (0o644, 0o755, "not executable (mode 0644)"),
        (0o755, 0o777, "is writable by group or others (mode 0777)"),
    ],
)
def test_a_client_others_could_replace_is_refused(tmp_path, mode, folder_mode, why):
    path = _fake_client(tmp_path / "bin", mode)
    path.parent.chmod(folder_mode)
    try:
        with pytest.raises(ClientRefused, match=re.escape(why)) as caught:
            check_client(path)
    finally:
        path.parent.chmod(0o755)
    assert str(caught.value).startswith(f"hook client {path} refused: ")


def test_a_sticky_shared_directory_is_accepted_and_symlinks_are_resolved(tmp_path):
    real = _fake_client(tmp_path / "real")
    real.parent.chmod(0o1777)
    link = tmp_path / "link"
    link.symlink_to(real)
    try:
        assert check_client(link) == real
    finally:
        real.parent.chmod(0o755)
    with pytest.raises(ClientRefused, match="not a regular file"):
        check_client(tmp_path)


def test_a_group_writable_client_falls_back_to_the_python_client(
    tmp_path, monkeypatch, capsys, short_dir
):
    unsafe = _fake_client(tmp_path / "bin", 0o775)
    monkeypatch.setenv(CLIENT_ENV, str(unsafe))
    python = Path(sys.executable)
    entry = oci_hook_entry(HookSettings(agent_socket=short_dir / "s"), Path("/h"), python)
    assert entry["path"] == str(python)
    assert entry["args"] == [str(python), "-I", "-S", str(FALLBACK_CLIENT), str(short_dir / "s")]
    err = capsys.readouterr().err
    assert err == (
        f"stockade-oci-hook: hook client {unsafe} refused: writable by group or others "
        "(mode 0775); using the Python client\n"
    )

    server = serve_once(short_dir / "s", b"OK 9\n")
    done = subprocess.run(
        entry["args"], input=STATE, capture_output=True, timeout=30, env={}, check=False
    )
    server.thread.join(5)
    assert (done.returncode, done.stderr) == (0, b"")
    assert server.seen == [STATE]


def test_no_installed_client_falls_back_quietly(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv(CLIENT_ENV, str(tmp_path / "absent"))
    entry = oci_hook_entry(HookSettings(agent_socket=Path("/run/s")), Path("/h"), Path("/py"))
    assert entry["args"] == ["/py", "-I", "-S", str(FALLBACK_CLIENT), "/run/s"]
    assert capsys.readouterr().err == ""


def test_no_product_code_compiles():
    for module in (hook_client.__file__, FALLBACK_CLIENT):
        text = Path(str(module)).read_text()
        assert "subprocess" not in text
    assert not hasattr(hook_client, "SOURCE") and not hasattr(hook_client, "compiled_client")
    assert os.access(FALLBACK_CLIENT, os.R_OK)
