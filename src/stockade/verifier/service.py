"""The running verifier's shared state: config, database, signing key, appraiser, caches."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sqlalchemy import Engine, select
from sqlalchemy.orm import Session, sessionmaker
from starlette.requests import Request

from stockade.cluster.secret_store import KeyRing
from stockade.verifier.appraiser import Appraiser, PolicyLike
from stockade.verifier.config import VerifierConfig
from stockade.verifier.errors import Conflict, VerifierError
from stockade.verifier.models import Policy
from stockade.verifier.tls import SigningKey


class AppraisalUnavailable(VerifierError):
    status = 503
    code = "appraisal-unavailable"


@dataclass(frozen=True)
class ActivePolicy:
    policy_id: str
    version: int
    policy: PolicyLike
    references: Any


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
    # Node-channel signature nonces seen recently (stockade.channel.ReplayCache), and the
    # budget of security events (stockade.verifier.security_events.SecurityEventLimiter).
    replay_cache: Any = None
    security_limiter: Any = None
    _references: dict[tuple[str, int], ActivePolicy] = field(default_factory=dict)
    _lock: threading.Lock = field(default_factory=threading.Lock)
    _active: ActivePolicy | None = None
    _active_checked: float = 0.0

    def now(self) -> datetime:
        return self.config.clock()

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

    def _lookup_active(self, session: Session) -> ActivePolicy:
        policy_id = self.config.policy_id
        if policy_id is None:
            ids = session.scalars(select(Policy.id).distinct()).all()
            if len(ids) != 1:
                raise Conflict(
                    "no policy is stored"
                    if not ids
                    else f"{len(ids)} policies are stored and none is configured as active "
                    "(stockade verifier serve --policy)",
                    code="policy",
                )
            policy_id = ids[0]
        row = session.scalars(
            select(Policy).where(Policy.id == policy_id).order_by(Policy.version.desc()).limit(1)
        ).first()
        if row is None:
            raise Conflict(f"the active policy {policy_id!r} is not stored", code="policy")
        key = (row.id, row.version)
        with self._lock:
            cached = self._references.get(key)
        if cached is not None:
            return cached
        appraiser = self.require_appraiser()
        policy = appraiser.parse_policy(row.document, row.version)
        active = ActivePolicy(row.id, row.version, policy, appraiser.build_references(policy))
        with self._lock:
            self._references[key] = active
        return active


def service_of(request: Request) -> Service:
    service: Service = request.app.state.service
    return service
