"""An in-process Kubernetes API emulator: the REST paths the node controller and the kubelet
CSR approver use, served on 127.0.0.1 so tests drive them with the official ``kubernetes``
client unchanged.

Served (JSON only; no authentication; ``resourceVersion`` is one counter for all objects):

- ``GET /api/v1/nodes`` (``?watch=true`` streams ADDED/MODIFIED events until
  ``timeoutSeconds``), ``POST /api/v1/nodes``, ``GET /api/v1/nodes/{name}``,
  ``PATCH /api/v1/nodes/{name}`` with ``application/strategic-merge-patch+json`` (maps merge,
  ``null`` deletes, lists replaced: what the API server does for ``spec.taints``, which has
  no merge key), ``application/merge-patch+json`` (RFC 7386) or ``application/json-patch+json``
  (RFC 6902: add, remove, replace, test). A ``metadata.resourceVersion`` in a patch that is not
  the current one is 409 Conflict, as on a real API server.
  ``?dryRun=All`` validates and answers without storing.
- ``GET|POST /apis/certificates.k8s.io/v1/certificatesigningrequests`` (``fieldSelector``
  ``spec.signerName=...`` honoured; ``?watch=true`` as for nodes),
  ``GET|DELETE .../certificatesigningrequests/{name}`` and ``PUT .../{name}/approval``: only
  ``status.conditions`` is taken from the body; Approved and Denied cannot both be set, and
  neither can be removed or changed once set (422), a stale ``resourceVersion`` is 409.
- ``GET|POST /apis/coordination.k8s.io/v1/namespaces/{ns}/leases`` and
  ``GET|PUT|DELETE .../leases/{name}`` (what leader election uses): POST of an existing name
  is 409 AlreadyExists; a PUT carrying a ``metadata.resourceVersion`` that is not the current
  one is 409 Conflict (without one it is unconditional, as for a real Lease); a PUT of a
  Lease that does not exist is 404; ``spec.leaseDurationSeconds`` must be > 0,
  ``spec.leaseTransitions`` >= 0 (422 otherwise) and the times MicroTime, exactly six
  fractional digits as the API server's parser requires (400 otherwise).

Validation on write is what these tests need: label keys and values, taint effects and
duplicate (key, effect) pairs, annotation sizes. Anything else answers 404 or 405 as a
``Status`` object, which the client raises as ``ApiException``.
"""

from __future__ import annotations

import copy
import json
import re
import threading
import time
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import TracebackType
from typing import Any, Self
from urllib.parse import parse_qs, urlsplit

NODES = "/api/v1/nodes"
CSRS = "/apis/certificates.k8s.io/v1/certificatesigningrequests"
LEASES = "/apis/coordination.k8s.io/v1/namespaces/"
_LEASE_PATH = re.compile(r"/apis/coordination\.k8s\.io/v1/namespaces/([^/]+)/leases(?:/([^/]+))?")
TAINT_EFFECTS = {"NoSchedule", "PreferNoSchedule", "NoExecute"}
MAX_ANNOTATIONS_BYTES = 256 * 1024
_LABEL_NAME = re.compile(r"([A-Za-z0-9]([-A-Za-z0-9_.]{0,61}[A-Za-z0-9])?)")
_LABEL_VALUE = re.compile(r"(([A-Za-z0-9][-A-Za-z0-9_.]{0,61})?[A-Za-z0-9])?")
_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


class ApiError(Exception):
    def __init__(self, code: int, reason: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.reason = reason
        self.message = message


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")


def _valid_key(key: str) -> bool:
    prefix, _, name = key.rpartition("/")
    if prefix and (len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix)):
        return False
    return len(name) <= 63 and bool(_LABEL_NAME.fullmatch(name))


