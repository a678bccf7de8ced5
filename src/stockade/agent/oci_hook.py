"""``stockade-oci-hook``: the OCI runtime hook that admits a container, provably, or refuses it.

The runtime (runc, or containerd/CRI-O through ``hooks.d``) runs the hook as a ``createRuntime``
hook: after the container's namespaces and mounts exist, before ``pivot_root`` and long before
the user's program is executed. The container's state arrives as JSON on stdin (``id``,
``bundle``, ``annotations``); the hook reads the bundle's ``config.json`` for what is about to
run. A non-zero exit makes the runtime tear the container down without starting it.

Admission, in this order, under one lock so that record numbers follow extend order:

1. verify the image (signature, trust policy, every blob's digest) named by the annotations
   ``dev.stockade.image.layout``, ``dev.stockade.image.tag``, ``dev.stockade.image.reference``;
2. resolve a *pending* record a crashed hook left at the end of the log: PCR 13 read and
   compared with the log replayed with and without it says whether its extend happened;
   it is marked done (0xC5) or abandoned (0xC7, the container never started);
3. refuse a trust policy older than the newest this boot's log has loaded (a lower serial, or
   another policy with the same serial; an expired policy was refused when it was read); if
   its digest differs from the last ``TrustPolicyLoaded`` in the execution log, check that the
   log replays to PCR 13 and record a new ``TrustPolicyLoaded`` (digest and serial) as in 4-6;
4. append the canonical ``ContainerStart`` record to the execution log as pending (fsync'd);
5. extend PCR 13 with it (CEL content bytes, type 0xC5);
6. mark it done (one byte rewritten in place, fsync'd), and exit 0.

A crash between 4 and 5 leaves a pending record never extended (step 2 of the next hook, or
the verifier, finds it not started: runc never ran the container); between 5 and 6 a pending
record whose extend the next quote shows (the verifier accepts it as started). There is no
point at which PCR 13 holds an extend the log lacks.

It fails closed: unreadable input, a missing annotation, a refused image, an unreachable TPM
or any unexpected exception prints one line on stderr and exits 1 before the container runs.

Configuration comes from the hook's ``args`` in config.json (or ``hooks.d``), with environment
fallbacks: ``--tcti`` (``STOCKADE_TCTI``), ``--log`` (``STOCKADE_EXECUTION_LOG``), ``--policy``
(``STOCKADE_TRUST_POLICY``), ``--org-key`` repeated (``STOCKADE_ORG_KEYS``, ``:``-separated),
``--layout-cache`` (``STOCKADE_LAYOUT_CACHE``) and ``--agent-socket`` (``STOCKADE_HOOK_SOCKET``),
and where the runtimes keep their records: ``--containers-storage``, ``--containers-runroot``,
``--containerd-state``, ``--containerd-address``. Before step 1 the runtime's own records say
which image it resolved for the container (``runtime_binding.runtime_image``; none: refused),
and after it that image must be the verified one.

With ``--agent-socket`` the hook is only a small client: it forwards the state to a process
running :func:`serving_hook_requests` (``stockade-oci-hook serve``) and exits 0 only on its
``OK``; the server does the same admission with the same lock. This module imports only the
standard library at the top, so the client starts in the time of a bare Python interpreter.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import socket
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ANNOTATION_LAYOUT = "dev.stockade.image.layout"
ANNOTATION_TAG = "dev.stockade.image.tag"
ANNOTATION_REFERENCE = "dev.stockade.image.reference"
# What containerd's CRI plugin and CRI-O put in the annotations of every container they create.
CRI_IMAGE_NAME_ANNOTATIONS = ("io.kubernetes.cri.image-name", "io.kubernetes.cri-o.ImageName")

DEFAULT_TCTI = "device:/dev/tpmrm0"
# /run is a tmpfs: the log starts empty on every boot, as PCR 13 does.
DEFAULT_LOG = Path("/run/stockade/execution.log")
DEFAULT_POLICY = Path("/etc/stockade/trust-policy.json")
DEFAULT_ORG_KEY = Path("/etc/stockade/org.pub")

MAX_STATE_BYTES = 1 << 20
MAX_CONFIG_BYTES = 16 << 20
SOCKET_TIMEOUT = 60.0
PROG = "stockade-oci-hook"


class HookRefused(Exception):
    """The container must not start; the message is the one line the runtime will show."""


@dataclass(frozen=True)
class HookSettings:
    """Where the hook finds its TPM, log, trust policy and keys."""

    tcti: str = DEFAULT_TCTI
    log_path: Path = DEFAULT_LOG
    policy_path: Path = DEFAULT_POLICY
    org_keys: tuple[Path, ...] = (DEFAULT_ORG_KEY,)
    layout_cache: Path | None = None
    agent_socket: Path | None = None
    # Where the runtimes keep their records (agent/runtime_binding.py): a bundle of a runtime
    # not configured here, with no umoci.json, is refused.
    containers_storage: Path | None = None
    containers_runroot: Path | None = None
    containerd_state: Path | None = None
    containerd_address: Path | None = None

    def runtime_stores(self) -> Any:
        """The stores as ``runtime_binding.RuntimeStores``."""
        from stockade.agent.runtime_binding import RuntimeStores

        return RuntimeStores(
            self.containers_storage,
            self.containers_runroot,
            self.containerd_state,
            self.containerd_address,
        )

    def to_args(self) -> list[str]:
        """The hook arguments (after argv[0]) that reproduce these settings."""
        args = ["--tcti", self.tcti, "--log", str(self.log_path), "--policy", str(self.policy_path)]
        for key in self.org_keys:
            args += ["--org-key", str(key)]
        if self.layout_cache is not None:
            args += ["--layout-cache", str(self.layout_cache)]
        if self.agent_socket is not None:
            args += ["--agent-socket", str(self.agent_socket)]
        for flag, value in _STORE_FLAGS.items():
            if (path := getattr(self, value[0])) is not None:
                args += [flag, str(path)]
        return args


# The runtime stores: flag -> (HookSettings field, environment variable).
_STORE_FLAGS = {
    "--containers-storage": ("containers_storage", "STOCKADE_CONTAINERS_STORAGE"),
    "--containers-runroot": ("containers_runroot", "STOCKADE_CONTAINERS_RUNROOT"),
    "--containerd-state": ("containerd_state", "STOCKADE_CONTAINERD_STATE"),
    "--containerd-address": ("containerd_address", "STOCKADE_CONTAINERD_ADDRESS"),
}


_FLAGS = {
    "--tcti",
    "--log",
    "--policy",
    "--org-key",
    "--layout-cache",
    "--agent-socket",
    "--socket",
    *_STORE_FLAGS,
}


def parse_settings(argv: Sequence[str], environ: Mapping[str, str]) -> HookSettings:
    """Settings from ``--flag value`` pairs, falling back to the environment, then defaults."""
    values: dict[str, list[str]] = {}
    items = list(argv)
    while items:
        flag = items.pop(0)
        name, eq, inline = flag.partition("=")
        if name not in _FLAGS:
            raise HookRefused(f"unknown hook argument {flag!r}")
        if eq:
            value = inline
        elif items:
            value = items.pop(0)
        else:
            raise HookRefused(f"hook argument {flag} needs a value")
        key = "agent-socket" if name == "--socket" else name.removeprefix("--")
        values.setdefault(key, []).append(value)

    def one(name: str, env: str) -> str | None:
        given = values.get(name)
        return given[-1] if given else (environ.get(env) or None)

    keys = values.get("org-key") or [
        k for k in environ.get("STOCKADE_ORG_KEYS", "").split(":") if k
    ]
    cache = one("layout-cache", "STOCKADE_LAYOUT_CACHE")
    agent = one("agent-socket", "STOCKADE_HOOK_SOCKET")
    stores = {
        field_name: Path(store)
        for flag, (field_name, env) in _STORE_FLAGS.items()
        if (store := one(flag.removeprefix("--"), env))
    }
    return HookSettings(
        tcti=one("tcti", "STOCKADE_TCTI") or DEFAULT_TCTI,
        log_path=Path(one("log", "STOCKADE_EXECUTION_LOG") or DEFAULT_LOG),
        policy_path=Path(one("policy", "STOCKADE_TRUST_POLICY") or DEFAULT_POLICY),
        org_keys=tuple(Path(k) for k in keys) or (DEFAULT_ORG_KEY,),
        layout_cache=Path(cache) if cache else None,
        agent_socket=Path(agent) if agent else None,
        **stores,
    )


# -- what is starting ---------------------------------------------------------------------------


@dataclass(frozen=True)
class ContainerRequest:
    """One container about to start: the OCI state plus what its config.json says it runs."""

    container_id: str
    bundle: Path
    annotations: Mapping[str, str]
    args: tuple[str, ...]
    env_names: tuple[str, ...]
    mounts: tuple[tuple[str, str, str, tuple[str, ...]], ...] = field(default=())
    root_path: str | None = None
    """config.json's ``root.path``, made absolute against the bundle."""


