"""Who may read trust state and who may change it: roles, named credentials, browser sessions.

Two roles: ``operator`` (every call, including those that change trust decisions) and
``reader`` (reads of trust state only). Credentials are bearer tokens:

- the built-in operator token, made once (32 random bytes, base64url) in
  ``<data_dir>/operator-token`` with mode 0600 unless the configuration supplies one; its
  actor is named ``operator``;
- the built-in reader token, made the same way in ``<data_dir>/reader-token``; actor
  ``reader``;
- named credentials from ``VerifierConfig.credentials_file``: one per line,
  ``<name> <operator|reader> sha256:<hex of the token>``, so each person or component has its
  own token and events record who acted. The file holds hashes only.

Tokens are compared as SHA-256 digests in constant time against every credential. Clients send
``Authorization: Bearer <token>`` (the CLI reads ``$STOCKADE_OPERATOR_TOKEN`` or
``--token-file``).

A browser (whose EventSource cannot send an Authorization header) trades a token for a session
cookie at ``POST /v1/session``: an HMAC-SHA256 statement (key: ``<data_dir>/keys/session-key``,
32 random bytes, 0600) of the actor's name, role and expiry. The cookie satisfies
:func:`require_reader` only: :func:`require_operator` never looks at cookies, so a cookie (sent
by the browser on its own) can never change state.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import os
import re
import secrets
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from datetime import datetime, timedelta
from enum import StrEnum
from pathlib import Path
from typing import Annotated

from fastapi import APIRouter, Depends, Request
from starlette.responses import Response

from stockade.verifier.errors import ConfigurationError, Forbidden, Unauthorized

OPERATOR_TOKEN_FILE = "operator-token"
READER_TOKEN_FILE = "reader-token"
TOKEN_FILE = OPERATOR_TOKEN_FILE  # the name before roles existed
SESSION_KEY_FILE = Path("keys") / "session-key"
SESSION_COOKIE = "stockade_session"
SESSION_SECONDS = 900
SESSION_KEY_BYTES = 32
MIN_TOKEN_LENGTH = 16
MAX_TOKEN_LENGTH = 4096
MAX_COOKIE_LENGTH = 1024

OPERATOR_ACTOR = "operator"
READER_ACTOR = "reader"

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@-]{0,63}$")
_DIGEST = re.compile(r"^sha256:([0-9a-f]{64})$")
_SESSION_VERSION = "v1"


class Role(StrEnum):
    OPERATOR = "operator"
    READER = "reader"


@dataclass(frozen=True)
class Actor:
    """Who made a request: a credential's name and role (``operator`` may also read)."""

    name: str
    role: Role

    def may(self, role: Role) -> bool:
        return self.role is Role.OPERATOR or role is Role.READER


@dataclass(frozen=True)
class Credential:
    """A bearer token known by its SHA-256 digest, and the actor it authenticates."""

    name: str
    role: Role
    digest: bytes

    @property
    def actor(self) -> Actor:
        return Actor(self.name, self.role)


def token_digest(token: str) -> bytes:
    return hashlib.sha256(token.encode()).digest()


class Unauthenticated(Unauthorized):
    """401 with ``WWW-Authenticate: Bearer``."""

    @property
    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="stockade"'}


# -- files -------------------------------------------------------------------


def _load_or_create_secret_file(path: Path, what: str, make: Callable[[], bytes] | None) -> bytes:
    """Make ``path`` (0600, O_EXCL) on first start (never when ``make`` is None: a read-only
    directory of shared keys); refuse it when group or others may read it."""
    if make is not None and not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        except FileExistsError:  # another process made it first: use theirs
            pass
        except OSError as error:
            raise ConfigurationError(f"cannot create the {what} {path}: {error}") from None
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(make())
    try:
        if path.stat().st_mode & 0o077:
            raise ConfigurationError(f"{path} is readable by group or others; chmod 600 it")
        return path.read_bytes()
    except OSError as error:
        reason = error.strerror or error
        raise ConfigurationError(f"cannot read the {what} {path}: {reason}") from None


