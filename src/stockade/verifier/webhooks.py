"""Webhook delivery: every stored event, POSTed as JSON to each configured URL, signed.

Delivery is at least once and in stream order per URL (the event position, which is commit
order: see events.py): the last event each URL acknowledged (any 2xx) is stored in the
``webhook_cursors`` table of the verifier's database, so a restarted verifier resumes where it
stopped and never skips an event (a receiver may see one twice; ``Stockade-Event-Id`` lets it
deduplicate). A failed POST is retried with capped exponential backoff; the URL's later
events wait behind it.

Replicas sharing a database deliver each URL from one of them: a replica claims the URL's
cursor row for ``lease_seconds`` (database clock) and renews the claim as it delivers; a
replica that dies stops renewing and another takes the URL over when the lease runs out,
resuming after the last acknowledged event. The cursor only moves forward, and only for the
claim holder (a conditional UPDATE), so a replica that lost its lease cannot move it.

``Stockade-Signature`` is the base64 JWS-style ES256 signature (raw r || s, 64
bytes) over the exact body bytes, made with the verifier's EAR signing key; the
key is published at ``GET /v1/keys`` so receivers verify with what they already
trust for results.

Every delivery also carries the Standard Webhooks headers (https://www.standardwebhooks.com/):
``webhook-id`` (the event id, the same on every redelivery of the event, so receivers
deduplicate by it) and ``webhook-timestamp`` (the attempt's time, Unix seconds); a URL given a
secret (``VerifierConfig.webhook_secret_files``: ``--webhook-secret URL=FILE``) gets
``webhook-signature: v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">``, one ``v1,``
signature per secret in the file (two during a rotation), which stock Standard Webhooks
libraries verify, refusing a timestamp more than five minutes from their clock (a replay).
Only the symmetric ``v1`` scheme is sent: the asymmetric need is met by ``Stockade-Signature``.
A secret file is read once at start and refused when group or others may read it; the
secret is never logged, never served and never on the command line (``WebhookSecret`` has no
readable ``repr``).
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import json
import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import (
    decode_dss_signature,
    encode_dss_signature,
)
from sqlalchemy import (
    BigInteger,
    Column,
    Connection,
    Engine,
    MetaData,
    String,
    Table,
    or_,
    select,
    text,
    update,
)
from sqlalchemy.exc import IntegrityError, SQLAlchemyError
from sqlalchemy.orm import Session

from stockade.verifier.errors import ConfigurationError, OutageLog, is_database_unavailable
from stockade.verifier.metrics import metrics_of
from stockade.verifier.models import Event

SIGNATURE_HEADER = "Stockade-Signature"
EVENT_ID_HEADER = "Stockade-Event-Id"
# Standard Webhooks (https://www.standardwebhooks.com/), header names as the spec writes them.
STANDARD_ID_HEADER = "webhook-id"
STANDARD_TIMESTAMP_HEADER = "webhook-timestamp"
STANDARD_SIGNATURE_HEADER = "webhook-signature"
SECRET_PREFIX = "whsec_"
# The spec's secret sizes: at least 24 bytes (192 bits), at most 64.
MIN_SECRET_BYTES = 24
MAX_SECRET_BYTES = 64
BATCH = 100

log = logging.getLogger("stockade.verifier.webhooks")

_metadata = MetaData()
cursors = Table(
    "webhook_cursors",
    _metadata,
    Column("url", String(2048), primary_key=True),
    Column("last_event_id", BigInteger, nullable=False),
    Column("claimed_by", String(64), nullable=True),
    Column("lease_until", BigInteger, nullable=True),  # ms since the epoch, database clock
)


def _replica_id() -> str:
    from stockade.verifier.leadership import replica_id  # it imports database_now_ms

    return replica_id()


def database_now_ms(connection: Connection) -> int:
    """The database's clock: replicas whose clocks differ still agree on when a lease ends."""
    if connection.dialect.name == "postgresql":
        query = "SELECT CAST(EXTRACT(EPOCH FROM clock_timestamp()) * 1000 AS BIGINT)"
    else:
        query = "SELECT CAST((julianday('now') - 2440587.5) * 86400000 AS INTEGER)"
    return int(connection.execute(text(query)).scalar_one())