def _json_object(data: bytes, what: str) -> dict[str, Any]:
    try:
        value = json.loads(data)
    except (ValueError, UnicodeDecodeError) as error:
        raise HookRefused(f"{what} is not JSON: {error}") from None
    if not isinstance(value, dict):
        raise HookRefused(f"{what} is not a JSON object")
    return value


def _strings(value: object, what: str) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise HookRefused(f"{what} is not a list of strings")
    return tuple(value)


def read_request(state_bytes: bytes) -> ContainerRequest:
    """The OCI state from stdin, completed from ``<bundle>/config.json``."""
    state = _json_object(state_bytes, "the container state on stdin")
    container_id = state.get("id")
    bundle = state.get("bundle")
    if not isinstance(container_id, str) or not container_id:
        raise HookRefused("the container state on stdin has no id")
    if not isinstance(bundle, str) or not os.path.isabs(bundle):
        raise HookRefused(f"container {container_id}: the state has no absolute bundle path")
    config_path = Path(bundle) / "config.json"
    try:
        with open(config_path, "rb") as handle:
            config_bytes = handle.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise HookRefused(f"cannot read {config_path}: {error.strerror or error}") from None
    if len(config_bytes) > MAX_CONFIG_BYTES:
        raise HookRefused(f"{config_path} is larger than {MAX_CONFIG_BYTES} bytes")
    config = _json_object(config_bytes, str(config_path))
    annotations: dict[str, str] = {}
    for source in (config.get("annotations"), state.get("annotations")):
        if source is None:
            continue
        if not isinstance(source, dict) or not all(
            isinstance(k, str) and isinstance(v, str) for k, v in source.items()
        ):
            raise HookRefused(f"container {container_id}: annotations are not strings")
        for key, value in source.items():
            if annotations.setdefault(key, value) != value:
                raise HookRefused(
                    f"container {container_id}: annotation {key} differs between the state "
                    "and config.json"
                )
    process = config.get("process") or {}
    if not isinstance(process, dict):
        raise HookRefused(f"{config_path}: process is not an object")
    args = _strings(process.get("args"), "process.args")
    env_names = tuple(entry.partition("=")[0] for entry in _strings(process.get("env"), "env"))
    mounts = []
    raw_mounts = config.get("mounts") or []
    if not isinstance(raw_mounts, list):
        raise HookRefused(f"{config_path}: mounts is not a list")
    for mount in raw_mounts:
        if not isinstance(mount, dict) or not isinstance(mount.get("destination"), str):
            raise HookRefused(f"{config_path}: a mount has no destination")
        source_value = mount.get("source", "")
        type_value = mount.get("type", "")
        if not isinstance(source_value, str) or not isinstance(type_value, str):
            raise HookRefused(f"{config_path}: mount {mount['destination']} is malformed")
        options = _strings(mount.get("options"), f"mount {mount['destination']} options")
        mounts.append((mount["destination"], source_value, type_value, options))
    root = config.get("root")
    root_path = root.get("path") if isinstance(root, dict) else None
    if root_path is not None and not isinstance(root_path, str):
        raise HookRefused(f"{config_path}: root.path is not a string")
    return ContainerRequest(
        container_id=container_id,
        bundle=Path(bundle),
        annotations=annotations,
        args=args,
        env_names=env_names,
        mounts=tuple(mounts),
        root_path=os.path.join(bundle, root_path) if root_path else None,
    )


