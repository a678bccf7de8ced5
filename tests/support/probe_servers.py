"""Servers that tests probe as real child processes: ``stockade kube serve`` (the webhook and
extender over HTTPS) and ``stockade agent run`` (its probe listener), what their ``/metrics``
say, and free ports to put them on.

    with serving_https(command, cert, port, tmp_path / "stderr") as served:
        ready = served.first_get("/readyz", 30)  # once it listens
    assert served.stdout == b""

The child is stopped with SIGTERM at the end of the block, whatever happened in it; its stdout
is then in :attr:`ServedProcess.stdout`, its stderr in the file given.
"""

from __future__ import annotations

import signal
import ssl
import subprocess
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

from stockade.demo.cluster import free_port

__all__ = ["ServedProcess", "free_port", "sample", "serving_https"]


def sample(text: str, name: str, **labels: str) -> float | None:
    """The value of one sample of a Prometheus text exposition (None: not there)."""
    from prometheus_client.parser import text_string_to_metric_families

    for family in text_string_to_metric_families(text):
        for found in family.samples:
            if found.name == name and all(found.labels.get(k) == v for k, v in labels.items()):
                return float(found.value)
    return None


@dataclass
class ServedProcess:
    """A server child process and an HTTPS client for it that trusts its certificate."""

    process: subprocess.Popen[bytes]
    client: httpx.Client
    stderr_path: Path
    stdout: bytes | None = None  # what it printed on stdout, once stopped

    def output(self) -> str:
        """Its stderr so far: for a failing assertion."""
        return self.stderr_path.read_text(errors="replace") if self.stderr_path.exists() else ""

    def first_get(self, path: str, timeout: float) -> httpx.Response:
        """``GET path`` once the server listens (it must not exit meanwhile), within
        ``timeout`` seconds."""
        deadline = time.monotonic() + timeout
        while True:
            assert self.process.poll() is None, self.output()
            try:
                return self.client.get(path)
            except httpx.ConnectError:
                assert time.monotonic() < deadline, self.output()
                time.sleep(0.05)


@contextmanager
def serving_https(
    command: Sequence[str], cert: Path, port: int, stderr_path: Path, *, cwd: Path | None = None
) -> Iterator[ServedProcess]:
    """Start ``command`` (stdout captured, stderr to ``stderr_path``), serving HTTPS on
    127.0.0.1:``port`` with the certificate ``cert``; SIGTERM it at the end."""
    with stderr_path.open("wb") as stderr:
        process = subprocess.Popen(list(command), stdout=subprocess.PIPE, stderr=stderr, cwd=cwd)
    served: ServedProcess | None = None
    try:
        context = ssl.create_default_context(cafile=str(cert))
        with httpx.Client(
            base_url=f"https://127.0.0.1:{port}", verify=context, timeout=5
        ) as client:
            served = ServedProcess(process, client, stderr_path)
            yield served
    finally:
        process.send_signal(signal.SIGTERM)
        stdout, _ = process.communicate(timeout=15)
        if served is not None:
            served.stdout = stdout
