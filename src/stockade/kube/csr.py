"""The kubelet CSR approver: a kubelet certificate only for a node that is trusted now, and
only for the key that lives in that node's attested TPM.

Kubelet CertificateSigningRequests (signers ``kubernetes.io/kube-apiserver-client-kubelet``
and ``kubernetes.io/kubelet-serving``) are approved only when all of these hold, and denied
with every reason that failed otherwise:

1. the PKCS#10 request is well formed and self-signed (its requester holds the key), its
   subject is exactly ``O=system:nodes, CN=system:node:<name>`` with ``<name>`` a node name
   (:func:`stockade.cluster.names.validate_node_name`: never a UUID, an address, uppercase
   or longer than a certificate can hold) and its usages are those Kubernetes allows for
   that signer (client: no subjectAltName at all; serving: DNS and IP names only, each one
   of the Node's own addresses, requested by ``system:node:<name>``);
2. Stockade node ``<name>`` is trusted (:func:`stockade.kube.trust.decide`: latest result
   affirming and fresh);
3. the request's public key is the TPM-resident key the cluster CA certified for that node:
   the CSR carries the node's current Stockade node certificate in the annotation
   ``stockade.dev/node-certificate`` (PEM, or base64 of the PEM), which must chain to the
   cluster CA and be valid now (:func:`stockade.cluster.ca.verify_node_certificate`), have
   the subject exactly ``O=system:nodes, CN=system:node:<name>`` for the same ``<name>`` and
   the node id the verifier knows under that name, and certify exactly the request's public
   key.

A CSR already Approved or Denied, or for another signer, is left alone. While the verifier
cannot be reached a CSR that is otherwise acceptable stays pending (neither approved nor
denied) and is decided on a later round.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import threading
import time
from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, Literal

from cryptography import x509
from cryptography.hazmat.primitives import serialization
from cryptography.x509.oid import NameOID

from stockade.cluster.ca import KUBE_NODES_GROUP, NodeCertificateRejected, verify_node_certificate
from stockade.cluster.names import KUBE_NODE_PREFIX, InvalidNodeName, validate_node_name
from stockade.kube.supervision import Round, Supervision, describe
from stockade.kube.trust import TrustSource, TrustUnavailable, refusal
from stockade.logs import fields

log = logging.getLogger(__name__)

CLIENT_SIGNER = "kubernetes.io/kube-apiserver-client-kubelet"
SERVING_SIGNER = "kubernetes.io/kubelet-serving"
KUBELET_SIGNERS = (CLIENT_SIGNER, SERVING_SIGNER)
NODE_CERTIFICATE_ANNOTATION = "stockade.dev/node-certificate"
APPROVED_REASON = "StockadeAttested"
DENIED_REASON = "StockadeNotAttested"

_ALLOWED_USAGES = {
    CLIENT_SIGNER: ({"digital signature", "key encipherment", "client auth"}, "client auth"),
    SERVING_SIGNER: ({"digital signature", "key encipherment", "server auth"}, "server auth"),
}

Action = Literal["approve", "deny", "wait", "ignore"]


@dataclass(frozen=True)
class CsrRequest:
    """What the approver reads of a CertificateSigningRequest."""

    name: str
    signer_name: str
    request: bytes  # spec.request decoded: the PEM of a PKCS#10 request
    usages: tuple[str, ...]
    username: str
    annotations: Mapping[str, str]
    conditions: tuple[str, ...]  # types of the conditions already set

    @classmethod
    def from_api(cls, obj: Mapping[str, Any]) -> CsrRequest:
        """From a CSR as JSON (camelCase; ``spec.request`` base64 as on the wire)."""
        meta = obj.get("metadata") or {}
        spec = obj.get("spec") or {}
        status = obj.get("status") or {}
        try:
            request = base64.b64decode(spec.get("request") or "", validate=True)
        except (binascii.Error, ValueError):
            request = b""
        return cls(
            name=str(meta.get("name", "")),
            signer_name=str(spec.get("signerName", "")),
            request=request,
            usages=tuple(spec.get("usages") or ()),
            username=str(spec.get("username") or ""),
            annotations=dict(meta.get("annotations") or {}),
            conditions=tuple(
                str(c.get("type")) for c in status.get("conditions") or () if c.get("type")
            ),
        )


@dataclass(frozen=True)
class CsrDecision:
    action: Action
    node: str | None
    reasons: tuple[str, ...]

    @property
    def message(self) -> str:
        return "; ".join(self.reasons)


def _spki(key: Any) -> bytes:
    return bytes(
        key.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )


def load_node_certificate(text: str) -> x509.Certificate:
    """The annotation's certificate: PEM, or base64 of PEM (or of DER). ValueError if neither."""
    data = text.strip().encode()
    if not data.startswith(b"-----BEGIN"):
        try:
            data = base64.b64decode(data, validate=True)
        except (binascii.Error, ValueError):
            raise ValueError("neither PEM nor base64") from None
    if data.lstrip().startswith(b"-----BEGIN"):
        return x509.load_pem_x509_certificate(data)
    return x509.load_der_x509_certificate(data)


