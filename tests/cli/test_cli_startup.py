"""Every command pays for what ``stockade`` imports before it runs: ``--help`` and
``--version`` must not load the verifier's database and web stack or the TPM stack, and a
read command (``nodes list``, ``results show``, ``log checkpoint``) loads none of them, nor
httpx, Pydantic, Rich or PyYAML, before its request is refused. How long that takes is
``bench/cli_startup.py``'s business, not a test's."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

RUN = "import sys; sys.argv[0] = 'stockade'; from stockade.cli import main; main()"
HEAVY = ("sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "httpx", "tpm2_pytss")

# What a read command needs before its request is sent: none of these.
READ_HEAVY = (
    *HEAVY,
    "httpcore",
    "pydantic",
    "pydantic_core",
    "rich",
    "yaml",
    "pygments",
    "click",  # the real Click: Typer brings its own
    "cryptography",
    "stockade.verifier",
    "stockade.agent",
    "stockade.tpm",
    "stockade.translog.store",
)
REFUSED = "https://127.0.0.1:1"

PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["stockade", *json.loads(sys.argv[1])]
from stockade.cli import main
try:
    main()
except SystemExit:
    pass
loaded = set(sys.modules)
print(json.dumps(sorted(
    name for name in heavy if name in loaded or any(m.startswith(name + ".") for m in loaded)
)))
"""


def _loaded_and_stderr(
    argv: list[str], heavy: tuple[str, ...], env: dict[str, str] | None = None
) -> tuple[object, str]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(heavy)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
        env=env,
    )
    return json.loads(done.stdout.strip().splitlines()[-1]), done.stderr


def _loaded(argv: list[str], heavy: tuple[str, ...]) -> object:
    return _loaded_and_stderr(argv, heavy)[0]


@pytest.mark.parametrize(
    "argv", [["--help"], ["--version"], ["nodes", "--help"], ["completion", "bash"]]
)
def test_the_cli_starts_without_the_heavy_stacks(argv):
    loaded = _loaded(argv, (*HEAVY, "pydantic", "rich"))
    assert loaded == [], f"`stockade {' '.join(argv)}` imported {loaded}"


# Loaded on purpose before the request: a contexts file edited by hand as YAML (one written
# by `stockade config` is JSON). Pinned keys are read before the request (an unreadable one
# stops the command first) but parsed after it, so no read command loads cryptography first.
CONTEXTS_FILE = ("yaml",)


@pytest.mark.parametrize(
    ("argv", "allowed"),
    [
        (["nodes", "list", "--verifier", REFUSED], ()),
        (["nodes", "show", "node-a", "--verifier", REFUSED, "--format", "json"], ()),
        (["results", "show", "node-a", "--verifier", REFUSED, "--verifier-key", "KEY"], ()),
        (["log", "checkpoint", "--verifier", REFUSED, "--key", "LOGKEY"], ()),
        (["policy", "list", "--verifier", REFUSED], ()),
        (["policy", "show", "p", "--verifier", REFUSED], ()),
        (["secrets", "list", "--verifier", REFUSED], ()),
        (["audit", "executions", "--verifier", REFUSED, "--verifier-key", "KEY"], ()),
        (["nodes", "list", "--context", "c"], CONTEXTS_FILE),
        (["nodes", "list", "--context", "written"], ()),
    ],
)
def test_a_read_command_sends_its_request_without_the_heavy_stacks(
    argv: list[str], allowed: tuple[str, ...], tmp_path: Path
):
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.cli.contexts import Config, Context, save_config, with_context
    from stockade.translog.checkpoint import NoteSigner

    key = tmp_path / "verifier-key.pub.pem"
    key.write_bytes(
        ec.generate_private_key(ec.SECP256R1())
        .public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
    )
    config = tmp_path / "config.yaml"
    env = {**os.environ, "STOCKADE_CONFIG": str(config)}
    env.pop("STOCKADE_VERIFIER", None)
    if argv[-2:] == ["--context", "c"]:
        config.write_text(f"contexts:\n  c:\n    verifier: {REFUSED}\n")
        argv = ["--context", "c", *argv[:-2]]
    if argv[-2:] == ["--context", "written"]:
        save_config(config, with_context(Config(), Context("written", REFUSED)))
        argv = ["--context", "written", *argv[:-2]]
    replace = {"KEY": str(key), "LOGKEY": NoteSigner.generate("log.example").verifier.key_string()}
    argv = [replace.get(part, part) for part in argv]
    heavy = tuple(name for name in READ_HEAVY if name not in allowed)
    loaded, stderr = _loaded_and_stderr(argv, heavy, env)
    assert "127.0.0.1:1 unreachable" in stderr, stderr  # it got as far as its request
    assert loaded == [], f"`stockade {' '.join(argv)}` imported {loaded} before its request"


@pytest.mark.parametrize("command", [["results", "show", "node-a"], ["audit", "executions"]])
def test_an_unreadable_pinned_key_stops_the_command_before_its_request(
    command: list[str], tmp_path: Path
):
    env = {**os.environ, "STOCKADE_CONFIG": str(tmp_path / "absent.yaml")}
    argv = [*command, "--verifier", REFUSED, "--verifier-key", str(tmp_path / "missing.pem")]
    _, stderr = _loaded_and_stderr(argv, (), env)
    assert "cannot read the verifier key file" in stderr, stderr
    assert "unreachable" not in stderr  # it never got as far as the verifier
