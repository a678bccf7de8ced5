"""Against a real cluster, when ``KUBECONFIG`` names one (skipped otherwise). Nothing in the
cluster is left changed: Node patches are sent with ``dryRun=All`` (the API server admits and
validates them, strategic merge of taints included, without storing them), and the one CSR
made here, for a node name no cluster has, is denied and then deleted. Needs: nodes
get/list/patch, CSR create/get/delete, certificatesigningrequests/approval update and
signers approve for kubernetes.io/kube-apiserver-client-kubelet.
"""

from __future__ import annotations

import os
import uuid
from datetime import UTC, datetime, timedelta

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from kube_support import StaticTrust

pytestmark = pytest.mark.skipif(
    not os.environ.get("KUBECONFIG"), reason="set KUBECONFIG to run against a real cluster"
)


@pytest.fixture(scope="module")
def api_client():
    from kubernetes import client, config

    configuration = client.Configuration()
    config.load_kube_config(
        config_file=os.environ["KUBECONFIG"], client_configuration=configuration
    )
    with client.ApiClient(configuration) as api_client:
        yield api_client


def test_controller_patches_are_accepted_by_the_api_server(api_client):
    from kubernetes import client

    from stockade.kube.controller import KubeNode, TrustView, reconcile

    core = client.CoreV1Api(api_client)
    nodes = [
        KubeNode.from_api(api_client.sanitize_for_serialization(item))
        for item in core.list_node().items
    ]
    assert nodes, "the cluster has no nodes"
    # The verifier unreachable: every node would be untrusted, tainted, and (grace 0) evicted.
    view = TrustView(None, "no verifier in this test")
    patches = reconcile(nodes, view, datetime.now(UTC), timedelta(0))
    for patch in patches:
        answer = core.patch_node(patch.node, patch.body, dry_run="All")
        result = api_client.sanitize_for_serialization(answer)
        assert result["metadata"]["labels"]["stockade.dev/trusted"] == "false"
        effects = {
            t["effect"]
            for t in result["spec"].get("taints") or []
            if t["key"] == "stockade.dev/untrusted"
        }
        assert effects == {"NoSchedule", "NoExecute"}
        before = next(n for n in nodes if n.name == patch.node)
        kept = [t for t in result["spec"]["taints"] if t["key"] != "stockade.dev/untrusted"]
        assert [(t["key"], t["effect"]) for t in kept] == [
            (t["key"], t["effect"]) for t in before.taints if t["key"] != "stockade.dev/untrusted"
        ]


def test_csr_of_an_unenrolled_node_is_denied(api_client, tmp_path):
    from kubernetes import client

    from stockade.cluster.ca import ClusterCa
    from stockade.kube.csr import CLIENT_SIGNER, CsrApprover

    certificates = client.CertificatesV1Api(api_client)
    key = ec.generate_private_key(ec.SECP256R1())
    node = f"stockade-test-{uuid.uuid4().hex[:8]}"
    request = (
        x509.CertificateSigningRequestBuilder()
        .subject_name(
            x509.Name(
                [
                    x509.NameAttribute(NameOID.ORGANIZATION_NAME, "system:nodes"),
                    x509.NameAttribute(NameOID.COMMON_NAME, f"system:node:{node}"),
                ]
            )
        )
        .sign(key, hashes.SHA256())
        .public_bytes(serialization.Encoding.PEM)
    )
    import base64

    body = {
        "apiVersion": "certificates.k8s.io/v1",
        "kind": "CertificateSigningRequest",
        "metadata": {"name": node},
        "spec": {
            "request": base64.b64encode(request).decode(),
            "signerName": CLIENT_SIGNER,
            "usages": ["digital signature", "client auth"],
        },
    }
    created = certificates.create_certificate_signing_request(body)
    try:
        approver = CsrApprover(
            certificates,
            client.CoreV1Api(api_client),
            StaticTrust({}),
            ClusterCa.load_or_create(tmp_path / "ca").certificate,
        )
        name, decision = approver.process(created)
        assert name == node
        assert decision is not None and decision.action == "deny"
        stored = certificates.read_certificate_signing_request(node)
        (condition,) = stored.status.conditions
        assert condition.type == "Denied"
        assert "not enrolled" in condition.message
        # Idempotent: a decided CSR is left alone.
        assert approver.process(stored) == (node, None)
    finally:
        certificates.delete_certificate_signing_request(node)
