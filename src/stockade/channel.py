"""The node channel: every call a node makes after enrollment is signed by its channel key.

The channel key is an ECC P-256 signing key inside the node's TPM, certified by the node's AK
(TPM2_Certify) when the node activates its enrollment; the verifier pins its public key on the
node's row. Requests carry an HTTP Message Signature (RFC 9421) made with it:

    Content-Digest: sha-256=:<base64 SHA-256 of the body>:                    (RFC 9530)
    Signature-Input: stockade=("@method" "@path" "@query" "content-digest");created=<unix>;
                     keyid="<node id>";nonce="<random>";alg="ecdsa-p256-sha256";tag="stockade-node"
    Signature: stockade=:<base64 r || s>:                                    (RFC 9421, 3.3.4)

The signature base is RFC 9421, 2.5: one ``"<component>": <value>`` line per covered component,
then ``"@signature-params": <the Signature-Input member value>``. This module is pure: it builds
and checks headers; the signer (the TPM) and the clock are parameters. Only exactly this shape
is accepted: one label, these components in this order, these parameters in this order.
"""

from __future__ import annotations

import base64
import hashlib
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, utils

CHANNEL_CERTIFY_LABEL = b"stockade/v1 channel key\0"
LABEL = "stockade"
TAG = "stockade-node"
ALGORITHM = "ecdsa-p256-sha256"
COMPONENTS = ("@method", "@path", "@query", "content-digest")
MAX_KEYID = 64

_INPUT = re.compile(
    r'stockade=\("@method" "@path" "@query" "content-digest"\)'
    r";created=(?P<created>[0-9]{1,12})"
    r';keyid="(?P<keyid>[A-Za-z0-9._-]{1,64})"'
    r';nonce="(?P<nonce>[A-Za-z0-9_-]{16,64})"'
    r';alg="ecdsa-p256-sha256";tag="stockade-node"'
)
_SIGNATURE = re.compile(r"stockade=:(?P<value>[A-Za-z0-9+/]{86}==):")
_DIGEST = re.compile(r"sha-256=:(?P<value>[A-Za-z0-9+/]{43}=):")


class ChannelAuthError(Exception):
    """A request's channel signature is missing, malformed, stale, replayed or wrong."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason  # a short code: missing, malformed, digest, stale, replay, signature
        self.detail = detail


@dataclass(frozen=True)
class SignedRequest:
    """What a verified signature says: the key id (the node id), when, and its nonce."""

    keyid: str
    created: int
    nonce: str


def channel_certify_nonce(enrollment_id: str, secret: bytes) -> bytes:
    """What the AK certifies the channel key over at activation (TPM2_Certify qualifyingData):
    bound to this enrollment and to the secret only the EK's TPM could recover."""
    return hashlib.sha256(CHANNEL_CERTIFY_LABEL + enrollment_id.encode() + b"\0" + secret).digest()


def content_digest(body: bytes) -> str:
    """The RFC 9530 ``Content-Digest`` value for ``body``."""
    return "sha-256=:" + base64.b64encode(hashlib.sha256(body).digest()).decode() + ":"


def _query_component(query: str) -> str:
    """RFC 9421, 2.2.7: ``?`` followed by the query, ``?`` alone for none."""
    return "?" + query


def signature_base(method: str, path: str, query: str, digest: str, signature_params: str) -> bytes:
    """RFC 9421, 2.5. ``signature_params`` is the Signature-Input member value."""
    lines = [
        f'"@method": {method}',  # 2.2.1: the method as sent, no case change
        f'"@path": {path or "/"}',  # 2.2.6: an empty path is "/"
        f'"@query": {_query_component(query)}',
        f'"content-digest": {digest}',
        f'"@signature-params": {signature_params}',
    ]
    return "\n".join(lines).encode("ascii")


def signature_params(keyid: str, created: int, nonce: str) -> str:
    components = " ".join(f'"{name}"' for name in COMPONENTS)
    return (
        f'({components});created={created};keyid="{keyid}";nonce="{nonce}";'
        f'alg="{ALGORITHM}";tag="{TAG}"'
    )


def sign_request(
    method: str,
    path: str,
    query: str,
    body: bytes,
    *,
    keyid: str,
    created: int,
    sign_digest: Callable[[bytes], bytes],
    nonce: str | None = None,
) -> dict[str, str]:
    """The three headers for a request. ``sign_digest`` signs a SHA-256 digest with the channel
    key and returns IEEE P1363 ``r || s`` (64 bytes) — in the TPM, on a node."""
    if not re.fullmatch(r"[A-Za-z0-9._-]{1,64}", keyid):
        raise ValueError(f"key id {keyid!r} cannot be sent in a signature parameter")
    nonce = nonce or secrets.token_urlsafe(24)
    digest = content_digest(body)
    params = signature_params(keyid, created, nonce)
    base = signature_base(method, path, query, digest, params)
    signature = sign_digest(hashlib.sha256(base).digest())
    if len(signature) != 64:
        raise ValueError("an ecdsa-p256-sha256 signature is 64 bytes (r || s)")
    return {
        "Content-Digest": digest,
        "Signature-Input": f"{LABEL}={params}",
        "Signature": f"{LABEL}=:{base64.b64encode(signature).decode()}:",
    }


