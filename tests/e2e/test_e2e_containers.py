"""Signed containers on a trusted development node, all real processes (the demo's story,
checked again here): the signed image runs, the unsigned one never does, the verifier's audit
shows the execution proven by a quote, and a forbidden image contraindicates the node."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from stockade.demo.containers import APP, containers_story


@pytest.fixture(scope="module")
def story(tmp_path_factory: pytest.TempPathFactory, _require_cluster_tools, database_url):
    import shutil

    if not all(shutil.which(tool) for tool in ("runc", "umoci", "gcc")):
        pytest.skip("runc, umoci and gcc are needed (scripts/bootstrap.sh)")
    home = tmp_path_factory.mktemp("containers-home")
    output = io.StringIO()
    outcome = containers_story(Console(file=output, width=200), home, database=database_url)
    return outcome, output.getvalue()


def test_the_signed_image_runs_and_the_unsigned_one_never_does(story):
    outcome, text = story
    assert outcome.ran
    assert "unsigned" in outcome.refused_stderr
    assert "hello from a signed container" in " ".join(text.split())


def test_the_audit_shows_each_execution_proven_by_a_quote(story):
    outcome, _ = story
    starts = [e for e in outcome.audit if e["kind"] == "container-start"]
    assert [e["record"]["image_reference"] for e in starts] == [APP]
    assert all(e["proof_verified"] for e in outcome.audit)
    kinds = [e["kind"] for e in outcome.audit]
    assert kinds[0] == "trust-policy-loaded"  # the policy the node enforced, measured first


def test_a_forbidden_image_contraindicates_the_node(story):
    outcome, _ = story
    assert any("runs forbidden image" in reason for reason in outcome.forbidden_reasons)
