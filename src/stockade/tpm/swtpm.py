"""Software TPM 2.0 simulators (swtpm): provision, start, power-cycle, stop.

Each instance lives in ``<home>/tpms/<name>/``::

    instance.json   name, ports, pid, TCTI: how ``stockade tpm list|stop`` find it
    state/          swtpm's TPM state (tpm2-00.permall)
    swtpm.log       swtpm's log and stderr
    setup.log       swtpm_setup's log (first start only)

swtpm listens on two TCP ports on 127.0.0.1: the TPM command port ``P`` and
the control channel ``P + 1`` (libtss2's swtpm TCTI assumes ``P + 1``).

Provisioning (first start) runs ``swtpm_setup`` with Stockade's EK CA
(:mod:`stockade.tpm.ekca`), which creates an RSA-2048 EK (template L-1, cert
at NV 0x01c00002, persisted at 0x81010001), an ECC P-384 EK (high-range
template H-3, cert at 0x01c00016, persisted at 0x81010016) and a platform
certificate (0x01c08000). swtpm_setup 0.7 does not create the low-range ECC
P-256 EK, so Stockade adds it: template L-2, persisted at 0x81010002, its
certificate from the same CA at 0x01c0000a, NV attributes as swtpm_setup's.
"""

from __future__ import annotations

import contextlib
import datetime
import json
import os
import re
import shutil
import signal
import socket
import struct
import subprocess
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any, Self

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec

from stockade.errors import InputError, TpmUnavailable
from stockade.home import locked, stockade_home, write_atomic
from stockade.tpm.ekca import EkCa, TpmIdentity

RSA_EK_CERT_INDEX = 0x01C00002
ECC_P256_EK_CERT_INDEX = 0x01C0000A
ECC_P384_EK_CERT_INDEX = 0x01C00016
PLATFORM_CERT_INDEX = 0x01C08000
RSA_EK_HANDLE = 0x81010001
ECC_P256_EK_HANDLE = 0x81010002
ECC_P384_EK_HANDLE = 0x81010016

DEFAULT_PCR_BANKS: tuple[str, ...] = ("sha1", "sha256")
HOST = "127.0.0.1"
STATE_FILE = "tpm2-00.permall"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,62}")
_PORT_ATTEMPTS = 20
# A development node's container execution log, kept in its TPM's instance directory (a
# reboot of the development boot chain starts it afresh).
EXECUTION_LOG_NAME = "execution.log"
_STOP_TIMEOUT = 5.0
_IO_TIMEOUT = 5.0

# Control channel commands (swtpm's tpm_ioctl.h), big-endian on the wire.
_CMD_GET_CAPABILITY = 0x01
_CMD_INIT = 0x02
_CMD_SHUTDOWN = 0x03
_CMD_SET_LOCALITY = 0x05
_CMD_GET_INFO = 0x12
_INFO_SPECIFICATION_AND_ATTRIBUTES = 0x3

_TPM_RC_INITIALIZE = 0x100


def _tpm_command(code: int, parameters: bytes) -> bytes:
    """A TPM command without sessions (tag TPM_ST_NO_SESSIONS)."""
    return struct.pack(">HII", 0x8001, 10 + len(parameters), code) + parameters


_STARTUP_CLEAR = _tpm_command(0x144, struct.pack(">H", 0))  # TPM2_Startup(TPM_SU_CLEAR)
_SHUTDOWN_CLEAR = _tpm_command(0x145, struct.pack(">H", 0))  # TPM2_Shutdown(TPM_SU_CLEAR)
# TPM2_GetCapability(TPM_CAP_TPM_PROPERTIES, TPM_PT_MANUFACTURER, 1): a harmless probe.
_PROBE = _tpm_command(0x17A, struct.pack(">III", 0x6, 0x105, 1))


def default_home() -> Path:
    """``$STOCKADE_HOME``, or ``~/.stockade``."""
    return stockade_home()


def check_name(name: str) -> str:
    """Return ``name`` if it can name a TPM instance (it becomes a directory name)."""
    if not _NAME.fullmatch(name):
        raise InputError(
            f"invalid TPM name {name!r}: use 1-63 letters, digits, '.', '_' or '-', "
            "starting with a letter or digit"
        )
    return name


