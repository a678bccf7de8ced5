"""Fuzz target: the node channel's signature headers (``stockade.channel``).

    pip install atheris
    python fuzz/fuzz_channel_headers.py [libFuzzer options] [corpus directory]

The input is the three header values, ``Signature-Input``, ``Signature`` and
``Content-Digest``, separated by newlines (fewer lines: the later headers are missing), read
as latin-1 the way an HTTP server hands header bytes over. ``seed_inputs()`` below gives a
starting corpus: requests signed by the target's fixed key.

``parse_signed_request`` and ``verify_request`` must succeed or raise ``ChannelAuthError``;
any other exception is a bug. What parses must be exactly Stockade's shape, and what
verifies must be one of the requests the key really signed (anything else is a forgery).
Importable without atheris: tests/evidence/test_fuzz_targets.py drives ``test_one_input``
directly.
"""

from __future__ import annotations

import re
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _harness import fuzz, instrumented

with instrumented():
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec, utils

    from stockade.channel import (
        ChannelAuthError,
        SignedRequest,
        content_digest,
        parse_signed_request,
        sign_request,
        signature_params,
        verify_request,
    )

NAMES = ("signature-input", "signature", "content-digest")
KEY = ec.derive_private_key(0xF022_C4A2_7E11, ec.SECP256R1())
PUBLIC_KEY = KEY.public_key()
KEYID = "node-fuzz"
NOW = 1_700_000_000
MAX_SKEW = 300
# (method, path, query, body, created, nonce): the requests the key signs, and nothing else.
REQUESTS = (
    ("POST", "/v1/nodes/node-fuzz/attest", "pcrs=sha256:0-7", b'{"hello": "world"}', NOW, "n" * 16),
    ("GET", "/v1/nodes/node-fuzz", "", b"", NOW - MAX_SKEW, "fuzz-nonce-0123456789_-"),
    ("PUT", "/v1/nodes/node-fuzz/secrets/a%2Fb", "v=1&w", bytes(range(256)), NOW + 7, "Z" * 64),
)
SIGNED = {
    (method, path, query, body, signature_params(KEYID, created, nonce))
    for method, path, query, body, created, nonce in REQUESTS
}
_KEYID = re.compile(r"[A-Za-z0-9._-]{1,64}")
_NONCE = re.compile(r"[A-Za-z0-9_-]{16,64}")


def _sign_digest(digest: bytes) -> bytes:
    der = KEY.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
    r, s = utils.decode_dss_signature(der)
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def seed_inputs() -> list[bytes]:
    """Each signed request's headers, in this target's input format."""
    seeds = []
    for method, path, query, body, created, nonce in REQUESTS:
        headers = sign_request(
            method,
            path,
            query,
            body,
            keyid=KEYID,
            created=created,
            sign_digest=_sign_digest,
            nonce=nonce,
        )
        values = (headers["Signature-Input"], headers["Signature"], headers["Content-Digest"])
        seeds.append("\n".join(values).encode("latin-1"))
    return seeds


def headers_of(data: bytes) -> dict[str, str]:
    values = data.decode("latin-1").split("\n", 2)
    return dict(zip(NAMES, values, strict=False))


def test_one_input(data: bytes) -> None:
    headers = headers_of(data)
    try:
        request, params, raw, digest = parse_signed_request(headers)
    except ChannelAuthError:
        pass
    else:
        if not isinstance(request, SignedRequest) or len(raw) != 64:
            raise AssertionError(f"parsed into something else: {request!r} {raw!r}")
        if not (_KEYID.fullmatch(request.keyid) and _NONCE.fullmatch(request.nonce)):
            raise AssertionError(f"parsed a key id or nonce of another shape: {request!r}")
        if headers["signature-input"].strip() != "stockade=" + params:
            raise AssertionError(f"parameters are not the header's: {params!r}")
        if not digest.startswith("sha-256=:") or len(digest) != 54:
            raise AssertionError(f"parsed a Content-Digest of another shape: {digest!r}")
    for method, path, query, body, _, _ in REQUESTS:
        try:
            verified = verify_request(
                method,
                path,
                query,
                body,
                headers,
                PUBLIC_KEY,
                keyid=KEYID,
                now=NOW,
                max_skew=MAX_SKEW,
            )
        except ChannelAuthError:
            continue
        params = headers["signature-input"].strip().removeprefix("stockade=")
        if (method, path, query, body, params) not in SIGNED:
            raise AssertionError(f"a request the key never signed verifies: {data!r}")
        if headers["content-digest"].strip() != content_digest(body):
            raise AssertionError(f"verified with another body's digest: {data!r}")
        if verified.keyid != KEYID or abs(verified.created - NOW) > MAX_SKEW:
            raise AssertionError(f"verified for another node or time: {verified!r}")


if __name__ == "__main__":
    fuzz(test_one_input)
