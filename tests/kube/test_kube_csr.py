"""The kubelet CSR approver with the official ``kubernetes`` client against the in-process API
emulator (list CSRs, PUT .../approval): a kubelet certificate only for a trusted node and only
for the key the cluster CA certified in that node's TPM; every attack denied with its reason;
other signers' CSRs untouched; idempotent; the verifier down leaves CSRs pending."""

from __future__ import annotations

import base64
import ipaddress
from datetime import timedelta

import pytest
from cryptography import x509
from cryptography.hazmat import asn1
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kube_support import T0, FakeClock, StaticTrust, node_trust
from kubernetes import client

from stockade.cluster.ca import NODE_ID_OID, ClusterCa
from stockade.evidence.algorithms import Alg, EccCurve
from stockade.evidence.public import (
    EccParameters,
    EccPoint,
    ObjectAttributes,
    Scheme,
    SymmetricDefinition,
    TpmPublic,
)
from stockade.kube.csr import (
    CLIENT_SIGNER,
    NODE_CERTIFICATE_ANNOTATION,
    SERVING_SIGNER,
    CsrApprover,
    CsrRequest,
    decide_csr,
)
from stockade.kube.leader import LeaderElector, LeaseConfig
from stockade.kube.supervision import ControllerMetrics, Supervision
from stockade.probes import Health
from support.kube_emulator import KubeEmulator

CLIENT_USAGES = ["digital signature", "client auth"]
SERVING_USAGES = ["digital signature", "key encipherment", "server auth"]
NODE_KEY_ATTRIBUTES = (
    ObjectAttributes.FIXED_TPM
    | ObjectAttributes.FIXED_PARENT
    | ObjectAttributes.SENSITIVE_DATA_ORIGIN
    | ObjectAttributes.USER_WITH_AUTH
    | ObjectAttributes.NO_DA
    | ObjectAttributes.SIGN_ENCRYPT
)


def tpm_public(key: ec.EllipticCurvePrivateKey) -> TpmPublic:
    """The public area of a TPM-resident node key (the CA sees only this)."""
    template = TpmPublic(
        type=Alg.ECC,
        name_alg=Alg.SHA256,
        attributes=int(NODE_KEY_ATTRIBUTES),
        auth_policy=b"",
        parameters=EccParameters(
            SymmetricDefinition(), Scheme(Alg.NULL), EccCurve.NIST_P256, Scheme(Alg.NULL)
        ),
        unique=EccPoint(b"", b""),
    )
    return template.with_public_key(key.public_key())


@pytest.fixture(scope="module")
def ca(tmp_path_factory) -> ClusterCa:
    return ClusterCa.load_or_create(tmp_path_factory.mktemp("cluster-ca"))


@pytest.fixture(scope="module")
def foreign_ca(tmp_path_factory) -> ClusterCa:
    return ClusterCa.load_or_create(tmp_path_factory.mktemp("foreign-ca"), "Stockade cluster CA")


@pytest.fixture(scope="module")
def keys() -> dict[str, ec.EllipticCurvePrivateKey]:
    return {name: ec.generate_private_key(ec.SECP256R1()) for name in ("good", "bad", "other")}


def certificate_pem(ca: ClusterCa, key, name: str, node_id: str | None = None, **times) -> str:
    certificate = ca.issue_node_certificate(
        tpm_public(key),
        node_id=node_id or f"id-{name}",
        node_name=name,
        result_id=f"result-{name}",
        not_before=times.get("not_before", T0 - timedelta(minutes=1)),
        not_after=times.get("not_after", T0 + timedelta(minutes=10)),
    )
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def request_pem(key, common_name: str, organization: str = "system:nodes", sans=None) -> bytes:
    builder = x509.CertificateSigningRequestBuilder().subject_name(
        x509.Name(
            [
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, organization),
                x509.NameAttribute(NameOID.COMMON_NAME, common_name),
            ]
        )
    )
    if sans:
        builder = builder.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return builder.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.PEM)