def _header(headers: Mapping[str, str], name: str) -> str:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.title())
    if value is None:
        raise ChannelAuthError(
            "missing",
            f"this call must be signed with the node's channel key (no {name} header; "
            "docs/verifier-protocol.md, 'The node channel')",
        )
    return value.strip(" \t")  # only the optional whitespace of RFC 9110, 5.6.3


def parse_signed_request(headers: Mapping[str, str]) -> tuple[SignedRequest, str, bytes, str]:
    """(parameters, the Signature-Input member value, the signature, the Content-Digest);
    ``ChannelAuthError`` unless the headers have exactly Stockade's shape."""
    signature_input = _header(headers, "signature-input")
    signature = _header(headers, "signature")
    digest = _header(headers, "content-digest")
    matched = _INPUT.fullmatch(signature_input)
    if matched is None:
        raise ChannelAuthError(
            "malformed",
            'Signature-Input must be exactly stockade=("@method" "@path" "@query" '
            '"content-digest");created=..;keyid="<node id>";nonce="..";'
            'alg="ecdsa-p256-sha256";tag="stockade-node"',
        )
    signed = _SIGNATURE.fullmatch(signature)
    if signed is None:
        raise ChannelAuthError("malformed", "Signature must be stockade=:<base64 of 64 bytes>:")
    if _DIGEST.fullmatch(digest) is None:
        raise ChannelAuthError("malformed", "Content-Digest must be sha-256=:<base64>:")
    try:
        raw = base64.b64decode(signed.group("value"), validate=True)
    except ValueError:  # unreachable after the regex; kept so no decoding error escapes
        raise ChannelAuthError("malformed", "Signature is not base64") from None
    request = SignedRequest(
        keyid=matched.group("keyid"),
        created=int(matched.group("created")),
        nonce=matched.group("nonce"),
    )
    return request, signature_input.removeprefix(f"{LABEL}="), raw, digest


def verify_request(
    method: str,
    path: str,
    query: str,
    body: bytes,
    headers: Mapping[str, str],
    public_key: ec.EllipticCurvePublicKey,
    *,
    keyid: str,
    now: int,
    max_skew: int,
) -> SignedRequest:
    """Check a request's channel signature for the node ``keyid`` holding ``public_key``.

    Refused (``ChannelAuthError``): another shape, another key id, a body that does not match
    its digest, ``created`` more than ``max_skew`` seconds from ``now``, or a signature that
    does not verify. Replays inside the window are the caller's to refuse (``ReplayCache``).
    """
    request, params, raw, digest = parse_signed_request(headers)
    if request.keyid != keyid:
        raise ChannelAuthError(
            "keyid", f"the request is signed for node {request.keyid}, not for {keyid}"
        )
    if digest != content_digest(body):
        raise ChannelAuthError("digest", "Content-Digest does not match the body")
    if abs(now - request.created) > max_skew:
        raise ChannelAuthError(
            "stale",
            f"the signature was created at {request.created}, the verifier's time is {now} "
            f"(allowed skew {max_skew} s): check the node's clock",
        )
    try:
        base = signature_base(method, path, query, digest, params)
    except UnicodeEncodeError:
        raise ChannelAuthError("malformed", "the request target is not ASCII") from None
    r = int.from_bytes(raw[:32], "big")
    s = int.from_bytes(raw[32:], "big")
    try:
        public_key.verify(utils.encode_dss_signature(r, s), base, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        raise ChannelAuthError(
            "signature", f"the signature does not verify with node {keyid}'s channel key"
        ) from None
    return request


class ReplayCache:
    """Signature nonces seen in the last ``window`` seconds, bounded to ``capacity`` entries.

    Full of live entries, it refuses (fail closed) rather than forget one still replayable.
    """

    def __init__(self, window: int, capacity: int = 200_000) -> None:
        self.window = window
        self.capacity = capacity
        self._seen: OrderedDict[tuple[str, str], int] = OrderedDict()
        self._lock = threading.Lock()

    def admit(self, keyid: str, nonce: str, created: int, now: int) -> bool:
        """Remember the nonce; False when it was seen already (a replay) or no room is left."""
        with self._lock:
            return self._admit(keyid, nonce, created, now)

    def _admit(self, keyid: str, nonce: str, created: int, now: int) -> bool:
        horizon = now - self.window
        while self._seen:
            oldest_key, oldest_time = next(iter(self._seen.items()))
            if oldest_time >= horizon:
                break
            del self._seen[oldest_key]
        key = (keyid, nonce)
        if key in self._seen or len(self._seen) >= self.capacity:
            return False
        # Expire by the later of arrival and creation: a nonce lives as long as its signature
        # would be accepted.
        self._seen[key] = max(now, created)
        return True