def sign_body(key: ec.EllipticCurvePrivateKey, body: bytes) -> str:
    r, s = decode_dss_signature(key.sign(body, ec.ECDSA(hashes.SHA256())))
    return base64.b64encode(r.to_bytes(32, "big") + s.to_bytes(32, "big")).decode("ascii")


def verify_signature(key: ec.EllipticCurvePublicKey, body: bytes, header: str) -> bool:
    """True if ``header`` is a valid ``Stockade-Signature`` of ``body`` by ``key``."""
    try:
        raw = base64.b64decode(header, validate=True)
    except ValueError:
        return False
    if len(raw) != 64:
        return False
    signature = encode_dss_signature(
        int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    )
    try:
        key.verify(signature, body, ec.ECDSA(hashes.SHA256()))
    except InvalidSignature:
        return False
    return True


class WebhookSecret:
    """One receiver's Standard Webhooks key (the bytes a ``whsec_`` secret encodes). Its
    ``repr`` and ``str`` never show the key, so it cannot reach a log by accident."""

    __slots__ = ("_key",)

    def __init__(self, key: bytes) -> None:
        if not MIN_SECRET_BYTES <= len(key) <= MAX_SECRET_BYTES:
            raise ValueError(
                f"a webhook secret is {MIN_SECRET_BYTES} to {MAX_SECRET_BYTES} bytes, "
                f"not {len(key)}"
            )
        self._key = key

    @classmethod
    def parse(cls, text: str) -> WebhookSecret:
        """``whsec_`` and standard base64 (padding optional); ``ValueError`` naming what is
        wrong, never the text."""
        if not text.startswith(SECRET_PREFIX):
            raise ValueError(f"a webhook secret starts with {SECRET_PREFIX}")
        encoded = text[len(SECRET_PREFIX) :]
        try:
            key = base64.b64decode(encoded + "=" * (-len(encoded) % 4), validate=True)
        except (binascii.Error, ValueError):
            raise ValueError(f"a webhook secret is {SECRET_PREFIX} then base64") from None
        return cls(key)

    @classmethod
    def generate(cls) -> WebhookSecret:
        return cls(os.urandom(32))

    def text(self) -> str:
        """The ``whsec_`` form, to give the receiver (written to a file, never printed)."""
        return SECRET_PREFIX + base64.b64encode(self._key).decode("ascii")

    def sign(self, message_id: str, timestamp: int, body: bytes) -> str:
        """``v1,<base64 HMAC-SHA256(key, "{id}.{timestamp}.{body}")>``."""
        content = f"{message_id}.{timestamp}.".encode() + body
        digest = hmac.new(self._key, content, hashlib.sha256).digest()
        return "v1," + base64.b64encode(digest).decode("ascii")

    def __repr__(self) -> str:
        return "WebhookSecret(<hidden>)"

    __str__ = __repr__

    def __eq__(self, other: object) -> bool:
        return isinstance(other, WebhookSecret) and hmac.compare_digest(self._key, other._key)

    def __hash__(self) -> int:
        return hash(hashlib.sha256(self._key).digest())


def load_webhook_secret(path: Path) -> tuple[WebhookSecret, ...]:
    """The secrets in ``path``: one ``whsec_`` secret per line (``#`` comments), two while a
    receiver rotates (each delivery is signed with each). Refused, in one line that never
    quotes the file, when group or others may read it, or it holds no valid secret."""
    try:
        status = path.stat()
        if status.st_mode & 0o077:
            raise ConfigurationError(
                f"webhook secret {path} is readable by group or others "
                f"(mode {status.st_mode & 0o777:04o}); chmod 600 it"
            )
        text = path.read_text(encoding="ascii")
    except (OSError, UnicodeDecodeError) as error:
        reason = error.strerror if isinstance(error, OSError) else "not ASCII text"
        raise ConfigurationError(f"cannot read webhook secret {path}: {reason}") from None
    secrets: list[WebhookSecret] = []
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        try:
            secrets.append(WebhookSecret.parse(line))
        except ValueError as error:
            raise ConfigurationError(f"webhook secret {path}, line {number}: {error}") from None
    if not secrets:
        raise ConfigurationError(f"webhook secret {path} holds no {SECRET_PREFIX} secret")
    return tuple(secrets)