@pytest.fixture
def trust() -> StaticTrust:
    return StaticTrust(
        {
            "good": node_trust("good", valid_for=600),
            "bad": node_trust("bad", state="failed"),
            "other": node_trust("other", valid_for=600),
        }
    )


@pytest.fixture
def api():
    with KubeEmulator() as emulator:
        emulator.add_node(
            "good",
            addresses=[
                {"type": "Hostname", "address": "good"},
                {"type": "InternalIP", "address": "10.0.0.7"},
            ],
        )
        yield emulator


@pytest.fixture
def approver(api, trust, ca):
    configuration = client.Configuration()
    configuration.host = api.url
    with client.ApiClient(configuration) as api_client:
        yield CsrApprover(
            client.CertificatesV1Api(api_client),
            client.CoreV1Api(api_client),
            trust,
            ca.certificate,
            clock=FakeClock(),
        )


def submit(api, name: str, key, node: str = "good", signer: str = CLIENT_SIGNER, **extra):
    certificate = extra.pop("certificate", None)
    annotations = {} if certificate is None else {NODE_CERTIFICATE_ANNOTATION: certificate}
    api.add_csr(
        name,
        request_pem=extra.pop("request", None) or request_pem(key, f"system:node:{node}"),
        signer_name=signer,
        usages=extra.pop("usages", CLIENT_USAGES if signer == CLIENT_SIGNER else SERVING_USAGES),
        username=extra.pop("username", f"system:node:{node}"),
        annotations=annotations,
    )


def verdict(api, name: str) -> tuple[str, str, str] | None:
    conditions = api.csr(name)["status"].get("conditions") or []
    if not conditions:
        return None
    assert len(conditions) == 1
    (condition,) = conditions
    return condition["type"], condition.get("reason", ""), condition.get("message", "")


def test_trusted_node_with_its_tpm_key_is_approved(api, approver, ca, keys):
    submit(api, "client-pem", keys["good"], certificate=certificate_pem(ca, keys["good"], "good"))
    encoded = base64.b64encode(certificate_pem(ca, keys["good"], "good").encode()).decode()
    submit(api, "client-b64", keys["good"], certificate=encoded)
    made = approver.sync()
    assert sorted((name, d.action) for name, d in made) == [
        ("client-b64", "approve"),
        ("client-pem", "approve"),
    ]
    for name in ("client-pem", "client-b64"):
        kind, reason, message = verdict(api, name)
        assert (kind, reason) == ("Approved", "StockadeAttested")
        assert "TPM-resident" in message
    puts = [path for method, path, _ in api.requests if method == "PUT"]
    assert "/apis/certificates.k8s.io/v1/certificatesigningrequests/client-pem/approval" in puts


def test_serving_certificate_for_the_nodes_own_addresses_is_approved(api, approver, ca, keys):
    sans = [x509.DNSName("good"), x509.IPAddress(ipaddress.ip_address("10.0.0.7"))]
    submit(
        api,
        "serving",
        keys["good"],
        signer=SERVING_SIGNER,
        request=request_pem(keys["good"], "system:node:good", sans=sans),
        certificate=certificate_pem(ca, keys["good"], "good"),
    )
    approver.sync()
    assert verdict(api, "serving")[0] == "Approved"


