"""The validating admission webhook's decisions, over parsed AdmissionReview v1 documents.

``review(document, policy)`` takes the JSON the API server POSTs (an ``AdmissionReview``
of ``admission.k8s.io/v1`` with a ``request``) and returns the ``AdmissionReview`` to send
back: ``response.uid`` echoes ``request.uid``, ``allowed`` and ``status {code, message}``.
It never raises, and everything it cannot read is a refusal (fail closed). The doors
(``DOORS``; ``deploy/kubernetes/40-webhook.yaml`` registers exactly these):

- ``pods`` ``CREATE``: a pod whose ``spec.nodeName`` is preset (bypassing the scheduler)
  must name a node the verifier trusts now (:func:`stockade.kube.trust.refusal`); every
  image (containers, init containers, ephemeral containers) must be pinned by digest and
  signed under the trust policy (:class:`SignedImageStore`);
- ``pods`` ``UPDATE`` (``kubectl set image``) and ``pods/ephemeralcontainers`` ``UPDATE``
  (``kubectl debug``): every container of the new object whose image is not exactly the
  one the same container (same list, same name) had in ``oldObject`` must pass the image
  rule; a container whose image string is unchanged is not restarted by the update, and
  any change of the string is (so ``nginx`` -> ``docker.io/library/nginx`` is judged). A
  ``spec.nodeName`` the update changes must name a trusted node;
- ``pods/binding`` ``CREATE`` and core ``bindings`` ``CREATE``
  (``POST /api/v1/namespaces/NS/bindings``): the Binding's ``target`` must be a trusted
  Node;
- anything else that reaches the webhook (another operation, resource, subresource,
  group or version) is refused: it is registered for something it does not understand;
- requests from an exempt namespace or user (the Stockade components themselves, which
  must run before any node is trusted) are allowed with a message saying so.

Image strings are parsed and normalised by :mod:`stockade.images.reference` alone
(``alpine``, ``docker.io/alpine``, ``index.docker.io/library/alpine`` are one repository).

``decide_review`` returns, with the response, the :class:`Verdict` behind it: why in one of
a few fixed words (:data:`stockade.kube.metrics.REVIEW_REASONS`, the label of
``stockade_admission_reviews_total``) and the pod, namespace and node it was about (the
fields of the server's log line for a refusal).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from functools import partial
from pathlib import Path
from typing import Any, Final, Protocol

from stockade.images.errors import ImageError, ImageRejected
from stockade.images.layout import MANIFEST_TYPES, REF_NAME, ImageLayout
from stockade.images.policy import TrustPolicy
from stockade.images.reference import parse_reference
from stockade.images.verify import verify_image
from stockade.kube.trust import TrustSource, TrustUnavailable, refusal
from stockade.strict_json import read_object, read_string

API_VERSION: Final = "admission.k8s.io/v1"
KIND: Final = "AdmissionReview"
CONTAINER_FIELDS: Final = ("initContainers", "containers", "ephemeralContainers")


class Malformed(Exception):
    """The review (or the object in it) is not what the API server sends: 400, refused."""


class ImageChecker(Protocol):
    def check(self, image: str) -> tuple[bool, str]:
        """(signed, reason) for one pod image string; never raises."""
        ...


@dataclass(frozen=True)
class Exemptions:
    """Requests allowed without judgement: by the request's namespace, or by the
    requesting user's name (a service account is ``system:serviceaccount:NS:NAME``)."""

    namespaces: frozenset[str] = frozenset()
    users: frozenset[str] = frozenset()

    def reason(self, namespace: str, username: str) -> str | None:
        if namespace and namespace in self.namespaces:
            return f"namespace {namespace} is exempt (Stockade components)"
        if username and username in self.users:
            return f"user {username} is exempt (Stockade components)"
        return None


@dataclass(frozen=True)
class AdmissionPolicy:
    """What the webhook asks: the verifier's view of nodes, the signed-image store
    (``None``: the image rule is off), exemptions and the clock."""

    trust: TrustSource
    images: ImageChecker | None = None
    exemptions: Exemptions = field(default_factory=Exemptions)
    clock: Callable[[], datetime] = field(default=lambda: datetime.now(UTC))


@dataclass(frozen=True)
class Verdict:
    """What a review decided and why: ``reason`` is one of
    :data:`stockade.kube.metrics.REVIEW_REASONS`; ``pod``, ``namespace`` and ``node`` are
    what the request named (empty when it named none, or could not be read)."""

    allowed: bool
    code: int
    message: str
    reason: str
    namespace: str = ""
    pod: str = ""
    node: str = ""


