"""``stockade eventlog show|replay``: read TCG event logs (binary_bios_measurements)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated, Any

import typer

from stockade.cli._input import emit_json, read_file
from stockade.cli._text import inline, shorten
from stockade.cli.options import FormatOption, OutputFormat
from stockade.evidence.algorithms import HASHES
from stockade.evidence.event_data import RawData, decode
from stockade.evidence.event_digests import digest_mismatches
from stockade.evidence.eventlog import EventLog, parse_event_log
from stockade.evidence.replay import replay

app = typer.Typer(no_args_is_help=True, help="Parse and replay TCG PC Client event logs.")

LogFile = Annotated[
    Path, typer.Argument(help="event log, e.g. /sys/kernel/security/tpm0/binary_bios_measurements")
]


def _bank(algorithm: int) -> str:
    known = HASHES.get(algorithm)
    return known.name if known else f"0x{algorithm:04x}"


def _load(path: Path) -> EventLog:
    return parse_event_log(read_file(path, "event log"))


def _warn_mismatches(log: EventLog) -> list[str]:
    warnings = [str(m) for m in digest_mismatches(log)]
    for warning in warnings:
        print(f"stockade: warning: {warning}", file=sys.stderr)
    return warnings


def _event_json(log: EventLog) -> list[dict[str, Any]]:
    events = []
    for event in log.events:
        data = decode(event)
        entry: dict[str, Any] = {
            "number": event.number,
            "pcr": event.pcr,
            "type": event.type_name,
            "digests": {_bank(alg): digest.hex() for alg, digest in event.digests},
            "size": len(event.data),
            "data": data.to_json(),
        }
        if isinstance(data, RawData) and data.reason:
            entry["undecoded"] = data.reason
        events.append(entry)
    return events


@app.command("show")
def show(log_file: LogFile, output: FormatOption = OutputFormat.TEXT) -> None:
    """Every event: PCR, type, digests per bank and decoded data."""
    log = _load(log_file)
    warnings = _warn_mismatches(log)
    events = _event_json(log)
    if output is OutputFormat.JSON:
        emit_json(
            {
                "format": "crypto-agile" if log.crypto_agile else "legacy",
                "banks": [_bank(a) for a in log.banks],
                "events": events,
                "digest_mismatches": warnings,
            }
        )
        return
    for line in event_lines(events):
        print(line)


def event_lines(events: list[dict[str, Any]]) -> list[str]:
    """Two lines an event: number, PCR, type and digests; then its decoded data, as
    ``key=value`` text on one line (80 characters at most)."""
    lines = []
    for event in events:
        digests = " ".join(f"{bank}:{value[:16]}" for bank, value in event["digests"].items())
        lines.append(f"{event['number']:4} PCR{event['pcr']:<3} {event['type']:<34} {digests}")
        summary = inline(event["data"])
        if "undecoded" in event:
            summary = f"undecoded ({inline(event['undecoded'])}) {summary}".rstrip()
        lines.append(f"     {shorten(summary, 80)}")
    return lines


@app.command("replay")
def replay_command(log_file: LogFile, output: FormatOption = OutputFormat.TEXT) -> None:
    """The PCR values the log replays to, per bank (StartupLocality honoured)."""
    log = _load(log_file)
    _warn_mismatches(log)
    result = replay(log)
    for algorithm in result.uncomputable_banks:
        print(f"stockade: warning: cannot replay bank {_bank(algorithm)}", file=sys.stderr)
    document = result.values.to_json()
    ordered = {
        bank: dict(sorted(values.items(), key=lambda item: int(item[0])))
        for bank, values in document.items()
    }
    if output is OutputFormat.JSON:
        emit_json(ordered)
        return
    for bank, values in ordered.items():
        print(f"{bank}:")
        for index, value in values.items():
            print(f"  {int(index):2} : 0x{value}")