@dataclass
class SoftwareTpm:
    """A running (or recorded) swtpm instance. As a context manager, exit stops it."""

    name: str
    state_dir: Path
    server_port: int
    ctrl_port: int
    pid: int
    ek_ca: EkCa
    started_at: str = ""
    _process: subprocess.Popen[bytes] | None = field(default=None, repr=False, compare=False)

    @property
    def instance_dir(self) -> Path:
        """Where swtpm's log, pid file and ``instance.json`` live: the state's parent."""
        return self.state_dir.parent

    @property
    def log_path(self) -> Path:
        return self.instance_dir / "swtpm.log"

    @property
    def tcti(self) -> str:
        """The TCTI config for libtss2 / tpm2-tools ``-T``."""
        return f"swtpm:host={HOST},port={self.server_port}"

    @property
    def detached(self) -> bool:
        """True if the swtpm outlives this Python process (started for the CLI)."""
        return self._process is None

    def __enter__(self) -> Self:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def is_running(self) -> bool:
        if self._process is not None:
            return self._process.poll() is None
        return _swtpm_alive(self.pid, self.state_dir)

    def send_command(self, command: bytes, timeout: float = _IO_TIMEOUT) -> bytes:
        """Send one raw TPM command on the command port; return the raw response."""
        try:
            with socket.create_connection((HOST, self.server_port), timeout=timeout) as conn:
                conn.sendall(command)
                header = _recv_exactly(conn, 10)
                (size,) = struct.unpack(">I", header[2:6])
                return header + _recv_exactly(conn, size - 10)
        except OSError as error:
            raise TpmUnavailable(f"swtpm {self.name!r} ({self.tcti}): {error}") from error

    def power_cycle(
        self, *, orderly: bool = True, startup: bool = True, startup_locality: int = 0
    ) -> None:
        """Reset the TPM as a reboot would, then (by default) TPM2_Startup(CLEAR).

        ``orderly`` sends TPM2_Shutdown(CLEAR) first, as an OS does before a
        reboot (the TPM's clock stays "safe"); without it this is a power loss.
        PCRs reset and resetCount increases either way. With
        ``startup_locality=3`` the Startup comes from locality 3, so PCR 0
        starts at 0...03 (what a StartupLocality event records).
        """
        if orderly:
            rc = _response_code(self.send_command(_SHUTDOWN_CLEAR))
            if rc not in (0, _TPM_RC_INITIALIZE):
                raise TpmUnavailable(f"swtpm {self.name!r}: TPM2_Shutdown failed: {rc:#x}")
        self._control(_CMD_INIT, struct.pack(">I", 0))
        if not startup:
            return
        if startup_locality:
            self.set_locality(startup_locality)
        try:
            rc = _response_code(self.send_command(_STARTUP_CLEAR))
        finally:
            if startup_locality:
                self.set_locality(0)
        if rc != 0:
            raise TpmUnavailable(f"swtpm {self.name!r}: TPM2_Startup failed: {rc:#x}")

    def startup(self) -> None:
        """TPM2_Startup(CLEAR), for callers that used ``power_cycle(startup=False)``."""
        rc = _response_code(self.send_command(_STARTUP_CLEAR))
        if rc != 0:
            raise TpmUnavailable(f"swtpm {self.name!r}: TPM2_Startup failed: {rc:#x}")

    def set_locality(self, locality: int) -> None:
        """Set the locality of subsequent TPM commands (0-4)."""
        if not 0 <= locality <= 4:
            raise InputError(f"invalid locality {locality}: must be 0-4")
        self._control(_CMD_SET_LOCALITY, bytes([locality]))

    def identity(self) -> TpmIdentity:
        """Manufacturer, model, version and spec as the simulator reports them."""
        response = self._control(
            _CMD_GET_INFO,
            struct.pack(">QII", _INFO_SPECIFICATION_AND_ATTRIBUTES, 0, 0),
            response_size=None,
        )
        (length,) = struct.unpack(">I", response[8:12])
        info = json.loads(response[12 : 12 + length].rstrip(b"\0"))
        spec, attributes = info["TPMSpecification"], info["TPMAttributes"]
        return TpmIdentity(
            manufacturer=attributes["manufacturer"],
            model=attributes["model"],
            version=attributes["version"],
            spec_family=spec["family"],
            spec_level=int(spec["level"]),
            spec_revision=int(spec["revision"]),
        )

    def stop(self, timeout: float = _STOP_TIMEOUT) -> None:
        """Shut the TPM down orderly and end the process; escalate to SIGKILL."""
        try:
            if self.is_running():
                with contextlib.suppress(TpmUnavailable):
                    self.send_command(_SHUTDOWN_CLEAR, timeout=1.0)
                with contextlib.suppress(TpmUnavailable):
                    self._control(_CMD_SHUTDOWN, b"", timeout=1.0)
                if not self._wait_exit(timeout):
                    self._signal(signal.SIGTERM)
                    if not self._wait_exit(timeout):
                        self._signal(signal.SIGKILL)
                        self._wait_exit(timeout)
        finally:
            if self._process is not None and self._process.poll() is None:
                self._process.kill()
                self._process.wait()
            record = self.instance_dir / "instance.json"
            if record.exists():
                _write_record(self, pid=None)

    def to_json(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "tcti": self.tcti,
            "state_dir": str(self.state_dir),
            "server_port": self.server_port,
            "ctrl_port": self.ctrl_port,
            "pid": self.pid,
            "ek_ca": str(self.ek_ca.directory),
            "started_at": self.started_at,
        }

    def _control(
        self,
        command: int,
        payload: bytes,
        *,
        response_size: int | None = 4,
        timeout: float = _IO_TIMEOUT,
    ) -> bytes:
        try:
            with socket.create_connection((HOST, self.ctrl_port), timeout=timeout) as conn:
                conn.sendall(struct.pack(">I", command) + payload)
                if response_size is not None:
                    response = _recv_exactly(conn, response_size)
                else:
                    head = _recv_exactly(conn, 12)
                    (length,) = struct.unpack(">I", head[8:12])
                    response = head + _recv_exactly(conn, length)
        except OSError as error:
            raise TpmUnavailable(f"swtpm {self.name!r} control channel: {error}") from error
        (result,) = struct.unpack(">I", response[:4])
        if result != 0:
            raise TpmUnavailable(
                f"swtpm {self.name!r}: control command {command:#x} failed: {result:#x}"
            )
        return response

    def _signal(self, signum: signal.Signals) -> None:
        if self._process is not None:
            self._process.send_signal(signum)
        elif _swtpm_alive(self.pid, self.state_dir):
            with contextlib.suppress(ProcessLookupError):
                os.kill(self.pid, signum)

    def _wait_exit(self, timeout: float) -> bool:
        if self._process is not None:
            try:
                self._process.wait(timeout)
            except subprocess.TimeoutExpired:
                return False
            return True
        deadline = time.monotonic() + timeout
        while _swtpm_alive(self.pid, self.state_dir):
            if time.monotonic() > deadline:
                return False
            time.sleep(0.02)
        return True


