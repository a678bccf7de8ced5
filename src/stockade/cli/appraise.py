"""``stockade appraise``: an event log against a captured golden-machine policy, offline,
with the verifier's code: the log's own replay, PCR values given, or a TPM quote verified."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Annotated

import typer

from stockade.appraisal.captured import (
    CapturedAppraisal,
    CapturedPolicy,
    CapturedStatus,
    Finding,
    appraise_captured,
    parse_captured_policy,
    replay_failure,
    self_replayed,
)
from stockade.cli._input import emit_json, parse_hex, read_document, read_file
from stockade.cli.options import FormatOption, OutputFormat
from stockade.errors import InputError
from stockade.evidence.attest import Attest, QuoteInfo
from stockade.evidence.errors import EventLogMismatch, EvidenceError, QuoteInvalid
from stockade.evidence.eventlog import EventLog, parse_event_log
from stockade.evidence.pcr_values import PcrValues
from stockade.evidence.quote import verify_quote
from stockade.evidence.replay import verify_log
from stockade.evidence.signature import Signature
from stockade.evidence.tpm2_tools_files import read_pcr_file, read_public_key_file
from stockade.strict_json import loads_strict

MAX_PCRS_FILE = 1024 * 1024


def load_captured_policy(path: Path) -> CapturedPolicy:
    """A captured policy from a YAML (or JSON) file; ``InputError`` naming the file."""
    document = read_document(path, "policy")
    try:
        return parse_captured_policy(document)
    except InputError as error:
        raise InputError(f"policy '{path}': {error}") from None


def _replay_json(path: Path, data: bytes) -> PcrValues:
    document = loads_strict(data, f"PCR values '{path}'", max_size=MAX_PCRS_FILE, error=InputError)
    if not isinstance(document, dict) or not all(isinstance(v, dict) for v in document.values()):
        raise InputError(
            f"PCR values '{path}' must map banks to {{PCR: hex}} "
            "(as `stockade eventlog replay --format json` prints)"
        )
    try:
        return PcrValues.from_json(document)
    except EvidenceError as error:
        raise InputError(f"PCR values '{path}': {error}") from None


@dataclass(frozen=True)
class QuoteFiles:
    """A TPM quote in tpm2-tools files: the AK, TPMS_ATTEST, TPMT_SIGNATURE and nonce."""

    ak: Path
    message: Path
    signature: Path
    nonce: str
    trust_bare_key: bool


@dataclass(frozen=True)
class QuoteOutcome:
    """PCR values the log must replay to, and the quote's verdict when one was given."""

    values: PcrValues | None  # None: the quote did not verify
    refusal: str | None = None
    selection: str | None = None


def _from_quote(files: QuoteFiles, pcrs: Path | None, log: EventLog) -> QuoteOutcome:
    """The quoted PCR values: from ``pcrs`` (tpm2_quote -o, serialized or values, or the
    JSON of `eventlog replay`) or, without it, the log's own replay, which the quote's PCR
    digest must then confirm."""
    ak = read_public_key_file(read_file(files.ak, "AK public key"))
    message = read_file(files.message, "quote message")
    signature = Signature.unmarshal(read_file(files.signature, "quote signature"))
    nonce = parse_hex(files.nonce, "nonce")
    attested = Attest.unmarshal(message).attested
    if not isinstance(attested, QuoteInfo):
        raise InputError(f"quote message '{files.message}' is not a TPMS_ATTEST of a quote")
    selection = attested.pcr_select
    if pcrs is None:
        values = self_replayed(log).restricted_to(selection)
    else:
        data = read_file(pcrs, "PCR values")
        values = (
            _replay_json(pcrs, data)
            if data.lstrip().startswith(b"{")
            else read_pcr_file(data, selection)
        )
    try:
        verified = verify_quote(
            ak, message, signature, nonce=nonce, pcr_values=values,
            accept_bare_key=files.trust_bare_key,
        )  # fmt: skip
    except QuoteInvalid as error:
        return QuoteOutcome(None, f"quote {error}")
    return QuoteOutcome(
        verified.pcr_values.restricted_to(verified.selection), selection=str(verified.selection)
    )


