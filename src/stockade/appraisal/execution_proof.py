"""An auditor's check of one execution, without trusting the verifier that reports it: the
quote is the node's AK's signature over PCR values whose PCR 13 the boot's execution log,
up to the proving result, replays to exactly; and the record is in that log.

Pure: the auditor supplies what ``GET /v1/executions`` returned.
"""

from __future__ import annotations

import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stockade.appraisal.executions import replay_executions
from stockade.evidence.attest import TPM_GENERATED_VALUE, Attest, AttestType, QuoteInfo
from stockade.evidence.cel import parse_cel
from stockade.evidence.errors import EvidenceError, EvidenceInvalid, QuoteInvalid
from stockade.evidence.execution import EXECUTION_PCR, decode_record
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic
from stockade.evidence.quote import verify_ak_signature
from stockade.evidence.signature import Signature


class ExecutionProofInvalid(EvidenceInvalid):
    """The execution is not proven by the quote offered for it."""


@dataclass(frozen=True)
class ProvenExecution:
    reset_count: int
    restart_count: int
    records_proven: int  # how many records of the boot the quote covers


def verify_execution_proof(
    *,
    ak_public: bytes,
    quote: bytes,
    signature: bytes,
    pcrs: Mapping[str, Mapping[str, str]],
    execution_log: bytes,
    recnum: int,
    record: Mapping[str, Any],
) -> ProvenExecution:
    """Raise ``ExecutionProofInvalid`` naming the failed step; malformed input included."""
    try:
        ak = TpmPublic.unmarshal_tpm2b(ak_public)
        verify_ak_signature(ak, quote, Signature.unmarshal(signature))
        attest = Attest.unmarshal(quote)
        values = PcrValues.from_json(pcrs)
    except QuoteInvalid as error:
        raise ExecutionProofInvalid("quote", str(error)) from None
    except EvidenceError as error:
        raise ExecutionProofInvalid("quote", f"malformed: {error}") from None
    if attest.magic != TPM_GENERATED_VALUE or attest.type != AttestType.QUOTE:
        raise ExecutionProofInvalid("quote", "not a TPM-generated quote")
    quoted = attest.attested
    assert isinstance(quoted, QuoteInfo)
    try:
        digest = values.composite_digest(quoted.pcr_select, Signature.unmarshal(signature).hash)
    except EvidenceError as error:
        raise ExecutionProofInvalid("pcrs", str(error)) from None
    if not hmac.compare_digest(digest, quoted.pcr_digest):
        raise ExecutionProofInvalid("pcrs", "the PCR values given are not the ones quoted")
    pcr13 = {
        alg: bank[EXECUTION_PCR]
        for alg, bank in values.restricted_to(quoted.pcr_select).banks.items()
        if EXECUTION_PCR in bank
    }
    if not pcr13:
        raise ExecutionProofInvalid("pcrs", f"the quote does not cover PCR {EXECUTION_PCR}")
    clock = attest.clock_info
    replay = replay_executions(None, clock.reset_count, clock.restart_count, execution_log, pcr13)
    if replay.problems:
        raise ExecutionProofInvalid("replay", "; ".join(text for _, text in replay.problems[:3]))
    try:
        found = next((r for r in parse_cel(execution_log) if r.recnum == recnum), None)
        logged = None if found is None else decode_record(found.content).to_json()
    except EvidenceError as error:
        raise ExecutionProofInvalid("record", str(error)) from None
    if logged is None:
        raise ExecutionProofInvalid("record", f"record {recnum} is not in the proven log")
    if logged != dict(record):
        raise ExecutionProofInvalid("record", f"record {recnum} differs from the proven log")
    return ProvenExecution(clock.reset_count, clock.restart_count, len(replay.records))