def start_swtpm(
    name: str,
    home: Path | None = None,
    ek_ca: EkCa | None = None,
    *,
    detach: bool = False,
    template: Path | None = None,
    pcr_banks: Sequence[str] = DEFAULT_PCR_BANKS,
    timeout: float = 10.0,
) -> SoftwareTpm:
    """Start the swtpm ``name`` under ``home``, provisioning its state on first start.

    ``detach=True`` daemonizes swtpm so it outlives this process (the CLI);
    otherwise it is this process's child, and :meth:`SoftwareTpm.stop` (or
    leaving the ``with`` block) reaps it. ``template`` is a provisioned state
    directory (see :func:`provision_state`) to copy instead of provisioning:
    much faster, but every copy has the same EK and certificates.
    """
    check_name(name)
    home = (home or default_home()).expanduser().absolute()
    instance_dir = home / "tpms" / name
    instance_dir.mkdir(parents=True, exist_ok=True)
    with locked(instance_dir / ".lock"):
        existing = _read_record(instance_dir)
        if existing is not None and existing.is_running():
            raise InputError(f"swtpm {name!r} is already running (pid {existing.pid})")
        ek_ca = ek_ca or EkCa.load_or_create(home / "ek-ca")
        state_dir = instance_dir / "state"
        if not (state_dir / STATE_FILE).exists():
            if template is not None:
                _copy_state(template, state_dir)
            else:
                provision_state(
                    state_dir, ek_ca, pcr_banks=pcr_banks, log_path=instance_dir / "setup.log"
                )
        tpm = _launch(name, state_dir, ek_ca, detach=detach, timeout=timeout)
        try:
            _write_record(tpm, pid=tpm.pid)
        except BaseException:
            tpm.stop()
            raise
        return tpm


