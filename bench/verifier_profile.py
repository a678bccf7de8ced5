"""Profile the verifier under the benchmark's load: ``python -m bench.verifier_profile OUT``.

Runs the same setup as ``bench.verifier`` and records the verifier process with py-spy
(not a project dependency: ``.venv/bin/pip install py-spy``) during the load window, twice
at once: on-CPU, holding the GIL (``--gil``: what serializes a GIL-bound server) and with
``--idle`` (threads waiting too). Writes collapsed stacks to OUT/{cpu,gil,idle}.txt and
prints the top frames.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import tempfile
import threading
from collections import Counter
from pathlib import Path

from bench import verifier as bench
from stockade.demo.cluster import ek_ca_bundle, make_org_material, policy_document

MODES = ("cpu", "gil", "idle")


def record(pid: int, out: Path, seconds: float, mode: str) -> subprocess.Popen[bytes]:
    py_spy = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    command = [
        py_spy, "record", "--pid", str(pid), "--duration", str(int(seconds)), "--rate", "200",
        "--format", "raw", "--threads", "--nonblocking", "--output", str(out),
        *(("--idle",) if mode == "idle" else ("--gil",) if mode == "gil" else ()),
    ]  # fmt: skip
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def summarize(path: Path, top: int = 25) -> str:
    """Self and inclusive sample shares of each function in collapsed stacks."""
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in path.read_text().splitlines():
        stack, _, count_text = line.rpartition(" ")
        count = int(count_text)
        frames = [frame for frame in stack.split(";")[1:]]  # drop the thread frame
        if not frames:
            continue
        total += count
        own[_short(frames[-1])] += count
        for frame in {_short(frame) for frame in frames}:
            inclusive[frame] += count
    lines = [f"{path.name}: {total} samples", "  self%  function"]
    lines += [f"  {100 * n / total:5.1f}  {name}" for name, n in own.most_common(top)]
    lines += ["  incl%  function"]
    lines += [f"  {100 * n / total:5.1f}  {name}" for name, n in inclusive.most_common(top * 2)]
    return "\n".join(lines)


def _short(frame: str) -> str:
    # "function (path/to/module.py:line)" -> "function (module.py)"
    name, _, where = frame.partition(" (")
    return f"{name} ({Path(where.split(':')[0]).name})"


def main() -> None:
    out = Path(sys.argv[1] if len(sys.argv) > 1 else "verifier-profile")
    out.mkdir(parents=True, exist_ok=True)
    from stockade.tpm.ekca import EkCa

    with tempfile.TemporaryDirectory(prefix="stockade-bench-verifier-") as scratch:
        work = Path(scratch)
        org = make_org_material(work / "org")
        policy = work / "policy.json"
        policy.write_text(json.dumps(policy_document(org)))
        ek_ca = EkCa.load_or_create(work / "home" / "ek-ca")
        ek_ca_file = ek_ca_bundle(ek_ca, work / "ek-ca.pem")
        booted = bench.boot_development_node(org, work / "home", ek_ca)
        with bench.verifier_process(work, "verifier-load", ek_ca_file, policy) as verifier:
            assert verifier.process is not None
            pid = verifier.process.pid
            recorders: list[subprocess.Popen[bytes]] = []

            def start_recorders() -> None:
                threading.Event().wait(bench.SPAWN_SECONDS + bench.WARMUP_SECONDS)
                for kind in MODES:
                    recorders.append(record(pid, out / f"{kind}.txt", bench.LOAD_SECONDS, kind))

            starter = threading.Thread(target=start_recorders)
            starter.start()
            _, _, rows = bench.throughput(verifier, booted)
            starter.join()
            for recorder in recorders:
                recorder.wait(60)
        for name, value, unit in rows:
            print(f"{name:<60} {value:10.1f} {unit}")
    for kind in MODES:
        print(summarize(out / f"{kind}.txt"))


if __name__ == "__main__":
    main()
