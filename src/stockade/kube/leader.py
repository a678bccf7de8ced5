"""Leader election over a ``coordination.k8s.io/v1`` Lease, so that of several replicas of the
node controller (or of the CSR approver) exactly one acts, and none while it is not certain.

The Lease record is client-go's: ``holderIdentity``, ``leaseDurationSeconds``,
``acquireTime``, ``renewTime``, ``leaseTransitions``. Every write is a PUT carrying the
``resourceVersion`` it was computed from, so of two candidates writing at once one gets 409
and loses. The rules, each step (:meth:`LeaderElector.step`, every ``retry_period``):

- **Absent**: create it naming this replica (409 AlreadyExists: someone else was first).
- **Not ours**: a Lease this replica did not write last (another holder, a renewal by the
  holder, any edit by anyone) is *observed* at the local monotonic time it was first seen in
  that version. It may be taken only once it has stayed unchanged for the longer of its own
  ``leaseDurationSeconds`` and ours, measured on that local clock; the remote ``renewTime``
  and ``acquireTime`` are never read as a local time (the replicas' clocks may disagree by
  any amount). An empty ``holderIdentity`` (a released Lease) may be taken at once.
- **Ours**: renewed in place (same ``acquireTime`` and ``leaseTransitions``).

Whether this replica leads is a local, monotonic fact (:meth:`LeaderElector.is_leader`):
from the start of the step whose write succeeded, for ``renew_deadline`` seconds. It ends at
once when a step finds the Lease in a version it did not write, or a write is refused with
409; it lapses by itself when renewals keep failing past the deadline (the API server is
unreachable, the process was paused). Because ``renew_deadline < lease_duration`` and the
other replica's wait starts no earlier than the write it observed, a stale leader has
stopped before another can take over; the difference is the margin for clock rates and
scheduling.

A Lease that names this replica but that it did not write (forged with its identity, or a
write of its own whose answer was lost) is treated as anyone else's: waited out, never
adopted. On a clean stop the leader first stops acting, then *releases* the Lease (empty
holder, 1 s duration, from the version it wrote) so another replica takes over at once.

The callers (``stockade kube controller``, ``stockade kube approve-csrs``) ask
:meth:`LeaderElector.is_leader` immediately before every write they make: a replica that is
not certain it leads patches no Node and decides no CSR.
"""

from __future__ import annotations

import json
import logging
import os
import random
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from stockade.errors import InputError
from stockade.logs import fields

log = logging.getLogger(__name__)

SERVICE_ACCOUNT_NAMESPACE = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
DEFAULT_NAMESPACE = "stockade-system"
DEFAULT_LEASE_DURATION = 15.0
DEFAULT_RENEW_DEADLINE = 10.0
DEFAULT_RETRY_PERIOD = 2.0
RELEASED_DURATION = 1
JITTER = 1.2  # client-go's JitterFactor: candidates retry within [retry, retry * JITTER]


def default_namespace(path: Path = SERVICE_ACCOUNT_NAMESPACE) -> str:
    """The pod's namespace (its service account's), else ``stockade-system``."""
    try:
        namespace = path.read_text().strip()
    except OSError:
        return DEFAULT_NAMESPACE
    return namespace or DEFAULT_NAMESPACE


def default_identity() -> str:
    """The host name (a pod's name) and a random suffix: two processes never share one."""
    return f"{socket.gethostname()}_{os.urandom(4).hex()}"


def _micro_time(moment: datetime) -> datetime:
    """A time for a MicroTime field. The API server parses MicroTime strictly as
    ``2006-01-02T15:04:05.000000Z07:00`` (six fractional digits), and the client writes a
    datetime with ``isoformat()``, which drops the fraction when it is zero: so it never is."""
    moment = moment.astimezone(UTC)
    return moment if moment.microsecond else moment.replace(microsecond=1)


