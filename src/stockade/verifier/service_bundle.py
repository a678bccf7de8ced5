"""What a Kubernetes deployment of the verifier needs before its first ``kubectl apply``
(``stockade verifier init``): the shared keys, TLS certificates for the Services, and the
Secrets, ConfigMaps and caBundle patch that deploy/kubernetes/*.yaml name.

The pure half builds documents (``service_dns_names``, ``issue_service_certificate``,
``secret``, ``tls_secret``, ``config_map``, ``ca_bundle_patch``, ``manifests``); the writer
(``write_bundle``) makes the keys with ``shared_keys.create_keys`` (the code behind
``stockade verifier keys``) and writes every file once: an existing file is never replaced,
private material is created 0600.

Layout of ``out`` (flat, so ``verifier serve --keys-dir out --tls-cert out/tls-server.pem
--tls-key out/tls-server-key.pem`` runs from it as it is):

- the shared keys of ``stockade verifier keys`` (with ``tls-ca.pem`` and ``tls-ca-key.pem``:
  the TLS CA, whose key stays with the operator and is in no manifest);
- ``tls-server.pem``, ``tls-server-key.pem``: the verifier's certificate for its Service
  names (``NAME``, ``NAME.NS``, ``NAME.NS.svc``, ``NAME.NS.svc.<cluster domain>``) and
  nothing else, issued by the TLS CA;
- ``webhook-tls.pem``, ``webhook-tls-key.pem``: the admission webhook's, likewise (unless the
  webhook's serving CA is given: then the webhook keeps its own certificate);
- ``kubernetes/secrets.yaml`` (0600): Secret ``stockade-verifier-keys`` (the files the
  verifier pods' init container copies into ``--keys-dir``, ``tls-server*.pem`` included),
  ``stockade-verifier-reader`` (``token``) and the ``kubernetes.io/tls`` Secret
  ``stockade-webhook-tls`` the webhook serves with (``--tls-cert``/``--tls-key``);
- ``kubernetes/configmaps.yaml``: ``stockade-verifier-ca`` (``ca.pem``, the TLS CA;
  ``verifier-key.pub.pem``) and ``stockade-cluster-ca`` (``ca.pem``);
- ``webhook-ca-bundle.yaml``: a JSON 6902 patch (kustomize v2.0.3 ``patchesJson6902`` and
  newer alike) setting the ValidatingWebhookConfiguration's ``caBundle`` to base64 of the CA
  that issued the webhook's certificate.
"""

from __future__ import annotations

import base64
import datetime
import os
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from stockade.certificates import key_usage
from stockade.keyfiles import KeyFileError, load_private_key
from stockade.verifier import shared_keys
from stockade.verifier.config import DEFAULT_LOG_ORIGIN
from stockade.verifier.errors import ConfigurationError
from stockade.verifier.tls import SERVER_VALIDITY

DEFAULT_NAMESPACE = "stockade"
DEFAULT_SERVICE = "stockade-verifier"
DEFAULT_WEBHOOK_SERVICE = "stockade-webhook"
DEFAULT_CLUSTER_DOMAIN = "cluster.local"

# The names deploy/kubernetes/*.yaml give these objects.
KEYS_SECRET = "stockade-verifier-keys"
READER_SECRET = "stockade-verifier-reader"
WEBHOOK_TLS_SECRET = "stockade-webhook-tls"
VERIFIER_CA_CONFIGMAP = "stockade-verifier-ca"
CLUSTER_CA_CONFIGMAP = "stockade-cluster-ca"
WEBHOOK_CONFIGURATION = "stockade"
WEBHOOK_NAME = "pods.stockade.dev"

SERVER_CERT = "tls-server.pem"
SERVER_KEY = "tls-server-key.pem"
WEBHOOK_CERT = "webhook-tls.pem"
WEBHOOK_KEY = "webhook-tls-key.pem"
MANIFESTS = "kubernetes"
SECRETS_FILE = "secrets.yaml"
CONFIGMAPS_FILE = "configmaps.yaml"
PATCH_FILE = "webhook-ca-bundle.yaml"