def _node_name(subject: x509.Name) -> tuple[str | None, list[str]]:
    """The node name in a kubelet subject, and what is wrong with the subject."""
    problems: list[str] = []
    organizations = [a.value for a in subject.get_attributes_for_oid(NameOID.ORGANIZATION_NAME)]
    common_names = [a.value for a in subject.get_attributes_for_oid(NameOID.COMMON_NAME)]
    if organizations != [KUBE_NODES_GROUP]:
        problems.append(f"subject organization must be exactly {KUBE_NODES_GROUP}")
    if len(subject) != len(organizations) + len(common_names):
        problems.append("subject has attributes other than O and CN")
    name: str | None = None
    if len(common_names) != 1 or not str(common_names[0]).startswith(KUBE_NODE_PREFIX):
        problems.append(f"subject common name must be {KUBE_NODE_PREFIX}<node name>")
        return None, problems
    candidate = str(common_names[0])[len(KUBE_NODE_PREFIX) :]
    try:
        # The same rule enrollment and the cluster CA apply: a name that could not be a
        # Stockade node's (a UUID, an address, uppercase, too long) names no node.
        name = validate_node_name(candidate)
    except InvalidNodeName as error:
        problems.append(f"subject names no node: {error}")
    return name, problems


def _san_problems(
    request: x509.CertificateSigningRequest,
    signer: str,
    node: str,
    node_addresses: Callable[[str], Collection[str] | None] | None,
) -> list[str]:
    try:
        sans = request.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    if signer == CLIENT_SIGNER:
        return ["a kubelet client certificate may not have subject alternative names"]
    problems: list[str] = []
    names: list[str] = list(sans.get_values_for_type(x509.DNSName))
    names += [str(ip) for ip in sans.get_values_for_type(x509.IPAddress)]
    if len(names) != len(sans):
        problems.append("a kubelet serving certificate may name only DNS names and IP addresses")
    addresses = node_addresses(node) if node_addresses is not None else None
    if addresses is None:
        problems.append(f"no Node {node} in the cluster to check the requested names against")
        return problems
    known = {node, *addresses}
    known |= {str(ipaddress.ip_address(a)) for a in addresses if _is_ip(a)}
    strangers = [n for n in names if n not in known]
    if strangers:
        problems.append(f"names not among node {node}'s addresses: {', '.join(sorted(strangers))}")
    return problems


def _is_ip(text: str) -> bool:
    try:
        ipaddress.ip_address(text)
    except ValueError:
        return False
    return True