@dataclass(frozen=True)
class ImageIdentity:
    layout: Path
    tag: str
    reference: str


def image_identity(
    request: ContainerRequest, settings: HookSettings, runtime_name: str | None = None
) -> ImageIdentity:
    """Which image the container claims to be, from its annotations.

    ``stockade run`` sets the three ``dev.stockade.image.*`` annotations. Under containerd or
    CRI-O, whose annotations carry only the image name, or podman, which sets none (its
    image name ``runtime_name`` comes from its records: agent/runtime_binding.py), a
    configured layout cache (an OCI layout whose tags are full image references) supplies
    the layout and tag.
    """
    notes = request.annotations
    reference = notes.get(ANNOTATION_REFERENCE)
    layout = notes.get(ANNOTATION_LAYOUT)
    tag = notes.get(ANNOTATION_TAG)
    if reference is None and settings.layout_cache is not None:
        reference = next((notes[k] for k in CRI_IMAGE_NAME_ANNOTATIONS if k in notes), None)
        reference = reference or runtime_name
        if reference is not None and layout is None and tag is None:
            layout, tag = str(settings.layout_cache), reference
    missing = [
        name
        for name, value in (
            (ANNOTATION_LAYOUT, layout),
            (ANNOTATION_TAG, tag),
            (ANNOTATION_REFERENCE, reference),
        )
        if not value
    ]
    if missing:
        raise HookRefused(
            f"container {request.container_id}: missing annotation {', '.join(missing)}; "
            "the image cannot be identified"
        )
    assert layout and tag and reference
    if not os.path.isabs(layout):
        raise HookRefused(f"container {request.container_id}: {ANNOTATION_LAYOUT} is not absolute")
    return ImageIdentity(Path(layout), tag, reference)