def _new_token() -> bytes:
    return (secrets.token_urlsafe(32) + "\n").encode()


def _load_or_create_token(data_dir: Path, file_name: str, what: str) -> str:
    return _token(data_dir / file_name, what, create=True)


def _token(path: Path, what: str, *, create: bool) -> str:
    raw = _load_or_create_secret_file(path, what, _new_token if create else None)
    try:
        token = raw.decode().strip()
    except UnicodeDecodeError:
        raise ConfigurationError(f"the {what} in {path} is not text") from None
    if len(token) < MIN_TOKEN_LENGTH:
        raise ConfigurationError(
            f"the {what} in {path} is too short ({MIN_TOKEN_LENGTH}+ characters)"
        )
    return token


def load_or_create_operator_token(data_dir: Path) -> str:
    return _load_or_create_token(data_dir, OPERATOR_TOKEN_FILE, "operator token")


def load_or_create_reader_token(data_dir: Path) -> str:
    return _load_or_create_token(data_dir, READER_TOKEN_FILE, "reader token")


def read_token(path: Path, what: str) -> str:
    """A token from a read-only directory of shared keys: never made, refused when missing,
    short, or readable by group or others."""
    return _token(path, what, create=False)


def load_or_create_session_key(data_dir: Path) -> bytes:
    return _session_key(data_dir / SESSION_KEY_FILE, create=True)


def new_session_key() -> bytes:
    return secrets.token_bytes(SESSION_KEY_BYTES)


def _session_key(path: Path, *, create: bool) -> bytes:
    key = _load_or_create_secret_file(path, "session key", new_session_key if create else None)
    if len(key) != SESSION_KEY_BYTES:
        raise ConfigurationError(f"the session key {path} is not {SESSION_KEY_BYTES} bytes")
    return key


def load_credentials(path: Path) -> tuple[Credential, ...]:
    """Named credentials: ``<name> <operator|reader> sha256:<hex>`` per line, ``#`` comments.

    Refused (``ConfigurationError``, naming the line): a malformed line, a name used twice or
    reserved for a built-in token (``operator``, ``reader``), one token under two names, and a
    file that group or others may write (whoever can write it can add an operator).
    """
    try:
        if path.stat().st_mode & 0o022:
            raise ConfigurationError(f"{path} is writable by group or others; chmod 644 it")
        text = path.read_text()
    except (OSError, UnicodeDecodeError) as error:
        raise ConfigurationError(f"cannot read the credentials file {path}: {error}") from None
    found: list[Credential] = []
    names: set[str] = set()
    digests: set[bytes] = set()
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        fields = line.split()
        where = f"{path}:{number}"
        if len(fields) != 3:
            raise ConfigurationError(f"{where}: expected '<name> <operator|reader> sha256:<hex>'")
        name, role_text, digest_text = fields
        if not _NAME.match(name):
            raise ConfigurationError(
                f"{where}: credential name {name!r}: letters, digits, '.', '_', '@', '-' "
                "(64 at most)"
            )
        if name in (OPERATOR_ACTOR, READER_ACTOR):
            raise ConfigurationError(f"{where}: the name {name!r} is the built-in token's")
        if name in names:
            raise ConfigurationError(f"{where}: the name {name!r} is used twice")
        try:
            role = Role(role_text.lower())
        except ValueError:
            raise ConfigurationError(
                f"{where}: role {role_text!r} is neither 'operator' nor 'reader'"
            ) from None
        match = _DIGEST.match(digest_text.lower())
        if match is None:
            raise ConfigurationError(f"{where}: expected sha256:<64 hex digits> of the token")
        digest = bytes.fromhex(match.group(1))
        if digest in digests:
            raise ConfigurationError(f"{where}: this token is already another credential's")
        names.add(name)
        digests.add(digest)
        found.append(Credential(name, role, digest))
    return tuple(found)


# -- the authority -----------------------------------------------------------


