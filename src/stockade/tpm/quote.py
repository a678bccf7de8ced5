"""TPM2_Quote: the TPM signs the digest of chosen PCRs and a caller's nonce."""

from __future__ import annotations

from dataclasses import dataclass

from tpm2_pytss.constants import ESYS_TR, TPM2_ALG
from tpm2_pytss.types import TPMT_SIG_SCHEME

from stockade.errors import StockadeError
from stockade.evidence.attest import Attest, QuoteInfo
from stockade.evidence.pcr_selection import PcrSelection
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.signature import Signature
from stockade.tpm.ak import AttestationKey, loaded_ak
from stockade.tpm.device import Tpm, _to_tpml, tpm_command

# PCRs may be extended between TPM2_Quote and TPM2_PCR_Read; retry a few times.
QUOTE_ATTEMPTS = 5


@dataclass(frozen=True)
class QuoteEvidence:
    """A quote as it travels: exact signed bytes, signature, and the PCR values it covers."""

    message: bytes  # TPMS_ATTEST
    signature: bytes  # TPMT_SIGNATURE
    selection: PcrSelection
    pcr_values: PcrValues


def quote_with_handle(
    tpm: Tpm, ak_handle: ESYS_TR, selection: PcrSelection, nonce: bytes
) -> QuoteEvidence:
    """Quote with an AK that is already loaded."""
    scheme = TPMT_SIG_SCHEME(scheme=TPM2_ALG.NULL)
    for _ in range(QUOTE_ATTEMPTS):
        with tpm_command("Quote"):
            attest, signature = tpm.esys.quote(
                ak_handle, _to_tpml(selection), nonce, scheme, session1=ESYS_TR.PASSWORD
            )
        message = bytes(attest)
        values = tpm.read_pcrs(selection)
        quoted = Attest.unmarshal(message).attested
        assert isinstance(quoted, QuoteInfo)
        sig = Signature.unmarshal(bytes(signature.marshal()))
        if values.composite_digest(quoted.pcr_select, sig.hash) == quoted.pcr_digest:
            return QuoteEvidence(message, sig.marshal(), quoted.pcr_select, values)
    raise StockadeError(
        f"PCRs {selection} kept changing while quoting; gave up after {QUOTE_ATTEMPTS} attempts"
    )


def quote(tpm: Tpm, ak: AttestationKey, selection: PcrSelection, nonce: bytes) -> QuoteEvidence:
    """Load ``ak``, quote, flush: nothing stays loaded in the TPM afterwards."""
    with loaded_ak(tpm, ak) as handle:
        return quote_with_handle(tpm, handle, selection, nonce)