def response(uid: str, allowed: bool, code: int, message: str) -> dict[str, Any]:
    """An ``AdmissionReview`` v1 response."""
    return {
        "apiVersion": API_VERSION,
        "kind": KIND,
        "response": {
            "uid": uid,
            "allowed": allowed,
            "status": {"code": code, "message": message},
        },
    }


_object = partial(read_object, error=Malformed)


def _string(value: Any, where: str, *, required: bool = True) -> str:
    """A string (``Malformed`` if not); an absent optional one is ``""``."""
    if value is None and not required:
        return ""
    return read_string(value, where, error=Malformed, empty=not required)


def pod_containers(pod: Mapping[str, Any], where: str = "pod") -> list[tuple[str, str, str]]:
    """``(list, container name, image)`` for every container a pod spec names, in spec
    order; ``Malformed`` when the spec is not a pod spec."""
    spec = _object(pod.get("spec"), f"{where}.spec")
    found: list[tuple[str, str, str]] = []
    for name in CONTAINER_FIELDS:
        containers = spec.get(name)
        if containers is None:
            continue
        if not isinstance(containers, list):
            raise Malformed(f"{where}.spec.{name} is not a list")
        for index, container in enumerate(containers):
            at = f"{where}.spec.{name}[{index}]"
            entry = _object(container, at)
            image = _string(entry.get("image"), f"{at}.image")
            found.append((name, _string(entry.get("name"), f"{at}.name", required=False), image))
    return found


def pod_images(pod: Mapping[str, Any], where: str = "pod") -> list[str]:
    """Every image a pod spec names, in spec order; ``Malformed`` when the spec is not
    a pod spec."""
    return [image for _, _, image in pod_containers(pod, where)]


def _judge_images(images: Iterable[str], checker: ImageChecker | None) -> str | None:
    """None when every image passes, else the refusal's message."""
    if checker is None:
        return None
    refusals = []
    for image in dict.fromkeys(images):
        signed, reason = checker.check(image)
        if not signed:
            refusals.append(reason)
    return "; ".join(refusals) if refusals else None


def _judge_node(policy: AdmissionPolicy, node: str, what: str) -> tuple[str, str] | None:
    """None when ``node`` is trusted now, else (the refusal's message, its reason)."""
    try:
        nodes = policy.trust.snapshot()
    except TrustUnavailable as error:
        why = f"Stockade cannot tell whether node {node} is trusted: {error}"
        return f"{what} names node {node}, which Stockade refuses: {why}", "trust-unavailable"
    found = refusal(nodes, node, policy.clock())
    if found is None:
        return None
    return f"{what} names node {node}, which Stockade refuses: {found}", "untrusted-node"


@dataclass(frozen=True)
class _Request:
    operation: str
    resource: str
    sub: str
    namespace: str
    name: str
    raw: Mapping[str, Any]

    @property
    def door(self) -> str:
        return f"{self.operation} {self.resource}{'/' + self.sub if self.sub else ''}"


def _judge_binding(request: _Request, policy: AdmissionPolicy) -> Verdict:
    """``pods/binding`` and core ``bindings``: the target Node must be trusted."""
    obj = _object(request.raw.get("object"), "request.object")
    kind = obj.get("kind")
    if kind not in (None, "Binding"):
        raise Malformed(f"request.object is a {kind!r}, not a Binding")
    target = _object(obj.get("target"), "Binding.target")
    if target.get("kind") not in (None, "", "Node"):
        raise Malformed(f"Binding.target is a {target.get('kind')!r}, not a Node")
    node = _string(target.get("name"), "Binding.target.name")
    metadata = _object(obj.get("metadata", {}), "Binding.metadata")
    pod = _string(metadata.get("name"), "Binding.metadata.name", required=False)
    pod = pod or request.name
    about = {"namespace": request.namespace, "pod": pod, "node": node}
    refused = _judge_node(policy, node, f"binding of pod {request.namespace}/{pod}")
    if refused is not None:
        return Verdict(False, 403, refused[0], refused[1], **about)
    return Verdict(True, 200, f"binding to node {node} allowed: it is trusted", "trusted", **about)


def _pod_object(value: Any, where: str) -> Mapping[str, Any]:
    obj = _object(value, where)
    if obj.get("kind") not in (None, "Pod"):
        raise Malformed(f"{where} is a {obj.get('kind')!r}, not a Pod")
    return obj


def _node_name(pod: Mapping[str, Any], where: str) -> str:
    spec = _object(pod.get("spec"), f"{where}.spec")
    return _string(spec.get("nodeName"), f"{where}.spec.nodeName", required=False)


def _pod_name(pod: Mapping[str, Any], request: _Request) -> str:
    """The pod's name; for a pod named by the API server, its ``generateName`` prefix."""
    metadata = pod.get("metadata")
    if isinstance(metadata, dict):
        for key in ("name", "generateName"):
            value = metadata.get(key)
            if isinstance(value, str) and value:
                return value
    return request.name


