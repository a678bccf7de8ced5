"""Every command pays for what ``stockade`` imports before it runs: ``--help`` and
``--version`` must not load the verifier's database and web stack or the TPM stack."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

RUN = "import sys; sys.argv[0] = 'stockade'; from stockade.cli import main; main()"
HEAVY = ("sqlalchemy", "alembic", "fastapi", "starlette", "uvicorn", "httpx", "tpm2_pytss")

PROBE = """
import json, sys
heavy = json.loads(sys.argv[2])
sys.argv = ["stockade", *json.loads(sys.argv[1])]
from stockade.cli import main
try:
    main()
except SystemExit:
    pass
print(json.dumps(sorted({m.split(".")[0] for m in sys.modules} & set(heavy))))
"""


@pytest.mark.parametrize("argv", [["--help"], ["--version"], ["nodes", "--help"]])
def test_the_cli_starts_without_the_heavy_stacks(argv):
    done = subprocess.run(
        [sys.executable, "-c", PROBE, json.dumps(argv), json.dumps(HEAVY)],
        capture_output=True,
        text=True,
        check=True,
        timeout=60,
    )
    loaded = json.loads(done.stdout.strip().splitlines()[-1])
    assert loaded == [], f"`stockade {' '.join(argv)}` imported {loaded}"


def test_the_command_list_says_what_each_command_says_of_itself():
    from stockade.cli import COMMANDS, load_command

    for name, entry in COMMANDS.items():
        command = load_command(name)
        own = " ".join((command.help or "").split("\n\n")[0].split())
        assert entry.short_help == own, name


def test_an_unknown_command_is_a_usage_error():
    done = subprocess.run(
        [sys.executable, "-c", RUN, "no-such-command"],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert done.returncode == 2
    assert "No such command" in done.stderr
    assert "Traceback" not in done.stderr
