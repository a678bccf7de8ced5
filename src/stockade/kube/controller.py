"""The node controller: every Kubernetes Node carries what Stockade knows about it.

For each Node (Kubernetes node names are Stockade node names), from the verifier's view:

- label ``stockade.dev/trusted=true|false``;
- taint ``stockade.dev/untrusted:NoSchedule`` while the node is not trusted, plus
  ``stockade.dev/untrusted:NoExecute`` once it has been untrusted for ``grace`` (pods that do
  not tolerate it are evicted). The moment trust was lost is kept in the annotation
  ``stockade.dev/untrusted-since`` so the grace survives controller restarts;
- annotation ``stockade.dev/attestation-result``: the EAR (ES256 JWT) of the node's latest
  result, which anyone checks with the verifier's ``GET /v1/keys``;
- annotation ``stockade.dev/trust-reason``: why, in one line.

Fail closed: a node the verifier does not know, or any node while the verifier cannot be
reached, is untrusted (label false, taints kept or added). Only these keys are ever
written: other labels, annotations and taints are left as they are. Taints are a list
replaced as a whole, so every patch carries the ``resourceVersion`` it was computed from and
a concurrent change by anyone else makes it fail (409) and be recomputed.

:func:`reconcile` is pure; :class:`NodeController` lists/watches Nodes with the official
client and applies what it returns.
"""

from __future__ import annotations

import importlib
import logging
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from stockade.kube.supervision import Round, Supervision, describe
from stockade.kube.trust import NodeTrust, TrustUnavailable, decide, parse_fleet
from stockade.logs import fields
from stockade.statements import VerifierKeys

log = logging.getLogger(__name__)

TRUSTED_LABEL = "stockade.dev/trusted"
UNTRUSTED_TAINT = "stockade.dev/untrusted"
RESULT_ANNOTATION = "stockade.dev/attestation-result"
SINCE_ANNOTATION = "stockade.dev/untrusted-since"
REASON_ANNOTATION = "stockade.dev/trust-reason"
DEFAULT_GRACE = timedelta(minutes=5)
MAX_REASON = 1024


def _rfc3339(moment: datetime) -> str:
    return moment.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _parse_time(text: str | None) -> datetime | None:
    if not text:
        return None
    try:
        moment = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    return moment if moment.tzinfo else None