# What the Secret stockade-verifier-keys holds: the files the verifier pods' init container
# copies into --keys-dir (10-verifier.yaml). Not the TLS CA: replicas serve --tls-cert.
KEYS_SECRET_FILES = (
    shared_keys.EAR_SIGNING_KEY,
    shared_keys.VERIFIER_PUBLIC_KEY,
    shared_keys.LOG_SIGNING_KEY,
    shared_keys.LOG_PUBLIC_KEY,
    shared_keys.SESSION_KEY,
    shared_keys.OPERATOR_TOKEN,
    shared_keys.READER_TOKEN,
    shared_keys.CLUSTER_CA_CERT,
    shared_keys.CLUSTER_CA_KEY,
    SERVER_CERT,
    SERVER_KEY,
)

# RFC 1035 labels, as Kubernetes names Services and namespaces.
_LABEL = re.compile(r"^[a-z]([-a-z0-9]{0,61}[a-z0-9])?$")
_DOMAIN = re.compile(r"^[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?(\.[a-z0-9]([-a-z0-9]{0,61}[a-z0-9])?)*$")


def check_label(value: str, what: str) -> str:
    if not _LABEL.match(value):
        raise ConfigurationError(
            f"{what} {value!r} is not a Kubernetes name (lower-case letters, digits and '-', "
            "starting with a letter, at most 63)"
        )
    return value


def service_dns_names(
    services: Sequence[str], namespace: str, cluster_domain: str = DEFAULT_CLUSTER_DOMAIN
) -> list[str]:
    """The names a Service is reached by inside the cluster, for each of ``services``:
    ``NAME``, ``NAME.NS``, ``NAME.NS.svc``, ``NAME.NS.svc.<cluster domain>``."""
    if not services:
        raise ConfigurationError("give at least one --service-name")
    check_label(namespace, "namespace")
    if not _DOMAIN.match(cluster_domain) or len(cluster_domain) > 253:
        raise ConfigurationError(f"cluster domain {cluster_domain!r} is not a DNS name")
    names: list[str] = []
    for service in services:
        check_label(service, "service name")
        for name in (
            service,
            f"{service}.{namespace}",
            f"{service}.{namespace}.svc",
            f"{service}.{namespace}.svc.{cluster_domain}",
        ):
            if name not in names:
                names.append(name)
    return names


def issue_service_certificate(
    ca_cert: x509.Certificate,
    ca_key: ec.EllipticCurvePrivateKey,
    dns_names: Sequence[str],
    now: datetime.datetime,
    validity: datetime.timedelta = SERVER_VALIDITY,
) -> tuple[x509.Certificate, ec.EllipticCurvePrivateKey]:
    """A new P-256 key and a TLS server certificate for exactly ``dns_names`` (no address, no
    localhost), issued by ``ca_cert``."""
    if ca_cert.public_key() != ca_key.public_key():
        raise ConfigurationError("the TLS CA certificate does not certify the TLS CA key")
    key = ec.generate_private_key(ec.SECP256R1())
    certificate = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, dns_names[0])]))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(min(now + validity, ca_cert.not_valid_after_utc))
        .add_extension(
            x509.SubjectAlternativeName([x509.DNSName(name) for name in dns_names]),
            critical=False,
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(key_usage(digital_signature=True), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()),
            critical=False,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    return certificate, key


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _metadata(name: str, namespace: str) -> dict[str, Any]:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {"app.kubernetes.io/part-of": "stockade"},
    }


