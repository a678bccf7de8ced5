"""Container start overhead of the Stockade OCI hook, with real runc and a swtpm.

An umoci-built image holding one static program (``/probe``, which exits 0 when given no
arguments: the ``/bin/true`` of this image), signed, with a signed trust policy. Timed, as
medians over ``rounds`` runs each:

- ``runc run`` of ``/probe`` without any hook (the baseline);
- the same with the hook as ``stockade-oci-hook`` (verifies, extends PCR 13 on the swtpm,
  appends to the execution log, all in the hook's own Python process);
- the same with the fast hook: the installed C client (``make hook-client``), else the
  ``python3 -I -S`` fallback client, forwarding the state to an admission server on a Unix
  socket (here a thread of this process), which does the same work;
- each hook process alone (state on stdin, as runc gives it), the bare interpreter start
  (``python3 -I -S -c pass``: the floor for any Python hook), and the server's admission
  work alone (verify, TPM open + extend in every bank, append + fsync).

Overhead rows are the difference of medians against the baseline.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import ExitStack
from pathlib import Path

from bench.timing import Row, median_seconds
from stockade.agent.hook_client import FALLBACK_CLIENT, ClientUnavailable, installed_client

PROBE_SOURCE = "int main(void) { return 0; }\n"
REFERENCE = "registry.example/bench/true:1.0"
TAG = "v1"


def _run(*command: str | Path) -> None:
    result = subprocess.run([str(c) for c in command], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise RuntimeError(f"{' '.join(map(str, command))}: {result.stderr.strip()}")


def _image(work: Path) -> Path:
    source = work / "true.c"
    source.write_text(PROBE_SOURCE)
    _run("gcc", "-static", "-Os", "-s", "-o", work / "probe", source)
    layout = work / "layout"
    _run("umoci", "init", "--layout", layout)
    _run("umoci", "new", "--image", f"{layout}:{TAG}")
    _run("umoci", "insert", "--image", f"{layout}:{TAG}", work / "probe", "/probe")
    _run("umoci", "config", "--image", f"{layout}:{TAG}", "--config.cmd", "/probe")
    return layout


def _sign(work: Path, layout: Path) -> tuple[Path, Path]:
    from cryptography.hazmat.primitives.asymmetric import ec

    from stockade.images import ImageLayout, sign_image, sign_trust_policy
    from stockade.release.keys import public_pem

    org, build = (ec.generate_private_key(ec.SECP256R1()) for _ in range(2))
    sign_image(ImageLayout.open(layout), TAG, REFERENCE, build)
    document = {
        "version": 1,
        "keys": {"build": public_pem(build.public_key()).decode()},
        "scopes": [{"prefix": "registry.example/bench", "keys": ["build"]}],
    }
    policy = work / "trust-policy.json"
    policy.write_bytes(sign_trust_policy(document, org))
    org_pub = work / "org.pub"
    org_pub.write_bytes(public_pem(org.public_key()))
    return policy, org_pub


def _time_runc_interleaved(
    bundles: dict[str, Path], runc_root: Path, rounds: int
) -> dict[str, float]:
    """Median ``runc run`` time per bundle, the bundles taking turns in every round so that
    drift in the machine's load hits them alike."""
    from stockade.agent.run import run_bundle

    samples: dict[str, list[float]] = {name: [] for name in bundles}
    for number in range(rounds + 1):  # round 0 warms caches and bytecode, untimed
        order = list(bundles)
        order = order[number % len(order) :] + order[: number % len(order)]
        for name in order:
            start = time.perf_counter()
            status = run_bundle(
                bundles[name],
                f"{name}-{number}",
                runc_root=runc_root,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL,
            )
            elapsed = time.perf_counter() - start
            if status != 0:
                raise RuntimeError(f"{name}: container exited {status}")
            if number:
                samples[name].append(elapsed)
    return {name: statistics.median(values) for name, values in samples.items()}


def _time_process(command: list[str], stdin: bytes, rounds: int) -> float:
    def once() -> None:
        result = subprocess.run(command, input=stdin, capture_output=True, check=False)
        if result.returncode != 0:
            raise RuntimeError(f"{command[0]}: {result.stderr.decode(errors='replace')}")

    once()
    return median_seconds(once, rounds)


