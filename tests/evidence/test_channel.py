"""The node channel (``stockade.channel``): RFC 9421 HTTP Message Signatures over
``@method``, ``@path``, ``@query`` and an RFC 9530 ``Content-Digest``, made with a P-256 key.

Signatures are made here with a software key (``cryptography``); the expected signature base
is written out by hand from RFC 9421 (2.1, 2.2.1, 2.2.6, 2.2.7, 2.3, 2.5) and checked with an
independent ECDSA verifier (``openssl dgst``). Then every way a request can be wrong is
refused with its reason code, and the replay cache is driven through its window and its
capacity.

Behaviour decided here (and asserted):

- High-S: ``cryptography`` (OpenSSL) accepts both ``(r, s)`` and ``(r, n - s)``, so a valid
  signature has a second valid encoding. The verifier accepts it; that is harmless because
  the replay cache keys on ``(keyid, nonce)``, which the variant cannot change.
- Non-zero base64 pad bits in ``Signature`` decode to the same 64 bytes and are accepted, as
  RFC 8941, 4.2.7 asks of parsers ("SHOULD NOT fail when non-zero pad bits are present").
- Leading and trailing whitespace of a header value is not part of it (RFC 9421, 2.1).

The RFC 9421 details the module once got wrong (method case, the empty path, whitespace,
non-ASCII targets) have tests at the end.
"""

from __future__ import annotations

import base64
import hashlib
import shutil
import string
import subprocess
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, utils
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from stockade.channel import (
    ChannelAuthError,
    ReplayCache,
    SignedRequest,
    channel_certify_nonce,
    content_digest,
    parse_signed_request,
    sign_request,
    signature_base,
    signature_params,
    verify_request,
)

# SEC 2, 2.4.2: the order n of the P-256 base point.
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

KEY = ec.derive_private_key(0x5EED_0001_C4A2_7E11, ec.SECP256R1())
OTHER_KEY = ec.derive_private_key(0x5EED_0002, ec.SECP256R1())
KEYID = "node-1"
CREATED = 1_700_000_000
NONCE = "fixed-nonce-0123456789"
MAX_SKEW = 300
REASONS = {"missing", "malformed", "keyid", "digest", "stale", "signature"}


@dataclass(frozen=True)
class Request:
    method: str
    path: str
    query: str
    body: bytes


REQUEST = Request("POST", "/v1/nodes/node-1/attest", "pcrs=sha256:0-7&x=1", b'{"hello": "world"}')

# -- the fixed input, written out from the RFCs ----------------------------------------------

# RFC 9530, 2 (its own example body): sha-256 of '{"hello": "world"}', base64 in an sf-binary.
EXPECTED_DIGEST = "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:"
# RFC 9421, 2.3: the covered components as an inner list, then the parameters.
EXPECTED_PARAMS = (
    '("@method" "@path" "@query" "content-digest")'
    ';created=1700000000;keyid="node-1";nonce="fixed-nonce-0123456789"'
    ';alg="ecdsa-p256-sha256";tag="stockade-node"'
)
# RFC 9421, 2.5: one line per component, "@signature-params" last, "\n" between lines and
# none after the last; 2.2.1 @method, 2.2.6 @path, 2.2.7 @query ("?" + query), 2.1 a field.
EXPECTED_BASE = (
    b'"@method": POST\n'
    b'"@path": /v1/nodes/node-1/attest\n'
    b'"@query": ?pcrs=sha256:0-7&x=1\n'
    b'"content-digest": sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:\n'
    b'"@signature-params": ("@method" "@path" "@query" "content-digest")'
    b';created=1700000000;keyid="node-1";nonce="fixed-nonce-0123456789"'
    b';alg="ecdsa-p256-sha256";tag="stockade-node"'
)
# The same request with no query and no body: "@query" is "?" alone (RFC 9421, 2.2.7).
EXPECTED_BASE_EMPTY = (
    b'"@method": GET\n'
    b'"@path": /v1/nodes/node-1\n'
    b'"@query": ?\n'
    b'"content-digest": sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:\n'
    b'"@signature-params": ("@method" "@path" "@query" "content-digest")'
    b';created=1700000000;keyid="node-1";nonce="fixed-nonce-0123456789"'
    b';alg="ecdsa-p256-sha256";tag="stockade-node"'
)


# -- helpers ---------------------------------------------------------------------------------


def raw_signature(r: int, s: int) -> bytes:
    return r.to_bytes(32, "big") + s.to_bytes(32, "big")


def signer(key: ec.EllipticCurvePrivateKey, seen: list[bytes] | None = None):
    """A ``sign_digest`` like the TPM's: a SHA-256 digest in, ``r || s`` out."""

    def sign_digest(digest: bytes) -> bytes:
        assert len(digest) == 32
        if seen is not None:
            seen.append(digest)
        der = key.sign(digest, ec.ECDSA(utils.Prehashed(hashes.SHA256())))
        return raw_signature(*utils.decode_dss_signature(der))

    return sign_digest


def lowered(headers: dict[str, str]) -> dict[str, str]:
    """Header names as an HTTP server hands them over (the module looks them up lowercase)."""
    return {name.lower(): value for name, value in headers.items()}