@pytest.mark.parametrize(
    ("case", "expected"),
    [
        ("untrusted", "node bad is failed"),
        ("not-enrolled", "not enrolled"),
        ("other-key", "not the TPM-resident key the cluster CA certified for good"),
        ("other-nodes-certificate", "the node certificate is for system:node:other"),
        ("expired", "expired at"),
        ("not-yet-valid", "not valid before"),
        ("foreign-ca", "does not verify with the cluster CA's key"),
        ("re-enrolled", "enrolled as id-good"),
        ("no-certificate", "no stockade.dev/node-certificate annotation"),
        ("garbage-certificate", "is not a certificate"),
        ("masters", "subject organization must be exactly system:nodes"),
        ("not-a-node", "subject common name must be system:node:<node name>"),
        ("client-sans", "may not have subject alternative names"),
        ("serving-foreign-name", "not among node good's addresses: kubernetes.default.svc"),
        ("serving-by-someone-else", "must be requested by that node"),
        ("usages", "are not a kubelet's"),
    ],
)
def test_attacks_are_denied_with_reasons(api, approver, ca, foreign_ca, keys, case, expected):
    good, other = keys["good"], keys["other"]
    good_cert = certificate_pem(ca, good, "good")
    arguments = {
        "untrusted": {
            "key": keys["bad"],
            "node": "bad",
            "certificate": certificate_pem(ca, keys["bad"], "bad"),
        },
        "not-enrolled": {
            "key": other,
            "node": "ghost",
            "certificate": certificate_pem(ca, other, "ghost"),
        },
        # A key of the attacker's choosing, with the node's real certificate attached.
        "other-key": {"key": other, "certificate": good_cert},
        # A trusted node's own certificate and key, used to ask for another node's name.
        "other-nodes-certificate": {
            "key": other,
            "certificate": certificate_pem(ca, other, "other"),
        },
        "expired": {
            "key": good,
            "certificate": certificate_pem(
                ca,
                good,
                "good",
                not_before=T0 - timedelta(hours=2),
                not_after=T0 - timedelta(hours=1),
            ),
        },
        "not-yet-valid": {
            "key": good,
            "certificate": certificate_pem(
                ca,
                good,
                "good",
                not_before=T0 + timedelta(hours=1),
                not_after=T0 + timedelta(hours=2),
            ),
        },
        "foreign-ca": {"key": good, "certificate": certificate_pem(foreign_ca, good, "good")},
        "re-enrolled": {"key": good, "certificate": certificate_pem(ca, good, "good", "id-old")},
        "no-certificate": {"key": good},
        "garbage-certificate": {"key": good, "certificate": "not a certificate"},
        "masters": {
            "key": good,
            "certificate": good_cert,
            "request": request_pem(good, "system:node:good", "system:masters"),
        },
        "not-a-node": {
            "key": good,
            "certificate": good_cert,
            "request": request_pem(good, "admin"),
        },
        "client-sans": {
            "key": good,
            "certificate": good_cert,
            "request": request_pem(good, "system:node:good", sans=[x509.DNSName("good")]),
        },
        "serving-foreign-name": {
            "key": good,
            "certificate": good_cert,
            "signer": SERVING_SIGNER,
            "request": request_pem(
                good,
                "system:node:good",
                sans=[x509.DNSName("good"), x509.DNSName("kubernetes.default.svc")],
            ),
        },
        "serving-by-someone-else": {
            "key": good,
            "certificate": good_cert,
            "signer": SERVING_SIGNER,
            "username": "system:serviceaccount:default:x",
        },
        "usages": {
            "key": good,
            "certificate": good_cert,
            "usages": ["digital signature", "client auth", "server auth"],
        },
    }[case]
    key = arguments.pop("key")
    submit(api, case, key, **arguments)
    made = approver.sync()
    assert [(name, d.action) for name, d in made] == [(case, "deny")]
    kind, reason, message = verdict(api, case)
    assert (kind, reason) == ("Denied", "StockadeNotAttested")
    assert expected in message, message


def test_every_failed_check_is_named(api, approver, ca, keys):
    submit(
        api,
        "many",
        keys["other"],
        node="bad",
        certificate=certificate_pem(ca, keys["good"], "good"),
    )
    approver.sync()
    message = verdict(api, "many")[2]
    assert "node bad is failed" in message
    assert "the node certificate is for system:node:good, not node bad" in message
    assert "not the TPM-resident key" in message