def _judge_pod(request: _Request, policy: AdmissionPolicy) -> Verdict:
    """``pods`` ``CREATE``/``UPDATE`` and ``pods/ephemeralcontainers`` ``UPDATE``."""
    obj = _pod_object(request.raw.get("object"), "request.object")
    containers = pod_containers(obj, "request.object")
    node_name = _node_name(obj, "request.object")
    named = node_name
    judged = [image for _, _, image in containers]
    if request.operation == "UPDATE":
        old = _pod_object(request.raw.get("oldObject"), "request.oldObject")
        before = {
            (field, name): image for field, name, image in pod_containers(old, "request.oldObject")
        }
        judged = [
            image
            for field, name, image in containers
            if not name or before.get((field, name)) != image
        ]
        if node_name == _node_name(old, "request.oldObject"):
            node_name = ""
    about = {"namespace": request.namespace, "pod": _pod_name(obj, request), "node": named}
    refusals = []
    reason = ""
    if node_name:
        refused = _judge_node(policy, node_name, "spec.nodeName")
        if refused is not None:
            refusals.append(refused[0])
            reason = refused[1]
    image_refusal = _judge_images(judged, policy.images)
    if image_refusal is not None:
        refusals.append(image_refusal)
        reason = reason or "image"
    what = "pod" if request.operation == "CREATE" else "pod update"
    if refusals:
        return Verdict(False, 403, f"{what} refused: " + "; ".join(refusals), reason, **about)
    where = f" on trusted node {node_name}" if node_name else ""
    if policy.images is None:
        checked = "image rule off"
    elif request.operation == "CREATE":
        checked = "images signed"
    else:
        checked = f"{len(dict.fromkeys(judged))} new or changed image(s), all signed"
    return Verdict(True, 200, f"{what} allowed{where} ({checked})", "trusted", **about)


DOORS: Final[Mapping[tuple[str, str, str], Callable[[_Request, AdmissionPolicy], Verdict]]] = {
    ("CREATE", "pods", ""): _judge_pod,
    ("UPDATE", "pods", ""): _judge_pod,
    ("UPDATE", "pods", "ephemeralcontainers"): _judge_pod,
    ("CREATE", "pods", "binding"): _judge_binding,
    ("CREATE", "bindings", ""): _judge_binding,
}
"""(operation, core v1 resource, subresource) -> its judge: every door the webhook is
registered for. Anything else is refused."""


def _judge(request: Mapping[str, Any], policy: AdmissionPolicy) -> Verdict:
    operation = _string(request.get("operation"), "request.operation")
    resource = _object(request.get("resource"), "request.resource")
    group = _string(resource.get("group"), "request.resource.group", required=False)
    version = _string(resource.get("version"), "request.resource.version", required=False)
    plural = _string(resource.get("resource"), "request.resource.resource")
    sub = _string(request.get("subResource"), "request.subResource", required=False)
    namespace = _string(request.get("namespace"), "request.namespace", required=False)
    name = _string(request.get("name"), "request.name", required=False)
    user_info = request.get("userInfo")
    username = ""
    if isinstance(user_info, dict):
        username = _string(user_info.get("username"), "userInfo.username", required=False)

    exempt = policy.exemptions.reason(namespace, username)
    if exempt is not None:
        return Verdict(True, 200, exempt, "exempt", namespace, name)
    parsed = _Request(operation, plural, sub, namespace, name, request)
    judge = DOORS.get((operation, plural, sub)) if group == "" and version == "v1" else None
    if judge is None:
        api = f"{group}/{version}" if group else version or "(no version)"
        message = (
            f"Stockade refuses {parsed.door} ({api}): the webhook is registered for a "
            "request it does not judge (fail closed); register only pods CREATE/UPDATE, "
            "pods/ephemeralcontainers UPDATE, pods/binding and bindings CREATE"
        )
        return Verdict(False, 403, message, "unjudged", namespace, name)
    return judge(parsed, policy)


def review(document: Any, policy: AdmissionPolicy) -> dict[str, Any]:
    """The ``AdmissionReview`` response for ``document``; never raises, fails closed."""
    return decide_review(document, policy)[0]