def stop_swtpm(name: str, home: Path | None = None) -> bool:
    """Stop the swtpm ``name``; return False if it was not running."""
    check_name(name)
    instance_dir = (home or default_home()).expanduser().absolute() / "tpms" / name
    if not instance_dir.is_dir():
        raise InputError(f"no swtpm named {name!r} in {instance_dir.parent}")
    with locked(instance_dir / ".lock"):
        tpm = _read_record(instance_dir)
        if tpm is None:
            raise InputError(f"no swtpm named {name!r} in {instance_dir.parent} (never started)")
        if not tpm.is_running():
            if tpm.pid:
                _write_record(tpm, pid=None)
            return False
        tpm.stop()
        return True


def known_swtpms(home: Path | None = None) -> list[SoftwareTpm]:
    """Every recorded instance under ``home``, running or not (``pid`` 0 if stopped)."""
    tpms_dir = (home or default_home()).expanduser().absolute() / "tpms"
    if not tpms_dir.is_dir():
        return []
    records = (_read_record(d) for d in sorted(tpms_dir.iterdir()) if d.is_dir())
    return [tpm for tpm in records if tpm is not None]


def running_swtpms(home: Path | None = None) -> list[SoftwareTpm]:
    return [tpm for tpm in known_swtpms(home) if tpm.is_running()]