# -- admission ----------------------------------------------------------------------------------


def _load_policy(settings: HookSettings, now: datetime.datetime | None = None) -> Any:
    """The org-signed trust policy, refused (``HookRefused``) if it has expired at ``now``
    (default: the clock): no container starts under an expired policy."""
    from stockade.images import load_trust_policy
    from stockade.images.policy import format_expires
    from stockade.release.keys import load_verifying_key

    try:
        envelope = settings.policy_path.read_bytes()
    except OSError as error:
        raise HookRefused(
            f"cannot read the trust policy {settings.policy_path}: {error.strerror or error}"
        ) from None
    keys = []
    for path in settings.org_keys:
        try:
            pem = path.read_bytes()
        except OSError as error:
            raise HookRefused(
                f"cannot read the org public key {path}: {error.strerror or error}"
            ) from None
        keys.append(load_verifying_key(pem, f"org public key {path}"))
    policy = load_trust_policy(envelope, keys)
    moment = now or datetime.datetime.now(datetime.UTC)
    if policy.expired(moment):
        assert policy.expires is not None
        raise HookRefused(
            f"the trust policy {settings.policy_path} ({policy.digest}, serial {policy.serial})"
            f" expired at {format_expires(policy.expires)} (now {format_expires(moment)}):"
            " no container starts under an expired policy; install a current one"
        )
    return policy