def secret(name: str, namespace: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    """An Opaque Secret holding ``files`` (name -> content)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, namespace),
        "type": "Opaque",
        "data": {key: _b64(value) for key, value in files.items()},
    }


def tls_secret(name: str, namespace: str, cert_pem: bytes, key_pem: bytes) -> dict[str, Any]:
    """A ``kubernetes.io/tls`` Secret (``tls.crt``, ``tls.key``)."""
    return {
        "apiVersion": "v1",
        "kind": "Secret",
        "metadata": _metadata(name, namespace),
        "type": "kubernetes.io/tls",
        "data": {"tls.crt": _b64(cert_pem), "tls.key": _b64(key_pem)},
    }


def config_map(name: str, namespace: str, files: Mapping[str, bytes]) -> dict[str, Any]:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(name, namespace),
        "data": {key: value.decode("ascii") for key, value in files.items()},
    }


def ca_bundle_patch(ca_pem: bytes) -> list[dict[str, Any]]:
    """The JSON 6902 patch of the ValidatingWebhookConfiguration ``stockade``: its webhook
    (checked by name first, so a moved webhook fails the render) trusts ``ca_pem``."""
    return [
        {"op": "test", "path": "/webhooks/0/name", "value": WEBHOOK_NAME},
        {"op": "replace", "path": "/webhooks/0/clientConfig/caBundle", "value": _b64(ca_pem)},
    ]


PATCH_TARGET = {
    "group": "admissionregistration.k8s.io",
    "version": "v1",
    "kind": "ValidatingWebhookConfiguration",
    "name": WEBHOOK_CONFIGURATION,
}


@dataclass(frozen=True)
class Manifests:
    secrets: list[dict[str, Any]]
    config_maps: list[dict[str, Any]]
    ca_bundle_patch: list[dict[str, Any]]


def manifests(
    namespace: str,
    keys: Mapping[str, bytes],
    tls_ca_pem: bytes,
    webhook_tls: tuple[bytes, bytes] | None,
    webhook_ca_pem: bytes,
) -> Manifests:
    """The documents, from the files' contents: ``keys`` holds every name of
    ``KEYS_SECRET_FILES``; ``webhook_tls`` (certificate, key) is None when the webhook serves
    with a certificate of its own CA, ``webhook_ca_pem``."""
    missing = [name for name in KEYS_SECRET_FILES if name not in keys]
    if missing:
        raise ConfigurationError(f"no {', '.join(missing)} for the keys Secret")
    secrets = [
        secret(KEYS_SECRET, namespace, {name: keys[name] for name in KEYS_SECRET_FILES}),
        secret(READER_SECRET, namespace, {"token": keys[shared_keys.READER_TOKEN]}),
    ]
    if webhook_tls is not None:
        secrets.append(tls_secret(WEBHOOK_TLS_SECRET, namespace, *webhook_tls))
    config_maps = [
        config_map(
            VERIFIER_CA_CONFIGMAP,
            namespace,
            {"ca.pem": tls_ca_pem, "verifier-key.pub.pem": keys[shared_keys.VERIFIER_PUBLIC_KEY]},
        ),
        config_map(CLUSTER_CA_CONFIGMAP, namespace, {"ca.pem": keys[shared_keys.CLUSTER_CA_CERT]}),
    ]
    return Manifests(secrets, config_maps, ca_bundle_patch(webhook_ca_pem))


class _Dumper(yaml.SafeDumper):
    """Multi-line strings (PEM in a ConfigMap) as literal blocks, as one writes them."""


def _string(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _string)


def render(documents: Sequence[Any], comment: str) -> bytes:
    """YAML documents (``---`` between them) under a ``#`` comment."""
    header = "".join(f"# {line}\n" if line else "#\n" for line in comment.splitlines())
    body = yaml.dump_all(documents, Dumper=_Dumper, sort_keys=False, default_flow_style=False)
    return (header + body).encode()


def _pem(certificate: x509.Certificate) -> bytes:
    return certificate.public_bytes(serialization.Encoding.PEM)


def _key_pem(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )


# -- the writer --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Written:
    files: list[Path]
    patch: Path
    verifier_names: list[str]
    webhook_names: list[str]


def _create(path: Path, content: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    except OSError as error:
        raise ConfigurationError(f"cannot create {path}: {error.strerror}") from None
    with os.fdopen(fd, "wb") as handle:
        handle.write(content)


def _exists(path: Path) -> bool:
    return path.exists() or path.is_symlink()


def write_bundle(
    out: Path,
    services: Sequence[str],
    namespace: str = DEFAULT_NAMESPACE,
    *,
    webhook_services: Sequence[str] = (DEFAULT_WEBHOOK_SERVICE,),
    webhook_ca: Path | None = None,
    cluster_domain: str = DEFAULT_CLUSTER_DOMAIN,
    log_origin: str = DEFAULT_LOG_ORIGIN,
    now: datetime.datetime | None = None,
) -> Written:
    """Make everything in ``out`` (see the module's docstring). Nothing is written when any
    file it would write exists already."""
    now = now or datetime.datetime.now(datetime.UTC)
    verifier_names = service_dns_names(services, namespace, cluster_domain)
    webhook_names = (
        []
        if webhook_ca is not None
        else service_dns_names(webhook_services, namespace, cluster_domain)
    )
    webhook_ca_pem: bytes | None = None
    if webhook_ca is not None:
        try:
            webhook_ca_pem = webhook_ca.read_bytes()
            x509.load_pem_x509_certificates(webhook_ca_pem)
        except (OSError, ValueError) as error:
            reason = error.strerror if isinstance(error, OSError) else "no PEM certificate"
            raise ConfigurationError(f"--webhook-ca {webhook_ca}: {reason}") from None
    manifests_dir = out / MANIFESTS
    ours = [
        out / SERVER_CERT,
        out / SERVER_KEY,
        *((out / WEBHOOK_CERT, out / WEBHOOK_KEY) if webhook_ca is None else ()),
        manifests_dir / SECRETS_FILE,
        manifests_dir / CONFIGMAPS_FILE,
        out / PATCH_FILE,
    ]
    present = [str(path) for path in ours if _exists(path)]
    if present:
        raise ConfigurationError(f"{', '.join(present)} exist; refusing to replace them")
    made = shared_keys.create_keys(out, log_origin)  # refuses if any key is there
    try:
        ca_key = load_private_key(out / shared_keys.TLS_CA_KEY)
    except KeyFileError as error:
        raise ConfigurationError(str(error)) from None
    tls_ca_pem = (out / shared_keys.TLS_CA_CERT).read_bytes()
    ca_cert = x509.load_pem_x509_certificate(tls_ca_pem)

    server_cert, server_key = issue_service_certificate(ca_cert, ca_key, verifier_names, now)
    _create(out / SERVER_KEY, _key_pem(server_key), 0o600)
    _create(out / SERVER_CERT, _pem(server_cert), 0o644)
    made += [out / SERVER_KEY, out / SERVER_CERT]
    webhook_tls: tuple[bytes, bytes] | None = None
    if webhook_ca_pem is None:
        webhook_cert, webhook_key = issue_service_certificate(ca_cert, ca_key, webhook_names, now)
        webhook_tls = (_pem(webhook_cert), _key_pem(webhook_key))
        _create(out / WEBHOOK_KEY, webhook_tls[1], 0o600)
        _create(out / WEBHOOK_CERT, webhook_tls[0], 0o644)
        made += [out / WEBHOOK_KEY, out / WEBHOOK_CERT]
        webhook_ca_pem = tls_ca_pem

    keys = {name: (out / name).read_bytes() for name in KEYS_SECRET_FILES}
    documents = manifests(namespace, keys, tls_ca_pem, webhook_tls, webhook_ca_pem)
    manifests_dir.mkdir(mode=0o700, exist_ok=True)
    _create(
        manifests_dir / SECRETS_FILE,
        render(
            documents.secrets,
            "Made by `stockade verifier init`: private keys and tokens. Apply, then delete:\n"
            f"kubectl apply -f {SECRETS_FILE}. Never commit this file.",
        ),
        0o600,
    )
    _create(
        manifests_dir / CONFIGMAPS_FILE,
        render(documents.config_maps, "Made by `stockade verifier init`: public certificates."),
        0o644,
    )
    _create(
        out / PATCH_FILE,
        render(
            [documents.ca_bundle_patch],
            "Made by `stockade verifier init`: the admission webhook's caBundle (base64 of\n"
            "the CA that issued its serving certificate). A patchesJson6902 patch of the\n"
            "ValidatingWebhookConfiguration `stockade`; copy it into the overlay.",
        ),
        0o644,
    )
    made += [manifests_dir / SECRETS_FILE, manifests_dir / CONFIGMAPS_FILE, out / PATCH_FILE]
    return Written(made, out / PATCH_FILE, verifier_names, webhook_names)