def decide_review(document: Any, policy: AdmissionPolicy) -> tuple[dict[str, Any], Verdict]:
    """The ``AdmissionReview`` response for ``document`` and the :class:`Verdict` behind it;
    never raises, fails closed."""
    uid = ""
    try:
        review_object = _object(document, "AdmissionReview")
        request = _object(review_object.get("request"), "AdmissionReview.request")
        uid = _string(request.get("uid"), "request.uid")
        if review_object.get("apiVersion") != API_VERSION or review_object.get("kind") != KIND:
            raise Malformed(
                f"expected apiVersion {API_VERSION} kind {KIND}, got "
                f"{review_object.get('apiVersion')!r} {review_object.get('kind')!r}"
            )
        verdict = _judge(request, policy)
    except Malformed as error:
        message = f"Stockade refuses a malformed AdmissionReview: {error}"
        verdict = Verdict(False, 400, message, "malformed")
    except Exception as error:  # fail closed on anything unforeseen
        verdict = Verdict(False, 500, f"Stockade could not decide: {type(error).__name__}", "error")
    return response(uid, verdict.allowed, verdict.code, verdict.message), verdict


class SignedImageStore:
    """Images the webhook admits: a directory of OCI layouts holding signed images
    (``stockade image sign`` / ``cosign``-style ``sha256-<hex>.sig`` tags).

    ``check(image)``: the image must be pinned by digest (``repo@sha256:...``; a tag alone
    is refused: tags are mutable), some layout must hold that manifest under a tag, and
    :func:`verify_image` must accept it with the expected reference ``repo@digest`` (so a
    signature for another repository does not do). Accepted verdicts are cached for
    ``cache_seconds``; a digest not found rescans the directory (at most every
    ``rescan_seconds``)."""

    def __init__(
        self,
        directory: Path,
        policy: TrustPolicy,
        cache_seconds: float = 30.0,
        rescan_seconds: float = 1.0,
    ) -> None:
        self.directory = directory
        self.policy = policy
        self._cache_seconds = cache_seconds
        self._rescan_seconds = rescan_seconds
        self._lock = threading.Lock()
        self._index: dict[str, list[tuple[Path, str]]] = {}
        self._scanned = float("-inf")
        self._accepted: dict[str, tuple[float, str]] = {}
        self._scan()

    def readiness(self, now: datetime) -> tuple[bool, str]:
        """Whether images can be admitted at all: the trust policy is loaded and current (an
        expired one admits nothing, so the webhook is not ready to do its job)."""
        try:
            self.policy.check_current(now)
        except ImageRejected as error:
            return False, f"image rule: {error.detail}"
        return True, f"image rule: trust policy {self.policy.digest} (serial {self.policy.serial})"

    def _scan(self) -> None:
        index: dict[str, list[tuple[Path, str]]] = {}
        try:
            entries = sorted(self.directory.iterdir())
        except OSError:
            entries = []
        for path in entries:
            try:
                layout = ImageLayout.open(path)
                descriptors = layout.descriptors()
            except (ImageError, OSError):
                continue
            for descriptor in descriptors:
                tag = descriptor.annotations.get(REF_NAME)
                if tag and descriptor.media_type in MANIFEST_TYPES:
                    index.setdefault(descriptor.digest, []).append((path, tag))
        with self._lock:
            self._index = index
            self._scanned = time.monotonic()

    def _locations(self, digest: str) -> list[tuple[Path, str]]:
        with self._lock:
            found = self._index.get(digest)
            due = time.monotonic() - self._scanned >= self._rescan_seconds
        if found is None and due:
            self._scan()
            with self._lock:
                found = self._index.get(digest)
        return list(found or [])

    def check(self, image: str) -> tuple[bool, str]:
        try:
            reference = parse_reference(image)
        except ImageError as error:
            return False, f"image '{image}' is not an image reference: {error}"
        if reference.digest is None:
            return False, (
                f"image '{image}' is not pinned by digest: reference it as "
                f"{reference.repository}@sha256:<manifest digest> (tags are mutable)"
            )
        expected = f"{reference.repository}@{reference.digest}"
        try:
            self.policy.check_current(datetime.now(UTC))  # an expired policy admits nothing
        except ImageRejected as error:
            return False, f"image '{image}' refused: {error}"
        now = time.monotonic()
        with self._lock:
            cached = self._accepted.get(expected)
        if cached is not None and now - cached[0] < self._cache_seconds:
            return True, cached[1]
        locations = self._locations(reference.digest)
        if not locations:
            return False, (
                f"image '{image}': manifest {reference.digest} is not in the signed-image "
                "store (unsigned)"
            )
        failures = []
        for path, tag in locations:
            try:
                verified = verify_image(ImageLayout.open(path), tag, expected, self.policy)
            except ImageRejected as rejected:
                failures.append(f"{rejected.check}: {rejected.detail}")
                continue
            except (ImageError, OSError) as error:
                failures.append(str(error))
                continue
            reason = f"image {expected} signed by '{verified.signer}'"
            with self._lock:
                self._accepted[expected] = (now, reason)
            return True, reason
        return False, f"image '{image}' is not signed under the trust policy ({failures[0]})"