def admit(
    request: ContainerRequest, settings: HookSettings, now: datetime.datetime | None = None
) -> int:
    """Verify, measure and log one container start; return its record number in the log.

    Raises ``HookRefused`` or a ``StockadeError`` (and nothing is extended or appended) when
    the image is refused or the TPM cannot be reached.
    """
    from stockade.agent.runtime_binding import runtime_image
    from stockade.evidence.execution import ContainerStart, Mount, encode_record
    from stockade.images import ImageLayout, verify_image

    moment = now or datetime.datetime.now(datetime.UTC)
    policy = _load_policy(settings, moment)
    # What the runtime resolved for this container, from its own records (refused if none).
    resolved = runtime_image(request, settings.runtime_stores(), request.root_path)
    identity = image_identity(request, settings, resolved.reference)
    layout = ImageLayout.open(identity.layout)
    image = verify_image(layout, identity.tag, identity.reference, policy)
    # The rootfs about to start must be the image just verified.
    resolved.require(request.container_id, image.manifest_digest, layout.blob(image.config_digest))
    when = moment.astimezone(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")
    start = ContainerStart(
        container_id=request.container_id,
        image_reference=image.reference,
        manifest_digest=image.manifest_digest,
        config_digest=image.config_digest,
        args=request.args,
        env_names=request.env_names,
        mounts=tuple(Mount(d, s, t, o) for d, s, t, o in request.mounts),
        time=when,
        trust_policy_digest=policy.digest,
    )
    from stockade.agent.execution_log import ExecutionLog
    from stockade.tpm.device import Tpm

    settings.log_path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    log = ExecutionLog(settings.log_path)
    # The lock before the TPM: a swtpm serves one connection at a time.
    with log.locked(), Tpm(settings.tcti) as tpm:
        return measure_and_log(
            log, tpm, encode_record(start), policy.digest, when, serial=policy.serial
        )


def measure_and_log(
    log: Any, tpm: Any, start: bytes, policy_digest: str, when: str, *, serial: int = 0
) -> int:
    """Steps 2-6 of the module doc for one ``ContainerStart`` content TLV ``start``: the
    record number of its record. The log's lock is held throughout, so record numbers
    follow extend order across concurrent hooks, and the agent's quote never sees a
    record between its append and its mark.

    ``serial`` is the trust policy's (``policy_digest``): one older than the newest this
    boot's log has loaded is refused (``_check_not_rolled_back``), and before a new
    ``TrustPolicyLoaded`` is recorded the log must replay to PCR 13, so that log, the
    node's memory of the policies it loaded, cannot have been cut short."""
    from stockade.evidence.execution import (
        CONTENT_TYPE,
        EXECUTION_PCR,
        TrustPolicyLoaded,
        encode_record,
    )

    with log.locked():
        banks = tpm.active_banks()
        logged = _resolve_pending(log, tpm, banks)
        last, newest = _loaded_policies(logged)
        _check_not_rolled_back(policy_digest, serial, newest)
        records = []
        if last is None or last.digest != policy_digest:
            _check_log_replays(logged, tpm, banks)
            loaded = TrustPolicyLoaded(digest=policy_digest, time=when, serial=serial)
            records.append(encode_record(loaded))
        records.append(start)
        recnum = -1
        for content in records:
            recnum = log.append_pending(content, _digests(content, banks))
            tpm.extend_pcr(EXECUTION_PCR, content, banks)
            log.mark(recnum, CONTENT_TYPE)
    return recnum


def _resolve_pending(log: Any, tpm: Any, banks: Any) -> list[Any]:
    """Mark a pending record at the end of the log done or abandoned, as PCR 13 shows its
    extend did or did not happen; the log's records after that. Refuses when PCR 13 matches
    neither (the log and the PCR disagree: only a reboot helps)."""
    from stockade.evidence.cel import iter_cel
    from stockade.evidence.execution import (
        ABANDONED_CONTENT_TYPE,
        CONTENT_TYPE,
        EXECUTION_PCR,
        PENDING_CONTENT_TYPE,
    )
    from stockade.evidence.pcr_selection import BankSelection, PcrSelection

    records = list(iter_cel(log.read_from(0)))
    if not records or records[-1].content_type != PENDING_CONTENT_TYPE:
        return records
    pending = records[-1]
    algs = [bank.hash_alg for bank in banks.banks]
    read = tpm.read_pcrs(PcrSelection(tuple(BankSelection(a, (EXECUTION_PCR,)) for a in algs)))
    quoted = {alg: read.banks[alg][EXECUTION_PCR] for alg in algs}
    without = _replay(records[:-1], algs)
    with_it = _replay(records, algs)
    if with_it == quoted:
        status = CONTENT_TYPE
    elif without == quoted:
        status = ABANDONED_CONTENT_TYPE
    else:
        raise HookRefused(
            f"record {pending.recnum} of the execution log is pending and PCR {EXECUTION_PCR}"
            " matches the log neither with nor without it; the node must reboot"
        )
    log.mark(pending.recnum, status)
    return list(iter_cel(log.read_from(0)))


def _replay(records: list[Any], algs: list[int]) -> dict[int, bytes]:
    """PCR 13 per bank after ``records`` (abandoned ones skipped), from zeros."""
    from stockade.evidence.algorithms import hash_algorithm
    from stockade.evidence.execution import ABANDONED_CONTENT_TYPE

    values = {}
    for alg in algs:
        hash_ = hash_algorithm(alg)
        value = bytes(hash_.digest_size)
        for record in records:
            if record.content_type != ABANDONED_CONTENT_TYPE:
                digest = record.digest(alg)
                if digest is None:
                    raise HookRefused(f"record {record.recnum} has no digest for bank {alg:#x}")
                value = hash_.digest(value + digest)
        values[alg] = value
    return values


def _digests(content: bytes, banks: Any) -> dict[int, bytes]:
    from stockade.evidence.algorithms import hash_algorithm

    return {b.hash_alg: hash_algorithm(b.hash_alg).digest(content) for b in banks.banks}


# Decoded execution records by their measured content: the log is re-read at every admission,
# and decoding a record (~50 us with its mounts) would grow the container start path with it.
_DECODED: dict[bytes, Any] = {}
_DECODED_MAX = 65536


def _loaded_policies(records: list[Any]) -> tuple[Any, tuple[int, Any] | None]:
    """The last ``TrustPolicyLoaded`` of this boot's log, and the one with the highest
    serial (the latest of equals) with its record number (abandoned records never took
    effect). A record that does not decode refuses: the log is the node's memory."""
    from stockade.evidence.execution import (
        ABANDONED_CONTENT_TYPE,
        TrustPolicyLoaded,
        decode_record,
        measured_content,
    )

    last = None
    newest: tuple[int, Any] | None = None
    for record in records:
        if record.content_type == ABANDONED_CONTENT_TYPE:
            continue
        content = measured_content(record.content)
        event = _DECODED.get(content)
        if event is None:  # decoding is pure: a hook server decodes each record once
            event = decode_record(content)
            if len(_DECODED) >= _DECODED_MAX:
                _DECODED.clear()
            _DECODED[content] = event
        if isinstance(event, TrustPolicyLoaded):
            last = event
            if newest is None or event.serial >= newest[1].serial:
                newest = (record.recnum, event)
    return last, newest


def _last_policy_digest(records: list[Any]) -> str | None:
    """The digest in the last ``TrustPolicyLoaded`` record of this boot's log."""
    last, _ = _loaded_policies(records)
    return None if last is None else str(last.digest)


def _check_not_rolled_back(digest: str, serial: int, newest: tuple[int, Any] | None) -> None:
    """Refuse the trust policy (``digest``, ``serial``) if this boot's log has loaded a
    newer one: a lower serial, or the same serial (from 1) as another policy. Version 1
    policies are serial 0: they replace each other freely and never a version 2 policy."""
    if newest is None:
        return
    recnum, loaded = newest
    if serial < loaded.serial:
        raise HookRefused(
            f"the trust policy {digest} has serial {serial}, older than serial {loaded.serial}"
            f" ({loaded.digest}) loaded at record {recnum} of this boot's execution log:"
            " a rolled-back trust policy is refused"
        )
    if serial == loaded.serial and serial > 0 and digest != loaded.digest:
        raise HookRefused(
            f"the trust policy {digest} has serial {serial}, which record {recnum} of this"
            f" boot's execution log loaded as another policy ({loaded.digest}): a new policy"
            " needs a higher serial"
        )


def _check_log_replays(records: list[Any], tpm: Any, banks: Any) -> None:
    """Refuse unless ``records`` (abandoned ones skipped) replay to PCR 13 as the TPM holds
    it: a log cut short could hide the newest trust policy this boot loaded."""
    from stockade.evidence.execution import EXECUTION_PCR
    from stockade.evidence.pcr_selection import BankSelection, PcrSelection

    algs = [bank.hash_alg for bank in banks.banks]
    read = tpm.read_pcrs(PcrSelection(tuple(BankSelection(a, (EXECUTION_PCR,)) for a in algs)))
    if _replay(records, algs) != {alg: read.banks[alg][EXECUTION_PCR] for alg in algs}:
        raise HookRefused(
            f"the execution log does not replay to PCR {EXECUTION_PCR}, so which trust"
            " policies this boot loaded cannot be told; the node must reboot"
        )


def refusal(error: BaseException, request: ContainerRequest | None) -> str:
    """The one line printed on stderr (and answered over the socket) for a refusal."""
    from stockade.errors import TpmUnavailable

    who = f"container {request.container_id}" if request else "container"
    text = " ".join(str(error).split()) or type(error).__name__
    if isinstance(error, HookRefused):
        return f"refused {who}: {text}" if not text.startswith("container ") else f"refused {text}"
    if isinstance(error, TpmUnavailable):
        return f"refused {who}: the TPM cannot be reached ({text})"
    check = getattr(error, "check", None)
    if check:
        return f"refused {who}: image {check} check failed: {text}"
    from stockade.errors import StockadeError

    if isinstance(error, StockadeError):
        return f"refused {who}: {text}"
    return f"refused {who}: unexpected {type(error).__name__}: {text}"


def admit_state(state_bytes: bytes, settings: HookSettings) -> tuple[int | None, str]:
    """Admission for raw state bytes: ``(recnum, "")`` or ``(None, one-line reason)``."""
    request = None
    try:
        request = read_request(state_bytes)
        return admit(request, settings), ""
    except Exception as error:
        return None, refusal(error, request)


# -- the agent socket (fast path) ---------------------------------------------------------------


def oci_hook_entry(
    settings: HookSettings, executable: Path, python: Path, timeout: int = 60
) -> dict[str, Any]:
    """The OCI ``hooks`` entry (path, args, env, timeout) for these settings.

    With an agent socket it is a small client (``stockade.agent.hook_client``): the installed
    C client if there is a safe one, else the Python client file run by ``python`` as
    ``python -I -S FILE SOCKET`` (it imports only ``_socket``, ``posix`` and ``sys``). Without
    one it is the full ``stockade-oci-hook`` console script ``executable``, which admits in its
    own process. A C client that is installed but unsafe is not used, and says why on stderr.
    """
    env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]
    if settings.agent_socket is not None:
        from stockade.agent.hook_client import (
            FALLBACK_CLIENT,
            ClientRefused,
            ClientUnavailable,
            installed_client,
        )

        socket_path = str(settings.agent_socket)
        try:
            client = installed_client()
        except ClientRefused as error:
            print(f"{PROG}: {error}; using the Python client", file=sys.stderr, flush=True)
        except ClientUnavailable:
            pass  # the Python client below: slower, same answers
        else:
            return {
                "path": str(client),
                "args": [str(client), socket_path],
                "env": env,
                "timeout": timeout,
            }
        return {
            "path": str(python),
            "args": [str(python), "-I", "-S", str(FALLBACK_CLIENT), socket_path],
            "env": env,
            "timeout": timeout,
        }
    return {
        "path": str(executable),
        "args": [PROG, *settings.to_args()],
        "env": env,
        "timeout": timeout,
    }