def decide_csr(
    csr: CsrRequest,
    trust: TrustSource,
    cluster_ca: x509.Certificate,
    now: datetime,
    node_addresses: Callable[[str], Collection[str] | None] | None = None,
) -> CsrDecision:
    """Approve, deny (with every reason), wait (verifier unreachable) or ignore. Pure apart
    from ``trust.snapshot()`` and ``node_addresses(name)`` (the Node's addresses, or None when
    there is no such Node; consulted for serving certificates only)."""
    if csr.signer_name not in KUBELET_SIGNERS:
        return CsrDecision("ignore", None, (f"signer {csr.signer_name} is not a kubelet's",))
    decided = [c for c in csr.conditions if c in ("Approved", "Denied")]
    if decided:
        return CsrDecision("ignore", None, (f"already {decided[0]}",))
    try:
        request = x509.load_pem_x509_csr(csr.request)
    except ValueError as error:
        return CsrDecision("deny", None, (f"spec.request is not a PEM PKCS#10 request: {error}",))
    if not request.is_signature_valid:
        return CsrDecision("deny", None, ("the request's self-signature does not verify",))

    name, reasons = _node_name(request.subject)
    allowed, required = _ALLOWED_USAGES[csr.signer_name]
    if not set(csr.usages) <= allowed or required not in csr.usages:
        reasons.append(
            f"usages {sorted(csr.usages)} are not a kubelet's for {csr.signer_name} "
            f"(need {required!r}, allowed {sorted(allowed)})"
        )
    if name is None:
        return CsrDecision("deny", None, tuple(reasons))
    reasons += _san_problems(request, csr.signer_name, name, node_addresses)
    if csr.signer_name == SERVING_SIGNER and csr.username != KUBE_NODE_PREFIX + name:
        reasons.append(f"a serving certificate for {name} must be requested by that node")

    try:
        nodes = trust.snapshot()
    except TrustUnavailable as error:
        if reasons:
            return CsrDecision("deny", name, tuple(reasons))
        return CsrDecision(
            "wait", name, (f"Stockade cannot tell whether {name} is trusted: {error}",)
        )
    found = nodes.get(name)
    why = refusal(nodes, name, now)
    if why is not None:
        reasons.append(why)

    reasons += _certificate_problems(
        csr, request, name, found.node_id if found else None, cluster_ca, now
    )
    if reasons:
        return CsrDecision("deny", name, tuple(reasons))
    return CsrDecision(
        "approve",
        name,
        (
            f"node {name} is trusted and the request's key is its TPM-resident key, "
            "certified by the cluster CA",
        ),
    )


def _certificate_problems(
    csr: CsrRequest,
    request: x509.CertificateSigningRequest,
    name: str,
    node_id: str | None,
    cluster_ca: x509.Certificate,
    now: datetime,
) -> list[str]:
    text = csr.annotations.get(NODE_CERTIFICATE_ANNOTATION)
    if not text:
        return [
            f"no {NODE_CERTIFICATE_ANNOTATION} annotation: the key cannot be tied to the node's TPM"
        ]
    try:
        certificate = load_node_certificate(text)
    except ValueError as error:
        return [f"{NODE_CERTIFICATE_ANNOTATION} is not a certificate: {error}"]
    try:
        cert_node_id, _result = verify_node_certificate(certificate, cluster_ca, now)
    except NodeCertificateRejected as error:
        return [f"the node certificate is not the cluster CA's for now ({error})"]
    problems: list[str] = []
    # Exactly O=system:nodes, CN=system:node:<name>, for exactly this node.
    cert_name, subject_problems = _node_name(certificate.subject)
    if subject_problems:
        problems.append(
            f"the node certificate's subject {certificate.subject.rfc4514_string()!r} is not "
            f"O={KUBE_NODES_GROUP}, CN={KUBE_NODE_PREFIX}{name}: {'; '.join(subject_problems)}"
        )
    elif cert_name != name:
        problems.append(
            f"the node certificate is for {KUBE_NODE_PREFIX}{cert_name}, not node {name}"
        )
    if node_id is not None and cert_node_id != node_id:
        problems.append(
            f"the node certificate is for Stockade node id {cert_node_id}, but {name} is "
            f"enrolled as {node_id}"
        )
    if _spki(certificate.public_key()) != _spki(request.public_key()):
        problems.append(
            f"the request's key is not the TPM-resident key the cluster CA certified for {name}"
        )
    return problems


def _condition(decision: CsrDecision, now: datetime) -> dict[str, Any]:
    stamp = now.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    approved = decision.action == "approve"
    return {
        "type": "Approved" if approved else "Denied",
        "status": "True",
        "reason": APPROVED_REASON if approved else DENIED_REASON,
        "message": decision.message[:4096],
        "lastUpdateTime": stamp,
        "lastTransitionTime": stamp,
    }