@dataclass(frozen=True)
class LeaseConfig:
    name: str
    namespace: str
    identity: str
    lease_duration: float = DEFAULT_LEASE_DURATION
    renew_deadline: float = DEFAULT_RENEW_DEADLINE
    retry_period: float = DEFAULT_RETRY_PERIOD

    def __post_init__(self) -> None:
        if not self.name or not self.namespace or not self.identity:
            raise InputError("the lease name, namespace and identity must not be empty")
        if not 0 < self.retry_period * JITTER < self.renew_deadline < self.lease_duration:
            raise InputError(
                "leader election needs --lease-duration > --renew-deadline > "
                f"{JITTER} x --retry-period > 0"
            )
        if self.lease_duration < 1:
            raise InputError("--lease-duration must be at least 1 second")


@dataclass(frozen=True)
class LeaseRecord:
    """What a Lease says (as read; nothing in it is trusted as a time on this machine)."""

    holder: str
    duration: float
    transitions: int
    acquire_time: str | None
    renew_time: str | None

    @classmethod
    def from_api(cls, obj: dict[str, Any]) -> LeaseRecord:
        spec = obj.get("spec") if isinstance(obj.get("spec"), dict) else {}
        assert isinstance(spec, dict)
        holder = spec.get("holderIdentity")
        duration = spec.get("leaseDurationSeconds")
        transitions = spec.get("leaseTransitions")
        return cls(
            holder=holder if isinstance(holder, str) else "",
            duration=float(duration) if isinstance(duration, int) and duration > 0 else 0.0,
            transitions=transitions if isinstance(transitions, int) and transitions >= 0 else 0,
            acquire_time=str(spec["acquireTime"]) if spec.get("acquireTime") else None,
            renew_time=str(spec["renewTime"]) if spec.get("renewTime") else None,
        )


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def _why(error: BaseException) -> str:
    from stockade.kube.supervision import describe

    return describe(error)