# Where a node package installs the C client, and where the agent serves admissions.
SYSTEM_HOOK_CLIENT = Path("/usr/lib/stockade/stockade-oci-hook-client")
DEFAULT_HOOK_SOCKET = Path("/run/stockade/hook.sock")
HOOK_ENV = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"]


def hooks_d_config(
    settings: HookSettings, hook: Path = SYSTEM_HOOK_CLIENT, timeout: int = 60
) -> dict[str, Any]:
    """The ``hooks.d`` file podman and CRI-O read (``/etc/containers/oci/hooks.d/*.json``,
    shipped as ``deploy/oci-hooks.d/stockade.json``): the hook at ``createRuntime`` for every
    container (``when.always``; a container of no signed image is refused, not skipped).

    With an agent socket ``hook`` is the C client, run as ``hook SOCKET`` (the agent, started
    with ``--hook-socket``, admits); without one it is ``stockade-oci-hook`` with the settings
    as arguments. ``stages`` is plural: podman 4 refuses every container under a file with the
    older ``stage`` key.
    """
    if settings.agent_socket is not None:
        args = [str(hook), str(settings.agent_socket)]
    else:
        args = [PROG, *settings.to_args()]
    return {
        "version": "1.0.0",
        "hook": {"path": str(hook), "args": args, "env": list(HOOK_ENV), "timeout": timeout},
        "when": {"always": True},
        "stages": ["createRuntime"],
    }