def sign(
    request: Request = REQUEST,
    *,
    key: ec.EllipticCurvePrivateKey = KEY,
    keyid: str = KEYID,
    created: int = CREATED,
    nonce: str | None = NONCE,
) -> dict[str, str]:
    return lowered(
        sign_request(
            request.method,
            request.path,
            request.query,
            request.body,
            keyid=keyid,
            created=created,
            sign_digest=signer(key),
            nonce=nonce,
        )
    )


def verify(
    headers: dict[str, str],
    request: Request = REQUEST,
    *,
    key: ec.EllipticCurvePublicKey | None = None,
    keyid: str = KEYID,
    now: int = CREATED,
    max_skew: int = MAX_SKEW,
) -> SignedRequest:
    return verify_request(
        request.method,
        request.path,
        request.query,
        request.body,
        headers,
        key or KEY.public_key(),
        keyid=keyid,
        now=now,
        max_skew=max_skew,
    )


def refused(reason: str, headers: dict[str, str], request: Request = REQUEST, **kwargs: object):
    with pytest.raises(ChannelAuthError) as caught:
        verify(headers, request, **kwargs)
    assert caught.value.reason == reason, (caught.value.reason, caught.value.detail)
    assert str(caught.value) == caught.value.detail
    return caught.value


def with_header(headers: dict[str, str], name: str, value: str) -> dict[str, str]:
    return {**headers, name: value}


def signature_bytes(headers: dict[str, str]) -> bytes:
    value = headers["signature"]
    assert value.startswith("stockade=:") and value.endswith(":")
    return base64.b64decode(value[len("stockade=:") : -1], validate=True)


def signature_header(raw: bytes, label: str = "stockade") -> str:
    return f"{label}=:{base64.b64encode(raw).decode()}:"


@pytest.fixture(scope="module")
def signed() -> dict[str, str]:
    return sign()


# -- round trips -----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "request_",
    [
        REQUEST,
        Request("GET", "/v1/nodes/node-1", "", b""),
        Request("PUT", "/v1/nodes/node-1/secrets/db%2Fpassword", "version=3", b"\x00" * 1000),
        Request("DELETE", "/", "?", b""),
        Request("PATCH", "/a/b;c=d/e", "q=%20x&y=&=z", bytes(range(256)) * 64),
        Request("POST", "/v1/nodes/node-1/attest", "a=1&a=2&b", "ünïcödé".encode()),
    ],
    ids=["post-json", "get-empty", "put-zeros", "delete-root", "patch-binary", "post-utf8"],
)
def test_sign_then_verify_round_trips(request_):
    headers = sign(request_)
    assert set(headers) == {"content-digest", "signature-input", "signature"}
    assert verify(headers, request_) == SignedRequest(KEYID, CREATED, NONCE)


def test_sign_request_returns_the_three_headers_with_their_http_names():
    headers = sign_request(
        "POST", "/p", "", b"", keyid=KEYID, created=CREATED, sign_digest=signer(KEY), nonce=NONCE
    )
    assert list(headers) == ["Content-Digest", "Signature-Input", "Signature"]


def test_header_lookup_takes_lowercase_or_the_names_sign_request_writes():
    """``parse_signed_request`` looks up ``signature-input`` etc. in a case-insensitive mapping
    (what an HTTP server gives), lowercase keys, or the names exactly as ``sign_request``
    returns them; other spellings read as unsigned."""
    httpx = pytest.importorskip("httpx")
    headers = sign_request(
        "POST",
        REQUEST.path,
        REQUEST.query,
        REQUEST.body,
        keyid=KEYID,
        created=CREATED,
        sign_digest=signer(KEY),
        nonce=NONCE,
    )
    assert verify(httpx.Headers(headers)).keyid == KEYID
    assert verify(headers).keyid == KEYID
    assert refused("missing", {name.upper(): value for name, value in headers.items()})


def test_a_random_nonce_is_made_when_none_is_given():
    nonces = {verify(sign(nonce=None)).nonce for _ in range(20)}
    assert len(nonces) == 20
    assert all(16 <= len(nonce) <= 64 for nonce in nonces)


# -- the signature base, by hand from RFC 9421 ----------------------------------------------


def test_content_digest_is_rfc_9530():
    assert content_digest(REQUEST.body) == EXPECTED_DIGEST
    assert content_digest(b"") == "sha-256=:47DEQpj8HBSa+/TImW+5JCeuQeRkm5NMpJWZG3hSuFU=:"


def test_signature_params_are_the_rfc_9421_inner_list():
    assert signature_params(KEYID, CREATED, NONCE) == EXPECTED_PARAMS


