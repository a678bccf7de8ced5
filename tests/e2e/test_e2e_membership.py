"""Cluster membership with real processes (the demo's story, checked again here): a trusted
node joins and receives a secret sealed to its TPM, a tampered node is refused both, and a
node compromised at runtime loses both; the secret's bytes appear in no log and, at rest,
only encrypted."""

from __future__ import annotations

import base64
import io
import re

import pytest
from rich.console import Console

from stockade.demo.membership import membership_story


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, _require_cluster_tools, database_url):
    home = tmp_path_factory.mktemp("membership-home")
    output = io.StringIO()
    outcome = membership_story(Console(file=output, width=200), home, database=database_url)
    return outcome, output.getvalue(), home


def test_the_trusted_node_joins_and_the_tampered_node_is_refused_with_reasons(story):
    outcome, text, _ = story
    assert outcome.joined_certificate is not None and outcome.joined_certificate.exists()
    assert "stockade join` on node-a: attested affirming" in text
    assert re.search(r"PCR 4\b", outcome.refused_join_stderr), outcome.refused_join_stderr
    assert "node-c asks for db-password (granted to it): 403 untrusted" in text


def test_the_compromised_node_loses_its_secret_and_its_certificate(story):
    _, text, _ = story
    assert "its next attestation: failed" in text and "PCR 9" in text
    assert "the agent withdrew" in text
    assert "its certificate is not renewed" in text
    assert "the verifier releases nothing: 403 untrusted" in text
    assert "its own TPM refuses to unseal it (unseal" in text


def test_secret_bytes_appear_in_no_log_and_not_in_the_clear_at_rest(story):
    outcome, text, home = story
    needles = [outcome.secret, outcome.secret.hex().encode(), base64.b64encode(outcome.secret)]
    logs = [path for path in outcome.log_files if path.exists()]
    assert len(logs) >= 3
    every_file = [path for path in (home / "membership").rglob("*") if path.is_file()]
    for path in [*logs, *every_file]:
        data = path.read_bytes()
        for needle in needles:
            assert needle not in data, f"secret found in {path}"
    for needle in needles:
        assert needle.decode() not in text
    database = home / "membership" / "verifier" / "verifier.db"
    if database.exists():  # SQLite (on PostgreSQL the rows live in the server)
        assert database.stat().st_size > 0