def _time_podman(stack: ExitStack, work: Path, layout: Path, settings: object, rounds: int):
    """Median ``podman run --rm IMAGE /probe`` (a private store: overlay, runc, no network)
    without a hook and with the shipped hooks.d entry (the C client, else the Python one)
    asking an admission server bound to podman's store; ``None`` without podman."""
    if shutil.which("podman") is None or shutil.which("conmon") is None:
        print("bench.oci_hook: no podman rows (apt-get install podman)")
        return None
    from dataclasses import replace

    from stockade.agent.oci_hook import HookSettings, hooks_d_config, serving_hook_requests

    base = work / "pm"
    podman = ["podman", "--root", str(base / "root"), "--runroot", str(base / "run")]
    podman += ["--tmpdir", str(base / "tmp"), "--storage-driver", "overlay", "--runtime", "runc"]
    podman += ["--cgroup-manager", "cgroupfs", "--events-backend", "none"]
    image_id = subprocess.run(
        [*podman, "pull", "-q", f"oci:{layout}:{TAG}"], capture_output=True, text=True, check=True
    ).stdout.split()[-1]
    _run(*podman, "tag", image_id, REFERENCE)
    cache = work / "cache"  # the layout, its image tagged by its full reference
    shutil.copytree(layout, cache)
    index = json.loads((cache / "index.json").read_text())
    for entry in index["manifests"]:
        if entry.get("annotations", {}).get("org.opencontainers.image.ref.name") == TAG:
            entry["annotations"]["org.opencontainers.image.ref.name"] = REFERENCE
    (cache / "index.json").write_text(json.dumps(index))
    assert isinstance(settings, HookSettings)
    served = replace(settings, layout_cache=cache, containers_storage=base / "root")
    sock = stack.enter_context(serving_hook_requests(base / "hook.sock", served))
    config = hooks_d_config(HookSettings(agent_socket=sock))
    try:
        client = installed_client()
    except ClientUnavailable:
        python = [sys.executable, "-I", "-S", str(FALLBACK_CLIENT), str(sock)]
        config["hook"].update(path=sys.executable, args=python)
    else:
        config["hook"].update(path=str(client), args=[str(client), str(sock)])
    hooks = {"none": base / "no-hooks", "hook": base / "hooks"}
    for directory in hooks.values():
        directory.mkdir(parents=True)
    (hooks["hook"] / "stockade.json").write_text(json.dumps(config))
    run_flags = ["--network", "none", "--ulimit", "nofile=1024:1024", "--ulimit", "nproc=1024:1024"]
    samples: dict[str, list[float]] = {name: [] for name in hooks}
    for number in range(rounds + 1):  # round 0 warms up, untimed
        for name in list(hooks) if number % 2 else list(hooks)[::-1]:
            start = time.perf_counter()
            _run(
                *podman, "--hooks-dir", hooks[name], "run", "--rm", *run_flags, REFERENCE, "/probe"
            )
            if number:
                samples[name].append(time.perf_counter() - start)
    # The admission alone for a podman container (its records read and bound): a container
    # podman created and initialised (the hook ran once), admitted again and again.
    from stockade.agent.oci_hook import admit_state

    created = subprocess.run(
        [*podman, "--hooks-dir", hooks["hook"], "create", *run_flags, REFERENCE, "/probe"],
        capture_output=True, text=True, check=True,
    ).stdout.split()[-1]  # fmt: skip
    stack.callback(subprocess.run, [*podman, "rm", "-af"], capture_output=True, check=False)
    stack.callback(subprocess.run, [*podman, "rmi", "-af"], capture_output=True, check=False)
    _run(*podman, "--hooks-dir", hooks["hook"], "init", created)
    bundle = base / "root" / "overlay-containers" / created / "userdata"
    state = json.dumps({"ociVersion": "1.0.2", "id": created, "bundle": str(bundle)}).encode()

    def admission() -> None:
        if admit_state(state, served)[0] is None:
            raise RuntimeError(admit_state(state, served)[1])

    admit = median_seconds(admission, rounds)
    return statistics.median(samples["none"]), statistics.median(samples["hook"]), admit