def _print_text(result: CapturedAppraisal) -> None:
    print(f"{result.status}: policy {result.policy_id}")
    for finding in result.findings:
        print(f"  - {finding.reason}")


def appraise(
    policy: Annotated[
        Path, typer.Option("--policy", help="captured policy (YAML), from `policy capture`")
    ],
    event_log: Annotated[Path, typer.Option("--event-log", help="TCG event log to appraise")],
    pcrs: Annotated[
        Path | None,
        typer.Option(
            "--pcrs",
            help="PCR values the log must replay to: the JSON of `stockade eventlog replay "
            "--format json`, or with a quote tpm2_quote -o (serialized or values); without "
            "it, the log's own replay (which a quote's PCR digest must then confirm)",
        ),
    ] = None,
    ak: Annotated[
        Path | None,
        typer.Option("--ak", help="with a quote: the AK, TPM2B_PUBLIC (tpm2_createak -u) or PEM"),
    ] = None,
    message: Annotated[
        Path | None, typer.Option("--message", help="the quote's TPMS_ATTEST (tpm2_quote -m)")
    ] = None,
    signature: Annotated[
        Path | None,
        typer.Option("--signature", help="the quote's TPMT_SIGNATURE (tpm2_quote -s)"),
    ] = None,
    nonce: Annotated[
        str | None, typer.Option("--nonce", help="the nonce the quote must carry, hex")
    ] = None,
    node: Annotated[
        str | None,
        typer.Option(
            "--node",
            help="the machine the log is from (a merged policy's per-machine events are "
            "compared with that machine's)",
        ),
    ] = None,
    trust_bare_key: Annotated[
        bool,
        typer.Option(
            "--trust-bare-key",
            help="accept a PEM AK: you vouch that it is a restricted TPM key (a bare key "
            "cannot show it)",
        ),
    ] = False,
    output: FormatOption = OutputFormat.JSON,
) -> None:
    """Appraise an event log offline against a captured golden-machine policy.

    Each PCR's trusted events are compared in order with the captured ones; every reason
    names the PCR and the event. With --ak, --message, --signature and --nonce the quote is
    verified first and only the PCRs it covers are trusted. A merged policy's per-machine
    events need --node. Exit 0 when affirming, 1 when contraindicated, 2 when an input cannot
    be read.
    """
    quote_options = {"--ak": ak, "--message": message, "--signature": signature, "--nonce": nonce}
    given = [name for name, value in quote_options.items() if value is not None]
    if given and len(given) != len(quote_options):
        missing = [name for name in quote_options if name not in given]
        raise InputError(f"a quote needs {', '.join(missing)} as well as {', '.join(given)}")
    captured = load_captured_policy(policy)
    log = parse_event_log(read_file(event_log, "event log"))
    outcome = QuoteOutcome(None)
    if ak is not None and message is not None and signature is not None and nonce is not None:
        files = QuoteFiles(ak, message, signature, nonce, trust_bare_key)
        outcome = _from_quote(files, pcrs, log)
        quoted = outcome.values
    elif pcrs is not None:
        quoted = _replay_json(pcrs, read_file(pcrs, "PCR values"))
    else:
        quoted = self_replayed(log)
    if quoted is None:
        finding = Finding(None, outcome.refusal or "the quote does not verify")
        result = CapturedAppraisal(captured.policy_id, CapturedStatus.CONTRAINDICATED, (finding,))
    else:
        try:
            verified = verify_log(log, quoted)
        except EventLogMismatch as mismatch:
            result = replay_failure(captured, mismatch)
        else:
            result = appraise_captured(captured, verified, node=node)
    if output is OutputFormat.JSON:
        document = result.to_json()
        if given:
            document["quote"] = {"verified": quoted is not None, "selection": outcome.selection}
        emit_json(document)
    else:
        _print_text(result)
    if result.status is not CapturedStatus.AFFIRMING:
        raise typer.Exit(1)
