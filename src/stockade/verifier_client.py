"""The verifier protocol's HTTP client: the agent's calls and the operator's.

Every failure is typed: ``VerifierUnavailable`` when the verifier cannot be
reached or answers 5xx (callers retry with backoff), ``VerifierRefused`` when
it answers 4xx (carrying the protocol's ``error`` code and ``detail``).

Two transports carry the same requests. httpx (connection pool, node-signed calls, the
event stream) for the agent, Kubernetes and the demo; and, for the operator CLI
(``VerifierClient(..., plain_http=True)``), ``http.client`` from the standard library: one
keep-alive connection for plain JSON calls, so a read command does not import httpx
(about 50 ms, half of ``stockade nodes list``'s start-up) before its first request. A
plain client that streams events or signs as a node opens an httpx client for that.
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
from collections.abc import Callable, Generator, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Any, Protocol, Self

from stockade.errors import InputError, StockadeError

if TYPE_CHECKING:
    import http.client

    import httpx

DEFAULT_TIMEOUT = 10.0
# An event stream idle for this long is dead (the verifier sends a keepalive every 15 s).
STREAM_READ_TIMEOUT = 45.0
VERIFIER_ENV = "STOCKADE_VERIFIER"
CA_ENV = "STOCKADE_CA"
OPERATOR_TOKEN_ENV = "STOCKADE_OPERATOR_TOKEN"


class _Response(Protocol):
    """What the error handling reads of an answer: an ``httpx.Response`` or a ``_PlainAnswer``."""

    @property
    def status_code(self) -> int: ...
    @property
    def headers(self) -> Mapping[str, str]: ...
    @property
    def text(self) -> str: ...
    @property
    def reason_phrase(self) -> str: ...
    def json(self) -> Any: ...


class VerifierUnavailable(StockadeError):
    """The verifier could not be reached, timed out, or answered 5xx."""

    exit_code = 2
    code = "verifier-unavailable"


class VerifierUntrusted(VerifierUnavailable):
    """The verifier's TLS certificate does not chain to the CA this client trusts."""

    code = "verifier-untrusted"


class VerifierRefused(StockadeError):
    """The verifier answered with a 4xx protocol error (a bad request: exit 2)."""

    exit_code = 2

    def __init__(
        self, status: int, code: str, detail: str, retry_after: float | None = None
    ) -> None:
        super().__init__(f"verifier refused ({status} {code}): {detail}")
        self.status = status
        self.code = code
        self.detail = detail
        # Seconds the verifier asked the client to wait (429 Retry-After), capped.
        self.retry_after = retry_after


MAX_RETRY_AFTER = 300.0


def _retry_after(response: _Response) -> float | None:
    """``Retry-After`` in delay-seconds (RFC 9110, 10.2.3), at most ``MAX_RETRY_AFTER``;
    None when absent or not a number of seconds."""
    value = response.headers.get("retry-after", "").strip()
    if not value.isdigit():
        return None
    return min(float(value), MAX_RETRY_AFTER)


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def unb64(text: str, what: str) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (ValueError, TypeError):
        raise VerifierRefused(200, "malformed", f"{what} is not base64") from None


def tls_context(ca: Path | None) -> ssl.SSLContext:
    """Verify the verifier's certificate against ``ca`` (or the system roots)."""
    try:
        return ssl.create_default_context(cafile=str(ca) if ca else None)
    except (OSError, ssl.SSLError) as error:
        raise InputError(f"cannot read the verifier CA '{ca}': {error}") from None


def _channel_auth_class() -> type[ChannelAuth]:
    """``ChannelAuth``, an ``httpx.Auth``: defined when first used, so that importing this
    module does not import httpx."""
    defined: type[ChannelAuth] | None = globals().get("ChannelAuth")
    if defined is not None:
        return defined
    import httpx

    class ChannelAuth(httpx.Auth):
        """Signs each request with the node's channel key (RFC 9421; ``stockade.channel``).

        ``sign_digest`` signs a SHA-256 digest and returns ``r || s``: on a node, inside the
        TPM.
        """

        requires_request_body = True

        def __init__(self, node_id: str, sign_digest: Callable[[bytes], bytes]) -> None:
            self.node_id = node_id
            self.sign_digest = sign_digest

        def auth_flow(
            self, request: httpx.Request
        ) -> Generator[httpx.Request, httpx.Response, None]:
            from stockade.channel import sign_request

            path, _, query = request.url.raw_path.decode("ascii").partition("?")
            request.headers.update(
                sign_request(
                    request.method,
                    path,
                    query,
                    request.content,
                    keyid=self.node_id,
                    created=int(time.time()),
                    sign_digest=self.sign_digest,
                )
            )
            yield request

    globals()["ChannelAuth"] = ChannelAuth
    return ChannelAuth  # type: ignore[return-value]  # the class TYPE_CHECKING describes