def merge_patch(target: Any, patch: Any) -> Any:
    """RFC 7386 (and strategic merge for objects whose lists have no merge key)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    result = dict(target) if isinstance(target, dict) else {}
    for key, value in patch.items():
        if key.startswith("$"):
            raise ApiError(422, "Invalid", f"patch directive {key} is not supported here")
        if value is None:
            result.pop(key, None)
        else:
            result[key] = merge_patch(result.get(key), value)
    return result


def _pointer(path: str) -> list[str]:
    if not path.startswith("/"):
        raise ApiError(422, "Invalid", f"JSON pointer {path!r} does not start with /")
    return [part.replace("~1", "/").replace("~0", "~") for part in path[1:].split("/")]


def json_patch(document: Any, operations: Any) -> Any:
    """RFC 6902 add, remove, replace and test."""
    result = copy.deepcopy(document)
    if not isinstance(operations, list):
        raise ApiError(400, "BadRequest", "a JSON patch is a list of operations")
    for operation in operations:
        op, parts = operation.get("op"), _pointer(str(operation.get("path", "")))
        parent: Any = result
        for part in parts[:-1]:
            try:
                parent = parent[int(part)] if isinstance(parent, list) else parent[part]
            except (KeyError, IndexError, ValueError):
                raise ApiError(422, "Invalid", f"no {operation['path']}") from None
        last = parts[-1]
        if op == "test":
            current = parent[int(last)] if isinstance(parent, list) else parent.get(last)
            if current != operation.get("value"):
                raise ApiError(422, "Invalid", f"test failed at {operation['path']}")
        elif op in ("add", "replace"):
            value = copy.deepcopy(operation.get("value"))
            if isinstance(parent, list):
                index = len(parent) if last == "-" else int(last)
                if op == "add":
                    parent.insert(index, value)
                else:
                    parent[index] = value
            else:
                if op == "replace" and last not in parent:
                    raise ApiError(422, "Invalid", f"no {operation['path']} to replace")
                parent[last] = value
        elif op == "remove":
            try:
                if isinstance(parent, list):
                    del parent[int(last)]
                else:
                    del parent[last]
            except (KeyError, IndexError, ValueError):
                raise ApiError(422, "Invalid", f"no {operation['path']} to remove") from None
        else:
            raise ApiError(422, "Invalid", f"unsupported JSON patch op {op!r}")
    return result


def _validate_metadata(meta: dict[str, Any]) -> None:
    for key, value in (meta.get("labels") or {}).items():
        if not isinstance(value, str) or not _valid_key(key) or not _LABEL_VALUE.fullmatch(value):
            raise ApiError(422, "Invalid", f"metadata.labels: invalid label {key}={value!r}")
    annotations = meta.get("annotations") or {}
    size = 0
    for key, value in annotations.items():
        if not isinstance(value, str) or not _valid_key(key):
            raise ApiError(422, "Invalid", f"metadata.annotations: invalid annotation {key}")
        size += len(key) + len(value)
    if size > MAX_ANNOTATIONS_BYTES:
        raise ApiError(422, "Invalid", "metadata.annotations: too long (256 KiB)")


def _validate_node(node: dict[str, Any]) -> None:
    _validate_metadata(node["metadata"])
    seen: set[tuple[str, str]] = set()
    for taint in (node.get("spec") or {}).get("taints") or []:
        key, effect = taint.get("key"), taint.get("effect")
        if not isinstance(key, str) or not _valid_key(key):
            raise ApiError(422, "Invalid", f"spec.taints: invalid key {key!r}")
        if effect not in TAINT_EFFECTS:
            raise ApiError(422, "Invalid", f"spec.taints: invalid effect {effect!r}")
        value = taint.get("value", "")
        if not isinstance(value, str) or not _LABEL_VALUE.fullmatch(value):
            raise ApiError(422, "Invalid", f"spec.taints: invalid value {value!r}")
        if (key, effect) in seen:
            raise ApiError(422, "Invalid", f"spec.taints: duplicate taint {key}:{effect}")
        seen.add((key, effect))


def _key(collection: str, obj: dict[str, Any]) -> str:
    """Leases are namespaced: stored as ``namespace/name``."""
    meta = obj["metadata"]
    return f"{meta['namespace']}/{meta['name']}" if collection == LEASES else str(meta["name"])


# MicroTime as the API server parses it (Go's time.Parse with RFC3339Micro): six digits.
_MICRO_TIME = re.compile(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}(Z|[+-]\d\d:\d\d)")


def _micro_time(value: Any) -> bool:
    if not isinstance(value, str) or not _MICRO_TIME.fullmatch(value):
        return False
    try:
        moment = datetime.fromisoformat(value.replace("Z", "+00:00"))
    except ValueError:
        return False
    return moment.tzinfo is not None


def _validate_lease(lease: dict[str, Any]) -> None:
    _validate_metadata(lease["metadata"])
    spec = lease.get("spec") or {}
    if not isinstance(spec, dict):
        raise ApiError(400, "BadRequest", "spec must be an object")
    duration = spec.get("leaseDurationSeconds")
    if duration is not None and (not isinstance(duration, int) or duration <= 0):
        raise ApiError(422, "Invalid", "spec.leaseDurationSeconds: must be greater than 0")
    transitions = spec.get("leaseTransitions")
    if transitions is not None and (not isinstance(transitions, int) or transitions < 0):
        raise ApiError(422, "Invalid", "spec.leaseTransitions: must be greater than or equal to 0")
    holder = spec.get("holderIdentity")
    if holder is not None and not isinstance(holder, str):
        raise ApiError(400, "BadRequest", "spec.holderIdentity must be a string")
    for field in ("acquireTime", "renewTime"):
        if spec.get(field) is not None and not _micro_time(spec[field]):
            raise ApiError(400, "BadRequest", f"spec.{field}: {spec[field]!r} is not RFC3339Micro")


def _conditions(csr: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {c.get("type", ""): c for c in (csr.get("status") or {}).get("conditions") or []}


class _Store:
    def __init__(self) -> None:
        self.lock = threading.Condition()
        self.version = 0
        self.objects: dict[str, dict[str, dict[str, Any]]] = {NODES: {}, CSRS: {}, LEASES: {}}
        self.events: list[tuple[int, str, str, dict[str, Any]]] = []
        self.requests: list[tuple[str, str, str]] = []

    def bump(self, collection: str, kind: str, obj: dict[str, Any]) -> dict[str, Any]:
        """Store ``obj`` with a new resourceVersion; the caller holds the lock."""
        self.version += 1
        obj["metadata"]["resourceVersion"] = str(self.version)
        self.objects[collection][_key(collection, obj)] = obj
        self.events.append((self.version, collection, kind, copy.deepcopy(obj)))
        self.lock.notify_all()
        return copy.deepcopy(obj)


class KubeEmulator:
    """Start with ``with KubeEmulator() as api:``; ``api.url`` is the server to configure."""

    def __init__(self) -> None:
        self._store = _Store()
        store = self._store

        class Handler(_Handler):
            pass

        Handler.store = store
        self._server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self._server.daemon_threads = True
        self._thread = threading.Thread(
            target=self._server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        )
        host, port = self._server.server_address[:2]
        self.url = f"http://{host!s}:{port}"

    def __enter__(self) -> Self:
        self._thread.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self._server.shutdown()
        self._server.server_close()

    # -- direct access for tests (what an administrator or another controller would do) --

    def add_node(
        self,
        name: str,
        *,
        labels: dict[str, str] | None = None,
        annotations: dict[str, str] | None = None,
        taints: list[dict[str, Any]] | None = None,
        addresses: list[dict[str, str]] | None = None,
    ) -> dict[str, Any]:
        node: dict[str, Any] = {
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _timestamp(),
                "labels": {"kubernetes.io/hostname": name, **(labels or {})},
                "annotations": dict(annotations or {}),
            },
            "spec": {"taints": list(taints)} if taints else {},
            "status": {"addresses": addresses or [{"type": "Hostname", "address": name}]},
        }
        _validate_node(node)
        with self._store.lock:
            return self._store.bump(NODES, "ADDED", node)

    def update_node(self, name: str, patch: dict[str, Any]) -> dict[str, Any]:
        """A merge patch by someone else (an administrator, another controller)."""
        with self._store.lock:
            node = merge_patch(self._store.objects[NODES][name], patch)
            _validate_node(node)
            return self._store.bump(NODES, "MODIFIED", node)

    def node(self, name: str) -> dict[str, Any]:
        with self._store.lock:
            return copy.deepcopy(self._store.objects[NODES][name])

    def add_csr(
        self,
        name: str,
        *,
        request_pem: bytes,
        signer_name: str,
        usages: list[str],
        username: str,
        groups: list[str] | None = None,
        annotations: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        import base64

        csr: dict[str, Any] = {
            "apiVersion": "certificates.k8s.io/v1",
            "kind": "CertificateSigningRequest",
            "metadata": {
                "name": name,
                "uid": str(uuid.uuid4()),
                "creationTimestamp": _timestamp(),
                "annotations": dict(annotations or {}),
            },
            "spec": {
                "request": base64.b64encode(request_pem).decode("ascii"),
                "signerName": signer_name,
                "usages": usages,
                "username": username,
                "groups": groups or ["system:authenticated"],
            },
            "status": {},
        }
        _validate_metadata(csr["metadata"])
        with self._store.lock:
            return self._store.bump(CSRS, "ADDED", csr)

    def csr(self, name: str) -> dict[str, Any]:
        with self._store.lock:
            return copy.deepcopy(self._store.objects[CSRS][name])

    def lease(self, name: str, namespace: str = "default") -> dict[str, Any] | None:
        """The Lease as stored (None if there is none)."""
        with self._store.lock:
            found = self._store.objects[LEASES].get(f"{namespace}/{name}")
            return copy.deepcopy(found) if found is not None else None

    def write_lease(self, name: str, namespace: str = "default", **spec: Any) -> dict[str, Any]:
        """Create or overwrite a Lease's spec unconditionally: what someone else with the
        right to update leases (an administrator, an attacker) can do. ``spec`` uses the wire
        names (``holderIdentity=...``, ``leaseDurationSeconds=...``)."""
        with self._store.lock:
            current = self._store.objects[LEASES].get(f"{namespace}/{name}")
            lease = copy.deepcopy(current) if current is not None else _new_lease(name, namespace)
            lease["spec"] = {**lease.get("spec", {}), **spec}
            _validate_lease(lease)
            return self._store.bump(LEASES, "ADDED" if current is None else "MODIFIED", lease)

    @property
    def requests(self) -> list[tuple[str, str, str]]:
        """(method, path, content type) of every request served, in order."""
        with self._store.lock:
            return list(self._store.requests)


class _Handler(BaseHTTPRequestHandler):
    store: _Store
    protocol_version = "HTTP/1.1"
    # The head and the body go out in two writes: without this each answer waits ~40 ms
    # for the client's delayed ACK (Nagle), which a step-by-step election test multiplies.
    disable_nagle_algorithm = True

    def log_message(self, format: str, *args: Any) -> None:
        return

    def do_GET(self) -> None:
        self._serve("GET")

    def do_POST(self) -> None:
        self._serve("POST")

    def do_PUT(self) -> None:
        self._serve("PUT")

    def do_PATCH(self) -> None:
        self._serve("PATCH")

    def do_DELETE(self) -> None:
        self._serve("DELETE")

    def _serve(self, method: str) -> None:
        split = urlsplit(self.path)
        query = {k: v[-1] for k, v in parse_qs(split.query).items()}
        content_type = self.headers.get("Content-Type", "").split(";")[0].strip()
        length = int(self.headers.get("Content-Length") or 0)
        raw = self.rfile.read(length) if length else b""
        with self.store.lock:
            self.store.requests.append((method, split.path, content_type))
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            self._status(ApiError(400, "BadRequest", "the body is not JSON"))
            return
        try:
            if method == "GET" and query.get("watch") in ("true", "1"):
                self._watch(split.path, query)
                return
            code, answer = self._route(method, split.path, query, content_type, body)
        except ApiError as error:
            self._status(error)
            return
        self._send(code, answer)

    def _route(
        self, method: str, path: str, query: dict[str, str], content_type: str, body: Any
    ) -> tuple[int, Any]:
        lease_path = _LEASE_PATH.fullmatch(path)
        if lease_path is not None:
            return self._lease(method, lease_path[1], lease_path[2], body)
        for collection, kind in ((NODES, "Node"), (CSRS, "CertificateSigningRequest")):
            if path == collection:
                if method == "GET":
                    return 200, self._list(collection, kind, query)
                if method == "POST":
                    return 201, self._create(collection, body)
                raise ApiError(405, "MethodNotAllowed", f"{method} {path}")
            if path.startswith(collection + "/"):
                name, _, sub = path[len(collection) + 1 :].partition("/")
                if collection == NODES and not sub:
                    if method == "GET":
                        return 200, self._get(collection, name)
                    if method == "PATCH":
                        dry_run = query.get("dryRun") == "All"
                        return 200, self._patch_node(name, content_type, body, dry_run)
                if collection == CSRS and not sub and method == "GET":
                    return 200, self._get(collection, name)
                if collection == CSRS and not sub and method == "DELETE":
                    return 200, self._delete(collection, name)
                if collection == CSRS and sub == "approval" and method == "PUT":
                    return 200, self._approve(name, body)
                raise ApiError(405, "MethodNotAllowed", f"{method} {path}")
        raise ApiError(404, "NotFound", f"the server could not find the requested resource {path}")

    # -- handlers ------------------------------------------------------------------------

    def _matches(self, obj: dict[str, Any], query: dict[str, str]) -> bool:
        selector = query.get("fieldSelector", "")
        for term in filter(None, selector.split(",")):
            field, _, value = term.partition("=")
            if field == "spec.signerName" and obj["spec"].get("signerName") != value:
                return False
            if field == "metadata.name" and obj["metadata"]["name"] != value:
                return False
        return True

    def _list(self, collection: str, kind: str, query: dict[str, str]) -> dict[str, Any]:
        with self.store.lock:
            items = [
                copy.deepcopy(obj)
                for _, obj in sorted(self.store.objects[collection].items())
                if self._matches(obj, query)
            ]
            version = str(self.store.version)
        api_version = "v1" if collection == NODES else "certificates.k8s.io/v1"
        return {
            "apiVersion": api_version,
            "kind": f"{kind}List",
            "metadata": {"resourceVersion": version},
            "items": items,
        }

    def _get(self, collection: str, name: str) -> dict[str, Any]:
        with self.store.lock:
            obj = self.store.objects[collection].get(name)
            if obj is None:
                kind = "nodes" if collection == NODES else "certificatesigningrequests"
                raise ApiError(404, "NotFound", f'{kind} "{name}" not found')
            return copy.deepcopy(obj)

    def _create(self, collection: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or not (body.get("metadata") or {}).get("name"):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        obj = copy.deepcopy(body)
        meta = obj["metadata"]
        meta.update(uid=str(uuid.uuid4()), creationTimestamp=_timestamp())
        meta.pop("resourceVersion", None)
        if collection == NODES:
            obj.update(apiVersion="v1", kind="Node")
            _validate_node(obj)
        else:
            obj.update(apiVersion="certificates.k8s.io/v1", kind="CertificateSigningRequest")
            spec = obj.get("spec") or {}
            if not spec.get("request") or not spec.get("signerName"):
                raise ApiError(422, "Invalid", "spec.request and spec.signerName are required")
            # The API server records who asked; the emulator's only user is the admin.
            spec.update(username="kubernetes-admin", groups=["system:masters"])
            obj["status"] = {}
            _validate_metadata(meta)
        with self.store.lock:
            if meta["name"] in self.store.objects[collection]:
                raise ApiError(409, "AlreadyExists", f'"{meta["name"]}" already exists')
            return self.store.bump(collection, "ADDED", obj)

    def _delete(self, collection: str, name: str) -> dict[str, Any]:
        with self.store.lock:
            obj = self.store.objects[collection].pop(name, None)
            if obj is None:
                raise ApiError(404, "NotFound", f'"{name}" not found')
            self.store.version += 1
            self.store.events.append((self.store.version, collection, "DELETED", obj))
            self.store.lock.notify_all()
        return {"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Success"}

    def _patch_node(
        self, name: str, content_type: str, body: Any, dry_run: bool = False
    ) -> dict[str, Any]:
        with self.store.lock:
            current = self.store.objects[NODES].get(name)
            if current is None:
                raise ApiError(404, "NotFound", f'nodes "{name}" not found')
            if content_type == "application/json-patch+json":
                patched = json_patch(current, body)
            elif content_type in (
                "application/strategic-merge-patch+json",
                "application/merge-patch+json",
            ):
                if not isinstance(body, dict):
                    raise ApiError(400, "BadRequest", "a merge patch is a JSON object")
                wanted = (body.get("metadata") or {}).get("resourceVersion")
                if wanted is not None and wanted != current["metadata"]["resourceVersion"]:
                    raise ApiError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on nodes "{name}": the object has '
                        "been modified; please apply your changes to the latest version "
                        "and try again",
                    )
                patched = merge_patch(current, body)
            else:
                raise ApiError(415, "UnsupportedMediaType", f"{content_type!r} is not a patch")
            if patched["metadata"].get("name") != name:
                raise ApiError(422, "Invalid", "metadata.name cannot be changed")
            _validate_node(patched)
            if dry_run:  # admitted and validated, not stored
                return copy.deepcopy(patched)
            return self.store.bump(NODES, "MODIFIED", patched)

    def _lease(self, method: str, namespace: str, name: str | None, body: Any) -> tuple[int, Any]:
        store = self.store
        if name is None:
            if method == "GET":
                with store.lock:
                    items = [
                        copy.deepcopy(obj)
                        for key, obj in sorted(store.objects[LEASES].items())
                        if key.startswith(namespace + "/")
                    ]
                    version = str(store.version)
                return 200, {
                    "apiVersion": "coordination.k8s.io/v1",
                    "kind": "LeaseList",
                    "metadata": {"resourceVersion": version},
                    "items": items,
                }
            if method == "POST":
                lease = self._lease_body(body, namespace, None)
                lease["metadata"].update(uid=str(uuid.uuid4()), creationTimestamp=_timestamp())
                lease["metadata"].pop("resourceVersion", None)
                with store.lock:
                    if _key(LEASES, lease) in store.objects[LEASES]:
                        raise ApiError(
                            409,
                            "AlreadyExists",
                            f'leases.coordination.k8s.io "{lease["metadata"]["name"]}" already '
                            "exists",
                        )
                    return 201, store.bump(LEASES, "ADDED", lease)
            raise ApiError(405, "MethodNotAllowed", f"{method} leases")
        key = f"{namespace}/{name}"
        missing = ApiError(404, "NotFound", f'leases.coordination.k8s.io "{name}" not found')
        with store.lock:
            current = store.objects[LEASES].get(key)
            if method == "GET":
                if current is None:
                    raise missing
                return 200, copy.deepcopy(current)
            if method == "DELETE":
                if current is None:
                    raise missing
                del store.objects[LEASES][key]
                store.version += 1
                store.events.append((store.version, LEASES, "DELETED", current))
                store.lock.notify_all()
                return 200, {"kind": "Status", "apiVersion": "v1", "status": "Success"}
            if method == "PUT":
                lease = self._lease_body(body, namespace, name)
                if current is None:
                    raise missing
                wanted = lease["metadata"].get("resourceVersion")
                if wanted and wanted != current["metadata"]["resourceVersion"]:
                    raise ApiError(
                        409,
                        "Conflict",
                        f'Operation cannot be fulfilled on leases.coordination.k8s.io "{name}": '
                        "the object has been modified; please apply your changes to the latest "
                        "version and try again",
                    )
                for field in ("uid", "creationTimestamp"):
                    lease["metadata"][field] = current["metadata"].get(field)
                return 200, store.bump(LEASES, "MODIFIED", lease)
        raise ApiError(405, "MethodNotAllowed", f"{method} lease {name}")

    @staticmethod
    def _lease_body(body: Any, namespace: str, name: str | None) -> dict[str, Any]:
        if not isinstance(body, dict) or not isinstance(body.get("metadata"), dict):
            raise ApiError(400, "BadRequest", "the body must be a Lease")
        lease = copy.deepcopy(body)
        meta = lease["metadata"]
        if not meta.get("name") or not _DNS_SUBDOMAIN.fullmatch(str(meta["name"])):
            raise ApiError(422, "Invalid", "metadata.name: Required value")
        if name is not None and meta["name"] != name:
            raise ApiError(400, "BadRequest", "the name of the object does not match the URL")
        if meta.setdefault("namespace", namespace) != namespace:
            raise ApiError(400, "BadRequest", "the namespace of the object does not match")
        lease.update(apiVersion="coordination.k8s.io/v1", kind="Lease")
        lease.setdefault("spec", {})
        _validate_lease(lease)
        return lease

    def _approve(self, name: str, body: Any) -> dict[str, Any]:
        if not isinstance(body, dict) or (body.get("metadata") or {}).get("name") != name:
            raise ApiError(400, "BadRequest", "the body must be this CertificateSigningRequest")
        with self.store.lock:
            current = self.store.objects[CSRS].get(name)
            if current is None:
                raise ApiError(404, "NotFound", f'certificatesigningrequests "{name}" not found')
            wanted = body["metadata"].get("resourceVersion")
            if wanted and wanted != current["metadata"]["resourceVersion"]:
                raise ApiError(409, "Conflict", f'"{name}": the object has been modified')
            new = {c.get("type"): c for c in (body.get("status") or {}).get("conditions") or []}
            for kind in ("Approved", "Denied"):
                old = _conditions(current).get(kind)
                if old is not None and (new.get(kind) or {}).get("status") != old.get("status"):
                    raise ApiError(422, "Invalid", f"status.conditions: {kind} cannot be changed")
            if new.get("Approved", {}).get("status") == "True" and (
                new.get("Denied", {}).get("status") == "True"
            ):
                raise ApiError(422, "Invalid", "status.conditions: Approved and Denied together")
            for condition in new.values():
                if condition.get("status") not in ("True", "False", "Unknown"):
                    raise ApiError(422, "Invalid", "status.conditions: invalid status")
                condition.setdefault("lastUpdateTime", _timestamp())
                condition.setdefault("lastTransitionTime", condition["lastUpdateTime"])
            updated = copy.deepcopy(current)
            updated.setdefault("status", {})["conditions"] = list(new.values())
            return self.store.bump(CSRS, "MODIFIED", updated)

    def _watch(self, path: str, query: dict[str, str]) -> None:
        if path not in (NODES, CSRS):
            raise ApiError(405, "MethodNotAllowed", f"cannot watch {path}")
        deadline = time.monotonic() + float(query.get("timeoutSeconds") or 30)
        since = int(query.get("resourceVersion") or 0)
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Transfer-Encoding", "chunked")  # one event per chunk, as served
        self.end_headers()
        try:
            for line in self._events(path, since, deadline, query):
                self.wfile.write(b"%x\r\n%s\r\n" % (len(line), line))
                self.wfile.flush()
            self.wfile.write(b"0\r\n\r\n")
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True

    def _events(
        self, path: str, since: int, deadline: float, query: dict[str, str]
    ) -> Iterator[bytes]:
        initial: list[bytes] = []
        with self.store.lock:
            if since == 0:  # like a real server: the current state first, as ADDED
                initial = [
                    _event_line("ADDED", obj)
                    for obj in self.store.objects[path].values()
                    if self._matches(obj, query)
                ]
                since = self.store.version
        yield from initial
        while True:
            with self.store.lock:
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    return
                self.store.lock.wait(min(remaining, 0.2))
                pending = [e for e in self.store.events if e[0] > since and e[1] == path]
                if pending:
                    since = pending[-1][0]
            for _, _, kind, obj in pending:
                if self._matches(obj, query):
                    yield _event_line(kind, obj)

    def _send(self, code: int, answer: Any) -> None:
        data = json.dumps(answer).encode()
        self.send_response(code)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def _status(self, error: ApiError) -> None:
        self._send(
            error.code,
            {
                "kind": "Status",
                "apiVersion": "v1",
                "metadata": {},
                "status": "Failure",
                "message": error.message,
                "reason": error.reason,
                "code": error.code,
            },
        )


def _new_lease(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": "coordination.k8s.io/v1",
        "kind": "Lease",
        "metadata": {
            "name": name,
            "namespace": namespace,
            "uid": str(uuid.uuid4()),
            "creationTimestamp": _timestamp(),
        },
        "spec": {},
    }


def _event_line(kind: str, obj: dict[str, Any]) -> bytes:
    return json.dumps({"type": kind, "object": obj}).encode() + b"\n"
