"""CLI start-up against ``python -c "import typer"`` (the floor any Typer CLI pays), both
with this venv's Python: ``stockade --help``, ``--version``, and read commands against a
verifier that refuses the connection (``https://127.0.0.1:1``), so that what is measured
is all start-up: the time until the request is sent. Median of at least 15 runs each,
interleaved so that a busy machine slows every command alike; the ratios are to
``import typer``. The target is at most 2 (``python -m bench --only cli_startup``).

Bytecode is cached (in a directory of the run's own), as for an installed package. The
contexts file is one that does not exist (``$STOCKADE_CONFIG``), except for the
``via a context`` row, which reads one naming the same verifier.
"""

from __future__ import annotations

import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from bench.timing import Row
from stockade.cli.contexts import Config, Context, save_config
from stockade.cli.contexts import with_context as add_context

STOCKADE = str(Path(sys.executable).with_name("stockade"))
REFUSED = "https://127.0.0.1:1"

COMMANDS: dict[str, list[str]] = {
    'python -c "import typer"': [sys.executable, "-c", "import typer"],
    "stockade --help": [STOCKADE, "--help"],
    "stockade --version": [STOCKADE, "--version"],
    "stockade nodes list (refused)": [STOCKADE, "nodes", "list", "--verifier", REFUSED],
    "stockade results show (refused)": [
        STOCKADE,
        "results",
        "show",
        "node-a",
        "--verifier",
        REFUSED,
        "--verifier-key",
        "KEY",
    ],
    "stockade log checkpoint (refused)": [
        STOCKADE,
        "log",
        "checkpoint",
        "--verifier",
        REFUSED,
        "--key",
        "LOGKEY",
    ],
    "stockade nodes list --ca (refused)": [
        STOCKADE,
        "nodes",
        "list",
        "--verifier",
        REFUSED,
        "--ca",
        "CA",
    ],
    "stockade nodes list via a context (refused)": [STOCKADE, "nodes", "list"],
}


def _time(command: list[str], env: dict[str, str]) -> float:
    start = time.perf_counter()
    subprocess.run(
        command, env=env, check=False, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )
    return time.perf_counter() - start


def _keys(folder: Path) -> tuple[Path, str, Path]:
    """A verifier key file, a log key string and a TLS CA certificate that parse: the
    commands get as far as their request."""
    from datetime import UTC, datetime, timedelta

    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import NameOID

    from stockade.translog.checkpoint import NoteSigner

    private = ec.generate_private_key(ec.SECP256R1())
    key = folder / "verifier-key.pub.pem"
    key.write_bytes(
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        )
    )
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "bench CA")])
    now = datetime.now(UTC)
    certificate = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(private, hashes.SHA256())
    )
    ca = folder / "ca.pem"
    ca.write_bytes(certificate.public_bytes(serialization.Encoding.PEM))
    return key, NoteSigner.generate("bench.example").verifier.key_string(), ca


def measure(rounds: int) -> dict[str, float]:
    """Median seconds of each of ``COMMANDS``, run round-robin ``rounds`` times."""
    with tempfile.TemporaryDirectory() as work:
        folder = Path(work)
        key, log_key, ca = _keys(folder)
        context = folder / "config.yaml"
        # As `stockade config set-context` writes it (JSON, read without PyYAML).
        save_config(context, add_context(Config(), Context("bench", REFUSED)))
        # Bytecode cached, as in an installed package, but in a directory of its own: the
        # source tree is left alone whatever $PYTHONDONTWRITEBYTECODE says.
        plain = {
            **os.environ,
            "STOCKADE_CONFIG": str(folder / "absent.yaml"),
            "PYTHONPYCACHEPREFIX": str(folder / "pycache"),
        }
        for variable in (
            "STOCKADE_VERIFIER",
            "STOCKADE_CONTEXT",
            "STOCKADE_CA",
            "PYTHONDONTWRITEBYTECODE",
        ):
            plain.pop(variable, None)
        with_context = {**plain, "STOCKADE_CONFIG": str(context)}
        replace = {"KEY": str(key), "LOGKEY": log_key, "CA": str(ca)}
        commands = {
            name: [replace.get(part, part) for part in command]
            for name, command in COMMANDS.items()
        }
        samples: dict[str, list[float]] = {name: [] for name in commands}
        for command in commands.values():  # warm the page cache and bytecode
            _time(command, plain)
        for _ in range(rounds):
            for name, command in commands.items():
                env = with_context if "via a context" in name else plain
                samples[name].append(_time(command, env))
    return {name: statistics.median(values) for name, values in samples.items()}


def run(rounds: int) -> list[Row]:
    medians = measure(max(rounds, 15))
    baseline = medians['python -c "import typer"']
    rows: list[Row] = [(name, value * 1e3, "ms") for name, value in medians.items()]
    rows.extend(
        (f"{name} / import typer", value / baseline, "ratio")
        for name, value in medians.items()
        if name.startswith("stockade")
    )
    return rows