class LeaderElector:
    """One replica's side of the election. ``api`` is a ``kubernetes.client.CoordinationV1Api``;
    ``monotonic`` and ``wall`` are injectable for tests (``wall`` only stamps the Lease for
    people reading it)."""

    def __init__(
        self,
        api: Any,
        config: LeaseConfig,
        *,
        monotonic: Callable[[], float] = time.monotonic,
        wall: Callable[[], datetime] = lambda: datetime.now(UTC),
        on_change: Callable[[bool], None] | None = None,
    ) -> None:
        self._api = api
        self.config = config
        self._monotonic = monotonic
        self._wall = wall
        self._on_change = on_change
        self._lock = threading.Lock()
        self._leading = False
        self._valid_until = 0.0
        self._written: str | None = None  # resourceVersion of our last successful write
        self._acquired_at: datetime | None = None  # our acquireTime while we hold it
        self._transitions = 0
        self._observed: tuple[str, LeaseRecord] | None = None  # (resourceVersion, record)
        self._observed_at = 0.0
        self.holder: str = ""  # who the Lease named when last read (for people)
        self._announced = ""  # the holder last logged as such

    # -- what callers ask ----------------------------------------------------------------

    def is_leader(self) -> bool:
        """True only while this replica's last successful write is less than
        ``renew_deadline`` old by the local monotonic clock and nothing since showed another
        holder: ask it right before every write."""
        with self._lock:
            return self._leading and self._monotonic() < self._valid_until

    # -- one step ------------------------------------------------------------------------

    def step(self) -> bool:
        """Acquire or renew once; whether this replica leads afterwards. Never raises for
        API errors (they are logged: one line)."""
        started = self._monotonic()
        timeout = max(0.5, self.config.renew_deadline / 2)
        try:
            raw = self._api.read_namespaced_lease(
                self.config.name,
                self.config.namespace,
                _preload_content=False,
                _request_timeout=timeout,
            )
            current: dict[str, Any] | None = json.loads(raw.data)
        except Exception as error:  # ApiException, a connection error, a page not JSON
            if _status(error) != 404:
                self._failed("cannot read the lease", error)
                return self.is_leader()
            current = None
        if current is None:
            return self._create(started, timeout)
        if not isinstance(current, dict) or not isinstance(current.get("metadata"), dict):
            self._failed("the lease is not a Lease", ValueError("malformed"))
            return self.is_leader()
        version = str(current["metadata"].get("resourceVersion") or "")
        record = LeaseRecord.from_api(current)
        now = self._monotonic()
        with self._lock:
            ours = self._written is not None and version == self._written
            if self._observed is None or self._observed != (version, record):
                self._observed = (version, record)
                self._observed_at = now
            observed_at = self._observed_at
            self.holder = record.holder
        if not ours:
            self._lose(f"the lease is now held by {record.holder or 'nobody'}", record.holder)
            wait = max(record.duration, self.config.lease_duration)
            if record.holder and now - observed_at < wait:
                self._standing_by(record.holder)
                return False
        return self._update(current, record, ours, started, timeout)

    def _create(self, started: float, timeout: float) -> bool:
        moment = _micro_time(self._wall())
        try:
            created = json.loads(self._write(self._spec(moment, moment, 0), timeout).data)
        except Exception as error:
            if _status(error) == 409:  # another replica created it first
                self._lose("another replica created the lease first", "")
                return False
            self._failed("cannot create the lease", error)
            return self.is_leader()
        self._won(created, started, moment, 0, "acquired")
        return True

    def _update(
        self, current: dict[str, Any], record: LeaseRecord, ours: bool, started: float,
        timeout: float,
    ) -> bool:  # fmt: skip
        moment = _micro_time(self._wall())
        with self._lock:
            acquired = self._acquired_at if ours and self._acquired_at else moment
        transitions = record.transitions if ours else record.transitions + 1
        meta = current["metadata"]
        kept = {
            key: {str(k): str(v) for k, v in meta[key].items()}
            for key in ("labels", "annotations")
            if isinstance(meta.get(key), dict)
        }
        spec = self._spec(acquired, moment, transitions)
        try:
            raw = self._write(spec, timeout, str(meta.get("resourceVersion") or ""), kept)
            written = json.loads(raw.data)
        except Exception as error:
            if _status(error) == 409:  # someone else wrote it since we read it: they won
                self._lose("the lease changed while renewing it (409)", "")
                return False
            self._failed("cannot renew the lease" if ours else "cannot take the lease", error)
            return self.is_leader()
        self._won(written, started, acquired, transitions, "renewed" if ours else "acquired")
        return True

    def _write(
        self,
        spec: dict[str, Any],
        timeout: float,
        version: str | None = None,
        kept: dict[str, Any] | None = None,
    ) -> Any:
        """Write the Lease with ``spec``: create it (``version`` None: 409 when it exists),
        else replace the version ``version`` (409 when it changed since), keeping the
        metadata in ``kept`` (labels, annotations). The API server's raw answer."""
        metadata: dict[str, Any] = {"name": self.config.name, "namespace": self.config.namespace}
        if version is not None:
            metadata["resourceVersion"] = version
        metadata.update(kept or {})
        body = {
            "apiVersion": "coordination.k8s.io/v1",
            "kind": "Lease",
            "metadata": metadata,
            "spec": spec,
        }
        options: dict[str, Any] = {
            "_preload_content": False,
            "_request_timeout": timeout,
            "_headers": {"Content-Type": "application/json"},
        }
        if version is None:
            return self._api.create_namespaced_lease(self.config.namespace, body, **options)
        return self._api.replace_namespaced_lease(
            self.config.name, self.config.namespace, body, **options
        )

    def _spec(self, acquired: datetime, renewed: datetime, transitions: int) -> dict[str, Any]:
        return {
            "holderIdentity": self.config.identity,
            "leaseDurationSeconds": max(1, round(self.config.lease_duration)),
            "acquireTime": acquired,
            "renewTime": renewed,
            "leaseTransitions": transitions,
        }

    def _won(
        self, written: Any, started: float, acquired: datetime, transitions: int, how: str
    ) -> None:
        version = ""
        if isinstance(written, dict) and isinstance(written.get("metadata"), dict):
            version = str(written["metadata"].get("resourceVersion") or "")
        with self._lock:
            was = self._leading and self._monotonic() < self._valid_until
            self._written = version or None
            self._acquired_at = acquired
            self._transitions = transitions
            self._leading = bool(version)
            self._valid_until = started + self.config.renew_deadline
            self._observed = (version, LeaseRecord.from_api(written)) if version else None
            self._observed_at = self._monotonic()
            self.holder = self.config.identity
            self._announced = ""
        if not was and version:
            log.info(
                "leading",
                extra=fields(
                    lease=f"{self.config.namespace}/{self.config.name}",
                    identity=self.config.identity,
                    action="acquired" if how == "acquired" else "leading",
                    transitions=transitions,
                ),
            )
            if self._on_change is not None:
                self._on_change(True)

    def _lose(self, reason: str, holder: str) -> None:
        with self._lock:
            was = self._leading
            self._leading = False
            self._valid_until = 0.0
            self._written = None
            self._acquired_at = None
        if was:
            log.warning(
                "stopped leading",
                extra=fields(
                    lease=f"{self.config.namespace}/{self.config.name}",
                    identity=self.config.identity,
                    action="lost",
                    reason=reason,
                    holder=holder or None,
                ),
            )
            if self._on_change is not None:
                self._on_change(False)

    def _standing_by(self, holder: str) -> None:
        """One line each time another holder is seen (not every retry)."""
        with self._lock:
            if self._announced == holder:
                return
            self._announced = holder
        log.info(
            "standing by",
            extra=fields(
                lease=f"{self.config.namespace}/{self.config.name}",
                identity=self.config.identity,
                action="standby",
                holder=holder,
            ),
        )

    def _failed(self, what: str, error: BaseException) -> None:
        leading = self.is_leader()
        with self._lock:
            lapsed = self._leading and not leading
        log.warning(
            what,
            extra=fields(
                lease=f"{self.config.namespace}/{self.config.name}",
                action="retry",
                reason=_why(error),
                leading=leading,
            ),
        )
        if lapsed:
            self._lose(f"no renewal within the renew deadline ({_why(error)})", "")

    # -- stopping ------------------------------------------------------------------------

    def release(self) -> bool:
        """Give the Lease up (empty holder, 1 s) if it is still as this replica wrote it, so
        another replica takes over at once. Call it only after this replica stopped acting."""
        with self._lock:
            version = self._written
            self._leading = False
            self._valid_until = 0.0
        if version is None:
            return False
        moment = _micro_time(self._wall())
        released = {
            "holderIdentity": "",
            "leaseDurationSeconds": RELEASED_DURATION,
            "acquireTime": moment,
            "renewTime": moment,
            "leaseTransitions": self._transitions,
        }
        try:
            self._write(released, max(0.5, self.config.renew_deadline / 2), version)
        except Exception as error:
            log.warning(
                "cannot release the lease",
                extra=fields(lease=self.config.name, action="release", reason=_why(error)),
            )
            return False
        finally:
            with self._lock:
                self._written = None
        log.info(
            "released the lease",
            extra=fields(
                lease=f"{self.config.namespace}/{self.config.name}",
                identity=self.config.identity,
                action="released",
            ),
        )
        if self._on_change is not None:
            self._on_change(False)
        return True

    # -- the loop ------------------------------------------------------------------------

    def run(self, stop: threading.Event, acting: threading.Lock | None = None) -> None:
        """Step every ``retry_period`` (candidates with jitter) until ``stop``; then release,
        after taking ``acting`` (held by the caller's loop while it acts) so that no write of
        this replica is in flight when the other takes over."""
        while not stop.is_set():
            leading = self.step()
            period = self.config.retry_period
            stop.wait(period if leading else period * random.uniform(1.0, JITTER))
        if acting is not None:
            with acting:
                self.release()
        else:
            self.release()

    def start(
        self, stop: threading.Event, acting: threading.Lock | None = None
    ) -> threading.Thread:
        thread = threading.Thread(
            target=self.run, args=(stop, acting), name="leader-election", daemon=True
        )
        thread.start()
        return thread
