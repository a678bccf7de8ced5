"""The verifier benchmarks' load generator: many simulated nodes over HTTPS, one process.

Each simulated node holds a software ECC P-256 AK (enrolled with the restricted-signing
AK template) and a software ECC P-256 channel key (pinned on its row). One attestation is
``POST /v1/nodes/{id}/nonces``, then a TPMS_ATTEST over the real booted node's PCR
selection and digest with the fresh nonce as extraData and its TPM clock moving forward,
signed ECDSA-SHA256, then ``POST /v1/nodes/{id}/evidence`` with the real boot log. Both
calls carry the node channel's RFC 9421 signature (``stockade.channel``) made with the
channel key, as every node call must.

Two ways to drive it (``LoadPlan``):

- closed loop (``interval`` None): ``clients`` concurrent clients, each one keep-alive
  connection, each attesting back to back and cycling through its share of the nodes
  (client ``i`` has nodes ``i``, ``i + clients``, ...); clients are spread round-robin over
  the plan's targets (verifier replicas). This measures throughput and latency.
- paced (``interval`` set): every node attests every ``interval`` seconds from a random
  phase, on a connection of its own that it reopens when the verifier closed it while idle
  (as an agent does). This measures whether a fleet's results are renewed in time.

The load generator is meant to cost little next to the verifier, so that the verifier is
what is measured, and it reports its own CPU per attestation (``getrusage`` in its process,
user and system, over the measured window). Its HTTP client is not httpx but a minimal
HTTP/1.1 keep-alive client (``Connection``): a non-blocking ``ssl.SSLSocket`` trusting the
verifier's CA, driven from the asyncio loop (its reader kept registered while answers are
awaited, one ``send`` per request), Content-Length or chunked framing, ``Connection:
close`` honoured, and a kept-alive connection the verifier closed while idle reopened
(and the request sent again when nothing of its answer had arrived). Per node, everything
that does not depend on the nonce is made once (``PreparedNode``, ``QuoteMaker``,
``EvidenceBody``): keys loaded, paths, the quote's bytes around the nonce and clock, the
signature encoding, the JSON body around the three fields that change, and SHA-256 over
the body's constant prefix, whose state is copied to give the RFC 9530 Content-Digest.
Per attestation it signs three times (two channel signatures, one quote), hashes only the
body's last few hundred bytes and reads the two answers' first fields without parsing the
rest. The requests are the agent's: the same calls, headers (built with
``stockade.channel``'s ``signature_params`` and ``signature_base``, as ``sign_request``
builds them) and JSON fields and values, with the large constant fields first.
``tests/bench_support`` checks these shortcuts against the straightforward path.

Runs in its own process (``multiprocessing`` spawn), so its CPU is not the verifier's: on
a 2-core machine they share the two cores.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import random
import resource
import secrets
import socket
import ssl
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils

from stockade.channel import LABEL, sign_request, signature_base, signature_params
from stockade.evidence.algorithms import Alg
from stockade.evidence.attest import Attest, ClockInfo
from stockade.evidence.signature import EcdsaSignature, Signature

MAX_RESPONSE_BYTES = 4 << 20  # an answer larger than this is an error
# A connection idle this long is checked before reuse (the verifier closes idle ones);
# one used more recently is reused, and resent on a fresh one if it was closed meanwhile.
IDLE_CHECK_SECONDS = 0.5


@dataclass(frozen=True)
class SimulatedNode:
    node_id: str
    ak_private_pem: bytes
    channel_private_pem: bytes


@dataclass(frozen=True)
class Target:
    """One verifier (replica): its URL and the CA its TLS certificate chains to."""

    url: str
    ca: str


@dataclass(frozen=True)
class LoadPlan:
    """Everything the load process needs; picklable."""

    targets: tuple[Target, ...]
    nodes: tuple[SimulatedNode, ...]
    template: bytes  # a real TPMS_ATTEST quote from the booted node
    pcrs: dict[str, dict[str, str]]
    event_log_b64: str
    warmup_seconds: float
    seconds: float
    clients: int = 0  # closed loop: concurrent clients (0: one per node)
    interval: float | None = None  # paced: each node attests every interval seconds
    deadline_seconds: float = 0.0  # paced: a node's result is valid this long
    # Wall-clock milliseconds at which the simulated TPM clocks read the template's clock:
    # they then advance with wall time, so a node can be driven again by a later plan.
    clock_epoch_ms: int = 0
    # The measured window's start as wall time (``time.time()``), so that another process
    # can measure the verifier over the same window; 0: ``warmup_seconds`` from the start.
    start_at: float = 0.0


@dataclass
class LoadReport:
    attestations: int = 0  # completed (nonce + evidence) inside the measured window
    seconds: float = 0.0
    latencies: list[float] = field(default_factory=list)  # seconds, nonce start -> result
    statuses: dict[str, int] = field(default_factory=dict)
    errors: list[str] = field(default_factory=list)
    error_count: int = 0
    cpu_seconds: float = 0.0  # this process's CPU inside the measured window
    cpu_user: float = 0.0  # of which in user mode
    cpu_system: float = 0.0  # of which in the kernel (TCP over loopback, TLS records)
    # Paced runs only.
    scheduled: int = 0  # attestations due (and started) inside the measured window
    completed: int = 0  # of which answered (affirming) inside the window
    late_starts: int = 0  # of which started more than a second after they were due
    max_gap: float = 0.0  # the longest a node went without a new result (seconds)
    overdue_nodes: int = 0  # nodes that went longer than deadline_seconds without one
    first_results: dict[str, float] = field(default_factory=dict)  # node -> wall time


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def sign_quote(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return Signature(
        EcdsaSignature(Alg.ECDSA, Alg.SHA256, r.to_bytes(32, "big"), s.to_bytes(32, "big"))
    ).marshal()


def software_signer(key: ec.EllipticCurvePrivateKey) -> Callable[[bytes], bytes]:
    """``sign_digest`` for ``stockade.channel.sign_request`` with a software P-256 key: ECDSA
    over a SHA-256 digest, as IEEE P1363 ``r || s`` (what the TPM's TPM2_Sign gives)."""

    def sign_digest(digest: bytes) -> bytes:
        der = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        r, s = utils.decode_dss_signature(der)
        return r.to_bytes(32, "big") + s.to_bytes(32, "big")

    return sign_digest


def signed_post(
    node_id: str, sign_digest: Callable[[bytes], bytes], path: str, body: Any = None
) -> tuple[bytes, dict[str, str]]:
    """The body bytes and headers of a node's channel-signed ``POST path`` (JSON body)."""
    content = b"" if body is None else json.dumps(body, separators=(",", ":")).encode()
    headers = sign_request(
        "POST", path, "", content, keyid=node_id, created=int(time.time()), sign_digest=sign_digest
    )
    if body is not None:
        headers["Content-Type"] = "application/json"
    return content, headers


def quote_for(template: Attest, nonce: bytes, clock: int) -> bytes:
    """The template quote with a fresh nonce and a later TPM clock (same boot)."""
    info = template.clock_info
    return Attest(
        template.magic,
        template.type,
        template.qualified_signer,
        nonce,
        ClockInfo(clock, info.reset_count, info.restart_count, info.safe),
        template.firmware_version,
        template.attested,
    ).marshal()


class QuoteMaker:
    """``quote_for`` by splicing: the template's bytes around the nonce and the clock are
    made once (checked against ``quote_for``)."""

    NONCE_BYTES = 32  # the verifier's nonces (verifier/nonces.py)

    def __init__(self, template: Attest) -> None:
        self.start_clock = template.clock_info.clock
        probe = quote_for(template, bytes(self.NONCE_BYTES), self.start_clock)
        head = 4 + 2 + 2 + len(template.qualified_signer)
        self.head = probe[:head] + self.NONCE_BYTES.to_bytes(2, "big")
        self.tail = probe[head + 2 + self.NONCE_BYTES + 8 :]
        nonce, clock = bytes(range(self.NONCE_BYTES)), self.start_clock + 12345
        if self.make(nonce, clock) != quote_for(template, nonce, clock):
            raise RuntimeError("QuoteMaker does not reproduce quote_for")

    def make(self, nonce: bytes, clock: int) -> bytes:
        if len(nonce) != self.NONCE_BYTES:
            raise ValueError(f"a nonce of {len(nonce)} bytes")
        return self.head + nonce + clock.to_bytes(8, "big") + self.tail


_ZERO_SIGNATURE = EcdsaSignature(Alg.ECDSA, Alg.SHA256, bytes(32), bytes(32))
_SIGNATURE_HEAD = Signature(_ZERO_SIGNATURE).marshal()[:4]  # sigAlg, hash


def quote_signature(key: ec.EllipticCurvePrivateKey, message: bytes) -> bytes:
    """``sign_quote`` with the TPMT_SIGNATURE encoding spliced (same bytes)."""
    r, s = utils.decode_dss_signature(key.sign(message, ec.ECDSA(hashes.SHA256())))
    return b"".join(
        (_SIGNATURE_HEAD, b"\x00\x20", r.to_bytes(32, "big"), b"\x00\x20", s.to_bytes(32, "big"))
    )


class EvidenceBody:
    """The evidence JSON with the nonce, quote and signature filled in, and its RFC 9530
    Content-Digest from SHA-256 over the constant prefix, computed once."""

    def __init__(self, pcrs: dict[str, dict[str, str]], event_log_b64: str) -> None:
        marks = {"nonce": "\x00N", "quote": "\x00Q", "signature": "\x00S"}
        document = {"event_log": event_log_b64, "pcrs": pcrs, **marks}
        text = json.dumps(document, separators=(",", ":"))
        # json.dumps escapes the marks as \u0000: split around the escaped forms
        parts: list[bytes] = []
        rest = text
        for mark in marks.values():
            escaped = json.dumps(mark)[1:-1]
            before, _, rest = rest.partition(escaped)
            parts.append(before.encode())
        parts.append(rest.encode())
        self.prefix, self.between_1, self.between_2, self.suffix = parts
        self.prefix_hash = hashlib.sha256(self.prefix)

    def render(self, nonce: bytes, quote: bytes, signature: bytes) -> tuple[bytes, str]:
        """(the body, its Content-Digest)."""
        tail = b"".join(
            (
                base64.b64encode(nonce),
                self.between_1,
                base64.b64encode(quote),
                self.between_2,
                base64.b64encode(signature),
                self.suffix,
            )
        )
        digest = self.prefix_hash.copy()
        digest.update(tail)
        content_digest = "sha-256=:" + base64.b64encode(digest.digest()).decode() + ":"
        return self.prefix + tail, content_digest


_EMPTY_DIGEST = "sha-256=:" + base64.b64encode(hashlib.sha256(b"").digest()).decode() + ":"


class PreparedNode:
    """One simulated node, ready to attest: keys loaded, paths and constant parts made."""

    def __init__(self, node: SimulatedNode, start_clock: int) -> None:
        key = serialization.load_pem_private_key(node.ak_private_pem, None)
        channel_key = serialization.load_pem_private_key(node.channel_private_pem, None)
        assert isinstance(key, ec.EllipticCurvePrivateKey)
        assert isinstance(channel_key, ec.EllipticCurvePrivateKey)
        self.node_id = node.node_id
        self.ak = key
        self.channel_key = channel_key
        self.nonces_path = f"/v1/nodes/{node.node_id}/nonces"
        self.evidence_path = f"/v1/nodes/{node.node_id}/evidence"
        self.clock = start_clock

    def channel_headers(self, path: str, digest: str) -> bytes:
        """The node channel's headers (``stockade.channel.sign_request``, from its parts so
        the Content-Digest can come from the precomputed prefix), as HTTP header lines."""
        params = signature_params(self.node_id, int(time.time()), _signature_nonce())
        base = signature_base("POST", path, "", digest, params)
        der = self.channel_key.sign(base, ec.ECDSA(hashes.SHA256()))
        r, s = utils.decode_dss_signature(der)
        value = base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode()
        return (
            f"Content-Digest: {digest}\r\nSignature-Input: {LABEL}={params}\r\n"
            f"Signature: {LABEL}=:{value}:\r\n"
        ).encode()


def _signature_nonce() -> str:
    return secrets.token_urlsafe(24)  # as sign_request makes it


class HttpError(Exception):
    pass


class ConnectionClosed(ConnectionError):
    """The connection ended; ``answered`` when part of an answer had arrived."""

    def __init__(self, reason: str, answered: bool) -> None:
        super().__init__(reason)
        self.answered = answered


class Connection:
    """A minimal HTTP/1.1 keep-alive client over one TLS connection.

    A non-blocking ``ssl.SSLSocket`` driven from the asyncio loop (``add_reader`` /
    ``add_writer`` only when OpenSSL wants to wait): one ``send`` per request and one
    ``recv`` per TLS record read, without asyncio's transport and stream layers."""

    def __init__(self, target: Target, context: ssl.SSLContext) -> None:
        parts = urlsplit(target.url)
        self.host = parts.hostname or "127.0.0.1"
        self.port = parts.port or 443
        self.host_line = f"Host: {parts.netloc}\r\n".encode()
        self.context = context
        self.sock: ssl.SSLSocket | None = None
        self.buffer = bytearray()
        self.opened = 0  # connections made, handshakes included
        self.waiter: asyncio.Future[None] | None = None
        self.reading = False  # the socket's reader is registered with the loop
        self.used = 0.0  # when the last answer arrived (perf_counter)

    async def _wait(self, writable: bool = False) -> None:
        """Until the socket is readable (or writable). The reader stays registered while
        answers are awaited, so a wait costs no epoll_ctl; it is dropped when it fires
        with nobody waiting (an idle connection the verifier closed)."""
        assert self.sock is not None
        loop = asyncio.get_running_loop()
        self.waiter = ready = loop.create_future()
        fd = self.sock.fileno()
        if writable:
            loop.add_writer(fd, self._wake)
        elif not self.reading:
            loop.add_reader(fd, self._wake_reader)
            self.reading = True
        try:
            await ready
        finally:
            self.waiter = None
            if writable:
                loop.remove_writer(fd)

    def _wake(self) -> None:
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_result(None)

    def _wake_reader(self) -> None:
        if self.waiter is None:
            self._stop_reading()
        else:
            self._wake()

    def _stop_reading(self) -> None:
        if self.reading and self.sock is not None:
            asyncio.get_running_loop().remove_reader(self.sock.fileno())
        self.reading = False

    async def _open(self) -> ssl.SSLSocket:
        self.close()
        loop = asyncio.get_running_loop()
        raw = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        raw.setblocking(False)
        raw.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        try:
            await loop.sock_connect(raw, (self.host, self.port))
        except BaseException:
            raw.close()
            raise
        self.sock = self.context.wrap_socket(
            raw, server_hostname=self.host, do_handshake_on_connect=False
        )
        while True:
            try:
                self.sock.do_handshake()
                break
            except ssl.SSLWantReadError:
                await self._wait()
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)
        self.opened += 1
        return self.sock

    def close(self) -> None:
        self._stop_reading()
        if self.sock is not None:
            self.sock.close()  # no close_notify: the verifier sees the TCP close
        self.sock = None
        self.buffer.clear()

    def _closed_while_idle(self) -> bool:
        """Whether the verifier closed this kept-alive connection (it closes idle ones)."""
        assert self.sock is not None
        try:
            chunk = self.sock.recv(65536)
        except ssl.SSLWantReadError:
            return False
        except (OSError, ssl.SSLError):
            return True
        if chunk:
            self.buffer += chunk  # unexpected, and an error when the answer is parsed
            return False
        return True

    async def post(self, path: str, headers: bytes, body: bytes) -> tuple[int, bytes]:
        """POST and read the answer; a kept-alive connection the verifier closed meanwhile
        is reopened and the request sent again (nothing of it was read)."""
        request = b"".join(
            (
                f"POST {path} HTTP/1.1\r\n".encode(),
                self.host_line,
                b"Content-Type: application/json\r\n" if body else b"",
                f"Content-Length: {len(body)}\r\n".encode(),
                headers,
                b"\r\n",
                body,
            )
        )
        reused = self.sock is not None and (
            time.perf_counter() - self.used < IDLE_CHECK_SECONDS or not self._closed_while_idle()
        )
        if not reused:
            await self._open()
        try:
            await self._send(request)
            await self._until_answered()
            answer = await self._answer()
            self.used = time.perf_counter()
            return answer
        except ConnectionClosed as error:
            self.close()
            if not reused or error.answered:
                raise
        await self._open()
        await self._send(request)
        await self._until_answered()
        answer = await self._answer()
        self.used = time.perf_counter()
        return answer

    async def _until_answered(self) -> None:
        """Wait for the answer to start arriving: it never has when the request has just
        left (a read attempted now would only fail with SSLWantReadError)."""
        assert self.sock is not None
        if not self.buffer and not self.sock.pending():
            await self._wait()

    async def _send(self, data: bytes) -> None:
        assert self.sock is not None
        view = memoryview(data)
        while view:
            try:
                sent = self.sock.send(view)
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)
                continue
            except ssl.SSLWantReadError:
                await self._wait()
                continue
            except (ssl.SSLError, OSError) as error:
                raise ConnectionClosed(f"send: {error}", answered=False) from error
            view = view[sent:]

    async def _fill(self) -> None:
        """Read at least one more byte into the buffer."""
        assert self.sock is not None
        while True:
            try:
                chunk = self.sock.recv(262144)
            except ssl.SSLWantReadError:
                await self._wait()
                continue
            except ssl.SSLWantWriteError:
                await self._wait(writable=True)
                continue
            except (ssl.SSLError, OSError) as error:
                chunk = b""
                reason = str(error)
            else:
                reason = "closed by the verifier"
            if not chunk:
                raise ConnectionClosed(reason, answered=bool(self.buffer))
            self.buffer += chunk
            return

    async def _answer(self) -> tuple[int, bytes]:
        while (end := self.buffer.find(b"\r\n\r\n")) < 0:
            if len(self.buffer) > 65536:
                raise HttpError("an answer's head over 64 KiB")
            await self._fill()
        lines = bytes(self.buffer[:end]).decode("latin-1").split("\r\n")
        del self.buffer[: end + 4]
        status_line = lines[0].split(" ", 2)
        if len(status_line) < 2 or not status_line[0].startswith("HTTP/1."):
            raise HttpError(f"not an HTTP/1.1 answer: {lines[0]!r}")
        status = int(status_line[1])
        fields: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            fields[name.strip().lower()] = value.strip()
        if "chunked" in fields.get("transfer-encoding", "").lower():
            body = await self._chunked()
        elif "content-length" in fields:
            length = int(fields["content-length"])
            if length > MAX_RESPONSE_BYTES:
                raise HttpError(f"an answer of {length} bytes")
            body = await self._take(length)
        else:
            raise HttpError("an answer framed by the connection's end")
        if fields.get("connection", "").lower() == "close" or status_line[0] == "HTTP/1.0":
            self.close()
        return status, body

    async def _take(self, length: int) -> bytes:
        while len(self.buffer) < length:
            await self._fill()
        taken = bytes(self.buffer[:length])
        del self.buffer[:length]
        return taken

    async def _line(self) -> bytes:
        while (end := self.buffer.find(b"\r\n")) < 0:
            await self._fill()
        line = bytes(self.buffer[:end])
        del self.buffer[: end + 2]
        return line

    async def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        while True:
            size = int((await self._line()).split(b";")[0], 16)
            if size == 0:
                while await self._line():  # trailers, up to the empty line
                    pass
                return b"".join(chunks)
            chunks.append(await self._take(size))
            await self._take(2)