def _ask_agent(path: Path, state_bytes: bytes) -> tuple[bool, str]:
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as conn:
            conn.settimeout(SOCKET_TIMEOUT)
            conn.connect(str(path))
            conn.sendall(state_bytes)
            conn.shutdown(socket.SHUT_WR)
            chunks = []
            while chunk := conn.recv(65536):
                chunks.append(chunk)
    except OSError as error:
        return False, f"refused container: the hook agent at {path} cannot be reached ({error})"
    answer = b"".join(chunks).decode("utf-8", "replace").strip()
    verb, _, rest = answer.partition(" ")
    if verb == "OK" and rest.isdigit():
        return True, rest
    if verb == "ERR" and rest:
        return False, rest
    return False, f"refused container: the hook agent answered {answer[:200]!r}"


@contextlib.contextmanager
def serving_hook_requests(
    path: Path,
    settings: HookSettings,
    on_decision: Callable[[bool], None] | None = None,
) -> Iterator[Path]:
    """Admit containers for hook clients on a 0600 Unix socket while the block runs.

    A request is the OCI state JSON followed by end-of-stream; the answer is ``OK <recnum>``
    or ``ERR <one-line reason>``. Each request is admitted exactly as the in-process hook would.
    ``on_decision(admitted)`` is told of every decision (the agent's metrics).
    """
    import socketserver

    class Handler(socketserver.BaseRequestHandler):
        def handle(self) -> None:
            conn: socket.socket = self.request
            conn.settimeout(SOCKET_TIMEOUT)
            chunks: list[bytes] = []
            size = 0
            try:
                while chunk := conn.recv(65536):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_STATE_BYTES:
                        if on_decision is not None:
                            on_decision(False)
                        conn.sendall(b"ERR refused container: the state is too large\n")
                        return
                recnum, reason = admit_state(b"".join(chunks), settings)
                if on_decision is not None:
                    on_decision(recnum is not None)
                answer = f"OK {recnum}" if recnum is not None else f"ERR {reason}"
                conn.sendall(answer.encode() + b"\n")
            except OSError:
                return

    from stockade.agent.unix_socket import serving_unix_socket

    with serving_unix_socket(path, Handler, name="oci-hook-socket") as served:
        yield served


