"""``stockade log checkpoint|verify|monitor``: check the verifier's transparency log.

``verify`` is offline: a receipt (an evidence response, or ``GET /v1/log/proof/inclusion``)
against a signed checkpoint and the log's key; or every result of an export
(``stockade results show --format json``, ``stockade audit results --format json``), each
receipt against the log's key and, with ``--verifier-key``, each EAR against the verifier's.
``checkpoint`` and ``monitor`` talk to the verifier; ``monitor`` follows its checkpoints
and exits 1 with an ``ALERT`` line on stderr at the first bad signature, rollback, fork or
rewritten entry.
"""

from __future__ import annotations

import base64
import contextlib
import json
import os
import sys
import time
from collections.abc import Iterator
from functools import partial
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stockade.cli._input import emit_json, read_file
from stockade.cli._text import inline
from stockade.cli.options import (
    CaOption,
    FormatOption,
    OutputFormat,
    ReadTokenOption,
    VerifierOption,
    client,
)
from stockade.errors import InputError, StockadeError, VerificationFailed
from stockade.strict_json import loads_strict, read_base64
from stockade.translog.errors import MalformedKey, SourceUnavailable

if TYPE_CHECKING:
    from stockade.translog.checkpoint import Checkpoint, NoteVerifier
    from stockade.translog.monitor import MonitorState, Observation

app = typer.Typer(
    no_args_is_help=True, help="The verifier's transparency log: checkpoints, receipts, monitor."
)

KeyOption = Annotated[
    str | None,
    typer.Option(
        "--key", help="the log's verifier key: a key string <name>+<id>+<base64>, or a file"
    ),
]
PinOption = Annotated[
    Path | None,
    typer.Option(
        "--pin",
        help="file holding the log's key; when missing, the verifier's /v1/log/key is "
        "written there on first use",
    ),
]


_b64 = partial(read_base64, error=InputError)


def parse_key(value: str) -> NoteVerifier:
    """A key string, or a file holding one."""
    from stockade.translog.checkpoint import NoteVerifier

    path = Path(value)
    if "+" not in value or path.is_file():
        value = read_file(path, "log key").decode("utf-8", "replace")
    try:
        return NoteVerifier.from_key_string(value)
    except MalformedKey as error:
        raise InputError(f"log key: {error}") from None


def _member(document: object, name: str, what: str) -> Any:
    if not isinstance(document, dict) or name not in document:
        raise InputError(f"the verifier's {what} has no {name!r}")
    return document[name]


class _Unanswered(SourceUnavailable, StockadeError):
    """The verifier did not answer a log request (unreachable, refused, malformed): for the
    monitor a source failure, for the CLI an error like the one it wraps (exit 2)."""

    exit_code = 2


class HttpLogSource:
    """The transparency log API of a verifier (``stockade.translog.monitor.LogSource``).
    For the monitor, anything that is not a well-formed answer is ``SourceUnavailable``."""

    def __init__(self, api: Any) -> None:
        self.api = api

    def key(self) -> str:
        return str(_member(self.api.request("GET", "/v1/log/key", format="json"), "key", "key"))

    def checkpoint(self) -> bytes:
        with _answering():
            document = self.api.request("GET", "/v1/log/checkpoint", format="json")
            note = _member(document, "checkpoint", "checkpoint")
            if not isinstance(note, str):
                raise InputError("the verifier's checkpoint is not a string")
            return note.encode()

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        with _answering():
            document = self.api.request(
                "GET", "/v1/log/proof/consistency", old=old_size, new=new_size
            )
            proof = _member(document, "proof", "consistency proof")
            if not isinstance(proof, list):
                raise InputError("the verifier's consistency proof is not a list")
            return [_b64(element, "consistency proof element") for element in proof]

    def entries(self, start: int, end: int) -> list[tuple[bytes, bytes]]:
        with _answering():
            document = self.api.request("GET", "/v1/log/entries", start=start, end=end)
            rows = _member(document, "entries", "entries")
            if not isinstance(rows, list):
                raise InputError("the verifier's entries are not a list")
            return [
                (
                    _b64(_member(row, "entry", "entry"), "entry"),
                    _b64(_member(row, "leaf_hash", "entry"), "leaf hash"),
                )
                for row in rows
            ]