def load_webhook_secrets(
    files: Mapping[str, Path], urls: Sequence[str]
) -> dict[str, tuple[WebhookSecret, ...]]:
    """Each configured URL's secrets; a secret for a URL that is not a webhook is refused (a
    typo would otherwise deliver unsigned)."""
    unknown = sorted(set(files) - set(urls))
    if unknown:
        raise ConfigurationError(
            f"--webhook-secret names {', '.join(unknown)}, which no --webhook gives"
        )
    return {url: load_webhook_secret(path) for url, path in files.items()}


def standard_headers(
    event_id: int, timestamp: int, body: bytes, secrets: Sequence[WebhookSecret]
) -> dict[str, str]:
    """The Standard Webhooks headers of one delivery attempt."""
    message_id = str(event_id)
    headers = {STANDARD_ID_HEADER: message_id, STANDARD_TIMESTAMP_HEADER: str(timestamp)}
    if secrets:
        headers[STANDARD_SIGNATURE_HEADER] = " ".join(
            secret.sign(message_id, timestamp, body) for secret in secrets
        )
    return headers


def event_document(event: Event) -> dict[str, Any]:
    """The event as the protocol's JSON (the same document ``GET /v1/events`` streams)."""
    from stockade.verifier.events import event_json

    return event_json(event)


@dataclass
class _Target:
    url: str
    failures: int = 0
    next_attempt: float = 0.0


