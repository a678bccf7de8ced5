"""The one launcher tests use for ``stockade verifier serve`` as a real child process.

It is :class:`stockade.demo.cluster.VerifierProcess` (what the demo, the end-to-end tests and
the benchmark run) with what tests vary besides: no EK CA or policy, several EK CA files, a
Python prelude run before the CLI (to swap the appraiser, say), extra environment. Output goes
to files beside the data directory, never to a pipe nobody reads: stdout (the startup banner)
to ``<data_dir>.out``, stderr (the log) to ``<data_dir>.log``. Readiness is the product's own:
``GET /v1/health`` over TLS, pinned to the CA the verifier wrote, on a free 127.0.0.1 port.

    with ServedVerifier(tmp_path / "data", ek_ca=ek_ca_files(ek_ca)) as verifier:
        with verifier.httpx_client() as client:
            ...

Stopping sends SIGTERM (or the signal given), waits, then kills; a verifier still running at
the end of the ``with`` block is stopped whatever happened in it.
"""

from __future__ import annotations

import os
import re
import signal
import ssl
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from stockade.demo.cluster import VerifierProcess, free_port, stockade_executable

__all__ = ["QUOTE_ONLY_APPRAISER", "ServedVerifier", "ek_ca_files", "free_port"]

# `python -c PRELUDE + CLI`: the prelude runs first, then the CLI exactly as shipped.
CLI = "from stockade.cli import main; main()"
# Preludes can import the tests' helpers (verifier_support, support.*).
_TESTS = Path(__file__).resolve().parents[1]
_BANNER_LINE = re.compile(r"^([A-Za-z ]+):\s+(\S+)")
# A prelude: the tests' quote-only appraiser (tests/verifier/verifier_support.py) in place of
# the shipped one, so a development swtpm without a signed release is trusted.
QUOTE_ONLY_APPRAISER = (
    f"sys.path.insert(0, {str(_TESTS / 'verifier')!r}); import stockade.verifier.app as app; "
    "from verifier_support import QuoteOnlyAppraiser; app.default_appraiser = QuoteOnlyAppraiser"
)


def ek_ca_files(ek_ca: Any) -> tuple[Path, Path]:
    """The session EK CA's root and issuing certificates, one ``--ek-ca`` each."""
    return (ek_ca.root_cert_path, ek_ca.issuer_cert_path)


@dataclass
class ServedVerifier(VerifierProcess):
    """``stockade verifier serve`` for a test: restartable on the same port and data dir."""

    # VerifierProcess needs one EK CA bundle and a policy file; a test may give neither.
    ek_ca: Path | Sequence[Path] | None = None  # type: ignore[assignment]
    policy: Path | None = None  # type: ignore[assignment]
    # "open" as in the demo; None: no --enrollment-mode, the verifier's default.
    enrollment_mode: str | None = "open"  # type: ignore[assignment]
    # Python run in the verifier's interpreter before the CLI (``sys.path`` has ``tests``).
    prelude: str = ""
    # Added to (not replacing) the environment.
    env: Mapping[str, str] = field(default_factory=dict)
    _banner_offset: int = field(default=0, init=False, repr=False)

    # -- the command ---------------------------------------------------------------------

    def command(self) -> list[str]:
        if self.prelude:
            launcher = f"import sys; sys.path.insert(0, {str(_TESTS)!r}); {self.prelude}; {CLI}"
            head = [sys.executable, "-c", launcher]
        else:
            head = [stockade_executable()]
        ek_cas = [self.ek_ca] if isinstance(self.ek_ca, Path) else list(self.ek_ca or ())
        return [
            *head, "verifier", "serve", "--data-dir", str(self.data_dir),
            "--port", str(self.port),
            *(arg for path in ek_cas for arg in ("--ek-ca", str(path))),
            *(("--enrollment-mode", self.enrollment_mode) if self.enrollment_mode else ()),
            *(("--policy", str(self.policy)) if self.policy else ()),
            *(("--database", self.database) if self.database else ()),
            *self.extra,
        ]  # fmt: skip

    def environment(self) -> dict[str, str]:
        return {**os.environ, **self.env}

    # -- starting and stopping -----------------------------------------------------------

    @property
    def stdout_path(self) -> Path:
        """The startup banner (stdout); :attr:`log_path` has stderr."""
        return self.data_dir.parent / f"{self.data_dir.name}.out"

    def launch(self) -> None:
        """Start the process without waiting for it (:meth:`wait_ready` waits)."""
        # The data dir is the verifier's to create (owner-only, or it refuses to serve).
        self.data_dir.parent.mkdir(parents=True, exist_ok=True)
        self._banner_offset = self.stdout_path.stat().st_size if self.stdout_path.exists() else 0
        with self.stdout_path.open("ab") as out, self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.command(), stdin=subprocess.DEVNULL, stdout=out, stderr=log,
                env=self.environment(),
            )  # fmt: skip

    def wait_ready(self, timeout: float = 60.0) -> None:
        """Until ``/v1/health`` answers over TLS; ``ClusterError`` (with the log) if it exits
        or does not answer in time."""
        self._wait_ready(timeout)

    def start(self, timeout: float = 60.0) -> None:
        self.launch()
        self.wait_ready(timeout)

    def stop(self, timeout: float = 15.0, *, sig: int = signal.SIGTERM) -> int | None:
        """Send ``sig``, wait up to ``timeout``, then kill; the exit code (``None``: never
        started)."""
        if self.process is None:
            return None
        if self.process.poll() is None:
            self.process.send_signal(sig)
            try:
                self.process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait()
        return self.process.returncode

    def run_to_exit(self, timeout: float = 60.0) -> subprocess.CompletedProcess[str]:
        """The same command run to its end, output captured: for a start that is refused."""
        return subprocess.run(
            self.command(), check=False, capture_output=True, text=True, timeout=timeout,
            stdin=subprocess.DEVNULL, env=self.environment(),
        )  # fmt: skip

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        kind: type[BaseException] | None,
        value: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.stop()

    # -- what it said ----------------------------------------------------------------------

    def stdout(self) -> str:
        return self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""

    def output(self) -> str:
        """Everything it printed so far, stdout then stderr: for a failing assertion."""
        return self.stdout() + "".join(self.stderr_lines())

    def stderr_lines(self) -> list[str]:
        """The log so far, one line each (with its newline), across restarts."""
        if not self.log_path.exists():
            return []
        return self.log_path.read_text(errors="replace").splitlines(keepends=True)

    def banner(self) -> dict[str, str]:
        """The startup banner of the latest start: ``{"verifier": url, "TLS CA cert": path,
        ...}``, each label to the first word after it."""
        with self.stdout_path.open("rb") as out:
            out.seek(self._banner_offset)
            text = out.read().decode(errors="replace")
        return {
            match.group(1).strip(): match.group(2)
            for line in text.splitlines()
            if (match := _BANNER_LINE.match(line))
        }

    # -- talking to it ---------------------------------------------------------------------

    def ssl_context(self) -> ssl.SSLContext:
        """Trusts only the CA this verifier wrote."""
        return ssl.create_default_context(cafile=str(self.ca))

    def httpx_client(self, timeout: float = 10.0) -> httpx.Client:
        return httpx.Client(base_url=self.url, verify=self.ssl_context(), timeout=timeout)
