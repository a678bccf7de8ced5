"""The compiled fast hook client: it exits 0 only on ``OK <recnum>`` from the hook server,
and refuses (exit 1, one line on stderr) on everything else, including no server at all."""

from __future__ import annotations

import socket
import subprocess
import threading
from pathlib import Path

import pytest

from stockade.agent.hook_client import ClientUnavailable, compiled_client

STATE = b'{"ociVersion":"1.0.2","id":"c1","status":"creating","bundle":"/b"}'


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Path:
    try:
        return compiled_client(tmp_path_factory.mktemp("bin"))
    except ClientUnavailable as error:
        pytest.skip(str(error))


def serve_once(path: Path, answer: bytes | None, seen: list[bytes]) -> threading.Thread:
    server = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    server.bind(str(path))
    server.listen(1)

    def run() -> None:
        conn, _ = server.accept()
        with conn:
            data = b""
            while chunk := conn.recv(65536):
                data += chunk
            seen.append(data)
            if answer is not None:
                conn.sendall(answer)
        server.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    return thread


def run_client(client: Path, path: Path) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [str(client), str(path)], input=STATE, capture_output=True, timeout=30, check=False
    )


def test_ok_admits_and_the_state_is_forwarded_whole(client, tmp_path):
    seen: list[bytes] = []
    thread = serve_once(tmp_path / "s", b"OK 17\n", seen)
    done = run_client(client, tmp_path / "s")
    thread.join(5)
    assert done.returncode == 0, done.stderr
    assert seen == [STATE]


@pytest.mark.parametrize(
    ("answer", "needle"),
    [
        (b"ERR refused container c1: image unsigned\n", b"image unsigned"),
        (b"OK\n", b"answered"),
        (b"OK 12x\n", b"answered"),
        (b"ok 1\n", b"answered"),
        (b"", b"answered"),
    ],
)
def test_anything_but_ok_refuses(client, tmp_path, answer, needle):
    seen: list[bytes] = []
    thread = serve_once(tmp_path / "s", answer, seen)
    done = run_client(client, tmp_path / "s")
    thread.join(5)
    assert done.returncode == 1
    assert needle in done.stderr and done.stderr.count(b"\n") == 1


def test_no_server_refuses(client, tmp_path):
    done = run_client(client, tmp_path / "nobody-listens")
    assert done.returncode == 1
    assert b"cannot be reached" in done.stderr