@dataclass(frozen=True)
class Authority:
    """The credentials this verifier accepts and the key its session cookies are signed with.
    ``create_app`` keeps one in ``app.state.authority``."""

    credentials: tuple[Credential, ...]
    session_key: bytes
    clock: Callable[[], datetime]

    @classmethod
    def build(
        cls,
        operator_token: str,
        reader_token: str,
        named: Iterable[Credential],
        session_key: bytes,
        clock: Callable[[], datetime],
    ) -> Authority:
        builtin = (
            Credential(OPERATOR_ACTOR, Role.OPERATOR, token_digest(operator_token)),
            Credential(READER_ACTOR, Role.READER, token_digest(reader_token)),
        )
        if builtin[0].digest == builtin[1].digest:
            raise ConfigurationError("the operator and reader tokens must differ")
        credentials = builtin + tuple(named)
        for credential in credentials[2:]:
            if credential.digest in (builtin[0].digest, builtin[1].digest):
                raise ConfigurationError(
                    f"credential {credential.name!r} is the built-in operator or reader token"
                )
        return cls(credentials, session_key, clock)

    @classmethod
    def load(
        cls,
        data_dir: Path,
        operator_token: str,
        credentials_file: Path | None,
        clock: Callable[[], datetime],
        keys_dir: Path | None = None,
    ) -> Authority:
        """The built-in tokens (made on first start), the named credentials, the session key.
        With ``keys_dir`` (``--keys-dir``, shared by every replica) the reader token
        (``reader-token``) and the session key (``session-key``) are read there, never made:
        a session cookie one replica signed is valid on the others."""
        if keys_dir is not None:
            reader = read_token(keys_dir / READER_TOKEN_FILE, "reader token")
            session_key = _session_key(keys_dir / SESSION_KEY_FILE.name, create=False)
        else:
            reader = load_or_create_reader_token(data_dir)
            session_key = load_or_create_session_key(data_dir)
        return cls.build(
            operator_token,
            reader,
            load_credentials(credentials_file) if credentials_file is not None else (),
            session_key,
            clock,
        )

    def authenticate(self, token: str) -> Actor | None:
        """The actor whose token this is; every credential is compared (constant time)."""
        if not MIN_TOKEN_LENGTH <= len(token) <= MAX_TOKEN_LENGTH:
            return None
        presented = token_digest(token)
        found: Credential | None = None
        for credential in self.credentials:
            if hmac.compare_digest(presented, credential.digest):
                found = credential
        return None if found is None else found.actor

    def _known(self, actor: Actor) -> bool:
        return any(c.name == actor.name and c.role is actor.role for c in self.credentials)

    def _mac(self, payload: bytes) -> bytes:
        return hmac.new(self.session_key, payload, hashlib.sha256).digest()

    def issue_session(self, actor: Actor) -> tuple[str, datetime]:
        """A cookie value stating ``actor`` until ``SESSION_SECONDS`` from now, and that time."""
        expires = self.clock() + timedelta(seconds=SESSION_SECONDS)
        statement = json.dumps(
            {"n": actor.name, "r": actor.role.value, "exp": int(expires.timestamp())},
            separators=(",", ":"),
            sort_keys=True,
        ).encode()
        payload = f"{_SESSION_VERSION}.{_b64url(statement)}"
        return f"{payload}.{_b64url(self._mac(payload.encode()))}", expires

    def open_session(self, value: str) -> tuple[Actor, datetime] | None:
        """The actor a cookie states and when the session ends, if its MAC holds, it is
        unexpired, and that credential still exists; else None."""
        if len(value) > MAX_COOKIE_LENGTH:
            return None
        parts = value.split(".")
        if len(parts) != 3 or parts[0] != _SESSION_VERSION:
            return None
        payload = f"{parts[0]}.{parts[1]}"
        try:
            mac = _unb64url(parts[2])
            if not hmac.compare_digest(mac, self._mac(payload.encode())):
                return None
            statement = json.loads(_unb64url(parts[1]))
            actor = Actor(str(statement["n"]), Role(statement["r"]))
            expires = int(statement["exp"])
        except (ValueError, KeyError, TypeError):
            return None
        now = self.clock()
        if expires <= now.timestamp() or not self._known(actor):
            return None
        try:
            ends = datetime.fromtimestamp(expires, now.tzinfo)
        except (OverflowError, OSError, ValueError):
            return None
        return actor, ends


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def _unb64url(text: str) -> bytes:
    try:
        return base64.urlsafe_b64decode(text + "=" * (-len(text) % 4))
    except (binascii.Error, ValueError):
        raise ValueError("not base64url") from None


