"""CLI errors a program can read, and a TLS failure that says what to do.

With ``--format json`` an error is one JSON object on stderr (``{"error", "detail"}``, the
same shape the verifier answers with); the exit code is the same as in text. A verifier
whose certificate the CLI does not trust is reported as that, with the option to pass,
not as a verifier that is down."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from support.cli import run_stockade
from support.verifier_serve import ServedVerifier, ek_ca_files

pytestmark = pytest.mark.tools


def test_an_error_is_json_on_stderr_with_format_json():
    text = run_stockade("nodes", "list", "--verifier", "https://127.0.0.1:9")
    as_json = run_stockade("nodes", "list", "--verifier", "https://127.0.0.1:9", "--format", "json")
    assert text.returncode == as_json.returncode == 2
    assert text.stderr.startswith("stockade: verifier https://127.0.0.1:9 unreachable")
    (line,) = as_json.stderr.splitlines()
    document = json.loads(line)
    assert document["error"] == "verifier-unavailable"
    assert "https://127.0.0.1:9 unreachable" in document["detail"]
    assert as_json.stdout == ""


def test_an_untrusted_verifier_certificate_names_the_ca_to_pass(tmp_path: Path, ek_ca):
    with ServedVerifier(tmp_path / "verifier", ek_ca_files(ek_ca)) as verifier:
        token = ("--token-file", str(verifier.reader_token_file))
        refused = run_stockade("nodes", "list", "--verifier", verifier.url, *token)
        as_json = run_stockade(
            "nodes", "list", "--verifier", verifier.url, *token, "--format", "json"
        )
        trusted = run_stockade(
            "nodes", "list", "--verifier", verifier.url, "--ca", str(verifier.ca), *token
        )
    assert refused.returncode == 2, refused.stderr
    assert "TLS certificate is not trusted" in refused.stderr
    assert "--ca FILE" in refused.stderr and "unreachable" not in refused.stderr
    assert json.loads(as_json.stderr)["error"] == "verifier-untrusted"
    assert trusted.returncode == 0, trusted.stderr