def test_other_signers_are_left_alone(api, approver, ca, keys):
    submit(
        api,
        "admin-client",
        keys["good"],
        signer="kubernetes.io/kube-apiserver-client",
        certificate=certificate_pem(ca, keys["good"], "good"),
    )
    submit(api, "custom", keys["good"], signer="example.com/anything")
    assert approver.sync() == []
    assert verdict(api, "admin-client") is None
    assert verdict(api, "custom") is None
    assert not [r for r in api.requests if r[0] == "PUT"]


def test_idempotent_and_never_overrides_a_decision(api, approver, ca, keys):
    submit(api, "once", keys["good"], certificate=certificate_pem(ca, keys["good"], "good"))
    approver.sync()
    puts = len([r for r in api.requests if r[0] == "PUT"])
    assert approver.sync() == []
    assert len([r for r in api.requests if r[0] == "PUT"]) == puts
    # An administrator denied this one by hand: the approver does not second-guess it.
    submit(api, "by-hand", keys["good"], certificate=certificate_pem(ca, keys["good"], "good"))
    csr = api.csr("by-hand")
    csr["status"]["conditions"] = [{"type": "Denied", "status": "True", "reason": "Admin"}]
    configuration = client.Configuration()
    configuration.host = api.url
    with client.ApiClient(configuration) as api_client:
        certificates = client.CertificatesV1Api(api_client)
        certificates.replace_certificate_signing_request_approval("by-hand", csr)
        assert approver.sync() == []
        assert verdict(api, "by-hand")[:2] == ("Denied", "Admin")
        # The API server refuses to flip a decision.
        flipped = api.csr("by-hand")
        flipped["status"]["conditions"] = [{"type": "Approved", "status": "True"}]
        with pytest.raises(client.ApiException) as refused:
            certificates.replace_certificate_signing_request_approval("by-hand", flipped)
        assert refused.value.status == 422


def test_verifier_down_leaves_csrs_pending_until_it_answers(api, approver, trust, ca, keys):
    submit(api, "patient", keys["good"], certificate=certificate_pem(ca, keys["good"], "good"))
    trust.down = "verifier unreachable: connection refused"
    made = approver.sync()
    assert [(name, d.action) for name, d in made] == [("patient", "wait")]
    assert "connection refused" in made[0][1].message
    assert verdict(api, "patient") is None
    trust.down = None
    approver.sync()
    assert verdict(api, "patient")[0] == "Approved"


def test_verifier_down_still_denies_what_is_wrong_anyway(trust, ca, keys):
    trust.down = "connection refused"
    csr = CsrRequest(
        "x",
        CLIENT_SIGNER,
        request_pem(keys["good"], "system:node:good", "system:masters"),
        tuple(CLIENT_USAGES),
        "system:node:good",
        {},
        (),
    )
    decision = decide_csr(csr, trust, ca.certificate, T0)
    assert decision.action == "deny"
    assert "system:nodes" in decision.message


def test_malformed_request_is_denied(trust, ca):
    csr = CsrRequest("x", CLIENT_SIGNER, b"junk", tuple(CLIENT_USAGES), "", {}, ())
    decision = decide_csr(csr, trust, ca.certificate, T0)
    assert decision.action == "deny" and "PKCS#10" in decision.message


# -- names: the approver names exactly the node the Stockade certificate names --------------


def legacy_certificate_pem(ca: ClusterCa, key, subject: x509.Name, node_id: str) -> str:
    """A certificate signed by the cluster CA's key for a subject the CA no longer issues (an
    old certificate, or one the CA was tricked into): the approver must not rely on the CA."""
    good = x509.load_pem_x509_certificate(certificate_pem(ca, key, "good").encode())
    builder = x509.CertificateBuilder(
        issuer_name=good.issuer,
        subject_name=subject,
        public_key=good.public_key(),
        serial_number=x509.random_serial_number(),
        not_valid_before=good.not_valid_before_utc,
        not_valid_after=good.not_valid_after_utc,
        extensions=[e for e in good.extensions if e.oid != NODE_ID_OID],
    ).add_extension(
        x509.UnrecognizedExtension(NODE_ID_OID, asn1.encode_der(node_id)), critical=False
    )
    certificate = builder.sign(ca.key, hashes.SHA256())
    return certificate.public_bytes(serialization.Encoding.PEM).decode()