if TYPE_CHECKING:
    import httpx

    class ChannelAuth(httpx.Auth):
        requires_request_body = True

        def __init__(self, node_id: str, sign_digest: Callable[[bytes], bytes]) -> None:
            self.node_id = node_id
            self.sign_digest = sign_digest

else:

    def __getattr__(name: str) -> Any:
        if name == "ChannelAuth":
            return _channel_auth_class()
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclass(frozen=True)
class _PlainAnswer:
    status_code: int
    reason_phrase: str
    headers: Mapping[str, str]
    content: bytes

    @property
    def text(self) -> str:
        return self.content.decode("utf-8", "replace")

    def json(self) -> Any:
        return json.loads(self.content)


class _PlainHttp:
    """One keep-alive ``http.client`` connection to the verifier, for plain JSON calls: what
    httpx would send (``trust_env=False``: no proxies from the environment), without it."""

    def __init__(
        self, url: str, ca: Path | None, timeout: float, headers: Mapping[str, str]
    ) -> None:
        from urllib.parse import urlsplit

        parts = urlsplit(url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise InputError(f"verifier URL {url!r} is not an http:// or https:// URL")
        self.https = parts.scheme == "https"
        self.host = parts.hostname
        self.port = parts.port
        self.prefix = parts.path.rstrip("/")
        self.timeout = timeout
        self.headers = dict(headers)
        self.tls = tls_context(ca) if self.https else None
        self._connection: http.client.HTTPConnection | None = None

    def _connect(self) -> http.client.HTTPConnection:
        import http.client

        if self.tls is not None:
            return http.client.HTTPSConnection(
                self.host, self.port, timeout=self.timeout, context=self.tls
            )
        return http.client.HTTPConnection(self.host, self.port, timeout=self.timeout)

    def send(self, method: str, path: str, body: Any, params: Mapping[str, Any]) -> _PlainAnswer:
        """One request; a connection the verifier closed since the last one is opened again
        once. Raises ``OSError`` or ``http.client.HTTPException`` when there is no answer."""
        import http.client
        from urllib.parse import quote, urlencode

        # Percent-encoded as httpx does: spaces, non-ASCII, anything a path cannot hold.
        target = quote(self.prefix + path, safe="/%!$&'()*+,;=:@-._~")
        query = {key: _query_value(value) for key, value in params.items()}
        if query:
            target += "?" + urlencode(query)
        headers = {"Accept": "*/*", "User-Agent": "stockade", **self.headers}
        content = None
        if body is not None:
            content = json.dumps(
                body, ensure_ascii=False, separators=(",", ":"), allow_nan=False
            ).encode()
            headers["Content-Type"] = "application/json"
        reused = self._connection is not None
        for attempt in (1, 2):
            if self._connection is None:
                self._connection = self._connect()
            try:
                self._connection.request(method, target, body=content, headers=headers)
                response = self._connection.getresponse()
                data = response.read()
            except (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError):
                self.close()
                if not reused or attempt == 2:
                    raise
                continue
            except BaseException:
                self.close()
                raise
            if response.will_close:
                self.close()
            return _PlainAnswer(
                response.status,
                response.reason,
                {key.lower(): value for key, value in response.getheaders()},
                data,
            )
        raise AssertionError("unreachable")  # pragma: no cover

    def close(self) -> None:
        if self._connection is not None:
            self._connection.close()
            self._connection = None


def _query_value(value: Any) -> str:
    """A query parameter as httpx writes it (``true``/``false`` for booleans)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


@dataclass(frozen=True)
class Enrollment:
    enrollment_id: str
    credential_blob: bytes
    encrypted_secret: bytes


@dataclass(frozen=True)
class AkEnrollment:
    """An enrollment by AK certificate: the AK certifies the channel key over ``challenge``."""

    enrollment_id: str
    challenge: bytes


@dataclass(frozen=True)
class Nonce:
    nonce: bytes
    pcr_selection: str
    expires_at: str


class VerifierClient:
    """A verifier's client: an httpx connection pool, or with ``plain_http`` one
    ``http.client`` connection (and httpx only for streams and node-signed calls). Use as a
    context manager."""

    def __init__(
        self,
        url: str,
        ca: Path | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        operator_token: str | None = None,
        plain_http: bool = False,
    ) -> None:
        self.url = url.rstrip("/")
        self._node_auth: ChannelAuth | None = None
        self._ca = ca
        self._timeout = timeout
        self._headers = {"Authorization": f"Bearer {operator_token}"} if operator_token else {}
        self._client: httpx.Client | None = None
        self._plain: _PlainHttp | None = None
        if plain_http:
            self._plain = _PlainHttp(self.url, ca, timeout, self._headers)
        else:
            self._client = self._new_client()

    def _new_client(self) -> httpx.Client:
        import httpx

        return httpx.Client(
            base_url=self.url,
            verify=tls_context(self._ca),
            timeout=self._timeout,
            trust_env=False,
            headers=self._headers or None,
        )

    @property
    def _http(self) -> httpx.Client:
        """The httpx client: made now for a plain client's first signed call or stream."""
        if self._client is None:
            self._client = self._new_client()
        return self._client

    @classmethod
    def from_options(
        cls,
        url: str | None,
        ca: Path | None,
        token_file: Path | None = None,
        *,
        plain_http: bool = False,
    ) -> VerifierClient:
        """From CLI options, falling back to ``$STOCKADE_VERIFIER``, ``$STOCKADE_CA`` and
        ``$STOCKADE_OPERATOR_TOKEN``; ``plain_http``: the standard library's transport for
        plain calls (the operator CLI)."""
        url = url or os.environ.get(VERIFIER_ENV)
        if not url:
            raise InputError(f"no verifier URL: pass --verifier or set {VERIFIER_ENV}")
        if ca is None and os.environ.get(CA_ENV):
            ca = Path(os.environ[CA_ENV])
        token = os.environ.get(OPERATOR_TOKEN_ENV)
        if token_file is not None:
            try:
                token = token_file.read_text().strip()
            except OSError as error:
                raise InputError(f"cannot read the operator token {token_file}: {error}") from None
        return cls(url, ca, operator_token=token, plain_http=plain_http)

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        if self._plain is not None:
            self._plain.close()
        if self._client is not None:
            self._client.close()

    def as_node(self, node_id: str, sign_digest: Callable[[bytes], bytes]) -> None:
        """Sign the node calls (nonce, evidence, certificate, secrets) as ``node_id`` from now
        on, with its channel key."""
        self._node_auth = _channel_auth_class()(node_id, sign_digest)

    def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        auth: httpx.Auth | None = None,
        **params: Any,
    ) -> Any:
        """Send one request; return the decoded JSON body of a 2xx answer."""
        query = {k: v for k, v in params.items() if v is not None}
        response: _Response
        if self._plain is not None and auth is None:
            import http.client

            try:
                response = self._plain.send(method, path, body, query)
            except (OSError, http.client.HTTPException) as error:
                raise _unreachable(self.url, error, "unreachable") from None
        else:
            import httpx

            try:
                response = self._http.request(
                    method,
                    path,
                    json=body,
                    params=query,
                    auth=auth if auth is not None else httpx.USE_CLIENT_DEFAULT,
                )
            except httpx.HTTPError as error:
                raise _unreachable(self.url, error, "unreachable") from None
        if response.status_code >= 500:
            raise VerifierUnavailable(
                f"verifier {self.url} answered {response.status_code}: {_detail(response)}"
            )
        if response.status_code >= 400:
            code, detail = _error(response)
            raise VerifierRefused(response.status_code, code, detail, _retry_after(response))
        if response.status_code == 204:
            return None
        try:
            return response.json()
        except ValueError:
            raise VerifierUnavailable(
                f"verifier {self.url} answered {response.status_code} without JSON"
            ) from None

    # -- the agent's calls ---------------------------------------------------

    def enroll(
        self, name: str, ek_certificate: bytes, ek_public: bytes, ak_public: bytes
    ) -> Enrollment:
        answer = self.request(
            "POST",
            "/v1/enrollments",
            {
                "name": name,
                "ek_certificate": b64(ek_certificate),
                "ek_public": b64(ek_public),
                "ak_public": b64(ak_public),
            },
        )
        return Enrollment(
            str(answer["enrollment_id"]),
            unb64(answer["credential_blob"], "credential_blob"),
            unb64(answer["encrypted_secret"], "encrypted_secret"),
        )

    def enroll_by_ak_certificate(
        self,
        name: str,
        ak_certificate: bytes,
        ak_public: bytes,
        intermediates: tuple[bytes, ...] = (),
    ) -> AkEnrollment:
        """Enroll a cloud vTPM by its AK certificate (docs/verifier-protocol.md)."""
        answer = self.request(
            "POST",
            "/v1/enrollments",
            {
                "name": name,
                "ak_certificate": b64(ak_certificate),
                "ak_intermediates": [b64(c) for c in intermediates],
                "ak_public": b64(ak_public),
            },
        )
        return AkEnrollment(str(answer["enrollment_id"]), unb64(answer["challenge"], "challenge"))

    def activate(
        self,
        enrollment_id: str,
        secret: bytes,
        channel_key_public: bytes,
        certify_info: bytes,
        signature: bytes,
    ) -> dict[str, Any]:
        """Prove the AK (the secret) and pin the channel key the AK certified."""
        answer: dict[str, Any] = self.request(
            "POST",
            f"/v1/enrollments/{enrollment_id}/activation",
            {
                "secret": b64(secret),
                "channel_key_public": b64(channel_key_public),
                "channel_certify_info": b64(certify_info),
                "channel_signature": b64(signature),
            },
        )
        return answer

    def _node_call(self, method: str, path: str, body: Any = None) -> Any:
        return self.request(method, path, body, auth=self._node_auth)

    def nonce(self, node_id: str) -> Nonce:
        answer = self._node_call("POST", f"/v1/nodes/{node_id}/nonces")
        return Nonce(
            unb64(answer["nonce"], "nonce"),
            str(answer["pcr_selection"]),
            str(answer.get("expires_at", "")),
        )

    def evidence(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._node_call("POST", f"/v1/nodes/{node_id}/evidence", body)
        return answer

    def certificate(self, node_id: str, body: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self._node_call("POST", f"/v1/nodes/{node_id}/certificates", body)
        return answer

    def release_secret(self, node_id: str, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self._node_call("POST", f"/v1/nodes/{node_id}/secrets/{name}")
        return answer

    def node_status(self, node: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"/v1/nodes/{self.resolve(node)}/status")
        return answer

    # -- the operator's calls ------------------------------------------------

    def put_secret(self, name: str, value: bytes) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("PUT", f"/v1/secrets/{name}", {"value": b64(value)})
        return answer

    def secrets(self) -> list[dict[str, Any]]:
        return list(self.request("GET", "/v1/secrets")["secrets"])

    def grant(self, name: str, selector: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "POST", f"/v1/secrets/{name}/grants", {"selector": selector}
        )
        return answer

    def revoke_grant(self, name: str, selector: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "DELETE", f"/v1/secrets/{name}/grants", selector=selector
        )
        return answer

    def delete_secret(self, name: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("DELETE", f"/v1/secrets/{name}")
        return answer

    def rekey_secrets(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("POST", "/v1/secrets/rekey")
        return answer

    def set_labels(self, node: str, labels: dict[str, str]) -> dict[str, Any]:
        answer: dict[str, Any] = self.request(
            "PUT", f"/v1/nodes/{self.resolve(node)}/labels", {"labels": labels}
        )
        return answer

    def nodes(self) -> list[dict[str, Any]]:
        answer = self.request("GET", "/v1/nodes")
        return list(answer["nodes"] if isinstance(answer, dict) else answer)

    def node(self, node: str) -> dict[str, Any]:
        """A node by id, or by name when no node has that id."""
        node_id = self.resolve(node)
        answer: dict[str, Any] = self.request("GET", f"/v1/nodes/{node_id}")
        return answer

    def resolve(self, node: str) -> str:
        """The id of the node whose id or name is ``node``."""
        nodes = self.nodes()
        for entry in nodes:
            if entry.get("node_id", entry.get("id")) == node:
                return node
        named = [entry for entry in nodes if entry.get("name") == node]
        if len(named) == 1:
            return str(named[0].get("node_id", named[0].get("id")))
        if len(named) > 1:
            raise InputError(f"{len(named)} nodes are named {node!r}; give the node id")
        raise VerifierRefused(404, "not-found", f"no node with id or name {node!r}")

    def revoke(self, node: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("POST", f"/v1/nodes/{self.resolve(node)}/revoke")
        return answer

    def allow(self, node: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("POST", f"/v1/nodes/{self.resolve(node)}/allow")
        return answer

    def approve(self, node: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("POST", f"/v1/nodes/{self.resolve(node)}/approve")
        return answer

    def replace(self, node: str, ek: str | None = None) -> dict[str, Any]:
        body = {"ek": ek} if ek else None
        answer: dict[str, Any] = self.request(
            "POST", f"/v1/nodes/{self.resolve(node)}/replace", body
        )
        return answer

    def release_status(self) -> dict[str, Any]:
        """How many nodes run each release, per state (``GET /v1/releases/status``)."""
        answer: dict[str, Any] = self.request("GET", "/v1/releases/status")
        return answer

    def security_events(self, after: int = 0) -> list[dict[str, Any]]:
        answer = self.request("GET", "/v1/security-events", after=after)
        return list(answer["security_events"])

    def results(self, node: str, limit: int = 1) -> list[dict[str, Any]]:
        answer = self.request("GET", f"/v1/nodes/{self.resolve(node)}/results", limit=limit)
        return list(answer["results"] if isinstance(answer, dict) else answer)

    def results_page(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        node: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """One page of ``GET /v1/results``: ``{"results": [...], "next": cursor or None}``."""
        answer: dict[str, Any] = self.request(
            "GET", "/v1/results", since=since, until=until, node=node, after=after, limit=limit
        )
        return answer

    def all_results(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        node: str | None = None,
        page_size: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Every result of ``GET /v1/results`` in the range, following ``next`` page by page."""
        yield from _paged(
            lambda after: self.results_page(
                since=since, until=until, node=node, after=after, limit=page_size
            ),
            "results",
        )

    def secret_releases_page(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        node: str | None = None,
        secret: str | None = None,
        after: int | None = None,
        limit: int = 500,
    ) -> dict[str, Any]:
        """One page of ``GET /v1/secret-releases``: ``{"releases": [...], "next"}``."""
        answer: dict[str, Any] = self.request(
            "GET", "/v1/secret-releases", since=since, until=until, node=node,
            secret=secret, after=after, limit=limit,
        )  # fmt: skip
        return answer

    def all_secret_releases(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        node: str | None = None,
        secret: str | None = None,
        page_size: int = 500,
    ) -> Iterator[dict[str, Any]]:
        """Every release of ``GET /v1/secret-releases`` in the range, page by page."""
        yield from _paged(
            lambda after: self.secret_releases_page(
                since=since, until=until, node=node, secret=secret, after=after, limit=page_size
            ),
            "releases",
        )

    def operator_actions_page(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        after: int | None = None,
        limit: int = 100,
    ) -> dict[str, Any]:
        """One page of ``GET /v1/operator-actions``: ``{"actions": [...], "next"}``."""
        answer: dict[str, Any] = self.request(
            "GET", "/v1/operator-actions", since=since, until=until, actor=actor,
            action=action, after=after, limit=limit,
        )  # fmt: skip
        return answer

    def all_operator_actions(
        self,
        *,
        since: str | None = None,
        until: str | None = None,
        actor: str | None = None,
        action: str | None = None,
        page_size: int = 100,
    ) -> Iterator[dict[str, Any]]:
        """Every action of ``GET /v1/operator-actions`` in the range, page by page."""
        yield from _paged(
            lambda after: self.operator_actions_page(
                since=since, until=until, actor=actor, action=action, after=after, limit=page_size
            ),
            "actions",
        )

    def apply_policy(self, policy_id: str, document: dict[str, Any]) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("PUT", f"/v1/policies/{policy_id}", document)
        return answer

    def policies(self) -> list[dict[str, Any]]:
        answer = self.request("GET", "/v1/policies")
        return list(answer["policies"] if isinstance(answer, dict) else answer)

    def policy(self, policy_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", f"/v1/policies/{policy_id}")
        return answer

    def activate_policy(self, policy_id: str) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("PUT", "/v1/active-policy", {"id": policy_id})
        return answer

    def active_policy(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", "/v1/active-policy")
        return answer

    def delete_policy(self, policy_id: str) -> None:
        self.request("DELETE", f"/v1/policies/{policy_id}")

    def executions(
        self, node: str | None = None, since: str | None = None, image: str | None = None
    ) -> list[dict[str, Any]]:
        answer = self.request("GET", "/v1/executions", node=node, since=since, image=image)
        return list(answer["executions"])

    def keys(self) -> dict[str, Any]:
        answer: dict[str, Any] = self.request("GET", "/v1/keys")
        return answer

    def stream_events(
        self, last_event_id: int | None = None, *, follow: bool = True
    ) -> Iterator[dict[str, Any]]:
        """Follow ``GET /v1/events`` (Server-Sent Events), resuming after ``last_event_id``.

        Yields each event's JSON ``data``; ends when the server closes the stream
        (with ``follow=False``, once the stored events are sent).
        """
        import httpx

        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        try:
            with self._http.stream(
                "GET",
                "/v1/events",
                headers=headers,
                params={"follow": "true" if follow else "false"},
                # The verifier sends a keepalive comment every 15 s on an idle stream: three
                # missed mean the connection died silently; the caller reconnects.
                timeout=httpx.Timeout(10.0, read=STREAM_READ_TIMEOUT),
            ) as response:
                if response.status_code >= 400:
                    response.read()
                    code, detail = _error(response)
                    raise VerifierRefused(response.status_code, code, detail)
                data: list[str] = []
                for line in response.iter_lines():
                    if line.startswith("data:"):
                        data.append(line[5:].removeprefix(" "))
                    elif not line and data:
                        yield json.loads("\n".join(data))
                        data = []
        except httpx.HTTPError as error:
            raise _unreachable(self.url, error, "event stream") from None


def _paged(fetch: Callable[[int | None], dict[str, Any]], member: str) -> Iterator[dict[str, Any]]:
    """Every item of a paged list: ``fetch(after)`` is one page (``after`` None for the
    first), its items under ``member``; ``next`` is followed until it is None."""
    after: int | None = None
    while True:
        page = fetch(after)
        yield from _page_items(page, member)
        after = _next_cursor(page, after)
        if after is None:
            return


def _page_items(page: object, member: str) -> list[dict[str, Any]]:
    items = page.get(member) if isinstance(page, dict) else None
    if not isinstance(items, list) or not all(isinstance(item, dict) for item in items):
        raise VerifierUnavailable(f"the verifier's page has no list of {member}")
    return items


def _next_cursor(page: dict[str, Any], previous: int | None) -> int | None:
    """The page's ``next`` cursor; one that does not advance is the verifier's error (a
    client following it would loop)."""
    cursor = page.get("next")
    if cursor is None:
        return None
    if not isinstance(cursor, int) or isinstance(cursor, bool):
        raise VerifierUnavailable(f"the verifier's next page cursor {cursor!r} is not an integer")
    if previous is not None and cursor <= previous:
        raise VerifierUnavailable(f"the verifier's next page cursor {cursor} does not advance")
    return cursor


def _unreachable(url: str, error: BaseException, what: str) -> VerifierUnavailable:
    """The typed error for a failed call; a TLS certificate not trusted says which CA to
    pass, instead of reading like a verifier that is down."""
    cause: BaseException | None = error
    while cause is not None and not isinstance(cause, ssl.SSLCertVerificationError):
        cause = cause.__cause__ or cause.__context__
    if cause is not None:
        reason = cause.verify_message or str(cause)
        return VerifierUntrusted(
            f"verifier {url}: its TLS certificate is not trusted ({reason}); pass the "
            f"verifier's CA with --ca FILE (or {CA_ENV}): `stockade verifier serve` prints it "
            "as 'TLS CA cert:'"
        )
    reason = str(error) or type(error).__name__
    return VerifierUnavailable(f"verifier {url} {what}: {reason}")


def _error(response: _Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "http", response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return str(body["error"]), str(body.get("detail", ""))
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own validation errors
        return "invalid", str(body["detail"])[:300]
    return "http", str(body)[:200]


def _detail(response: _Response) -> str:
    return " ".join(_error(response))