class Attester:
    """What every simulated node shares in the load process."""

    def __init__(self, plan: LoadPlan) -> None:
        self.plan = plan
        self.quotes = QuoteMaker(Attest.unmarshal(plan.template))
        self.body = EvidenceBody(plan.pcrs, plan.event_log_b64)
        self.contexts = {
            target.ca: ssl.create_default_context(cafile=target.ca) for target in plan.targets
        }

    def next_clock(self, node: PreparedNode) -> int:
        """The node's TPM clock: wall time since the plan's epoch, and always forward."""
        elapsed_ms = time.time_ns() // 1_000_000 - self.plan.clock_epoch_ms
        node.clock = max(node.clock + 1, self.quotes.start_clock + 1000 + elapsed_ms)
        return node.clock

    async def attest(self, connection: Connection, node: PreparedNode) -> str:
        """One attestation; the result's status (``affirming``, ...)."""
        headers = node.channel_headers(node.nonces_path, _EMPTY_DIGEST)
        status, answer = await connection.post(node.nonces_path, headers, b"")
        if not 200 <= status < 300:
            raise HttpError(f"nonces: {status} {answer[:200]!r}")
        nonce = base64.b64decode(leading_field(answer, b"nonce"))
        message = self.quotes.make(nonce, self.next_clock(node))
        body, digest = self.body.render(nonce, message, quote_signature(node.ak, message))
        headers = node.channel_headers(node.evidence_path, digest)
        status, answer = await connection.post(node.evidence_path, headers, body)
        if not 200 <= status < 300:
            raise HttpError(f"evidence: {status} {answer[:200]!r}")
        return leading_field(answer, b"status")


