"""The verifier protocol's HTTP client: the agent's calls and the operator's.

Every failure is typed: ``VerifierUnavailable`` when the verifier cannot be
reached or answers 5xx (callers retry with backoff), ``VerifierRefused`` when
it answers 4xx (carrying the protocol's ``error`` code and ``detail``).
"""

from __future__ import annotations

import base64
import json
import os
import ssl
import time
from collections.abc import Callable, Generator, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from stockade.errors import InputError, StockadeError

DEFAULT_TIMEOUT = 10.0
VERIFIER_ENV = "STOCKADE_VERIFIER"
CA_ENV = "STOCKADE_CA"
OPERATOR_TOKEN_ENV = "STOCKADE_OPERATOR_TOKEN"


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


def _retry_after(response: httpx.Response) -> float | None:
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


class ChannelAuth(httpx.Auth):
    """Signs each request with the node's channel key (RFC 9421; ``stockade.channel``).

    ``sign_digest`` signs a SHA-256 digest and returns ``r || s``: on a node, inside the TPM.
    """

    requires_request_body = True

    def __init__(self, node_id: str, sign_digest: Callable[[bytes], bytes]) -> None:
        self.node_id = node_id
        self.sign_digest = sign_digest

    def auth_flow(self, request: httpx.Request) -> Generator[httpx.Request, httpx.Response, None]:
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
    """One HTTPS connection pool to a verifier. Use as a context manager."""

    def __init__(
        self,
        url: str,
        ca: Path | None = None,
        *,
        timeout: float = DEFAULT_TIMEOUT,
        operator_token: str | None = None,
    ) -> None:
        self.url = url.rstrip("/")
        self._node_auth: ChannelAuth | None = None
        headers = {"Authorization": f"Bearer {operator_token}"} if operator_token else None
        self._http = httpx.Client(
            base_url=self.url,
            verify=tls_context(ca),
            timeout=timeout,
            trust_env=False,
            headers=headers,
        )

    @classmethod
    def from_options(
        cls, url: str | None, ca: Path | None, token_file: Path | None = None
    ) -> VerifierClient:
        """From CLI options, falling back to ``$STOCKADE_VERIFIER``, ``$STOCKADE_CA`` and
        ``$STOCKADE_OPERATOR_TOKEN``."""
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
        return cls(url, ca, operator_token=token)

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
        self._http.close()

    def as_node(self, node_id: str, sign_digest: Callable[[bytes], bytes]) -> None:
        """Sign the node calls (nonce, evidence, certificate, secrets) as ``node_id`` from now
        on, with its channel key."""
        self._node_auth = ChannelAuth(node_id, sign_digest)

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
        try:
            response = self._http.request(
                method,
                path,
                json=body,
                params={k: v for k, v in params.items() if v is not None},
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

    def security_events(self, after: int = 0) -> list[dict[str, Any]]:
        answer = self.request("GET", "/v1/security-events", after=after)
        return list(answer["security_events"])

    def results(self, node: str, limit: int = 1) -> list[dict[str, Any]]:
        answer = self.request("GET", f"/v1/nodes/{self.resolve(node)}/results", limit=limit)
        return list(answer["results"] if isinstance(answer, dict) else answer)

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
        headers = {"Accept": "text/event-stream"}
        if last_event_id is not None:
            headers["Last-Event-ID"] = str(last_event_id)
        try:
            with self._http.stream(
                "GET",
                "/v1/events",
                headers=headers,
                params={"follow": "true" if follow else "false"},
                timeout=httpx.Timeout(10.0, read=None),
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


def _unreachable(url: str, error: httpx.HTTPError, what: str) -> VerifierUnavailable:
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


def _error(response: httpx.Response) -> tuple[str, str]:
    try:
        body = response.json()
    except ValueError:
        return "http", response.text.strip()[:200] or response.reason_phrase
    if isinstance(body, dict) and "error" in body:
        return str(body["error"]), str(body.get("detail", ""))
    if isinstance(body, dict) and "detail" in body:  # FastAPI's own validation errors
        return "invalid", str(body["detail"])[:300]
    return "http", str(body)[:200]


def _detail(response: httpx.Response) -> str:
    return " ".join(_error(response))