@contextlib.contextmanager
def _answering() -> Iterator[None]:
    from stockade.verifier_client import VerifierRefused, VerifierUnavailable

    try:
        yield
    except (VerifierUnavailable, VerifierRefused, InputError) as error:
        raise _Unanswered(str(error)) from None


def _trusted_key(key: str | None, pin: Path | None, source: HttpLogSource) -> NoteVerifier:
    from stockade.translog.checkpoint import NoteVerifier

    if key is not None:
        return parse_key(key)
    if pin is None:
        raise InputError("no log key: pass --key (a key string or file) or --pin FILE")
    if pin.exists():
        return parse_key(str(pin))
    fetched = NoteVerifier.from_key_string(source.key())
    pin.parent.mkdir(parents=True, exist_ok=True)
    pin.write_text(fetched.key_string() + "\n")
    print(
        f"stockade: pinned the log key {fetched.key_string()} in {pin} (first use: check it "
        "against the verifier's data directory)",
        file=sys.stderr,
    )
    return fetched


def _head_json(checkpoint: Checkpoint) -> dict[str, Any]:
    return {
        "origin": checkpoint.origin,
        "size": checkpoint.size,
        "root": base64.b64encode(checkpoint.root).decode(),
    }


@app.command("checkpoint")
def checkpoint_command(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    key: KeyOption = None,
    pin: PinOption = None,
    out: Annotated[
        Path | None, typer.Option("--out", help="write the signed checkpoint note here")
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Fetch the log's current checkpoint and verify its signature. Exit 1 when it does
    not verify."""
    if key is None and pin is None:
        raise InputError("no log key: pass --key (a key string or file) or --pin FILE")
    with client(verifier, ca) as api:
        source = HttpLogSource(api)
        note = source.checkpoint()
        trusted = _trusted_key(key, pin, source)
    # Imported once the checkpoint is here: a command that cannot reach the verifier does
    # not load the cryptography stack first.
    from stockade.translog.checkpoint import open_checkpoint

    head, _ = open_checkpoint(note, [trusted], required=[trusted.name], origin=trusted.name)
    if out is not None:
        out.write_bytes(note)
    if output is OutputFormat.JSON:
        emit_json({**_head_json(head), "checkpoint": note.decode(), "verified": True})
        return
    sys.stdout.write(note.decode())
    typer.echo(f"verified: {head.origin} size {head.size}, signed by {trusted.name}", err=True)


def _read_json(path: Path, what: str) -> Any:
    return loads_strict(
        read_file(path, what), f"{what} '{path}'", max_size=64 * 1024 * 1024, error=InputError
    )


@app.command("verify")
def verify_command(
    receipt_file: Annotated[
        Path,
        typer.Argument(
            metavar="RECEIPT",
            help="JSON: an evidence response (its inclusion_proof), a receipt from "
            '/v1/log/proof/inclusion, or an export of results ({"results": [...]}: '
            "results show / audit results --format json) or of operator actions "
            '({"actions": [...]}: audit actions --format json)',
        ),
    ],
    key: KeyOption = None,
    checkpoint: Annotated[
        Path | None,
        typer.Option("--checkpoint", help="signed checkpoint note [default: the receipt's own]"),
    ] = None,
    verifier_key: Annotated[
        Path | None,
        typer.Option(
            "--verifier-key",
            help="for an export: also check each result's EAR under this pinned verifier "
            "key (keys/verifier-key.pub.pem or a JWK set)",
        ),
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Offline: check that the log signed by KEY holds the receipt's entry (and, for an
    evidence response, that the entry is that result's). For an export of results, every
    result: its receipt, that the logged entry is that result's (id, EAR digest, status)
    and, with --verifier-key, its EAR. For an export of operator actions, every action: its
    receipt and that the logged entry is that action (actor, action, subject, time, detail).
    Exit 0 verified, 1 not, 2 unreadable input."""
    from stockade.translog.receipt import Receipt, check_result_entry, verify_receipt

    if key is None:
        raise InputError("no log key: pass --key (a key string or a file)")
    trusted = parse_key(key)
    document = _read_json(receipt_file, "receipt")
    if isinstance(document, dict) and isinstance(document.get("results"), list):
        note = read_file(checkpoint, "checkpoint") if checkpoint is not None else None
        _verify_export(document["results"], trusted, note, verifier_key, output)
        return
    if isinstance(document, dict) and isinstance(document.get("actions"), list):
        note = read_file(checkpoint, "checkpoint") if checkpoint is not None else None
        _verify_action_export(document["actions"], trusted, note, output)
        return
    result = document if isinstance(document, dict) and "inclusion_proof" in document else None
    receipt = Receipt.from_json(result["inclusion_proof"] if result is not None else document)
    note = read_file(checkpoint, "checkpoint") if checkpoint is not None else None
    verified = verify_receipt(
        receipt, [trusted], checkpoint=note, required=[trusted.name], origin=trusted.name
    )
    if result is not None:
        check_result_entry(verified.entry, result)
    if output is OutputFormat.JSON:
        emit_json(
            {
                **_head_json(verified.checkpoint),
                "log_index": verified.log_index,
                "entry": verified.entry,
                "result_matches": result is not None,
                "verified": True,
            }
        )
        return
    typer.echo(verified_text(verified, trusted.name))


def _verify_exported(
    result: Any, trusted: NoteVerifier, note: bytes | None, ear_keys: Any
) -> tuple[Any, str | None]:
    """One exported result: ``(VerifiedReceipt or None, why it does not verify or None)``."""
    from stockade.statements import StatementInvalid, verify_ear
    from stockade.translog.errors import TranslogError
    from stockade.translog.receipt import Receipt, check_result_entry, verify_receipt

    if not isinstance(result, dict):
        return None, "not a JSON object"
    if not isinstance(result.get("inclusion_proof"), dict):
        return None, "carries no receipt (inclusion_proof)"
    try:
        receipt = Receipt.from_json(result["inclusion_proof"])
        if result.get("log_index") != receipt.log_index:
            return None, (
                f"log_index {result.get('log_index')!r} is not its receipt's {receipt.log_index}"
            )
        verified = verify_receipt(
            receipt, [trusted], checkpoint=note, required=[trusted.name], origin=trusted.name
        )
        check_result_entry(verified.entry, result)
        if ear_keys is not None:
            node = result.get("node_id")
            listed = result.get("result_id")
            if not isinstance(node, str) or not isinstance(listed, str):
                return verified, "names no node_id or result_id"
            ear = verify_ear(result["ear"], ear_keys, node=node, result_id=listed)
            if ear.status != verified.entry.get("status"):
                return (
                    verified,
                    f"the EAR says {ear.status}, the log {verified.entry.get('status')}",
                )
    except (TranslogError, StatementInvalid) as error:
        return None, str(error)
    return verified, None


def _verify_export(
    results: list[Any],
    trusted: NoteVerifier,
    note: bytes | None,
    verifier_key: Path | None,
    output: OutputFormat,
) -> None:
    """Every result of an export; one line (or JSON member) each, exit 1 if any fails."""
    from stockade.cli.options import pinned_key_file

    ear_keys = pinned_key_file(verifier_key).keys() if verifier_key is not None else None
    checked = [_verify_exported(result, trusted, note, ear_keys) for result in results]
    failed = [index for index, (_, why) in enumerate(checked) if why is not None]
    if output is OutputFormat.JSON:
        emit_json(
            {
                "results": [
                    {
                        "result_id": result.get("result_id") if isinstance(result, dict) else None,
                        "log_index": verified.log_index if verified is not None else None,
                        "verified": why is None,
                        "ear_checked": ear_keys is not None and why is None,
                        "error": why,
                    }
                    for result, (verified, why) in zip(results, checked, strict=True)
                ],
                "verified": not failed,
            }
        )
    else:
        for result, (verified, why) in zip(results, checked, strict=True):
            listed = inline(result.get("result_id")) if isinstance(result, dict) else "-"
            if why is None:
                ear = ", EAR verified" if ear_keys is not None else ""
                typer.echo(verified_text(verified, trusted.name) + ear)
            else:
                typer.echo(f"NOT VERIFIED: result {listed or '-'}: {why}")
    if failed:
        raise VerificationFailed(f"{len(failed)} of {len(results)} exported results do not verify")
    if not results:
        typer.echo("the export holds no results", err=True)


def _verify_action(
    action: Any, trusted: NoteVerifier, note: bytes | None
) -> tuple[Any, str | None]:
    """One exported operator action: ``(VerifiedReceipt or None, why it does not verify or
    None)``: its receipt, and that the logged entry is this action (actor, action, subject,
    time, detail)."""
    from stockade.translog.entries import check_operator_action_entry
    from stockade.translog.errors import TranslogError
    from stockade.translog.receipt import Receipt, verify_receipt

    if not isinstance(action, dict):
        return None, "not a JSON object"
    if not isinstance(action.get("inclusion_proof"), dict):
        return None, "carries no receipt (inclusion_proof)"
    try:
        receipt = Receipt.from_json(action["inclusion_proof"])
        if action.get("log_index") != receipt.log_index:
            return None, (
                f"log_index {action.get('log_index')!r} is not its receipt's {receipt.log_index}"
            )
        verified = verify_receipt(
            receipt, [trusted], checkpoint=note, required=[trusted.name], origin=trusted.name
        )
        check_operator_action_entry(verified.entry, action)
    except TranslogError as error:
        return None, str(error)
    return verified, None


def _verify_action_export(
    actions: list[Any], trusted: NoteVerifier, note: bytes | None, output: OutputFormat
) -> None:
    """Every operator action of an export (``audit actions --format json``); one line (or
    JSON member) each, exit 1 if any fails."""
    checked = [_verify_action(action, trusted, note) for action in actions]
    failed = [index for index, (_, why) in enumerate(checked) if why is not None]
    if output is OutputFormat.JSON:
        emit_json(
            {
                "actions": [
                    {
                        "id": action.get("id") if isinstance(action, dict) else None,
                        "log_index": verified.log_index if verified is not None else None,
                        "verified": why is None,
                        "error": why,
                    }
                    for action, (verified, why) in zip(actions, checked, strict=True)
                ],
                "verified": not failed,
            }
        )
    else:
        for action, (verified, why) in zip(actions, checked, strict=True):
            if why is None:
                typer.echo(verified_text(verified, trusted.name))
            else:
                listed = inline(action.get("id")) if isinstance(action, dict) else "-"
                typer.echo(f"NOT VERIFIED: operator action {listed or '-'}: {why}")
    if failed:
        raise VerificationFailed(
            f"{len(failed)} of {len(actions)} exported operator actions do not verify"
        )
    if not actions:
        typer.echo("the export holds no operator actions", err=True)


def verified_text(verified: Any, key_name: str) -> str:
    """One line: which entry of which log (``VerifiedReceipt``) the receipt proves."""
    entry = verified.entry if isinstance(verified.entry, dict) else {}
    what = inline(entry.get("type")) or "entry"
    if "result_id" in entry:
        node, status = inline(entry.get("node_name")) or "-", inline(entry.get("status")) or "-"
        what += f" {inline(entry['result_id'])} ({node}, {status})"
    elif "actor" in entry:
        what += (
            f" {inline(entry.get('action')) or '-'} {inline(entry.get('subject')) or '-'}"
            f" by {inline(entry.get('actor')) or '-'}"
        )
    return (
        f"verified: {what} is entry {verified.log_index} of {verified.checkpoint.origin} "
        f"at size {verified.checkpoint.size}, signed by {key_name}"
    )


def _load_state(path: Path | None, key: NoteVerifier) -> MonitorState | None:
    from stockade.translog.monitor import MonitorState

    if path is None or not path.exists():
        return None
    return MonitorState.from_json(_read_json(path, "monitor state"), key, key.name)


def _save_state(path: Path, state: MonitorState) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_name(path.name + ".tmp")
    temporary.write_text(json.dumps(state.to_json(), indent=2) + "\n")
    os.replace(temporary, path)


def _report(observation: Observation, output: OutputFormat) -> None:
    head = observation.state.checkpoint
    previous = observation.previous
    if output is OutputFormat.JSON:
        print(
            json.dumps(
                {
                    **_head_json(head),
                    "previous_size": previous.size if previous else None,
                    "new": observation.grew,
                    "entries_checked": observation.entries_checked,
                },
                sort_keys=True,
            ),
            flush=True,
        )
        return
    root = base64.b64encode(head.root).decode()
    if previous is None:
        how = "first checkpoint seen"
    elif observation.grew:
        how = f"+{head.size - previous.size} entries, consistent with size {previous.size}"
    else:
        how = "unchanged"
    checked = (
        f", {observation.entries_checked} entries checked" if observation.entries_checked else ""
    )
    print(f"{head.origin} size {head.size} root {root} ({how}{checked})", flush=True)


@app.command("monitor")
def monitor_command(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    key: KeyOption = None,
    pin: PinOption = None,
    state_file: Annotated[
        Path | None,
        typer.Option("--state", help="the last verified checkpoint, kept across runs"),
    ] = None,
    token_file: ReadTokenOption = None,
    interval: Annotated[float, typer.Option(help="seconds between checks", min=0.1)] = 10.0,
    once: Annotated[bool, typer.Option("--once", help="check once and exit")] = False,
    entries: Annotated[
        bool,
        typer.Option(
            "--entries/--no-entries",
            help="also fetch the new entries and check them against the signed root",
        ),
    ] = True,
    proof_retries: Annotated[
        int,
        typer.Option(
            "--proof-retries",
            min=1,
            help="attempts in a row after which a signed checkpoint served without its "
            "consistency proof or entries is an ALERT (withholding)",
        ),
    ] = 3,
    max_age: Annotated[
        float | None,
        typer.Option(
            "--max-age",
            min=1,
            help="seconds without a verified checkpoint larger than the last one before an "
            "ALERT (stale); longer than the fleet's attestation interval [default: no bound]",
        ),
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
) -> None:
    """Follow the log's checkpoints: each must be signed by the log's key and extend the
    last verified one (a consistency proof). One line per new checkpoint; on a bad
    signature, a rollback, a fork or a rewritten entry, an ALERT line on stderr and exit 1
    (the state file keeps the last good checkpoint). A log that signs a newer checkpoint but
    does not serve its proof (--proof-retries attempts in a row, also with --once) or that
    stops growing (--max-age) is an ALERT too. Checkpoints and proofs are public; fetching
    the entries (``--entries``, the default) needs a reader token."""
    from stockade.translog.monitor import Alert, Watch, Withheld, observe

    with client(verifier, ca, token_file) as api:
        source = HttpLogSource(api)
        trusted = _trusted_key(key, pin, source)
        state = _load_state(state_file, trusted)
        watch = Watch(started=time.monotonic(), proof_retries=proof_retries, max_age=max_age)

        def alert(raised: Alert) -> typer.Exit:
            print(
                f"ALERT: transparency log {trusted.name} at {api.url}: {raised.kind.upper()}: "
                f"{raised.detail}",
                file=sys.stderr,
                flush=True,
            )
            return typer.Exit(1)

        while True:
            now = time.monotonic()
            try:
                try:
                    observation = observe(source, trusted, state, check_entries=entries)
                    watch.succeeded(observation, now)
                except (Withheld, SourceUnavailable) as error:
                    watch.failed(error, now, state.checkpoint.size if state else None)
                    if once and isinstance(error, _Unanswered):
                        raise
                    print(f"stockade: {error}; retrying in {interval:g} s", file=sys.stderr)
                    time.sleep(interval)
                    continue
            except Alert as raised:
                raise alert(raised) from None
            if observation.grew or once:
                _report(observation, output)
            if state_file is not None and observation.state != state:
                _save_state(state_file, observation.state)
            state = observation.state
            if once:
                return
            time.sleep(interval)