def node_subject(common_name: str, *extra: x509.NameAttribute) -> x509.Name:
    return x509.Name(
        [
            x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
            *extra,
            # Built without cryptography's 64-character check: an attacker's encoder has none.
            x509.NameAttribute(NameOID.COMMON_NAME, common_name, _validate=False),
        ]
    )


def request_for(key, subject: x509.Name) -> bytes:
    return (
        x509.CertificateSigningRequestBuilder()
        .subject_name(subject)
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )


@pytest.mark.filterwarnings("ignore:Attribute's length")
@pytest.mark.parametrize(
    ("name", "reason"),
    [
        # A node named with an id (here: another node's) to be that node to the API server.
        ("6f0d4c1e-2b7a-4e59-9a63-0c8e1d2f3a4b", "it is a UUID"),
        ("6f0d4c1e2b7a4e599a630c8e1d2f3a4b", "it is a UUID"),
        ("Good", "uppercase"),  # not the Node "good"
        ("g\u043eod", "Unicode"),  # Cyrillic o: reads as "good"
        ("10.0.0.7", "IP address"),
        ("n" * 53, "at most 52"),
    ],
)
def test_a_subject_naming_no_possible_node_is_denied_even_if_the_verifier_trusts_it(
    api, approver, trust, ca, keys, name, reason
):
    """Even with a trusted entry under that name in the verifier and a certificate for it
    signed by the cluster CA's key (both from before names were checked), the CSR is denied:
    the name fails the rule enrollment and the CA apply."""
    good = keys["good"]
    trust.nodes[name] = node_trust(name, valid_for=600)
    subject = node_subject(f"system:node:{name}")
    submit(
        api,
        "named",
        good,
        node=name,
        request=request_for(good, subject),
        certificate=legacy_certificate_pem(ca, good, subject, f"id-{name}"),
    )
    made = approver.sync()
    assert [(csr, d.action) for csr, d in made] == [("named", "deny")]
    kind, _, message = verdict(api, "named")
    assert kind == "Denied"
    assert "subject names no node" in message and reason in message, message


def test_a_valid_name_with_the_same_setup_is_approved(api, approver, trust, ca, keys):
    """The control for the test above: the legacy certificate helper and a trusted entry do
    get a CSR approved when the name is a node name, so the denials above are the name's."""
    good = keys["good"]
    subject = node_subject("system:node:good")
    submit(
        api,
        "control",
        good,
        request=request_for(good, subject),
        certificate=legacy_certificate_pem(ca, good, subject, "id-good"),
    )
    approver.sync()
    assert verdict(api, "control")[0] == "Approved"


@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        # Two organizations: system:masters rides along with system:nodes.
        (x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:masters"), "organization"),
        # A second common name for another node.
        (x509.NameAttribute(NameOID.COMMON_NAME, "system:node:other"), "common name"),
        (x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "x"), "other than O and CN"),
    ],
)
def test_a_node_certificate_whose_subject_is_not_exactly_the_node_is_denied(
    api, approver, ca, keys, extra, expected
):
    good = keys["good"]
    certificate = legacy_certificate_pem(
        ca, good, node_subject("system:node:good", extra), "id-good"
    )
    submit(api, "subject", good, certificate=certificate)
    approver.sync()
    kind, _, message = verdict(api, "subject")
    assert kind == "Denied"
    assert "the node certificate's subject" in message and expected in message, message


# -- leader election, readiness, metrics, logs ----------------------------------------------