@pytest.mark.parametrize(
    ("request_", "expected"),
    [(REQUEST, EXPECTED_BASE), (Request("GET", "/v1/nodes/node-1", "", b""), EXPECTED_BASE_EMPTY)],
    ids=["with-query", "no-query"],
)
def test_exact_signature_base(request_, expected):
    assert not expected.endswith(b"\n")
    base = signature_base(
        request_.method,
        request_.path,
        request_.query,
        content_digest(request_.body),
        EXPECTED_PARAMS,
    )
    assert base == expected
    # ... and that is what the key signed: sign_request hands SHA-256(base) to the signer,
    # and the Signature-Input header carries exactly the parameters of the last line.
    seen: list[bytes] = []
    headers = lowered(
        sign_request(
            request_.method,
            request_.path,
            request_.query,
            request_.body,
            keyid=KEYID,
            created=CREATED,
            sign_digest=signer(KEY, seen),
            nonce=NONCE,
        )
    )
    assert seen == [hashlib.sha256(expected).digest()]
    assert headers["signature-input"] == "stockade=" + EXPECTED_PARAMS
    assert headers["content-digest"] == content_digest(request_.body)
    r, s = signature_bytes(headers)[:32], signature_bytes(headers)[32:]
    der = utils.encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
    KEY.public_key().verify(der, expected, ec.ECDSA(hashes.SHA256()))