@dataclass(frozen=True)
class KubeNode:
    """What the controller reads of a Node."""

    name: str
    resource_version: str | None
    labels: Mapping[str, str]
    annotations: Mapping[str, str]
    taints: tuple[Mapping[str, Any], ...]

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> KubeNode:
        """From a Node as JSON (camelCase keys: ``ApiClient.sanitize_for_serialization``)."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        return cls(
            name=str(meta["name"]),
            resource_version=meta.get("resourceVersion"),
            labels=dict(meta.get("labels") or {}),
            annotations=dict(meta.get("annotations") or {}),
            taints=tuple(dict(t) for t in spec.get("taints") or ()),
        )


@dataclass(frozen=True)
class TrustView:
    """The verifier's view at one moment. ``nodes is None``: the verifier could not be asked
    (``error`` says why). ``results``: node name -> EAR of its latest result, ``None`` when the
    node has no result; a name missing from it is unknown (its annotation is left alone)."""

    nodes: Mapping[str, NodeTrust] | None
    error: str = ""
    results: Mapping[str, str | None] = field(default_factory=dict)

    def snapshot(self) -> Mapping[str, NodeTrust]:
        if self.nodes is None:
            raise TrustUnavailable(self.error or "the verifier's view is unavailable")
        return self.nodes


@dataclass(frozen=True)
class NodePatch:
    """A strategic merge patch for one Node, and why."""

    node: str
    trusted: bool
    reason: str
    body: dict[str, Any]
    changes: tuple[str, ...]


def _code(view: TrustView, name: str, now: datetime) -> str:
    """A taint value (label-value syntax) naming why the node is not trusted."""
    if view.nodes is None:
        return "verifier-unavailable"
    found = view.nodes.get(name)
    if found is None:
        return "not-enrolled"
    if found.state != "trusted":
        return found.state if found.state.isalnum() else "untrusted"
    return "stale"


def _taint_key(taint: Mapping[str, Any]) -> tuple[str, str, str]:
    return (str(taint.get("key")), str(taint.get("effect")), str(taint.get("value") or ""))


def reconcile_node(
    node: KubeNode, view: TrustView, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> NodePatch | None:
    """The patch that makes ``node`` say what ``view`` says at ``now``; None if it already does."""
    trusted, reason = decide(view, node.name, now)
    labels: dict[str, str | None] = {}
    annotations: dict[str, str | None] = {}
    changes: list[str] = []

    wanted_label = "true" if trusted else "false"
    if node.labels.get(TRUSTED_LABEL) != wanted_label:
        labels[TRUSTED_LABEL] = wanted_label
        changes.append(f"label {TRUSTED_LABEL}={wanted_label}")

    since = _parse_time(node.annotations.get(SINCE_ANNOTATION))
    if trusted:
        since = None
        if SINCE_ANNOTATION in node.annotations:
            annotations[SINCE_ANNOTATION] = None
    elif since is None or since > now:
        since = now
        annotations[SINCE_ANNOTATION] = _rfc3339(now)

    short_reason = reason[:MAX_REASON]
    if node.annotations.get(REASON_ANNOTATION) != short_reason:
        annotations[REASON_ANNOTATION] = short_reason

    if view.nodes is not None:
        if node.name not in view.nodes:
            if RESULT_ANNOTATION in node.annotations:
                annotations[RESULT_ANNOTATION] = None
                changes.append(f"annotation {RESULT_ANNOTATION} removed (not enrolled)")
        elif node.name in view.results:
            ear = view.results[node.name]
            if node.annotations.get(RESULT_ANNOTATION) != ear and (
                ear is not None or RESULT_ANNOTATION in node.annotations
            ):
                annotations[RESULT_ANNOTATION] = ear
                changes.append(f"annotation {RESULT_ANNOTATION} updated")

    ours = [t for t in node.taints if t.get("key") == UNTRUSTED_TAINT]
    others = [dict(t) for t in node.taints if t.get("key") != UNTRUSTED_TAINT]
    wanted: list[dict[str, Any]] = []
    if not trusted:
        value = _code(view, node.name, now)
        wanted.append({"key": UNTRUSTED_TAINT, "value": value, "effect": "NoSchedule"})
        if since is not None and now - since >= grace:
            previous = next((t for t in ours if t.get("effect") == "NoExecute"), None)
            added = (previous or {}).get("timeAdded") or _rfc3339(now)
            wanted.append(
                {"key": UNTRUSTED_TAINT, "value": value, "effect": "NoExecute", "timeAdded": added}
            )
    taints: list[dict[str, Any]] | None = None
    if sorted(map(_taint_key, ours)) != sorted(map(_taint_key, wanted)):
        taints = others + wanted
        before = {f"{t.get('effect')}" for t in ours}
        after = {f"{t.get('effect')}" for t in wanted}
        changes.extend(f"taint {UNTRUSTED_TAINT}:{e} added" for e in sorted(after - before))
        changes.extend(f"taint {UNTRUSTED_TAINT}:{e} removed" for e in sorted(before - after))
        if before == after:
            changes.append(f"taint {UNTRUSTED_TAINT} value {wanted[0]['value'] if wanted else ''}")

    if not labels and not annotations and taints is None:
        return None
    metadata: dict[str, Any] = {}
    if node.resource_version is not None:
        metadata["resourceVersion"] = node.resource_version
    if labels:
        metadata["labels"] = labels
    if annotations:
        metadata["annotations"] = annotations
    body: dict[str, Any] = {"metadata": metadata}
    if taints is not None:
        body["spec"] = {"taints": taints}
    return NodePatch(node.name, trusted, reason, body, tuple(changes))


def reconcile(
    nodes: Iterable[KubeNode], view: TrustView, now: datetime, grace: timedelta = DEFAULT_GRACE
) -> list[NodePatch]:
    """The patches to make, one per Node that does not yet say what ``view`` says."""
    patches = (reconcile_node(node, view, now, grace) for node in nodes)
    return [patch for patch in patches if patch is not None]


class VerifierTrustView:
    """Builds a :class:`TrustView` from the verifier: ``GET /v1/trust`` each time (a
    statement checked against the pinned ``keys``), and ``GET /v1/nodes/{id}/results?limit=1``
    only for results not seen before (the EAR the annotation carries: anyone can verify it).

    ``request(method, path, **params)`` is ``VerifierClient.request``.
    """

    def __init__(
        self,
        request: Callable[..., Any],
        keys: VerifierKeys,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self._request = request
        self._keys = keys
        self._clock = clock
        self._ears: dict[str, str] = {}

    def __call__(self) -> TrustView:
        try:
            nodes = parse_fleet(self._request("GET", "/v1/trust"), self._keys, self._clock()).nodes
        except TrustUnavailable as error:
            return TrustView(None, str(error))
        except Exception as error:  # VerifierUnavailable, VerifierRefused, anything: closed
            return TrustView(None, str(error) or type(error).__name__)
        results: dict[str, str | None] = {}
        for name, trust in nodes.items():
            if trust.result_id is None:
                results[name] = None
                continue
            ear = self._ears.get(trust.result_id) or self._fetch(trust)
            if ear is not None:
                results[name] = ear
        current = {t.result_id for t in nodes.values() if t.result_id}
        self._ears = {k: v for k, v in self._ears.items() if k in current}
        return TrustView(nodes, "", results)

    def _fetch(self, trust: NodeTrust) -> str | None:
        try:
            answer = self._request("GET", f"/v1/nodes/{trust.node_id}/results", limit=1)
            latest = answer["results"][0]
            if latest["result_id"] != trust.result_id or not isinstance(latest["ear"], str):
                return None
        except Exception as error:  # leave the annotation as it is; next round retries
            log.warning(
                "cannot fetch the latest result",
                extra=fields(node=trust.name, action="fetch-result", reason=describe(error)),
            )
            return None
        self._ears[trust.result_id or ""] = latest["ear"]
        return str(latest["ear"])


def _status(error: BaseException) -> int | None:
    status = getattr(error, "status", None)
    return status if isinstance(status, int) else None


def node_state(view: TrustView, name: str, now: datetime) -> str:
    """``trusted``, or the taint value saying why not (the metric's ``state`` label)."""
    trusted, _reason = decide(view, name, now)
    return "trusted" if trusted else _code(view, name, now)


class NodeController:
    """Applies :func:`reconcile` to the cluster through ``kubernetes.client.CoreV1Api``.

    Every patch is made only if ``supervision.may_act()`` says so right before it (with
    leader election: only while this replica is certain it leads); a replica that may not
    act still reads the verifier and the Nodes each round, so its readiness says whether it
    could take over."""

    def __init__(
        self,
        core_api: Any,
        view: Callable[[], TrustView],
        *,
        grace: timedelta = DEFAULT_GRACE,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        supervision: Supervision | None = None,
    ) -> None:
        self._api = core_api
        self._view = view
        self._grace = grace
        self._clock = clock
        self._supervision = supervision or Supervision()
        self.last_round = Round()

    def _node(self, obj: Any) -> KubeNode:
        return KubeNode.from_api(self._api.api_client.sanitize_for_serialization(obj))

    def sync(self) -> list[NodePatch]:
        """One full round: list Nodes, ask the verifier, patch what differs. Returns the
        patches applied (none by a replica that may not act). ``last_round`` says what the
        round reached."""
        view = self._view()
        outcome = Round(
            verifier_error=(view.error or "unavailable") if view.nodes is None else None
        )
        self.last_round = outcome
        try:
            listed = self._api.list_node()
        except Exception as error:
            outcome.api_error = describe(error)
            raise
        nodes = [self._node(item) for item in listed.items]
        metrics = self._supervision.metrics
        if metrics is not None:
            now = self._clock()
            metrics.node_states(Counter(node_state(view, node.name, now) for node in nodes))
        applied: list[NodePatch] = []
        for node in nodes:
            try:
                patch = self._apply(node, view)
            except Exception as error:
                outcome.api_error = describe(error)
                raise
            if patch is not None:
                applied.append(patch)
        outcome.actions = len(applied)
        return applied

    def _apply(self, node: KubeNode, view: TrustView, attempts: int = 3) -> NodePatch | None:
        for _ in range(attempts):
            patch = reconcile_node(node, view, self._clock(), self._grace)
            if patch is None:
                return None
            with self._supervision.acting:
                if not self._supervision.may_act():  # a standby, or no longer certain: no write
                    return None
                try:
                    self._api.patch_node(node.name, patch.body)
                except Exception as error:
                    if _status(error) == 409:  # changed meanwhile: recompute from the new one
                        node = self._node(self._api.read_node(node.name))
                        continue
                    if _status(error) == 404:
                        return None
                    raise
            if self._supervision.metrics is not None and self._supervision.metrics.patches:
                self._supervision.metrics.patches.inc()
            log.info(
                "node patched",
                extra=fields(
                    node=node.name,
                    action="patch",
                    trusted=patch.trusted,
                    changes="; ".join(patch.changes) or "updated",
                    reason=patch.reason,
                ),
            )
            return patch
        log.warning(
            "node kept changing; retrying next round",
            extra=fields(node=node.name, action="retry", reason="409 conflicts"),
        )
        return None

    def run(
        self,
        interval: float = 10.0,
        stop: threading.Event | None = None,
        watch: bool = True,
    ) -> None:
        """Resync every ``interval`` seconds (trust changes without Node events; grace timers
        expire) and, with ``watch``, react to Node events in between (only while it may act:
        a standby just waits, and starts a round at once when it becomes the leader)."""
        stop = stop or threading.Event()
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.sync()
            except Exception as error:  # the API server may be down: one line, retry
                log.warning(
                    "node controller round failed",
                    extra=fields(action="sync", reason=describe(error)),
                )
            self._supervision.finished(self.last_round, time.monotonic() - started)
            if stop.is_set():
                break
            if watch and self._supervision.may_act():
                self._watch(interval, stop)
            else:
                self._supervision.wait(stop, interval)

    def _watch(self, interval: float, stop: threading.Event) -> None:
        # The client's watch module is untyped: reach it through Any.
        watch: Any = importlib.import_module("kubernetes.watch")
        watcher = watch.Watch()
        try:
            view = self._view()
            for event in watcher.stream(self._api.list_node, timeout_seconds=max(1, int(interval))):
                if stop.is_set() or not self._supervision.may_act():
                    break
                if event.get("type") in ("ADDED", "MODIFIED"):
                    self._apply(self._node(event["object"]), view)
        except Exception as error:
            log.warning("node watch ended", extra=fields(action="watch", reason=describe(error)))
            stop.wait(min(interval, 5.0))
        finally:
            watcher.stop()
