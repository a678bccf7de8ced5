"""The OCI hook client in Python, for nodes without the installed C client.

Run as ``python3 -I -S hook_fallback_client.py SOCKET [TIMEOUT_SECONDS]``: it imports only
the interpreter's own ``_socket``, ``posix`` and ``sys`` (no site, no package, never
``stockade``), so it costs about one bare interpreter start. It is the same program as
``stockade_oci_hook_client.c``, step for step: it forwards the OCI state on stdin (at most
1 MiB) to the hook server's Unix socket and exits 0 only on ``OK <digits>``; anything else
(``ERR <reason>``, garbage, silence for TIMEOUT_SECONDS (default and maximum 60) on any socket
operation, no server, a state too large, bad usage) exits 1 with one line on stderr, the same
bytes the C client writes. Change both or neither.
"""

import _socket
import posix
import sys

MAX_STATE_BYTES = 1 << 20
MAX_ANSWER_BYTES = 4096
MAX_SHOWN_ANSWER_BYTES = 200
DEFAULT_TIMEOUT_SECONDS = 60
# Linux's sockaddr_un.sun_path: the path and its terminating NUL.
SUN_PATH_BYTES = 108
# Control bytes become "?" so that the stderr line stays one line.
ONE_LINE = bytes(c if c >= 0x20 and c != 0x7F else ord("?") for c in range(256))
USAGE = "usage: stockade-oci-hook-client SOCKET [TIMEOUT_SECONDS]"


def finish(*parts: bytes) -> int:
    """Write ``parts`` as one line on stderr (at most the C client's 8 KiB); returns 1."""
    line = b"".join(parts).translate(ONE_LINE)[: 2 * MAX_ANSWER_BYTES - 1] + b"\n"
    while line:
        try:
            written = posix.write(2, line)
        except OSError:
            break
        if written <= 0:
            break
        line = line[written:]
    return 1


def refuse(why: str | bytes, detail: str | bytes | None = None) -> int:
    """``stockade-oci-hook: refused container: WHY[: DETAIL]`` (DETAIL if not empty); returns 1."""
    parts = [b"stockade-oci-hook: refused container: ", as_bytes(why)]
    if detail:
        parts += [b": ", as_bytes(detail)]
    return finish(*parts)


def as_bytes(text: str | bytes) -> bytes:
    return text if isinstance(text, bytes) else text.encode("utf-8", "surrogateescape")


def failure(error: OSError) -> str:
    """What went wrong with a system call: "timed out" for a socket timeout, else strerror."""
    if isinstance(error, BlockingIOError):
        return "timed out"
    return error.strerror or str(error)


def timeout_seconds(text: str) -> int:
    """1..60 from decimal digits only, else 0."""
    value = 0
    for char in text:
        if not "0" <= char <= "9":
            return 0
        value = value * 10 + ord(char) - ord("0")
        if value > DEFAULT_TIMEOUT_SECONDS:
            return 0
    return value


def timeval(seconds: int) -> bytes:
    """A ``struct timeval`` of ``seconds``: two native C longs on Linux (no ``struct`` here)."""
    long_bytes = (sys.maxsize.bit_length() + 1) // 8
    return seconds.to_bytes(long_bytes, sys.byteorder) + bytes(long_bytes)


def read_state() -> bytes:
    chunks: list[bytes] = []
    size = 0
    while size < MAX_STATE_BYTES + 1:
        chunk = posix.read(0, MAX_STATE_BYTES + 1 - size)
        if not chunk:
            break
        chunks.append(chunk)
        size += len(chunk)
    return b"".join(chunks)


def ask(sock: _socket.socket, path: bytes, state: bytes) -> int:
    """Send the state to the server at ``path`` and judge its answer."""
    try:
        sock.connect(path)
    except OSError as error:
        return finish(
            b"stockade-oci-hook: refused container: the hook agent at ",
            path,
            b" cannot be reached (",
            as_bytes(failure(error)),
            b")",
        )
    try:
        sock.sendall(state)
        sock.shutdown(_socket.SHUT_WR)
    except OSError as error:
        return refuse("the hook agent did not take the state", failure(error))

    answer = b""
    try:
        while len(answer) < MAX_ANSWER_BYTES:
            chunk = sock.recv(MAX_ANSWER_BYTES - len(answer))
            if not chunk:
                break
            answer += chunk
    except OSError as error:
        return refuse("no answer from the hook agent", failure(error))
    answer = answer.rstrip(b" \t\r\n")

    if answer[:3] == b"OK " and answer[3:].isdigit():
        return 0
    if len(answer) > 4 and answer[:4] == b"ERR ":
        return finish(b"stockade-oci-hook: ", answer[4:])
    return finish(
        b"stockade-oci-hook: refused container: the hook agent answered '",
        answer[:MAX_SHOWN_ANSWER_BYTES],
        b"'",
    )


def main(argv: list[str]) -> int:
    seconds = DEFAULT_TIMEOUT_SECONDS
    if len(argv) == 3:
        seconds = timeout_seconds(argv[2])
    if len(argv) not in (2, 3) or seconds == 0:
        return refuse(USAGE)
    path = argv[1].encode(sys.getfilesystemencoding(), sys.getfilesystemencodeerrors())
    if not 0 < len(path) < SUN_PATH_BYTES:
        return refuse("bad socket path", path)

    try:
        state = read_state()
    except OSError as error:
        return refuse("cannot read the container state", failure(error))
    if len(state) > MAX_STATE_BYTES:
        return refuse("the container state on stdin is too large")

    try:
        sock = _socket.socket(_socket.AF_UNIX, _socket.SOCK_STREAM | _socket.SOCK_CLOEXEC)
    except OSError as error:
        return refuse("cannot open a socket", failure(error))
    try:
        for option in (_socket.SO_RCVTIMEO, _socket.SO_SNDTIMEO):
            sock.setsockopt(_socket.SOL_SOCKET, option, timeval(seconds))
    except OSError as error:
        sock.close()
        return refuse("cannot set the socket timeout", failure(error))
    try:
        return ask(sock, path, state)
    finally:
        sock.close()


if __name__ == "__main__":
    try:
        status = main(sys.argv)
    except BaseException as error:  # fail closed, still with one line
        status = refuse("the hook client failed", type(error).__name__)
    posix._exit(status)