def replica(api, trust, ca, identity: str):
    configuration = client.Configuration()
    configuration.host = api.url
    api_client = client.ApiClient(configuration)
    elector = LeaderElector(
        client.CoordinationV1Api(api_client),
        LeaseConfig("stockade-csr-approver", "stockade", identity),
    )
    supervision = Supervision(
        health=Health(), metrics=ControllerMetrics("approver"), elector=elector
    )
    approver = CsrApprover(
        client.CertificatesV1Api(api_client),
        client.CoreV1Api(api_client),
        trust,
        ca.certificate,
        clock=FakeClock(),
        supervision=supervision,
    )
    return approver, elector, supervision


def decisions(supervision, action: str) -> float:
    value = supervision.metrics.registry.get_sample_value(
        "stockade_csr_decisions_total", {"action": action}
    )
    return value or 0.0


def test_only_the_leader_decides(api, trust, ca, keys, caplog):
    caplog.set_level("INFO", logger="stockade.kube")
    leader, leader_election, leader_supervision = replica(api, trust, ca, "a")
    standby, standby_election, standby_supervision = replica(api, trust, ca, "b")
    assert leader_election.step() and not standby_election.step()
    submit(api, "mine", keys["good"], certificate=certificate_pem(ca, keys["good"], "good"))
    submit(api, "forged", keys["other"], certificate=certificate_pem(ca, keys["good"], "good"))

    assert standby.sync() == []
    assert verdict(api, "mine") is None and verdict(api, "forged") is None
    assert not [r for r in api.requests if r[0] == "PUT" and r[1].endswith("/approval")]
    standby_supervision.finished(standby.last_round, 0.01)
    ready, reason = standby_supervision.health.readiness()
    assert ready and "standby" in reason  # a standby is ready: it can take over

    made = dict((name, d.action) for name, d in leader.sync())
    assert made == {"mine": "approve", "forged": "deny"}
    assert verdict(api, "mine")[0] == "Approved" and verdict(api, "forged")[0] == "Denied"
    assert decisions(leader_supervision, "approve") == 1.0
    assert decisions(leader_supervision, "deny") == 1.0
    assert decisions(standby_supervision, "approve") == 0.0
    lines = {r.csr: r for r in caplog.records if r.getMessage() == "CSR decided"}
    assert set(lines) == {"mine", "forged"}
    assert lines["mine"].node == "good" and lines["mine"].action == "approve"
    assert "not the TPM-resident key" in lines["forged"].reason


def test_a_replica_that_lost_the_lease_records_nothing(api, trust, ca, keys):
    approver, election, _ = replica(api, trust, ca, "a")
    assert election.step()
    api.write_lease("stockade-csr-approver", "stockade", holderIdentity="intruder")
    election.step()  # sees a change it did not make: stops at once
    submit(api, "late", keys["good"], certificate=certificate_pem(ca, keys["good"], "good"))
    assert approver.sync() == []
    assert verdict(api, "late") is None


def test_readiness_follows_the_verifier(api, trust, ca, keys):
    approver, election, supervision = replica(api, trust, ca, "a")
    election.step()
    submit(api, "patient", keys["good"], certificate=certificate_pem(ca, keys["good"], "good"))
    trust.down = "verifier https://v unreachable: connection refused"
    approver.sync()
    supervision.finished(approver.last_round, 0.01)
    ready, reason = supervision.health.readiness()
    assert not ready and "verifier: verifier https://v unreachable" in reason
    assert decisions(supervision, "wait") == 1.0
    registry = supervision.metrics.registry
    assert registry.get_sample_value("stockade_sync_errors_total", {"kind": "verifier"}) == 1.0
    trust.down = None
    approver.sync()
    supervision.finished(approver.last_round, 0.01)
    ready, reason = supervision.health.readiness()
    assert ready and "leading lease stockade/stockade-csr-approver" in reason
    assert decisions(supervision, "approve") == 1.0
    lease = {"lease": "stockade/stockade-csr-approver"}
    assert registry.get_sample_value("stockade_leader", lease) == 1.0