def leading_field(answer: bytes, name: bytes) -> str:
    """A string field of a JSON answer that the verifier puts among its first (its answers
    are pydantic models: fields in declared order, ``nonce`` first, ``status`` second); the
    whole answer is parsed only if it is not found there."""
    start = answer.find(b'"' + name + b'":"', 0, 80)
    if start >= 0:
        start += len(name) + 4
        end = answer.find(b'"', start)
        if end > 0 and answer.find(b"\\", start, end) < 0:
            return answer[start:end].decode()
    return str(json.loads(answer)[name.decode()])


class Tally:
    def __init__(self, report: LoadReport, window: tuple[float, float]) -> None:
        self.report = report
        self.window = window
        self.statuses: Counter[str] = Counter()

    def record(self, began: float, done: float, status: str) -> None:
        start_at, end_at = self.window
        if start_at <= began and done <= end_at:
            self.report.latencies.append(done - began)
            self.statuses[status] += 1

    def error(self, error: BaseException) -> str:
        self.report.error_count += 1
        if len(self.report.errors) < 5:
            self.report.errors.append(f"{type(error).__name__}: {error}")
        return "error"


async def _client_loop(
    attester: Attester, target: Target, nodes: list[PreparedNode], tally: Tally
) -> None:
    """One closed-loop client: one connection, attesting back to back through its nodes."""
    connection = Connection(target, attester.contexts[target.ca])
    end_at = tally.window[1]
    turn = 0
    try:
        while True:
            began = time.perf_counter()
            if began >= end_at:
                return
            node = nodes[turn % len(nodes)]
            turn += 1
            try:
                status = await attester.attest(connection, node)
            except (OSError, HttpError, KeyError, ValueError) as e:
                status = tally.error(e)
                connection.close()
            tally.record(began, time.perf_counter(), status)
    finally:
        connection.close()


