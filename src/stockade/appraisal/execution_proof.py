"""An auditor's check of one execution, without trusting the answer that reports it.

The only trusted input is the verifier's statement key, pinned by the auditor. From it:
the proving result's EAR verifies under that key and names the node, the result, the boot,
the AK and the quote of the entry (so an AK that merely claims AK attributes, or a quote of
another node or boot, is refused); the quote is that AK's signature over PCR values whose
PCR 13 the boot's execution log, up to the proving result, replays to exactly; and the
record is in that log.

Pure: the auditor supplies what ``GET /v1/executions`` returned and the pinned keys.
"""

from __future__ import annotations

import hashlib
import hmac
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from stockade.appraisal.executions import replay_executions
from stockade.evidence.attest import TPM_GENERATED_VALUE, Attest, AttestType, QuoteInfo
from stockade.evidence.cel import parse_cel
from stockade.evidence.errors import EvidenceError, EvidenceInvalid, QuoteInvalid
from stockade.evidence.execution import EXECUTION_PCR, decode_record, measured_content
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.public import TpmPublic
from stockade.evidence.quote import verify_ak_signature
from stockade.evidence.signature import Signature
from stockade.statements import StatementInvalid, VerifierKeys, verify_ear
from stockade.strict_json import Fields, StrictJsonError


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
    boot: tuple[int, int] | None = None,
) -> ProvenExecution:
    """Raise ``ExecutionProofInvalid`` naming the failed step; malformed input included.
    ``boot`` (resetCount, restartCount), when given, must be the quote's."""
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
    if boot is not None and boot != (clock.reset_count, clock.restart_count):
        raise ExecutionProofInvalid(
            "boot",
            f"the entry names boot {boot[0]}/{boot[1]}, the quote was made in boot "
            f"{clock.reset_count}/{clock.restart_count}",
        )
    replay = replay_executions(None, clock.reset_count, clock.restart_count, execution_log, pcr13)
    if replay.problems:
        raise ExecutionProofInvalid("replay", "; ".join(text for _, text in replay.problems[:3]))
    try:
        found = next((r for r in parse_cel(execution_log) if r.recnum == recnum), None)
        logged = None if found is None else decode_record(measured_content(found.content)).to_json()
    except EvidenceError as error:
        raise ExecutionProofInvalid("record", str(error)) from None
    if logged is None:
        raise ExecutionProofInvalid("record", f"record {recnum} is not in the proven log")
    if logged != dict(record):
        raise ExecutionProofInvalid("record", f"record {recnum} differs from the proven log")
    return ProvenExecution(clock.reset_count, clock.restart_count, len(replay.records))


def audit_execution(entry: Mapping[str, Any], keys: VerifierKeys) -> ProvenExecution:
    """Check one entry of ``GET /v1/executions`` against the pinned verifier ``keys``;
    ``ExecutionProofInvalid`` naming the failed step (``ear``, ``binding``, ``quote``,
    ``boot``, ``pcrs``, ``replay``, ``record`` or ``malformed``)."""
    try:
        fields = Fields(entry, "execution")
        node_id = fields.string("node_id")
        node_name = fields.string("node_name")
        boot_fields = fields.object("boot")
        boot = (boot_fields.integer("reset_count"), boot_fields.integer("restart_count"))
        recnum = fields.integer("recnum")
        record = fields.object("record").value
        proof = fields.object("proof")
        result_id = proof.string("result_id")
        ear = proof.string("ear")
        ak_public = proof.base64("ak_public")
        quote = proof.base64("quote")
        signature = proof.base64("signature")
        execution_log = proof.base64("execution_log")
        pcrs = proof.object("pcrs").value
    except StrictJsonError as error:
        raise ExecutionProofInvalid("malformed", str(error)) from None
    try:
        said = verify_ear(ear, keys, node=node_id, result_id=result_id)
    except StatementInvalid as error:
        raise ExecutionProofInvalid("ear", str(error)) from None
    mismatches = [
        what
        for what, expected, found in (
            ("node", (node_id, node_name), (said.node_id, said.node_name)),
            ("AK", hashlib.sha256(ak_public).hexdigest(), said.ak_sha256),
            ("quote", hashlib.sha256(quote).hexdigest(), said.quote_sha256),
            ("boot", boot, (said.reset_count, said.restart_count)),
        )
        if expected != found
    ]
    if mismatches:
        raise ExecutionProofInvalid(
            "binding",
            f"result {result_id}'s signed EAR does not name this entry's {', '.join(mismatches)}",
        )
    return verify_execution_proof(
        ak_public=ak_public,
        quote=quote,
        signature=signature,
        pcrs=pcrs,
        execution_log=execution_log,
        recnum=recnum,
        record=record,
        boot=boot,
    )
