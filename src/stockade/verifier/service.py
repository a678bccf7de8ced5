"""The running verifier's shared state: config, database, signing key, appraiser, caches."""

from __future__ import annotations

import logging
import math
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from stockade.cluster.secret_store import KeyRing
from stockade.verifier.appraiser import Appraiser, PolicyLike
from stockade.verifier.config import VerifierConfig
from stockade.verifier.errors import ClockBehind, Conflict, OutageLog, VerifierError
from stockade.verifier.models import Event, Nonce, Policy, PolicyActivation, SecurityEvent
from stockade.verifier.tls import SigningKey

log = logging.getLogger(__name__)


class AppraisalUnavailable(VerifierError):
    status = 503
    code = "appraisal-unavailable"


@dataclass(frozen=True)
class ActivePolicy:
    policy_id: str
    version: int
    policy: PolicyLike
    references: Any

    @property
    def ref(self) -> str:
        """What results name as their policy (``ear.appraisal-policy-id``): ``id@version``."""
        return f"{self.policy_id}@{self.version}"


# Policy versions whose references a verifier keeps built (the active one and a few before:
# a rollback, another replica's newer version noticed late).
REFERENCES_KEPT = 8


@dataclass
class Service:
    config: VerifierConfig
    engine: Engine
    sessions: sessionmaker[Session]
    signing_key: SigningKey
    appraiser: Appraiser | None
    operator_token: str = ""
    cluster_ca: Any = None  # stockade.cluster.ca.ClusterCa
    translog: Any = None  # stockade.verifier.transparency.TransparencyLog
    committer: Any = None  # stockade.verifier.committer.GroupCommitter
    # Node-channel signature nonces seen recently (stockade.channel.ReplayCache), and the
    # budget of security events (stockade.verifier.security_events.SecurityEventLimiter).
    replay_cache: Any = None
    security_limiter: Any = None
    _references: dict[tuple[str, int], ActivePolicy] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _active: ActivePolicy | None = None
    _active_checked: float = 0.0
    outage: OutageLog = field(default_factory=OutageLog)
    # The newest time found stored (stored_time_floor); None until first read.
    _clock_floor: datetime | None = None
    _clock_behind: bool = False

    def now(self) -> datetime:
        return self.config.clock()

    def issuing_now(self) -> datetime:
        """``now()`` for a nonce, result or signed status: 503 ``clock-behind`` while the
        clock is more than ``clock_skew_seconds`` behind the newest time stored, so nothing
        issued is dated (and expires) by a clock that went back."""
        now = self.now()
        floor = self._clock_floor
        if floor is None:
            self._clock_behind = False
            return now
        lag = (floor - now).total_seconds() - self.config.clock_skew_seconds
        if lag <= 0:
            if self._clock_behind:
                self._clock_behind = False
                log.warning("clock caught up with the newest stored time; issuing again")
            return now
        if not self._clock_behind:
            self._clock_behind = True
            log.error(
                "clock is %.1f s behind the newest stored time %s; refusing nonces, results "
                "and statuses until it catches up",
                (floor - now).total_seconds(),
                floor.isoformat(),
            )
        raise ClockBehind(
            f"the verifier's clock is {lag:.0f} s behind the newest time it stored "
            "(a clock stepped back, or a replica's clock is skewed)",
            retry_after=min(60, math.ceil(lag)),
        )

    def refresh_clock_floor(self) -> datetime | None:
        """Read the newest time stored (cheap: indexed reads) and remember it."""
        with self.sessions() as session:
            floor = stored_time_floor(session, self.config.nonce_ttl_seconds)
        with self._lock:
            if floor is not None and (self._clock_floor is None or floor > self._clock_floor):
                self._clock_floor = floor
            return self._clock_floor

    def monotonic(self) -> float:
        return time.monotonic()

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions() as session, session.begin():
            yield session

    @property
    def key_ring(self) -> KeyRing | None:
        return self.config.key_ring

    def require_appraiser(self) -> Appraiser:
        if self.appraiser is None:
            raise AppraisalUnavailable("the appraisal core (stockade.appraisal) is not installed")
        return self.appraiser

    def invalidate_policy(self) -> None:
        """Forget the cached active policy: the next request looks it up again. Called after
        a policy is stored (``PUT /v1/policies``, ``serve --policy``) has committed."""
        with self._lock:
            self._active = None

    def active_policy(self) -> ActivePolicy:
        """The policy nodes are appraised under: the configured id, else the only one stored;
        always its newest version. References are built once per version.

        Cached in memory: a policy stored through this process invalidates the cache at once;
        one stored by another replica sharing the database (or another process) is noticed by
        a re-check at most ``config.policy_refresh_seconds`` later. Every EAR names the exact
        ``id@version`` it was appraised under, so that window never mislabels a result.
        """
        started = time.monotonic()
        with self._lock:
            cached = self._active
            if cached is not None and started < self._active_checked + (
                self.config.policy_refresh_seconds
            ):
                return cached
        with self.sessions() as session:
            active = self._lookup_active(session)
        with self._lock:
            # A concurrent invalidation (a policy stored meanwhile) wins: do not cache.
            if self._active is cached:
                self._active = active
                self._active_checked = started
        return active

    def cached_references(self, policy_id: str, version: int) -> ActivePolicy | None:
        """The references of a policy version this process appraised under, if built (read
        only: the boot view, ``verifier/boot_api.py``, reuses them)."""
        with self._lock:
            return self._references.get((policy_id, version))

    def _lookup_active(self, session: Session) -> ActivePolicy:
        policy_id = active_policy_id(session, self.config.policy_id)
        if policy_id is None:
            stored = len(session.scalars(select(Policy.id).distinct()).all())
            raise Conflict(
                "no policy is stored"
                if not stored
                else f"{stored} policies are stored and none is active "
                "(stockade policy activate ID)",
                code="policy",
            )
        row = session.scalars(
            select(Policy).where(Policy.id == policy_id).order_by(Policy.version.desc()).limit(1)
        ).first()
        if row is None:
            raise Conflict(f"the active policy {policy_id!r} is not stored", code="policy")
        key = (row.id, row.version)
        with self._lock:
            cached = self._references.pop(key, None)
            if cached is not None:
                self._references[key] = cached  # the most recently used goes last
        if cached is not None:
            return cached
        appraiser = self.require_appraiser()
        policy = appraiser.parse_policy(row.document, row.version)
        active = ActivePolicy(row.id, row.version, policy, appraiser.build_references(policy))
        with self._lock:
            self._references[key] = active
            # Every version this process ever appraised under would otherwise stay built;
            # one dropped is built again if it becomes active again.
            while len(self._references) > REFERENCES_KEPT:
                del self._references[next(iter(self._references))]
        return active


def active_policy_id(session: Session, configured: str | None) -> str | None:
    """The id nodes are appraised under: the activated one (one row every replica reads),
    else ``configured`` (an older deployment's ``--policy``), else the only one stored."""
    activation = session.get(PolicyActivation, 1)
    if activation is not None:
        return activation.policy_id
    if configured is not None:
        return configured
    ids = session.scalars(select(Policy.id).distinct()).all()
    return ids[0] if len(ids) == 1 else None


def stored_time_floor(session: Session, nonce_ttl_seconds: float) -> datetime | None:
    """The newest time this database holds, from reads an index answers: the last event's
    time (by id), the newest security event, and the newest nonce's issue time (its expiry
    less the nonce lifetime)."""
    times: list[datetime] = []
    event_time = session.scalar(select(Event.time).order_by(Event.id.desc()).limit(1))
    if event_time is not None:
        times.append(event_time)
    security_time = session.scalar(select(func.max(SecurityEvent.time)))
    if security_time is not None:
        times.append(security_time)
    nonce_expiry = session.scalar(select(func.max(Nonce.expires_at)))
    if nonce_expiry is not None:
        times.append(nonce_expiry - timedelta(seconds=nonce_ttl_seconds))
    return max(times, default=None)


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service