async def _paced_node(
    attester: Attester,
    target: Target,
    node: PreparedNode,
    tally: Tally,
    phase: float,
    gaps: dict[str, float],
) -> None:
    """One node attesting every ``interval`` at ``phase`` into it, as an agent does (its
    own connection, which the verifier may close while it is idle)."""
    interval = attester.plan.interval
    assert interval is not None
    report = tally.report
    start_at, end_at = tally.window
    connection = Connection(target, attester.contexts[target.ca])
    # Once in the interval before the window (the warm-up's last), then every interval.
    due = max(time.perf_counter(), start_at - interval + phase)
    last_result: float | None = None
    try:
        while due < end_at:
            await asyncio.sleep(max(0.0, due - time.perf_counter()))
            began = time.perf_counter()
            if start_at <= due:
                report.scheduled += 1
                if began - due > 1.0:
                    report.late_starts += 1
            try:
                status = await attester.attest(connection, node)
            except (OSError, HttpError, KeyError, ValueError) as e:
                status = tally.error(e)
                connection.close()
            done = time.perf_counter()
            tally.record(began, done, status)
            if status == "affirming" and start_at <= due and done <= end_at:
                report.completed += 1
            if status == "affirming" and done <= end_at:
                if last_result is None:
                    report.first_results[node.node_id] = time.time()
                else:
                    gaps[node.node_id] = max(gaps.get(node.node_id, 0.0), done - last_result)
                last_result = done
            due = max(due + interval, time.perf_counter())  # late: no catch-up burst
        if last_result is not None:  # how long since the last result, at the window's end
            gaps[node.node_id] = max(gaps.get(node.node_id, 0.0), end_at - last_result)
        else:
            gaps[node.node_id] = float("inf")
    finally:
        connection.close()


