"""An expired image trust policy admits nothing at the Kubernetes door either: running, the
webhook refuses every image once its policy expires (`kube serve` refuses to start on one:
`load_trust_policy(..., now=)`, tested in tests/images/test_images_policy_rollback.py)."""

from __future__ import annotations

import dataclasses
import datetime

from stockade.kube.admission import SignedImageStore


def test_an_expired_policy_admits_no_image(images):
    # The same signed image the fixture's store admits, under a policy that has expired.
    assert images.store.check(images.signed)[0]
    past = datetime.datetime(2020, 1, 1, tzinfo=datetime.UTC)
    expired = dataclasses.replace(images.store.policy, expires=past, serial=2, version=2)
    store = SignedImageStore(images.directory, expired)
    allowed, reason = store.check(images.signed)
    assert not allowed
    assert "expired" in reason


def test_the_policy_is_checked_again_after_an_image_was_accepted(images):
    store = SignedImageStore(images.directory, images.store.policy)
    assert store.check(images.signed)[0]  # accepted, and cached
    soon = datetime.datetime.now(datetime.UTC) - datetime.timedelta(seconds=1)
    store.policy = dataclasses.replace(store.policy, expires=soon, serial=2, version=2)
    allowed, reason = store.check(images.signed)
    assert not allowed and "expired" in reason