class CsrApprover:
    """Decides pending kubelet CSRs through ``CertificatesV1Api`` (and reads Nodes' addresses
    through ``CoreV1Api`` for serving certificates).

    A decision is recorded only if ``supervision.may_act()`` says so right before the write
    (with leader election: only while this replica is certain it leads); a replica that may
    not act still asks the verifier and lists CSRs each round (its readiness)."""

    def __init__(
        self,
        certificates_api: Any,
        core_api: Any,
        trust: TrustSource,
        cluster_ca: x509.Certificate,
        *,
        clock: Callable[[], datetime] = lambda: datetime.now(UTC),
        supervision: Supervision | None = None,
    ) -> None:
        self._certificates = certificates_api
        self._core = core_api
        self._trust = trust
        self._ca = cluster_ca
        self._clock = clock
        self._supervision = supervision or Supervision()
        self.last_round = Round()

    def _json(self, obj: Any) -> dict[str, Any]:
        result: dict[str, Any] = self._certificates.api_client.sanitize_for_serialization(obj)
        return result

    def node_addresses(self, name: str) -> Collection[str] | None:
        try:
            node = self._core.read_node(name)
        except Exception as error:
            if getattr(error, "status", None) == 404:
                return None
            raise
        addresses = (node.status.addresses if node.status else None) or []
        return {str(a.address) for a in addresses}

    def sync(self) -> list[tuple[str, CsrDecision]]:
        """One round over every CSR; returns the decisions made (approve/deny recorded by this
        replica, and wait). ``last_round`` says what the round reached."""
        outcome = Round()
        self.last_round = outcome
        try:
            self._trust.snapshot()  # reachability, for readiness (a cached source: no extra ask)
        except TrustUnavailable as error:
            outcome.verifier_error = str(error) or "unavailable"
        made: list[tuple[str, CsrDecision]] = []
        try:
            for item in self._certificates.list_certificate_signing_request().items:
                name, decision = self.process(item)
                if decision is not None:
                    made.append((name, decision))
        except Exception as error:
            outcome.api_error = describe(error)
            raise
        outcome.actions = sum(1 for _, decision in made if decision.action != "wait")
        return made

    def process(self, item: Any) -> tuple[str, CsrDecision | None]:
        """Decide one CSR (a client model or its JSON) and record the decision; None when it
        was left alone (another signer, already decided, decided by someone else first, or
        this replica may not act)."""
        obj = self._json(item)
        name = str(obj["metadata"]["name"])
        decision = self.decide(CsrRequest.from_api(obj))
        if decision.action == "ignore":
            return name, None
        if decision.action in ("approve", "deny") and not self._record(obj, decision):
            return name, None
        if decision.action == "wait" and not self._supervision.may_act():
            return name, decision
        metrics = self._supervision.metrics
        if metrics is not None and metrics.decisions is not None:
            metrics.decisions.labels(action=decision.action).inc()
        log.info(
            "CSR decided" if decision.action != "wait" else "CSR left pending",
            extra=fields(
                csr=name, node=decision.node, action=decision.action, reason=decision.message
            ),
        )
        return name, decision

    def decide(self, csr: CsrRequest) -> CsrDecision:
        return decide_csr(csr, self._trust, self._ca, self._clock(), self.node_addresses)

    def _record(self, obj: dict[str, Any], decision: CsrDecision) -> bool:
        """PUT the condition on /approval; False if someone decided first (idempotent) or
        this replica may not act."""
        name = str(obj["metadata"]["name"])
        for _ in range(3):
            status = obj.setdefault("status", {})
            conditions = [c for c in status.get("conditions") or [] if isinstance(c, dict)]
            if any(c.get("type") in ("Approved", "Denied") for c in conditions):
                return False
            status["conditions"] = [*conditions, _condition(decision, self._clock())]
            with self._supervision.acting:
                if not self._supervision.may_act():  # a standby, or no longer certain
                    return False
                try:
                    self._certificates.replace_certificate_signing_request_approval(name, obj)
                    return True
                except Exception as error:
                    if getattr(error, "status", None) != 409:
                        raise
            obj = self._json(self._certificates.read_certificate_signing_request(name))
        return False

    def run(self, interval: float = 5.0, stop: threading.Event | None = None) -> None:
        stop = stop or threading.Event()
        while not stop.is_set():
            started = time.monotonic()
            try:
                self.sync()
            except Exception as error:  # the API server may be down: one line, retry
                log.warning(
                    "CSR approver round failed", extra=fields(action="sync", reason=describe(error))
                )
            self._supervision.finished(self.last_round, time.monotonic() - started)
            self._supervision.wait(stop, interval)