@pytest.mark.tools
@pytest.mark.skipif(shutil.which("openssl") is None, reason="openssl is not installed")
def test_signature_verifies_with_openssl(signed, tmp_path: Path):
    """An independent ECDSA implementation: r || s re-encoded as DER, over the hand-written
    base, with ``openssl dgst -sha256 -verify``."""
    raw = signature_bytes(signed)
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    (tmp_path / "key.pem").write_bytes(
        KEY.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    (tmp_path / "sig.der").write_bytes(der)
    (tmp_path / "base").write_bytes(EXPECTED_BASE)
    (tmp_path / "other").write_bytes(EXPECTED_BASE.replace(b"POST", b"PUT", 1))

    def openssl_verify(name: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["openssl", "dgst", "-sha256", "-verify", "key.pem", "-signature", "sig.der", name],
            cwd=tmp_path,
            capture_output=True,
            text=True,
            timeout=30,
            check=False,
        )

    good = openssl_verify("base")
    assert good.returncode == 0, good.stderr
    assert "Verified OK" in good.stdout
    bad = openssl_verify("other")
    assert bad.returncode == 1
    assert "Verification failure" in bad.stdout


# -- refusals: shape -----------------------------------------------------------------------


@pytest.mark.parametrize("name", ["signature-input", "signature", "content-digest"])
def test_missing_header(signed, name):
    headers = {key: value for key, value in signed.items() if key != name}
    error = refused("missing", headers)
    assert name in error.detail.lower()


def test_no_headers_at_all():
    refused("missing", {})


INPUT = "stockade=" + EXPECTED_PARAMS


@pytest.mark.parametrize(
    "value",
    [
        # other or extra components, or components with parameters
        INPUT.replace('"content-digest")', '"content-digest" "host")'),
        INPUT.replace('"@query" "content-digest"', '"content-digest"'),
        INPUT.replace('("@method" ', '("@method" "@authority" '),
        INPUT.replace('"@query"', '"@query";req'),
        INPUT.replace('"content-digest"', '"content-digest";sf'),
        INPUT.replace('"content-digest"', '"Content-Digest"'),
        INPUT.replace('"@method" "@path"', '"@path" "@method"'),
        INPUT.replace('"@path"', '"@target-uri"'),
        INPUT.replace('("@method" "@path" "@query" "content-digest")', "()"),
        INPUT.replace('" "', '"  "', 1),
        # reordered, missing or extra parameters
        INPUT.replace(';created=1700000000;keyid="node-1"', ';keyid="node-1";created=1700000000'),
        INPUT.replace(';alg="ecdsa-p256-sha256";tag="stockade-node"', ';tag="stockade-node"')
        + ';alg="ecdsa-p256-sha256"',
        INPUT.replace(';keyid="node-1";nonce=', ";nonce=").replace(
            'nonce="fixed-nonce-0123456789"', 'nonce="fixed-nonce-0123456789";keyid="node-1"'
        ),
        INPUT.replace(";created=1700000000", ""),
        INPUT.replace(';nonce="fixed-nonce-0123456789"', ""),
        INPUT.replace(';keyid="node-1"', ""),
        INPUT + ";expires=1700000300",
        INPUT.replace(";created=", ";expires=1700000300;created="),
        # other or two labels
        INPUT.replace("stockade=", "sig1=", 1),
        INPUT.replace("stockade=", "Stockade=", 1),
        INPUT + ", other=" + EXPECTED_PARAMS,
        "other=" + EXPECTED_PARAMS + ", " + INPUT,
        INPUT + ", " + INPUT,  # a repeated field, combined as HTTP does
        # wrong algorithm or tag
        INPUT.replace("ecdsa-p256-sha256", "ecdsa-p384-sha384"),
        INPUT.replace("ecdsa-p256-sha256", "ed25519"),
        INPUT.replace("ecdsa-p256-sha256", "hmac-sha256"),
        INPUT.replace("ecdsa-p256-sha256", "ECDSA-P256-SHA256"),
        INPUT.replace(';alg="ecdsa-p256-sha256"', ""),
        INPUT.replace("stockade-node", "stockade-agent"),
        INPUT.replace(';tag="stockade-node"', ""),
        # parameter values out of their ranges or not quoted
        INPUT.replace("created=1700000000", "created=1700000000000"),
        INPUT.replace("created=1700000000", "created=-1"),
        INPUT.replace("created=1700000000", 'created="1700000000"'),
        INPUT.replace("created=1700000000", "created=1700000000.5"),
        INPUT.replace('keyid="node-1"', "keyid=node-1"),
        INPUT.replace('keyid="node-1"', 'keyid=""'),
        INPUT.replace('keyid="node-1"', f'keyid="{"n" * 65}"'),
        INPUT.replace('keyid="node-1"', 'keyid="node 1"'),
        INPUT.replace('keyid="node-1"', 'keyid="node\\"1"'),
        INPUT.replace('nonce="fixed-nonce-0123456789"', 'nonce="short-nonce-123"'),
        INPUT.replace('nonce="fixed-nonce-0123456789"', f'nonce="{"n" * 65}"'),
        INPUT.replace('nonce="fixed-nonce-0123456789"', 'nonce="fixed+nonce/0123456789"'),
        # not the structure at all
        "",
        "stockade",
        "stockade=",
        INPUT[:-1],
        INPUT + ";",
        INPUT.replace("stockade=", "stockade =", 1),
    ],
)
def test_signature_input_of_another_shape_is_malformed(signed, value):
    refused("malformed", with_header(signed, "signature-input", value))


def test_extra_component_even_when_signed_is_refused(signed):
    """A genuine RFC 9421 signature over more components is still not Stockade's shape."""
    params = EXPECTED_PARAMS.replace('"content-digest")', '"content-digest" "host")')
    base = (
        EXPECTED_BASE.split(b'"@signature-params"')[0]
        + b'"host": verifier.example\n"@signature-params": '
        + params.encode()
    )
    der = KEY.sign(base, ec.ECDSA(hashes.SHA256()))
    headers = {
        **signed,
        "signature-input": "stockade=" + params,
        "signature": signature_header(raw_signature(*utils.decode_dss_signature(der))),
    }
    refused("malformed", headers)


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


@pytest.mark.parametrize(
    "make",
    [
        lambda raw: signature_header(raw, "sig1"),
        lambda raw: signature_header(raw, "Stockade"),
        lambda raw: signature_header(raw) + ", other=" + signature_header(raw)[9:],
        lambda raw: signature_header(raw) + ", " + signature_header(raw),
        lambda raw: "other=" + signature_header(raw)[9:] + ", " + signature_header(raw),
        lambda raw: signature_header(raw[:63]),  # 63 bytes
        lambda raw: signature_header(raw + b"\x00"),  # 65 bytes
        lambda raw: signature_header(b"\x00" + raw),  # 65 bytes, leading zero
        lambda raw: signature_header(raw + raw),  # 128 bytes
        lambda raw: signature_header(b""),
        lambda raw: "stockade=:" + _b64(raw)[:-2] + ":",  # no padding
        lambda raw: "stockade=:" + _b64(raw)[:-1] + ":",  # half the padding
        lambda raw: "stockade=:" + _b64(raw) + "=:",  # too much padding
        lambda raw: "stockade=:" + base64.urlsafe_b64encode(b"\xfb\xff" * 32).decode() + ":",
        lambda raw: "stockade=:" + "!" + _b64(raw)[1:] + ":",
        lambda raw: "stockade=:" + _b64(raw)[:40] + " " + _b64(raw)[41:] + ":",
        lambda raw: "stockade=:" + _b64(raw)[:40] + "=" + _b64(raw)[41:] + ":",
        lambda raw: "stockade=:" + raw.hex() + ":",
        lambda raw: "stockade=" + _b64(raw),  # not an sf-binary
        lambda raw: "stockade=:" + _b64(raw),
        lambda raw: "stockade=:" + _b64(raw) + ":;keyid=x",
        lambda raw: ":" + _b64(raw) + ":",
        lambda raw: "",
    ],
)
def test_signature_of_another_shape_is_malformed(signed, make):
    refused("malformed", with_header(signed, "signature", make(signature_bytes(signed))))


@pytest.mark.parametrize(
    "value",
    [
        "sha-512=:" + _b64(hashlib.sha512(REQUEST.body).digest()) + ":",
        EXPECTED_DIGEST + ", sha-512=:" + _b64(hashlib.sha512(REQUEST.body).digest()) + ":",
        EXPECTED_DIGEST + ", " + EXPECTED_DIGEST,
        "SHA-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=:",
        "sha-256=" + hashlib.sha256(REQUEST.body).hexdigest(),
        "sha-256=:X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE:",
        "sha-256=:" + _b64(hashlib.sha256(REQUEST.body).digest()[:31]) + ":",
        "sha-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",
        "SHA-256=X48E9qOokqqrvdts8nOJRJN3OWDUoyWxBf7kbu9DBPE=",  # RFC 3230 Digest syntax
        "",
    ],
)
def test_content_digest_of_another_shape_is_malformed(signed, value):
    refused("malformed", with_header(signed, "content-digest", value))


def test_the_not_base64_branch_is_unreachable_behind_the_shape_check(signed):
    """The Signature pattern admits only base64 characters and ``==``: every value that
    reaches the decoder decodes (the ``binascii.Error`` branch is defensive)."""
    for character in "+/AZaz09":
        value = "stockade=:" + character * 86 + "==:"
        request, _, raw, _ = parse_signed_request(with_header(signed, "signature", value))
        assert len(raw) == 64 and request.keyid == KEYID


def test_whitespace_around_header_values_is_not_part_of_them(signed):
    """RFC 9421, 2.1: leading and trailing whitespace is removed from field values."""
    padded = {name: f" \t{value} " for name, value in signed.items()}
    assert verify(padded) == SignedRequest(KEYID, CREATED, NONCE)


def test_non_zero_base64_pad_bits_decode_to_the_same_signature(signed):
    """RFC 8941, 4.2.7: parsers SHOULD NOT fail on non-zero pad bits. The last base64
    character of 64 bytes carries 2 bits; the 4 others decode to nothing, so 16 spellings
    name the same signature. It verifies; the nonce (unchanged) still stops a replay."""
    value = signed["signature"]
    last = value[-4]  # stockade=:<85 chars><last>==:
    alphabet = string.ascii_uppercase + string.ascii_lowercase + string.digits + "+/"
    index = alphabet.index(last)
    assert index & 0x0F == 0
    spellings = [value[:-4] + alphabet[index | low] + value[-3:] for low in range(16)]
    assert len(set(spellings)) == 16
    for spelling in spellings:
        assert verify(with_header(signed, "signature", spelling)).nonce == NONCE
    cache = ReplayCache(window=MAX_SKEW)
    outcomes = [
        cache.admit(KEYID, verify(with_header(signed, "signature", s)).nonce, CREATED, CREATED)
        for s in spellings
    ]
    assert outcomes == [True] + [False] * 15


# -- refusals: what was signed -----------------------------------------------------------------


def test_body_changed(signed):
    for body in (b'{"x": 1}', b"", REQUEST.body + b" ", REQUEST.body[:-1]):
        refused("digest", signed, Request(REQUEST.method, REQUEST.path, REQUEST.query, body))


def test_digest_header_changed(signed):
    other = content_digest(b"another body")
    refused("digest", with_header(signed, "content-digest", other))
    # body and digest changed together: the digest is covered by the signature
    changed = Request(REQUEST.method, REQUEST.path, REQUEST.query, b"another body")
    refused("signature", with_header(signed, "content-digest", other), changed)


@pytest.mark.parametrize(
    "request_",
    [
        Request("PUT", REQUEST.path, REQUEST.query, REQUEST.body),
        Request("GET", REQUEST.path, REQUEST.query, REQUEST.body),
        Request(REQUEST.method, "/v1/nodes/node-2/attest", REQUEST.query, REQUEST.body),
        Request(REQUEST.method, REQUEST.path + "/", REQUEST.query, REQUEST.body),
        Request(REQUEST.method, "/V1/nodes/node-1/attest", REQUEST.query, REQUEST.body),
        Request(REQUEST.method, "/v1/nodes/node%2D1/attest", REQUEST.query, REQUEST.body),
        Request(REQUEST.method, REQUEST.path, "pcrs=sha256:0-8&x=1", REQUEST.body),
        Request(REQUEST.method, REQUEST.path, "", REQUEST.body),
        Request(REQUEST.method, REQUEST.path, "x=1&pcrs=sha256:0-7", REQUEST.body),
        Request(REQUEST.method, REQUEST.path, REQUEST.query + "&", REQUEST.body),
        Request(REQUEST.method, REQUEST.path + "?" + REQUEST.query, "", REQUEST.body),
    ],
    ids=[
        "method-put",
        "method-get",
        "path-other-node",
        "path-trailing-slash",
        "path-case",
        "path-percent-encoded",
        "query-value",
        "query-dropped",
        "query-reordered",
        "query-extra-separator",
        "query-moved-into-path",
    ],
)
def test_method_path_or_query_changed(signed, request_):
    refused("signature", signed, request_)


def test_keyid_of_another_node(signed):
    error = refused("keyid", signed, keyid="node-2")
    assert "node-1" in error.detail and "node-2" in error.detail
    # Rewriting the key id to the node being impersonated breaks the signature.
    rewritten = with_header(
        signed, "signature-input", signed["signature-input"].replace("node-1", "node-2")
    )
    refused("signature", rewritten, keyid="node-2")
    refused("signature", rewritten, keyid="node-2", key=OTHER_KEY.public_key())


def test_signature_by_another_key(signed):
    refused("signature", sign(key=OTHER_KEY))
    refused("signature", signed, key=OTHER_KEY.public_key())


@pytest.mark.parametrize(
    ("r", "s"),
    [
        (0, 0),
        (0, 1),
        (1, 0),
        (P256_ORDER, 1),
        (1, P256_ORDER),
        (2**256 - 1, 2**256 - 1),
        (1, 1),
    ],
)
def test_degenerate_signature_values(signed, r, s):
    refused("signature", with_header(signed, "signature", signature_header(raw_signature(r, s))))


def test_high_s_variant_is_accepted_and_stopped_by_the_nonce(signed):
    """(r, n - s) verifies as well as (r, s) with cryptography/OpenSSL; the verifier accepts it
    and it carries the same nonce, so the replay cache refuses it after the original."""
    raw = signature_bytes(signed)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    variant = with_header(signed, "signature", signature_header(raw_signature(r, P256_ORDER - s)))
    assert variant["signature"] != signed["signature"]
    first, second = verify(signed), verify(variant)
    assert first == second == SignedRequest(KEYID, CREATED, NONCE)
    cache = ReplayCache(window=MAX_SKEW)
    assert cache.admit(first.keyid, first.nonce, first.created, CREATED)
    assert not cache.admit(second.keyid, second.nonce, second.created, CREATED)


def test_high_s_is_accepted_by_the_underlying_library():
    """The behaviour the test above relies on, checked on cryptography directly."""
    der = KEY.sign(b"message", ec.ECDSA(hashes.SHA256()))
    r, s = utils.decode_dss_signature(der)
    for value in (s, P256_ORDER - s):
        KEY.public_key().verify(
            utils.encode_dss_signature(r, value), b"message", ec.ECDSA(hashes.SHA256())
        )
    with pytest.raises(InvalidSignature):
        KEY.public_key().verify(
            utils.encode_dss_signature(r, P256_ORDER + s), b"message", ec.ECDSA(hashes.SHA256())
        )


# -- freshness -------------------------------------------------------------------------------


@pytest.mark.parametrize("skew", [0, 1, MAX_SKEW - 1, MAX_SKEW])
def test_created_within_max_skew_is_accepted(signed, skew):
    assert verify(signed, now=CREATED + skew).created == CREATED  # created in the past
    assert verify(signed, now=CREATED - skew).created == CREATED  # created in the future


@pytest.mark.parametrize("skew", [MAX_SKEW + 1, MAX_SKEW + 3600, CREATED])
def test_created_beyond_max_skew_is_stale(signed, skew):
    error = refused("stale", signed, now=CREATED + skew)
    assert str(CREATED) in error.detail
    refused("stale", signed, now=CREATED - skew)


def test_zero_skew_accepts_only_the_same_second(signed):
    verify(signed, now=CREATED, max_skew=0)
    refused("stale", signed, now=CREATED + 1, max_skew=0)
    refused("stale", signed, now=CREATED - 1, max_skew=0)


def test_checks_run_in_order_keyid_digest_stale_signature(signed):
    """Cheap checks first: the reason reported is the first that fails."""
    other_body = Request(REQUEST.method, REQUEST.path, REQUEST.query, b"x")
    refused("keyid", signed, other_body, keyid="node-2", now=CREATED + 10_000)
    refused("digest", signed, other_body, now=CREATED + 10_000, key=OTHER_KEY.public_key())
    refused("stale", signed, now=CREATED + 10_000, key=OTHER_KEY.public_key())


# -- signing errors -----------------------------------------------------------------------


@pytest.mark.parametrize("keyid", ["", "node 1", 'node"1', "n" * 65, "nöde", "node,1", "a\nb"])
def test_sign_request_refuses_a_keyid_it_cannot_send(keyid):
    with pytest.raises(ValueError, match="key id"):
        sign(keyid=keyid)


@pytest.mark.parametrize("size", [0, 63, 65, 72])
def test_sign_request_refuses_a_signer_that_does_not_return_r_s(size):
    with pytest.raises(ValueError, match="64 bytes"):
        sign_request(
            "GET", "/", "", b"", keyid=KEYID, created=CREATED, sign_digest=lambda _: bytes(size)
        )


# -- the replay cache ---------------------------------------------------------------------


def test_replay_is_refused():
    cache = ReplayCache(window=MAX_SKEW)
    assert cache.admit(KEYID, NONCE, CREATED, CREATED)
    assert not cache.admit(KEYID, NONCE, CREATED, CREATED)
    assert not cache.admit(KEYID, NONCE, CREATED, CREATED + MAX_SKEW)
    # the same nonce from another node, or another nonce, is not a replay
    assert cache.admit("node-2", NONCE, CREATED, CREATED)
    assert cache.admit(KEYID, NONCE + "x", CREATED, CREATED)


def test_a_verified_request_replayed_is_refused_by_the_cache(signed):
    cache = ReplayCache(window=MAX_SKEW)
    outcomes = []
    for now in (CREATED, CREATED + 1, CREATED + MAX_SKEW):
        request = verify(signed, now=now)
        outcomes.append(cache.admit(request.keyid, request.nonce, request.created, now))
    assert outcomes == [True, False, False]
    refused("stale", signed, now=CREATED + MAX_SKEW + 1)  # and after that, it is stale


def test_entries_expire_after_the_window():
    cache = ReplayCache(window=300)
    assert cache.admit(KEYID, NONCE, 1000, 1000)
    assert not cache.admit(KEYID, NONCE, 1000, 1300)  # exactly at the window: still held
    assert cache.admit(KEYID, NONCE, 1000, 1301)  # one second later: forgotten


def test_a_nonce_lives_as_long_as_its_signature_would_be_accepted():
    """An entry expires by the later of arrival and creation: a signature dated in the future
    (clock skew) stays replayable until ``created + max_skew``, and so stays in the cache."""
    window = MAX_SKEW
    cache = ReplayCache(window=window)
    created = CREATED + MAX_SKEW  # arrives MAX_SKEW early
    assert cache.admit(KEYID, NONCE, created, CREATED)
    for now in range(CREATED, created + MAX_SKEW + 1, 50):
        assert not cache.admit(KEYID, NONCE, created, now)
    assert not cache.admit(KEYID, NONCE, created, created + MAX_SKEW)
    assert cache.admit(KEYID, NONCE, created, created + MAX_SKEW + 1)


def test_capacity_full_of_live_entries_refuses_fail_closed():
    cache = ReplayCache(window=300, capacity=3)
    assert all(cache.admit(KEYID, f"nonce-{i}", 1000, 1000 + i) for i in range(3))
    # a fresh nonce that was never seen is refused: nothing live may be forgotten
    assert not cache.admit(KEYID, "fresh", 1003, 1003)
    assert not cache.admit(KEYID, "nonce-0", 1000, 1003)  # and replays stay refused
    # once the oldest expires, there is room again, and only for one
    assert cache.admit(KEYID, "fresh", 1301, 1301)
    assert not cache.admit(KEYID, "fresh-2", 1301, 1301)
    assert cache.admit(KEYID, "fresh-2", 1303, 1303)


def test_capacity_zero_refuses_everything():
    assert not ReplayCache(window=300, capacity=0).admit(KEYID, NONCE, 1000, 1000)


def test_thread_safety_smoke():
    """Many threads admitting the same nonces: each nonce is admitted exactly once; many
    threads filling a small cache: exactly ``capacity`` nonces are admitted."""
    threads, nonces = 8, 500
    cache = ReplayCache(window=300)
    barrier = threading.Barrier(threads)
    admitted: list[list[str]] = [[] for _ in range(threads)]

    def race(number: int) -> None:
        barrier.wait()
        order = range(nonces) if number % 2 else reversed(range(nonces))
        for i in order:
            if cache.admit(KEYID, f"nonce-{i:04d}", 1000, 1000):
                admitted[number].append(f"nonce-{i:04d}")

    workers = [threading.Thread(target=race, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    everything = [nonce for bucket in admitted for nonce in bucket]
    assert len(everything) == nonces
    assert set(everything) == {f"nonce-{i:04d}" for i in range(nonces)}

    small = ReplayCache(window=300, capacity=100)
    counts = [0] * threads
    barrier = threading.Barrier(threads)

    def fill(number: int) -> None:
        barrier.wait()
        for i in range(50):
            counts[number] += small.admit(f"node-{number}", f"nonce-{i:04d}", 1000, 1000)

    workers = [threading.Thread(target=fill, args=(n,)) for n in range(threads)]
    for worker in workers:
        worker.start()
    for worker in workers:
        worker.join()
    assert sum(counts) == 100


# -- the certification nonce -------------------------------------------------------------------


def test_channel_certify_nonce():
    enrollment, secret = "0b6f1a9e-4a7e-4c1e-9b0c-3c8f2f6d1e2a", bytes(range(32))
    expected = hashlib.sha256(
        b"stockade/v1 channel key\x00" + enrollment.encode() + b"\x00" + secret
    )
    assert channel_certify_nonce(enrollment, secret) == expected.digest()
    assert len(channel_certify_nonce(enrollment, secret)) == 32
    others = {
        channel_certify_nonce(enrollment, secret),
        channel_certify_nonce(enrollment.replace("0b", "0c", 1), secret),
        channel_certify_nonce(enrollment, bytes(32)),
        channel_certify_nonce("", b""),
    }
    assert len(others) == 4


def test_channel_certify_nonce_separates_the_id_from_the_secret():
    """("ab", b"c") and ("a", b"bc") are different enrollments: their nonces differ."""
    assert channel_certify_nonce("ab", b"c") != channel_certify_nonce("a", b"bc")


# -- hypothesis: round trips and mutations --------------------------------------------------

UNRESERVED = string.ascii_letters + string.digits + "-._~"
PCHAR = UNRESERVED + "!$&'()*+,;=:@"  # RFC 3986, 3.3 (plus pct-encoded, below)
TCHAR = string.ascii_uppercase + string.digits + "!#$%&'*+-.^_`|~"  # RFC 9110, 5.6.2
pct_encoded = st.tuples(st.sampled_from("0123456789ABCDEF"), st.sampled_from("0123456789ABCDEF"))
path_char = st.one_of(st.sampled_from(PCHAR), pct_encoded.map(lambda pair: "%" + "".join(pair)))
segments = st.lists(st.lists(path_char, max_size=12).map("".join), min_size=1, max_size=6)
paths = segments.map(lambda parts: "/" + "/".join(parts))
queries = st.lists(st.one_of(path_char, st.sampled_from("/?")), max_size=40).map("".join)
methods = st.one_of(
    st.sampled_from(["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS"]),
    st.text(alphabet=TCHAR, min_size=1, max_size=12),
)
requests = st.builds(Request, methods, paths, queries, st.binary(max_size=2048))


@settings(max_examples=150, deadline=None)
@given(
    request_=requests,
    keyid=st.from_regex(r"[A-Za-z0-9._-]{1,64}", fullmatch=True),
    nonce=st.one_of(st.none(), st.from_regex(r"[A-Za-z0-9_-]{16,64}", fullmatch=True)),
    created=st.integers(0, 10**12 - 1),
)
def test_property_arbitrary_requests_round_trip(request_, keyid, nonce, created):
    headers = sign(request_, keyid=keyid, created=created, nonce=nonce)
    verified = verify(headers, request_, keyid=keyid, now=created)
    assert (verified.keyid, verified.created) == (keyid, created)
    assert nonce is None or verified.nonce == nonce
    # the key signed exactly the RFC 9421 base, built here independently
    base = "\n".join(
        [
            f'"@method": {request_.method}',
            f'"@path": {request_.path}',
            f'"@query": ?{request_.query}',
            '"content-digest": sha-256=:'
            + base64.b64encode(hashlib.sha256(request_.body).digest()).decode()
            + ":",
            '"@signature-params": ' + headers["signature-input"].removeprefix("stockade="),
        ]
    ).encode()
    raw = signature_bytes(headers)
    der = utils.encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    KEY.public_key().verify(der, base, ec.ECDSA(hashes.SHA256()))
    # and it is bound to this request: any other body is refused
    longer = Request(request_.method, request_.path, request_.query, request_.body + b"\x00")
    refused("digest", headers, longer, keyid=keyid, now=created)


SIGNED = sign()
MUTATION_CHARACTERS = st.one_of(
    st.sampled_from(string.printable),
    st.sampled_from(["\x00", "\x7f", "\x80", "\xff", "é", "\u2028", "\ufeff", "\U0001d7d8"]),
)


@st.composite
def mutated_headers(draw):
    headers = dict(SIGNED)
    for _ in range(draw(st.integers(1, 4))):
        name = draw(st.sampled_from(sorted(headers)))
        value = headers[name]
        operation = draw(st.sampled_from(["replace", "flip", "insert", "delete", "truncate"]))
        position = draw(st.integers(0, max(len(value) - 1, 0)))
        if operation == "replace" and value:
            value = value[:position] + draw(MUTATION_CHARACTERS) + value[position + 1 :]
        elif operation == "flip" and value:
            flipped = chr(ord(value[position]) ^ (1 << draw(st.integers(0, 7))))
            value = value[:position] + flipped + value[position + 1 :]
        elif operation == "insert":
            value = value[:position] + draw(MUTATION_CHARACTERS) + value[position:]
        elif operation == "delete" and value:
            value = value[:position] + value[position + draw(st.integers(1, 4)) :]
        elif operation == "truncate":
            value = value[:position]
        headers[name] = value
    assume(headers != SIGNED)
    return headers


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(headers=mutated_headers())
def test_property_mutated_headers_never_verify_and_raise_only_channel_auth_errors(headers):
    try:
        parsed = parse_signed_request(headers)
    except ChannelAuthError as error:
        assert error.reason in REASONS
        parsed = None
    try:
        verify(headers)
    except ChannelAuthError as error:
        assert error.reason in REASONS
        return
    # Verified: only a spelling of the very same signed request may get here (whitespace
    # around a value, or non-zero base64 pad bits; both tested above).
    assert parsed == parse_signed_request(SIGNED)
    changed = {name for name in SIGNED if headers[name].strip() != SIGNED[name]}
    assert changed <= {"signature"}, changed
    if changed:
        value, original = headers["signature"].strip(), SIGNED["signature"]
        assert len(value) == len(original)
        assert [i for i in range(len(value)) if value[i] != original[i]] == [len(value) - 4]


@settings(max_examples=300, deadline=None)
@given(
    values=st.tuples(
        st.one_of(st.none(), st.text(max_size=300)),
        st.one_of(st.none(), st.text(max_size=120)),
        st.one_of(st.none(), st.text(max_size=80)),
    )
)
def test_property_arbitrary_header_text_raises_only_channel_auth_errors(values):
    names = ("signature-input", "signature", "content-digest")
    headers = {name: value for name, value in zip(names, values, strict=True) if value is not None}
    with pytest.raises(ChannelAuthError) as caught:
        verify(headers)
    assert caught.value.reason in REASONS


# -- RFC 9421 details the module once got wrong ----------------------------------------------


def test_rfc9421_method_is_not_case_normalized():
    base = signature_base("post", "/p", "", EXPECTED_DIGEST, EXPECTED_PARAMS)
    assert base.startswith(b'"@method": post\n')


def test_rfc9421_empty_path_is_a_slash():
    base = signature_base("GET", "", "", EXPECTED_DIGEST, EXPECTED_PARAMS)
    assert b'\n"@path": /\n' in base


def test_non_ascii_path_is_refused_with_channel_auth_error(signed):
    with pytest.raises(ChannelAuthError):
        verify(signed, Request(REQUEST.method, "/v1/nodes/node-1/\xe9", "", REQUEST.body))


@pytest.mark.parametrize("character", ["\x0c", "\x1c", "\x85", "\xa0", "\u2028"])
def test_only_sp_and_htab_are_stripped(signed, character):
    refused("malformed", with_header(signed, "signature", signed["signature"] + character))
