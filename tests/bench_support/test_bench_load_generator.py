"""The verifier benchmarks' load generator (``bench.verifier_load``) sends what an agent sends.

Its per-node precomputation (quote bytes around the nonce and clock, the signature encoding,
the evidence body around its changing fields, SHA-256 over the body's constant prefix) must
give the same bytes and signatures as the straightforward path, and its minimal HTTP/1.1
client must frame answers (Content-Length, chunked, ``Connection: close``) and survive a
kept-alive connection the server closed. No program is started: the server is in-process.
"""

from __future__ import annotations

import asyncio
import base64
import datetime
import ipaddress
import json
import ssl
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from bench.verifier_load import (
    Connection,
    EvidenceBody,
    PreparedNode,
    QuoteMaker,
    SimulatedNode,
    Target,
    leading_field,
    quote_for,
    quote_signature,
    sign_quote,
)
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from stockade.channel import content_digest, verify_request
from stockade.evidence.algorithms import Alg
from stockade.evidence.attest import Attest, ClockInfo, QuoteInfo
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.signature import Signature


def _pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def _template() -> Attest:
    return Attest(
        magic=0xFF544347,
        type=0x8018,
        qualified_signer=b"\x00\x0b" + bytes(range(32)),
        extra_data=bytes(32),
        clock_info=ClockInfo(123456, 7, 0, True),
        firmware_version=0x0102030405060708,
        attested=QuoteInfo(PcrSelection.parse("sha256:0,1,2,7"), bytes(range(32))),
    )


def test_quote_maker_gives_quote_for_bytes() -> None:
    template = _template()
    maker = QuoteMaker(template)
    for clock in (template.clock_info.clock + 1, 2**40 + 5):
        nonce = bytes(reversed(range(32)))
        assert maker.make(nonce, clock) == quote_for(template, nonce, clock)
        parsed = Attest.unmarshal(maker.make(nonce, clock))
        assert parsed.extra_data == nonce and parsed.clock_info.clock == clock


def test_quote_signature_is_sign_quote_encoding() -> None:
    key = ec.generate_private_key(ec.SECP256R1())
    message = quote_for(_template(), bytes(32), 999)
    fast, slow = quote_signature(key, message), sign_quote(key, message)
    assert len(fast) == len(slow)
    for encoded in (fast, slow):
        body = Signature.unmarshal(encoded).body
        assert (body.scheme, body.hash_alg) == (Alg.ECDSA, Alg.SHA256)
    assert fast[:6] == slow[:6]  # sigAlg, hash, r's size


def test_evidence_body_is_the_document_and_digest() -> None:
    pcrs = {"sha256": {"0": "00" * 32, "7": "ab" * 32}}
    event_log = base64.b64encode(b'\x00\x01 a log "quoted" \\ ' * 50).decode()
    body = EvidenceBody(pcrs, event_log)
    nonce, quote, signature = b"n" * 32, b"q" * 145, b"s" * 72
    content, digest = body.render(nonce, quote, signature)
    assert json.loads(content) == {
        "nonce": base64.b64encode(nonce).decode(),
        "quote": base64.b64encode(quote).decode(),
        "signature": base64.b64encode(signature).decode(),
        "pcrs": pcrs,
        "event_log": event_log,
    }
    assert digest == content_digest(content)


def test_channel_headers_verify_as_the_verifier_checks_them() -> None:
    channel_key = ec.generate_private_key(ec.SECP256R1())
    ak = ec.generate_private_key(ec.SECP256R1())
    node_id = str(uuid.uuid4())
    node = PreparedNode(SimulatedNode(node_id, _pem(ak), _pem(channel_key)), 0)
    content = b'{"nonce":"x"}'
    lines = node.channel_headers(node.evidence_path, content_digest(content)).decode()
    headers = {
        name.lower(): value.strip()
        for name, _, value in (line.partition(":") for line in lines.split("\r\n") if line)
    }
    signed = verify_request(
        "POST", node.evidence_path, "", content, headers, channel_key.public_key(),
        keyid=node_id, now=int(headers["signature-input"].split("created=")[1].split(";")[0]),
        max_skew=5,
    )  # fmt: skip
    assert signed.keyid == node_id


def test_leading_field() -> None:
    assert leading_field(b'{"nonce":"AAAA","expires_at":"x"}', b"nonce") == "AAAA"
    answer = b'{"result_id":"' + str(uuid.uuid4()).encode() + b'","status":"affirming"}'
    assert leading_field(answer, b"status") == "affirming"
    assert leading_field(b'{"a":"' + b"x" * 100 + b'","status":"late"}', b"status") == "late"


@pytest.fixture
def tls_files(tmp_path: Path) -> Iterator[tuple[Path, Path]]:
    """A self-signed certificate for 127.0.0.1 (its own CA) and its key."""
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench test")])
    now = datetime.datetime.now(datetime.UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=1))
        .not_valid_after(now + datetime.timedelta(hours=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]),
            critical=False,
        )
        .sign(key, hashes.SHA256())
    )
    cert_path, key_path = tmp_path / "cert.pem", tmp_path / "key.pem"
    cert_path.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    key_path.write_bytes(_pem(key))
    yield cert_path, key_path


async def _serve_and_post(cert: Path, key: Path, idle: float) -> list[tuple[int, bytes]]:
    """A server answering, in order: Content-Length, chunked, Content-Length then closing
    the connection, and ``Connection: close``; the client posts five times, waiting
    ``idle`` seconds after the third (checked before reuse, or found closed on use)."""
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(cert, key)
    answers = [
        b"HTTP/1.1 201 Created\r\nContent-Length: 5\r\n\r\nfirst",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"3\r\nsec\r\n3;x=y\r\nond\r\n0\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nthird",
        b"HTTP/1.1 200 OK\r\nContent-Length: 6\r\n\r\nfourth",
        b"HTTP/1.1 503 Unavailable\r\nConnection: close\r\nContent-Length: 5\r\n\r\nfifth",
    ]
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while answers:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
                requests.append(head + await reader.readexactly(length))
                answer = answers.pop(0)
                writer.write(answer)
                await writer.drain()
                if answer.endswith(b"third") or b"Connection: close" in answer:
                    break  # close this connection (idle, or as announced)
        except asyncio.IncompleteReadError:
            pass
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0, ssl=server_context)
    port = server.sockets[0].getsockname()[1]
    client_context = ssl.create_default_context(cafile=str(cert))
    connection = Connection(Target(f"https://127.0.0.1:{port}", str(cert)), client_context)
    got: list[tuple[int, bytes]] = []
    async with server:
        for number in range(5):
            body = f'{{"n":{number}}}'.encode()
            got.append(await connection.post(f"/path/{number}", b"X-Test: 1\r\n", body))
            if number == 2:
                await asyncio.sleep(idle)  # the server has closed it, unseen until used
        connection.close()
    assert len(requests) == 5
    assert requests[0].startswith(b"POST /path/0 HTTP/1.1\r\nHost: 127.0.0.1:")
    assert b"X-Test: 1\r\n" in requests[0] and requests[0].endswith(b'{"n":0}')
    assert connection.opened == 2  # one reopened after the idle close
    return got


@pytest.mark.parametrize("idle", [0.7, 0.05])
def test_connection_frames_answers_and_reconnects(
    tls_files: tuple[Path, Path], idle: float
) -> None:
    got = asyncio.run(_serve_and_post(*tls_files, idle))
    assert got == [
        (201, b"first"), (200, b"second"), (200, b"third"), (200, b"fourth"), (503, b"fifth"),
    ]  # fmt: skip
