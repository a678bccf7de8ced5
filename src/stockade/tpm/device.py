"""One open TPM, over tpm2-pytss: PCRs, clock, NV, and object lifetime.

Every transient object this module loads is flushed before the call that
loaded it returns (or when the context manager that holds it exits), so a
long-running agent never fills the TPM's few object slots.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

# The TSS logs expected failures (probing absent NV indices) to stderr; a CLI
# must print one line per error, so keep it quiet unless the user asks.
os.environ.setdefault("TSS2_LOG", "all+NONE")

from tpm2_pytss import ESAPI, TCTILdr, TSS2_Exception
from tpm2_pytss.constants import ESYS_TR, TPM2_ALG, TPM2_CAP, TPM2_HT, TPM2_SE
from tpm2_pytss.types import (
    TPM2B_NV_PUBLIC,
    TPML_DIGEST_VALUES,
    TPML_PCR_SELECTION,
    TPMT_SYM_DEF,
)

from stockade.errors import StockadeError, TpmUnavailable
from stockade.evidence.algorithms import HASHES, hash_algorithm
from stockade.evidence.attest import ClockInfo
from stockade.evidence.marshal import Writer
from stockade.evidence.pcr_selection import BankSelection, PcrSelection, pcrs_in_bitmap
from stockade.evidence.pcr_values import PcrValues

DEFAULT_DEVICE_TCTI = "device:/dev/tpmrm0"
NV_READ_CHUNK = 512


class TpmCommandFailed(StockadeError):
    """The TPM answered a command with an error."""

    def __init__(self, command: str, error: Exception) -> None:
        super().__init__(f"TPM2_{command} failed: {error}")
        self.command = command


@contextlib.contextmanager
def tpm_command(command: str) -> Iterator[None]:
    """Turn tpm2-pytss failures inside the block into ``TpmCommandFailed``."""
    try:
        yield
    except TSS2_Exception as error:
        raise TpmCommandFailed(command, error) from error


def parse_tcti(tcti: str) -> tuple[str, str | None]:
    """``swtpm:host=127.0.0.1,port=2321`` -> (``swtpm``, ``host=...``)."""
    name, _, conf = tcti.partition(":")
    if not name or not name.replace("-", "").isalnum():
        raise TpmUnavailable(f"'{tcti}' is not a TCTI string (e.g. {DEFAULT_DEVICE_TCTI})")
    return name, conf or None


@dataclass(frozen=True)
class NvIndexPublic:
    index: int
    size: int


class Tpm:
    """An open connection to one TPM. Use as a context manager."""

    def __init__(self, tcti: str = DEFAULT_DEVICE_TCTI) -> None:
        self.tcti = tcti
        name, conf = parse_tcti(tcti)
        try:
            self._tcti = TCTILdr(name, conf)
            self.esys = ESAPI(self._tcti)
        except (TSS2_Exception, RuntimeError) as error:
            raise TpmUnavailable(f"cannot open TPM at '{tcti}': {error}") from None

    def __enter__(self) -> Tpm:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        with contextlib.suppress(TSS2_Exception, RuntimeError, AttributeError):
            self.esys.close()
        with contextlib.suppress(TSS2_Exception, RuntimeError, AttributeError):
            self._tcti.close()

    # -- object lifetime -----------------------------------------------------

    @contextlib.contextmanager
    def transient(self, handle: ESYS_TR) -> Iterator[ESYS_TR]:
        """Flush ``handle`` when the block ends, whatever happens inside it."""
        try:
            yield handle
        finally:
            with contextlib.suppress(TSS2_Exception):
                self.esys.flush_context(handle)

    @contextlib.contextmanager
    def endorsement_policy_session(self) -> Iterator[ESYS_TR]:
        """A policy session satisfying the TCG default EK policy:
        PolicySecret(TPM_RH_ENDORSEMENT) with the (empty) endorsement auth."""
        with tpm_command("StartAuthSession"):
            session = self.esys.start_auth_session(
                tpm_key=ESYS_TR.NONE,
                bind=ESYS_TR.NONE,
                session_type=TPM2_SE.POLICY,
                symmetric=TPMT_SYM_DEF(algorithm=TPM2_ALG.NULL),
                auth_hash=TPM2_ALG.SHA256,
            )
        with self.transient(session):
            with tpm_command("PolicySecret"):
                self.esys.policy_secret(ESYS_TR.ENDORSEMENT, session)
            yield session

    def nv_indices(self) -> frozenset[int]:
        """The NV indices defined in the TPM (probing an absent one makes libtss2 log)."""
        found: set[int] = set()
        start = TPM2_HT.NV_INDEX << 24
        while True:
            with tpm_command("GetCapability"):
                more, data = self.esys.get_capability(TPM2_CAP.HANDLES, start, 64)
            handles = [int(h) for h in data.data.handles]
            found.update(handles)
            if not more or not handles:
                return frozenset(found)
            start = max(handles) + 1

    def transient_object_count(self) -> int:
        with tpm_command("GetCapability"):
            _, data = self.esys.get_capability(TPM2_CAP.HANDLES, TPM2_HT.TRANSIENT << 24, 64)
        return len(data.data.handles)

    # -- PCRs ----------------------------------------------------------------

    def active_banks(self) -> PcrSelection:
        """Every allocated PCR bank with the PCRs it holds."""
        with tpm_command("GetCapability"):
            _, data = self.esys.get_capability(TPM2_CAP.PCRS, 0, 1)
        banks = []
        for selection in data.data.assignedPCR:
            size = int(selection.sizeofSelect)
            bitmap = bytes(selection.pcrSelect)[:size]
            pcrs = pcrs_in_bitmap(bitmap)
            if pcrs and int(selection.hash) in HASHES:
                banks.append(BankSelection(int(selection.hash), pcrs, size))
        return PcrSelection(tuple(banks))

    def read_pcrs(self, selection: PcrSelection) -> PcrValues:
        """Read every PCR in ``selection``; the TPM returns at most 8 per call."""
        banks: dict[int, dict[int, bytes]] = {}
        wanted = selection.items()
        while True:
            remaining = [(alg, i) for alg, i in wanted if i not in banks.get(alg, {})]
            if not remaining:
                return PcrValues(banks)
            request = _to_tpml(_selection_of(remaining))
            with tpm_command("PCR_Read"):
                _, got_selection, digests = self.esys.pcr_read(request)
            got = PcrSelection.unmarshal(bytes(got_selection.marshal()))
            values = [bytes(d) for d in digests]
            if not values:
                missing = ", ".join(f"0x{a:04x}:{i}" for a, i in remaining)
                raise TpmCommandFailed("PCR_Read", RuntimeError(f"PCRs not allocated: {missing}"))
            for (alg, index), value in zip(got.items(), values, strict=False):
                banks.setdefault(alg, {})[index] = value

    def extend_pcr(self, index: int, data: bytes, banks: PcrSelection | None = None) -> None:
        """Extend PCR ``index`` with H(data) in every active bank (or the given banks)."""
        chosen = banks or self.active_banks()
        wire = Writer().u32(len(chosen.banks))
        for bank in chosen.banks:
            wire.u16(bank.hash_alg).raw(hash_algorithm(bank.hash_alg).digest(data))
        digests, _ = TPML_DIGEST_VALUES.unmarshal(wire.bytes())
        with tpm_command("PCR_Extend"):
            self.esys.pcr_extend(ESYS_TR.parse(f"pcr{index}"), digests)

    # -- clock and NV --------------------------------------------------------

    def read_clock(self) -> ClockInfo:
        with tpm_command("ReadClock"):
            info = self.esys.read_clock().clockInfo
        return ClockInfo(
            int(info.clock), int(info.resetCount), int(info.restartCount), bool(info.safe)
        )

    def nv_read(self, index: int, *, owner_auth: bool = False) -> bytes:
        """Read a whole NV index (e.g. an EK certificate) in chunks, authorised by the index
        itself (TPMA_NV_AUTHREAD) or, with ``owner_auth``, by the owner hierarchy."""
        with tpm_command("NV_ReadPublic"):
            handle = self.esys.tr_from_tpmpublic(index)
            public, _ = self.esys.nv_read_public(handle)
        assert isinstance(public, TPM2B_NV_PUBLIC)
        size = int(public.nvPublic.dataSize)
        chunks = []
        with tpm_command("NV_Read"):
            for offset in range(0, size, NV_READ_CHUNK):
                length = min(NV_READ_CHUNK, size - offset)
                auth = ESYS_TR.OWNER if owner_auth else handle
                chunks.append(bytes(self.esys.nv_read(handle, length, offset, auth_handle=auth)))
        return b"".join(chunks)


def _selection_of(items: list[tuple[int, int]]) -> PcrSelection:
    banks: dict[int, list[int]] = {}
    for alg, index in items:
        banks.setdefault(alg, []).append(index)
    return PcrSelection(tuple(BankSelection(alg, tuple(sorted(i))) for alg, i in banks.items()))


def _to_tpml(selection: PcrSelection) -> Any:
    tpml, _ = TPML_PCR_SELECTION.unmarshal(selection.marshal())
    return tpml