def run(rounds: int) -> list[Row]:
    missing = [t for t in ("runc", "umoci", "gcc", "swtpm") if shutil.which(t) is None]
    if missing or os.geteuid() != 0:
        print(f"bench.oci_hook: skipped (needs root and {', '.join(missing) or 'tools'})")
        return []
    from stockade.agent.oci_hook import (
        HookSettings,
        admit_state,
        serving_hook_requests,
    )
    from stockade.agent.run import configure_bundle, hook_executable, prepared_bundle
    from stockade.tpm.ekca import EkCa
    from stockade.tpm.swtpm import start_swtpm

    rows: list[Row] = []
    with ExitStack() as stack:
        work = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="bench-oci-hook-")))
        home = work / "home"
        tpm = stack.enter_context(
            start_swtpm("bench-oci-hook", home, EkCa.load_or_create(home / "ek-ca"))
        )
        layout = _image(work)
        policy, org_pub = _sign(work, layout)
        settings = HookSettings(
            tcti=tpm.tcti,
            log_path=work / "run" / "execution.log",
            policy_path=policy,
            org_keys=(org_pub,),
        )
        sock = stack.enter_context(serving_hook_requests(work / "hook.sock", settings))
        fast = HookSettings(**{**settings.__dict__, "agent_socket": sock})
        runc_root = work / "runc"

        def bundle(hooked: HookSettings | None) -> Path:
            made = stack.enter_context(
                prepared_bundle(layout, TAG, reference=REFERENCE, settings=fast, bundle_parent=work)
            )
            configure_bundle(
                made,
                layout=layout,
                tag=TAG,
                reference=REFERENCE,
                settings=hooked or settings,
                with_hook=hooked is not None,
            )
            return made

        plain, direct, client = bundle(None), bundle(settings), bundle(fast)
        medians = _time_runc_interleaved(
            {"plain": plain, "direct": direct, "fast": client}, runc_root, rounds
        )
        base, with_direct, with_fast = medians["plain"], medians["direct"], medians["fast"]

        state = json.dumps({"ociVersion": "1.0.2", "id": "alone", "bundle": str(direct)})
        hook_alone = _time_process(
            [str(hook_executable()), *settings.to_args()], state.encode(), rounds
        )
        try:
            c_client = installed_client()
        except ClientUnavailable as error:
            print(f"bench.oci_hook: no C client row: {error} (make hook-client)")
            client_alone = None
        else:
            client_alone = _time_process([str(c_client), str(sock)], state.encode(), rounds)
        python_client_alone = _time_process(
            [sys.executable, "-I", "-S", str(FALLBACK_CLIENT), str(sock)], state.encode(), rounds
        )
        interpreter = _time_process([sys.executable, "-I", "-S", "-c", "pass"], b"", rounds)

        lock = threading.Lock()

        def admission() -> None:
            with lock:
                recnum, reason = admit_state(state.encode(), settings)
            if recnum is None:
                raise RuntimeError(reason)

        admission()
        admit_alone = median_seconds(admission, rounds)
        podman = _time_podman(stack, work, layout, settings, rounds)

    ms = 1000.0
    rows += [
        ("oci_hook runc run /probe (true), no hook", base * ms, "ms"),
        ("oci_hook runc run, stockade-oci-hook", with_direct * ms, "ms"),
        ("oci_hook runc run, fast hook (agent socket)", with_fast * ms, "ms"),
        ("oci_hook start overhead, stockade-oci-hook", (with_direct - base) * ms, "ms"),
        ("oci_hook start overhead, fast hook (target 15)", (with_fast - base) * ms, "ms"),
        ("oci_hook stockade-oci-hook process alone", hook_alone * ms, "ms"),
    ]
    if client_alone is not None:
        rows.append(("oci_hook fast client process alone (C)", client_alone * ms, "ms"))
    rows += [
        ("oci_hook fast client process alone (python -I -S)", python_client_alone * ms, "ms"),
        ("oci_hook python3 -I -S -c pass", interpreter * ms, "ms"),
        ("oci_hook admission in the agent (verify+extend+fsync)", admit_alone * ms, "ms"),
    ]
    if podman is not None:
        rows += [
            ("oci_hook podman run --rm /probe (true), no hook", podman[0] * ms, "ms"),
            ("oci_hook podman run, hooks.d fast hook + binding", podman[1] * ms, "ms"),
            ("oci_hook podman start overhead (target 15)", (podman[1] - podman[0]) * ms, "ms"),
            ("oci_hook podman run ratio hooked/plain", podman[1] / podman[0], "x"),
            (
                "oci_hook admission of a podman container (bound+verify+extend)",
                podman[2] * ms,
                "ms",
            ),
        ]
    return rows


if __name__ == "__main__":
    for name, value, unit in run(int(sys.argv[1]) if len(sys.argv) > 1 else 15):
        print(f"{name:<56} {value:>8.1f} {unit}")