async def _drive(plan: LoadPlan) -> LoadReport:
    attester = Attester(plan)
    epoch_clock = attester.quotes.start_clock + 1000
    nodes = [PreparedNode(node, epoch_clock) for node in plan.nodes]
    report = LoadReport()
    now = time.perf_counter()
    start = now + (plan.start_at - time.time() if plan.start_at else plan.warmup_seconds)
    window = (start, start + plan.seconds)
    tally = Tally(report, window)
    cpu_task = asyncio.create_task(_cpu_in_window(window))
    targets = plan.targets
    if plan.interval is None:
        clients = plan.clients or len(nodes)
        await asyncio.gather(
            *(
                _client_loop(attester, targets[i % len(targets)], nodes[i::clients], tally)
                for i in range(min(clients, len(nodes)))
            )
        )
    else:
        phases = random.Random(len(nodes))
        gaps: dict[str, float] = {}
        await asyncio.gather(
            *(
                _paced_node(
                    attester,
                    targets[i % len(targets)],
                    node,
                    tally,
                    phases.uniform(0, plan.interval),
                    gaps,
                )
                for i, node in enumerate(nodes)
            )
        )
        report.max_gap = max(gaps.values(), default=0.0)
        report.overdue_nodes = sum(1 for gap in gaps.values() if gap > plan.deadline_seconds)
    report.cpu_user, report.cpu_system = await cpu_task
    report.cpu_seconds = report.cpu_user + report.cpu_system
    report.attestations = len(report.latencies)
    report.seconds = plan.seconds
    report.statuses = dict(tally.statuses)
    return report


async def _cpu_in_window(window: tuple[float, float]) -> tuple[float, float]:
    """This process's (user, system) CPU seconds inside ``window``."""
    await asyncio.sleep(max(0.0, window[0] - time.perf_counter()))
    before = resource.getrusage(resource.RUSAGE_SELF)
    await asyncio.sleep(max(0.0, window[1] - time.perf_counter()))
    after = resource.getrusage(resource.RUSAGE_SELF)
    return after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime


def run_load(plan: LoadPlan) -> LoadReport:
    """Entry point in the load process."""
    return asyncio.run(_drive(plan))


def describe(report: LoadReport) -> dict[str, Any]:
    return {
        "attestations": report.attestations,
        "statuses": report.statuses,
        "errors": report.errors,
    }
