"""Kubernetes fixtures: a static trust source over a fake clock, and a signed-image store
(org-signed trust policy; one signed, one unsigned image)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from kube_support import FakeClock, StaticTrust, make_layout, node_trust

from stockade.images.policy import load_trust_policy, sign_trust_policy
from stockade.images.signature import sign_image
from stockade.kube.admission import AdmissionPolicy, Exemptions, SignedImageStore
from stockade.release.keys import public_pem

SIGNED_REPO = "registry.example/org/app"


@dataclass(frozen=True)
class ImageStoreFixture:
    store: SignedImageStore
    directory: Path
    org_pub: Path
    policy_path: Path
    signed: str
    """registry.example/org/app@<digest>, signed for that repository."""
    signed_digest: str
    unsigned: str
    """registry.example/org/app@<digest> of an image in the store with no signature."""


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def trust() -> StaticTrust:
    return StaticTrust(
        {
            "node-good": node_trust("node-good"),
            "node-bad": node_trust("node-bad", state="failed"),
            "node-also-good": node_trust("node-also-good", valid_for=600),
        }
    )


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> ImageStoreFixture:
    root = tmp_path_factory.mktemp("kube-images")
    org = ed25519.Ed25519PrivateKey.generate()
    build = ec.generate_private_key(ec.SECP256R1())
    document = {
        "version": 1,
        "keys": {"build": public_pem(build.public_key()).decode()},
        "scopes": [{"prefix": "registry.example/org", "keys": ["build"]}],
    }
    policy_path = root / "trust-policy.json"
    policy_path.write_bytes(sign_trust_policy(document, org))
    org_pub = root / "org.pub"
    org_pub.write_bytes(public_pem(org.public_key()))
    store_dir = root / "store"
    layout, signed_digest = make_layout(store_dir / "app", b"signed application layer")
    sign_image(layout, "v1", SIGNED_REPO, build)
    _, unsigned_digest = make_layout(store_dir / "unsigned", b"nobody signed this layer")
    policy = load_trust_policy(policy_path.read_bytes(), [org.public_key()])
    return ImageStoreFixture(
        store=SignedImageStore(store_dir, policy),
        directory=store_dir,
        org_pub=org_pub,
        policy_path=policy_path,
        signed=f"{SIGNED_REPO}@{signed_digest}",
        signed_digest=signed_digest,
        unsigned=f"{SIGNED_REPO}@{unsigned_digest}",
    )


@pytest.fixture
def policy(trust: StaticTrust, images: ImageStoreFixture, clock: FakeClock) -> AdmissionPolicy:
    return AdmissionPolicy(
        trust=trust,
        images=images.store,
        exemptions=Exemptions(
            namespaces=frozenset({"stockade-system"}),
            users=frozenset({"system:serviceaccount:stockade-system:stockade-controller"}),
        ),
        clock=clock,
    )