def provision_state(
    state_dir: Path,
    ek_ca: EkCa,
    *,
    pcr_banks: Sequence[str] = DEFAULT_PCR_BANKS,
    log_path: Path | None = None,
) -> None:
    """Manufacture a TPM in ``state_dir``: EKs, EK and platform certificates.

    The state is built next to ``state_dir`` and moved into place only when
    complete, so an interrupted provisioning is redone on the next start.
    """
    swtpm_setup = shutil.which("swtpm_setup")
    if swtpm_setup is None or shutil.which("swtpm") is None:
        raise TpmUnavailable("swtpm / swtpm_setup not found; install Debian swtpm, swtpm-tools")
    if (state_dir / STATE_FILE).exists():
        raise InputError(f"{state_dir} already holds TPM state")
    work_dir = state_dir.with_name(state_dir.name + ".provisioning")
    shutil.rmtree(work_dir, ignore_errors=True)
    work_dir.mkdir(parents=True)
    log_path = log_path or state_dir.parent / "setup.log"
    command = [
        swtpm_setup,
        "--tpm2",
        "--tpmstate", str(work_dir),
        "--create-ek-cert",
        "--create-platform-cert",
        "--pcr-banks", ",".join(pcr_banks),
        "--config", str(ek_ca.write_swtpm_config()),
        "--logfile", str(log_path),
    ]  # fmt: skip
    result = subprocess.run(command, capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise TpmUnavailable(
            f"swtpm_setup failed (exit {result.returncode}) for {state_dir}: "
            f"{_tail(log_path) or result.stderr.strip()}"
        )
    with _launch("provisioning", work_dir, ek_ca, detach=False, timeout=10.0) as tpm:
        _add_ecc_p256_ek(tpm)
    try:
        with contextlib.suppress(FileNotFoundError):
            state_dir.rmdir()
        work_dir.rename(state_dir)
    except OSError as error:
        raise InputError(f"cannot put TPM state in place at {state_dir}: {error}") from error


def _add_ecc_p256_ek(tpm: SoftwareTpm) -> None:
    """Create the L-2 ECC P-256 EK, persist it, and store its certificate in NV."""
    from tpm2_pytss import ESAPI, TCTILdr
    from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HC, TPMA_NV
    from tpm2_pytss.types import TPM2B_NV_PUBLIC, TPM2B_SENSITIVE_CREATE, TPMS_NV_PUBLIC
    from tpm2_pytss.utils import NoSuchIndex, NVReadEK, create_ek_template

    identity = tpm.identity()
    with ESAPI(TCTILdr("swtpm", f"host={HOST},port={tpm.server_port}")) as ectx:
        _, handles = ectx.get_capability(TPM2_CAP.HANDLES, TPM2_HC.NV_INDEX_FIRST, 256)
        defined = {int(h) for h in handles.data.handles}
        read_nv = NVReadEK(ectx)

        def read_defined(index: int) -> bytes:
            # Probing a missing index makes libtss2 log errors on stderr.
            if int(index) not in defined:
                raise NoSuchIndex(index)
            return bytes(read_nv(index))

        _, template = create_ek_template("EK-ECC256", read_defined)
        handle, public, *_ = ectx.create_primary(
            TPM2B_SENSITIVE_CREATE(), template, primary_handle=ESYS_TR.ENDORSEMENT
        )
        try:
            ectx.evict_control(ESYS_TR.OWNER, handle, ECC_P256_EK_HANDLE)
        finally:
            ectx.flush_context(handle)
        point = public.publicArea.unique.ecc
        x, y = (int.from_bytes(bytes(c), "big") for c in (point.x, point.y))
        ek_public = ec.EllipticCurvePublicNumbers(x, y, ec.SECP256R1()).public_key()
        der = tpm.ek_ca.issue_ek_certificate(ek_public, identity).public_bytes(
            serialization.Encoding.DER
        )
        # The attributes swtpm_setup gives its own EK certificate indices.
        attributes = (
            TPMA_NV.PPWRITE
            | TPMA_NV.WRITEDEFINE
            | TPMA_NV.PPREAD
            | TPMA_NV.OWNERREAD
            | TPMA_NV.AUTHREAD
            | TPMA_NV.NO_DA
            | TPMA_NV.PLATFORMCREATE
        )
        nv_public = TPM2B_NV_PUBLIC(
            nvPublic=TPMS_NV_PUBLIC(
                nvIndex=ECC_P256_EK_CERT_INDEX,
                nameAlg=TPM2_ALG.SHA256,
                attributes=attributes,
                dataSize=len(der),
            )
        )
        index = ectx.nv_define_space(b"", nv_public, auth_handle=ESYS_TR.PLATFORM)
        for offset in range(0, len(der), 512):
            ectx.nv_write(index, der[offset : offset + 512], offset, auth_handle=ESYS_TR.PLATFORM)


def _launch(
    name: str, state_dir: Path, ek_ca: EkCa, *, detach: bool, timeout: float
) -> SoftwareTpm:
    swtpm = shutil.which("swtpm")
    if swtpm is None:
        raise TpmUnavailable("swtpm not found; install the Debian package swtpm")
    log_path = state_dir.parent / "swtpm.log"
    pid_path = state_dir.parent / "swtpm.pid"
    last_error = ""
    for _ in range(_PORT_ATTEMPTS):
        port = _free_port_pair()
        command = [
            swtpm, "socket", "--tpm2",
            "--server", f"type=tcp,port={port},bindaddr={HOST}",
            "--ctrl", f"type=tcp,port={port + 1},bindaddr={HOST}",
            "--tpmstate", f"dir={state_dir}",
            "--flags", "not-need-init,startup-clear",
            "--pid", f"file={pid_path}",
            "--log", f"file={log_path},level=1",
        ]  # fmt: skip
        log_start = log_path.stat().st_size if log_path.exists() else 0
        started_at = datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds")
        tpm = SoftwareTpm(name, state_dir, port, port + 1, 0, ek_ca, started_at)
        pid_path.unlink(missing_ok=True)  # a SIGKILLed swtpm leaves its pid file
        with log_path.open("ab") as log:
            if detach:
                result = subprocess.run(
                    [*command, "--daemon"],
                    stdin=subprocess.DEVNULL,
                    stdout=log,
                    stderr=log,
                    timeout=timeout,
                    check=False,
                )
            else:
                tpm._process = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=log, stderr=log
                )
        if tpm._process is not None:
            tpm.pid = tpm._process.pid
        elif result.returncode == 0:
            tpm.pid = _read_pid(pid_path)
        else:
            last_error = _tail(log_path, log_start) or f"exit {result.returncode}"
            if "Address already in use" in last_error:
                continue
            raise TpmUnavailable(f"swtpm {name!r} failed to start: {last_error}")
        try:
            _wait_ready(tpm, timeout, log_start)
        except _AddressInUse as error:
            last_error = str(error)
            tpm.stop()
            continue
        except BaseException:
            tpm.stop()
            raise
        return tpm
    raise TpmUnavailable(f"swtpm {name!r}: no free port pair after retries: {last_error}")