# -- FastAPI dependencies ----------------------------------------------------


def authority_of(request: Request) -> Authority:
    authority: Authority = request.app.state.authority
    return authority


def _bearer(request: Request) -> str | None:
    scheme, _, presented = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return presented.strip()


def bearer_actor(request: Request) -> Actor | None:
    """The actor of the request's ``Authorization: Bearer`` token, if it is a credential."""
    token = _bearer(request)
    return None if token is None else authority_of(request).authenticate(token)


def require_reader(request: Request) -> Actor:
    """FastAPI dependency: a reader or operator bearer token, or a session cookie; else 401
    ``read-token``. For a cookie, ``request.state.session_ends`` is when the session ends
    (what a long answer, the event stream, must not outlive)."""
    actor = bearer_actor(request)
    if actor is None:
        cookie = request.cookies.get(SESSION_COOKIE)
        session = authority_of(request).open_session(cookie) if cookie else None
        if session is not None:
            actor, request.state.session_ends = session
    if actor is None:
        raise Unauthenticated(
            "this call needs a reader or operator token (Authorization: Bearer ...; stockade "
            "reads $STOCKADE_OPERATOR_TOKEN or --token-file) or a session cookie",
            code="read-token",
        )
    return actor


def session_seconds_left(request: Request) -> float | None:
    """Seconds until the session cookie this request was authorised by ends; None when a
    bearer token authorised it."""
    ends: datetime | None = getattr(request.state, "session_ends", None)
    if ends is None:
        return None
    return max(0.0, (ends - authority_of(request).clock()).total_seconds())


def require_operator(request: Request) -> Actor:
    """FastAPI dependency: an operator bearer token (cookies are never looked at); 401
    ``operator-token`` without a valid token, 403 ``operator-role`` for a reader's."""
    actor = bearer_actor(request)
    if actor is None:
        raise Unauthenticated(
            "this call needs the operator token (Authorization: Bearer ...; "
            "stockade reads $STOCKADE_OPERATOR_TOKEN or --token-file)",
            code="operator-token",
        )
    if not actor.may(Role.OPERATOR):
        raise Forbidden(
            f"credential {actor.name!r} may only read; this call needs an operator credential",
            code="operator-role",
        )
    return actor


ReaderActor = Annotated[Actor, Depends(require_reader)]
OperatorActor = Annotated[Actor, Depends(require_operator)]


# -- browser sessions --------------------------------------------------------

router = APIRouter(tags=["auth"])


def _session_cookie(value: str, max_age: int) -> str:
    return (
        f"{SESSION_COOKIE}={value}; HttpOnly; Secure; SameSite=Strict; Path=/v1; Max-Age={max_age}"
    )


@router.post("/v1/session", status_code=204, response_class=Response)
def open_session(request: Request) -> Response:
    """Trade a reader or operator bearer token for a session cookie (``stockade_session``,
    15 minutes) that authorises reads only: for browsers, whose EventSource cannot send an
    Authorization header. A cookie cannot open another session."""
    actor = bearer_actor(request)
    if actor is None:
        raise Unauthenticated(
            "a session needs a reader or operator token (Authorization: Bearer ...)",
            code="read-token",
        )
    value, _ = authority_of(request).issue_session(actor)
    cookie = _session_cookie(value, SESSION_SECONDS)
    return Response(status_code=204, headers={"Set-Cookie": cookie, "Cache-Control": "no-store"})


@router.delete("/v1/session", status_code=204, response_class=Response)
def close_session() -> Response:
    """Clear the session cookie."""
    return Response(
        status_code=204,
        headers={"Set-Cookie": _session_cookie("", 0), "Cache-Control": "no-store"},
    )