@dataclass
class WebhookWorker:
    """Delivers events from ``engine`` to ``urls`` on a background thread.

    ``start()`` when the service starts, ``stop()`` when it stops; or call
    ``deliver_pending()`` to run one pass in the caller's thread.
    """

    engine: Engine
    urls: Sequence[str]
    signing_key: ec.EllipticCurvePrivateKey
    verify: Any = True  # httpx ``verify``: True, False or an ssl.SSLContext
    poll_seconds: float = 0.25
    initial_backoff: float = 0.5
    max_backoff: float = 60.0
    timeout: float = 5.0
    clock: Callable[[], float] = time.monotonic
    # The wall clock of ``webhook-timestamp`` (receivers compare it with theirs).
    wall_clock: Callable[[], float] = time.time
    lease_seconds: float = 10.0
    replica: str = field(default_factory=_replica_id)
    # The service's outage log: a database outage is one line per burst, not one per poll.
    outage: OutageLog = field(default_factory=OutageLog)
    # Standard Webhooks secrets by URL (``load_webhook_secrets``); a URL without one gets
    # ``webhook-id`` and ``webhook-timestamp`` but no ``webhook-signature``.
    secrets: Mapping[str, Sequence[WebhookSecret]] = field(default_factory=dict)
    _targets: list[_Target] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def __post_init__(self) -> None:
        self._targets = [_Target(url) for url in dict.fromkeys(self.urls)]
        _metadata.create_all(self.engine, checkfirst=True)

    def start(self) -> None:
        if self._thread is None and self._targets:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="stockade-webhooks", daemon=True)
            self._thread.start()

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        self._release()

    def _run(self) -> None:
        with httpx.Client(verify=self.verify, timeout=self.timeout, trust_env=False) as http:
            while not self._stop.is_set():
                try:
                    delivered = self.deliver_pending(http)
                except SQLAlchemyError as error:  # the database is down: try again later
                    if is_database_unavailable(error):
                        self.outage.failed(error, "webhooks")
                    else:
                        metrics_of(self.outage).database_error()
                        log.warning("webhooks: cannot read events: %s", error)
                    delivered = 0
                else:
                    self.outage.succeeded()
                if not delivered:
                    self._stop.wait(self.poll_seconds)

    def deliver_pending(self, http: httpx.Client | None = None) -> int:
        """One pass over every URL that is not backing off; returns how many were delivered."""
        if http is None:
            with httpx.Client(verify=self.verify, timeout=self.timeout, trust_env=False) as own:
                return self.deliver_pending(own)
        delivered = 0
        for target in self._targets:
            if self.clock() >= target.next_attempt:
                delivered += self._deliver(http, target)
        return delivered

    def _deliver(self, http: httpx.Client, target: _Target) -> int:
        from stockade.verifier.events import events_page, sequence_events

        sequence_events(self.engine)
        after = self._claim(target.url)
        if after is None:
            return 0  # another replica holds this URL
        with Session(self.engine) as session:
            events = [event_document(event) for event in events_page(session, after, BATCH)]
        delivered = 0
        for document in events:
            if self._stop.is_set():
                break
            body = json.dumps(document, separators=(",", ":"), sort_keys=True).encode()
            error = self._post(http, target.url, document["id"], body)
            if error is not None:
                target.failures += 1
                delay = min(self.initial_backoff * 2 ** (target.failures - 1), self.max_backoff)
                target.next_attempt = self.clock() + delay
                log.warning(
                    "webhook %s: event %s not delivered (%s); retry in %.1fs",
                    target.url, document["id"], error, delay,
                )  # fmt: skip
                break
            target.failures = 0
            if not self._advance(target.url, int(document["id"])):
                log.warning("webhook %s: lease lost to another replica", target.url)
                break
            delivered += 1
        return delivered

    def _post(self, http: httpx.Client, url: str, event_id: int, body: bytes) -> str | None:
        headers = {
            "Content-Type": "application/json",
            SIGNATURE_HEADER: sign_body(self.signing_key, body),
            EVENT_ID_HEADER: str(event_id),
            **standard_headers(
                event_id, int(self.wall_clock()), body, tuple(self.secrets.get(url, ()))
            ),
        }
        try:
            response = http.post(url, content=body, headers=headers)
        except httpx.HTTPError as error:
            return str(error) or type(error).__name__
        if not 200 <= response.status_code < 300:
            return f"HTTP {response.status_code}"
        return None

    def _claim(self, url: str) -> int | None:
        """Claim (or renew) ``url`` for this replica; its cursor, or None if another replica's
        lease on it is still running."""
        with self.engine.begin() as connection:
            exists = connection.execute(select(cursors.c.url).where(cursors.c.url == url)).first()
        if exists is None:
            try:
                with self.engine.begin() as connection:
                    connection.execute(cursors.insert().values(url=url, last_event_id=0))
            except IntegrityError:
                pass  # another replica made it
        with self.engine.begin() as connection:
            now = database_now_ms(connection)
            claimed = connection.execute(
                update(cursors)
                .where(
                    cursors.c.url == url,
                    or_(
                        cursors.c.claimed_by.is_(None),
                        cursors.c.claimed_by == self.replica,
                        cursors.c.lease_until < now,
                    ),
                )
                .values(claimed_by=self.replica, lease_until=now + self._lease_ms)
            ).rowcount
            if not claimed:
                return None
            value = connection.execute(
                select(cursors.c.last_event_id).where(cursors.c.url == url)
            ).scalar_one()
        return int(value)

    @property
    def _lease_ms(self) -> int:
        return int(self.lease_seconds * 1000)

    def _advance(self, url: str, position: int) -> bool:
        """Move ``url``'s cursor forward to ``position`` and renew the lease; False if this
        replica no longer holds the URL."""
        with self.engine.begin() as connection:
            now = database_now_ms(connection)
            changed = connection.execute(
                update(cursors)
                .where(
                    cursors.c.url == url,
                    cursors.c.claimed_by == self.replica,
                    cursors.c.last_event_id < position,
                )
                .values(last_event_id=position, lease_until=now + self._lease_ms)
            ).rowcount
        return bool(changed)

    def _release(self) -> None:
        """Give this replica's URLs back at once (a clean stop need not wait out the lease)."""
        try:
            with self.engine.begin() as connection:
                connection.execute(
                    update(cursors)
                    .where(cursors.c.claimed_by == self.replica)
                    .values(claimed_by=None, lease_until=None)
                )
        except SQLAlchemyError as error:
            log.warning("webhooks: cannot release leases: %s", error)