class _AddressInUse(Exception):
    pass


def _wait_ready(tpm: SoftwareTpm, timeout: float, log_start: int) -> None:
    """Return once the TPM answers a command; raise if the process died or timed out."""
    deadline = time.monotonic() + timeout
    while True:
        if not tpm.is_running():
            log = _tail(tpm.log_path, log_start)
            if "Address already in use" in log:
                raise _AddressInUse(log)
            raise TpmUnavailable(f"swtpm {tpm.name!r} exited during startup: {log or 'no log'}")
        try:
            rc = _response_code(tpm.send_command(_PROBE, timeout=1.0))
        except TpmUnavailable:
            rc = None
        if rc == 0:
            return
        if time.monotonic() > deadline:
            reason = "no answer" if rc is None else f"TPM returned {rc:#x}"
            raise TpmUnavailable(
                f"swtpm {tpm.name!r} not ready after {timeout:.0f}s ({reason}): "
                f"{_tail(tpm.log_path, log_start) or 'no log'}"
            )
        time.sleep(0.01)


def _free_port_pair() -> int:
    """A port P such that P and P + 1 are both free on 127.0.0.1 right now."""
    for _ in range(100):
        with socket.socket() as first, socket.socket() as second:
            first.bind((HOST, 0))
            port: int = first.getsockname()[1]
            if port >= 65535:
                continue
            try:
                second.bind((HOST, port + 1))
            except OSError:
                continue
            return port
    raise TpmUnavailable("no free pair of consecutive TCP ports on 127.0.0.1")


def _copy_state(template: Path, state_dir: Path) -> None:
    source = template / STATE_FILE
    if not source.exists():
        raise InputError(f"{template} is not a provisioned swtpm state directory")
    state_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(source, state_dir / STATE_FILE)


def _read_pid(pid_path: Path) -> int:
    deadline = time.monotonic() + 2.0
    while True:
        with contextlib.suppress(OSError, ValueError):
            return int(pid_path.read_text().strip())
        if time.monotonic() > deadline:
            raise TpmUnavailable(f"swtpm wrote no pid file {pid_path}")
        time.sleep(0.01)


def _swtpm_alive(pid: int, state_dir: Path) -> bool:
    """True if ``pid`` is a live (not zombie) swtpm serving ``state_dir``."""
    if pid <= 0:
        return False
    proc = Path("/proc") / str(pid)
    try:
        stat = (proc / "stat").read_text()
        cmdline = (proc / "cmdline").read_bytes()
    except OSError:
        return False
    state = stat.rsplit(")", 1)[-1].split()[0]
    return state not in ("Z", "X") and b"swtpm" in cmdline and str(state_dir).encode() in cmdline


def _write_record(tpm: SoftwareTpm, *, pid: int | None) -> None:
    record = {**tpm.to_json(), "pid": pid}
    path = tpm.instance_dir / "instance.json"
    write_atomic(path, json.dumps(record, indent=2) + "\n")


def _read_record(instance_dir: Path) -> SoftwareTpm | None:
    path = instance_dir / "instance.json"
    try:
        record = json.loads(path.read_text())
        return SoftwareTpm(
            name=record["name"],
            state_dir=instance_dir / "state",
            server_port=int(record["server_port"]),
            ctrl_port=int(record["ctrl_port"]),
            pid=int(record["pid"] or 0),
            ek_ca=EkCa(Path(record["ek_ca"])),
            started_at=record.get("started_at", ""),
        )
    except FileNotFoundError:
        return None
    except (OSError, ValueError, KeyError, TypeError) as error:
        raise InputError(f"unreadable swtpm record {path}: {error}") from error


def _response_code(response: bytes) -> int:
    (rc,) = struct.unpack(">I", response[6:10])
    return int(rc)


def _recv_exactly(conn: socket.socket, size: int) -> bytes:
    data = bytearray()
    while len(data) < size:
        chunk = conn.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"connection closed after {len(data)} of {size} bytes")
        data += chunk
    return bytes(data)


def _tail(path: Path, start: int = 0, lines: int = 5) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(start)
            text = handle.read().decode(errors="replace")
    except OSError:
        return ""
    return " | ".join(line.strip() for line in text.strip().splitlines()[-lines:])
