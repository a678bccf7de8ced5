"""The webhook and the extender asking a real verifier (HTTPS, pinned CA) through
``verifier_trust_source``: a node that attested is trusted, a node that only enrolled is
not, and a verifier that went away refuses everything."""

from __future__ import annotations

import ssl
import sys
from pathlib import Path

import httpx
import pytest
from cryptography.hazmat.primitives.asymmetric import ec
from kube_support import ThreadedServer, admission_review, binding, extender_args, pod

from stockade.kube.admission import AdmissionPolicy, review
from stockade.kube.extender import filter_nodes
from stockade.kube.server import ServerTls, uvicorn_config
from stockade.kube.trust import verifier_trust_source
from stockade.statements import VerifierKeys
from stockade.verifier import VerifierConfig, create_app
from stockade.verifier.config import EnrollmentMode
from stockade.verifier.tls import load_or_create_tls

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "verifier"))
from verifier_support import DevAgent, QuoteOnlyAppraiser, policy_document


@pytest.mark.swtpm
def test_real_verifier_one_node_trusted_one_not(tmp_path, ek_ca, make_software_tpm):
    data_dir = tmp_path / "verifier"
    config = VerifierConfig(
        data_dir=data_dir,
        ek_roots=ek_ca.trusted_roots(),
        ek_intermediates=ek_ca.intermediates(),
        sweep_interval_seconds=0.05,
        enrollment_mode=EnrollmentMode.OPEN,
    )
    app = create_app(config, appraiser=QuoteOnlyAppraiser())
    tls = load_or_create_tls(data_dir, "127.0.0.1")
    server = ThreadedServer(
        uvicorn_config(app, "127.0.0.1", 0, ServerTls(tls.server_cert, tls.server_key))
    )
    url = f"https://127.0.0.1:{server.port}"
    try:
        token = (data_dir / "operator-token").read_text().strip()
        with httpx.Client(
            base_url=url, verify=ssl.create_default_context(cafile=str(tls.ca_cert)), timeout=10
        ) as client:
            document = policy_document()
            put = client.put(
                f"/v1/policies/{document['id']}",
                json=document,
                headers={"Authorization": f"Bearer {token}"},
            )
            assert put.status_code == 200, put.text
            good = DevAgent.create(make_software_tpm())
            good.enroll(client, "kube-good")
            attested = good.attest(client)
            assert attested.status_code == 200, attested.text
            DevAgent.create(make_software_tpm()).enroll(client, "kube-enrolled-only")

        # Without the reader token the node list is refused: every decision is a refusal.
        keys = VerifierKeys.load(data_dir / "keys" / "verifier-key.pub.pem")
        anonymous = AdmissionPolicy(trust=verifier_trust_source(url, tls.ca_cert, keys, ttl=0.0))
        refused = review(admission_review(pod(images=("x",), node_name="kube-good")), anonymous)
        assert refused["response"]["allowed"] is False
        assert "read-token" in refused["response"]["status"]["message"]

        trust = verifier_trust_source(
            url, tls.ca_cert, keys, ttl=0.0, token_file=data_dir / "reader-token"
        )
        policy = AdmissionPolicy(trust=trust)
        on_good = review(admission_review(pod(images=("x",), node_name="kube-good")), policy)
        assert on_good["response"]["allowed"] is True, on_good
        on_enrolled = review(
            admission_review(binding("web-0", "kube-enrolled-only"), sub_resource="binding"),
            policy,
        )
        assert on_enrolled["response"]["allowed"] is False
        assert "enrolled at the Stockade verifier" in on_enrolled["response"]["status"]["message"]

        names = ["kube-good", "kube-enrolled-only", "kube-unknown"]
        result = filter_nodes(extender_args(names), trust)
        assert result["NodeNames"] == ["kube-good"]
        assert set(result["FailedNodes"]) == {"kube-enrolled-only", "kube-unknown"}

        # Pinned to another key (the verifier's answers come from an impostor, or the pin is
        # wrong): the genuine statement proves nothing to it, and every node is refused.
        other = VerifierKeys.of(ec.generate_private_key(ec.SECP256R1()).public_key())
        mispinned = verifier_trust_source(
            url, tls.ca_cert, other, ttl=0.0, token_file=data_dir / "reader-token"
        )
        refused = filter_nodes(extender_args(names), mispinned)
        assert refused["NodeNames"] == []
        assert "not a pinned verifier key" in refused["Error"]
    finally:
        server.stop()

    # the verifier is gone: fail closed, everywhere
    gone = review(admission_review(pod(images=("x",), node_name="kube-good")), policy)
    assert gone["response"]["allowed"] is False
    assert "unreachable" in gone["response"]["status"]["message"]
    down = filter_nodes(extender_args(names), trust)
    assert down["NodeNames"] == []
    assert "unreachable" in down["Error"]
