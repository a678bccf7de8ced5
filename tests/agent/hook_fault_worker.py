"""A hook process for the fault tests (run as a script): records container starts in the
execution log and PCR 13 exactly as ``stockade-oci-hook`` does, in a loop, until killed.

    python hook_fault_worker.py MODE TCTI LOG [KILL_AT]

MODE ``write-ahead`` runs the hook's own ``measure_and_log``; ``extend-first`` runs what the
hook did before it (extend PCR 13, then append), for comparison. ``KILL_AT`` makes the
process SIGKILL itself at one step of its first admission instead of looping:
``mid-append`` (half the record written), ``after-append``, ``after-extend``, ``after-mark``.
Prints ``ready`` once imported, so a parent's random kill delay is measured from there.
"""

from __future__ import annotations

import os
import signal
import sys
from typing import Any

from stockade.agent import execution_log
from stockade.agent.execution_log import ExecutionLog
from stockade.agent.oci_hook import _digests, measure_and_log
from stockade.evidence.execution import EXECUTION_PCR, ContainerStart, encode_record
from stockade.tpm.device import Tpm

POLICY = "sha256:" + "22" * 32
TIME = "2026-12-06T06:00:00Z"


def start(number: int) -> bytes:
    return encode_record(
        ContainerStart(
            container_id=f"c{number}",
            image_reference="registry.example/org/app:1",
            manifest_digest="sha256:" + "33" * 32,
            config_digest="sha256:" + "44" * 32,
            args=("/app", f"--n={number}"),
            env_names=("PATH",),
            mounts=(),
            time=TIME,
            trust_policy_digest=POLICY,
        )
    )


def die() -> None:
    os.kill(os.getpid(), signal.SIGKILL)


def inject(kill_at: str) -> None:
    """Wrap the log and TPM operations so the process dies at ``kill_at``."""
    write_all = execution_log._write_all
    append, mark, extend = ExecutionLog.append, ExecutionLog.mark, Tpm.extend_pcr

    def torn_write(fd: int, data: bytes) -> None:
        write_all(fd, data[: len(data) // 2])
        os.fsync(fd)
        die()

    def append_then(self: ExecutionLog, *args: Any) -> int:
        recnum = append(self, *args)
        if kill_at == "after-append":
            die()
        return recnum

    def extend_then(self: Tpm, *args: Any) -> None:
        extend(self, *args)
        if kill_at == "after-extend":
            die()

    def mark_then(self: ExecutionLog, *args: Any) -> None:
        mark(self, *args)
        if kill_at == "after-mark":
            die()

    if kill_at == "mid-append":
        execution_log._write_all = torn_write  # type: ignore[assignment]
    ExecutionLog.append = append_then  # type: ignore[method-assign]
    ExecutionLog.mark = mark_then  # type: ignore[method-assign]
    Tpm.extend_pcr = extend_then  # type: ignore[method-assign]


def admit(mode: str, tcti: str, path: str, number: int) -> None:
    log = ExecutionLog(path)
    with log.locked(), Tpm(tcti) as tpm:
        content = start(number)
        if mode == "write-ahead":
            measure_and_log(log, tpm, content, POLICY, TIME)
        else:
            banks = tpm.active_banks()
            tpm.extend_pcr(EXECUTION_PCR, content, banks)
            log.append(content, _digests(content, banks))


def main() -> None:
    mode, tcti, path = sys.argv[1:4]
    kill_at = sys.argv[4] if len(sys.argv) > 4 else None
    first = int(os.environ.get("FIRST_CONTAINER", "0"))
    if kill_at:
        inject(kill_at)
    print("ready", flush=True)
    number = first
    while True:
        admit(mode, tcti, path, number)
        number += 1
        if kill_at:  # the injected kill did not happen: say so
            print("not killed", flush=True)
            os._exit(3)


if __name__ == "__main__":
    main()