def _serve(argv: Sequence[str]) -> int:
    """``stockade-oci-hook serve --socket PATH [settings...]``: run the admission server."""
    import signal
    import threading

    settings = parse_settings(argv, os.environ)
    if settings.agent_socket is None:
        print(f"{PROG}: serve needs --socket PATH", file=sys.stderr)
        return 2
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    with serving_hook_requests(settings.agent_socket, settings):
        print(f"{PROG}: serving on {settings.agent_socket}", file=sys.stderr, flush=True)
        stop.wait()
    return 0


# -- entry point --------------------------------------------------------------------------------


def run_hook(argv: Sequence[str], stdin: Any, environ: Mapping[str, str]) -> tuple[int, str]:
    """The hook's whole behaviour: ``(exit code, stderr line)``; never raises."""
    request = None
    try:
        settings = parse_settings(argv, environ)
        state_bytes = stdin.read(MAX_STATE_BYTES + 1)
        if len(state_bytes) > MAX_STATE_BYTES:
            raise HookRefused("the container state on stdin is too large")
        if settings.agent_socket is not None:
            admitted, detail = _ask_agent(settings.agent_socket, state_bytes)
            return (0, "") if admitted else (1, detail)
        request = read_request(state_bytes)
        admit(request, settings)
        return 0, ""
    except BaseException as error:
        return 1, refusal(error, request)


def main() -> None:
    argv = sys.argv[1:]
    if argv[:1] == ["serve"]:
        sys.exit(_serve(argv[1:]))
    code, line = run_hook(argv, sys.stdin.buffer, os.environ)
    if line:
        print(f"{PROG}: {line}", file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(code)


if __name__ == "__main__":
    main()
