"""``stockade events watch``: follow the verifier's event stream (``GET /v1/events``).

Each node state transition is printed once, in stream order: a line of text, or with
``--format json`` one event object per line (the protocol's event document). A stream that
drops (the verifier restarts, the network fails, the stream reaches its lifetime) is resumed
after the last event this command received, with ``Last-Event-ID``, after a growing, jittered
wait: no event is printed twice and none is skipped (event ids are stream positions, given in
commit order: docs/verifier-protocol.md). SIGINT and SIGTERM end it with exit code 0 after the
line being printed. ``--until-idle`` ends once every stored event is printed; ``--limit N``
after N events.
"""

from __future__ import annotations

import json
import random
import signal
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from types import FrameType
from typing import TYPE_CHECKING, Annotated, Any

import typer

from stockade.cli.options import (
    CaOption,
    FormatOption,
    OutputFormat,
    ReadTokenOption,
    VerifierOption,
    client,
)

if TYPE_CHECKING:
    from stockade.verifier_client import VerifierClient

app = typer.Typer(
    no_args_is_help=True, help="Follow the verifier's event stream: node state transitions."
)

# The verifier answers these while it cannot serve a stream now (too many streams, starting,
# its database down): wait and resume. Any other refusal (a bad token) ends the command.
RETRIED_STATUSES = frozenset({408, 425, 429, 500, 502, 503, 504})
INITIAL_BACKOFF = 0.5
# A stream that ends by itself sooner than this without an event counts as a failure, so a
# verifier that closes every stream at once is not asked again in a tight loop.
SHORT_STREAM_SECONDS = 1.0


class _Stopped(Exception):
    """SIGINT or SIGTERM arrived."""


class _Signals:
    """A signal during a print is acted on after the line is whole."""

    printing = False
    pending = False


@dataclass
class Backoff:
    """Capped exponential waits with jitter (half to all of the ceiling)."""

    initial: float
    cap: float
    failures: int = 0
    rng: random.Random = field(default_factory=random.Random)

    def next_delay(self) -> float:
        self.failures += 1
        ceiling = min(self.cap, self.initial * 2.0 ** min(self.failures - 1, 32))
        return self.rng.uniform(ceiling / 2, ceiling)

    def reset(self) -> None:
        self.failures = 0


def _text(value: object) -> str:
    return "-" if value is None or value == "" else str(value)


def format_event(event: dict[str, Any]) -> str:
    """One line a person reads: ``#id time name (node id) from -> to: reason``, then who acted
    and which result caused it when known."""
    line = (
        f"#{_text(event.get('id'))} {_text(event.get('time'))} {_text(event.get('name'))} "
        f"({_text(event.get('node_id'))}) {_text(event.get('from') or 'new')} -> "
        f"{_text(event.get('to'))}: {_text(event.get('reason'))}"
    )
    if event.get("actor"):
        line += f" by {event['actor']}"
    if event.get("result_id"):
        line += f" result {event['result_id']}"
    return line


def _matches(event: dict[str, Any], node: str | None) -> bool:
    return node is None or node in (event.get("node_id"), event.get("name"))


@dataclass
class Watcher:
    """The loop of ``watch``, apart from the command line so tests can drive it."""

    connect: Callable[[], VerifierClient]
    emit: Callable[[dict[str, Any]], None]
    warn: Callable[[str], None]
    cursor: int | None = None
    node: str | None = None
    until_idle: bool = False
    limit: int | None = None
    backoff: Backoff = field(default_factory=lambda: Backoff(INITIAL_BACKOFF, 30.0))
    sleep: Callable[[float], None] = time.sleep
    printed: int = 0

    def run(self) -> None:
        from stockade.verifier_client import VerifierRefused, VerifierUnavailable

        while True:
            started = time.monotonic()
            received = False
            try:
                with self.connect() as verifier:
                    for event in self._events(verifier):
                        received = True
                        self.backoff.reset()
                        if self._take(event):
                            return
                if self.until_idle:
                    return  # every stored event was sent
                if received or time.monotonic() - started >= SHORT_STREAM_SECONDS:
                    self.backoff.reset()
                    continue  # the stream reached its lifetime: resume at once
                reason = "the verifier ended the stream at once"
            except VerifierRefused as error:
                if error.status not in RETRIED_STATUSES:
                    raise
                reason = str(error)
                if error.retry_after is not None:
                    self._wait(error.retry_after, reason)
                    continue
            except VerifierUnavailable as error:
                reason = str(error)
            self._wait(self.backoff.next_delay(), reason)

    def _events(self, verifier: VerifierClient) -> Iterator[dict[str, Any]]:
        yield from verifier.stream_events(self.cursor, follow=not self.until_idle)

    def _take(self, event: dict[str, Any]) -> bool:
        """Print ``event`` unless already printed or filtered out; True when ``--limit`` is
        reached."""
        position = event.get("id")
        if not isinstance(position, int):
            return False
        if self.cursor is not None and position <= self.cursor:
            return False  # already seen: a stream never sends it twice, but be sure
        if _matches(event, self.node):
            self.emit(event)
            self.printed += 1
        self.cursor = position
        return self.limit is not None and self.printed >= self.limit

    def _wait(self, delay: float, reason: str) -> None:
        resume = "the start" if self.cursor is None else f"event {self.cursor}"
        self.warn(f"stockade: event stream: {reason}; resuming after {resume} in {delay:.1f}s")
        self.sleep(delay)


def _stop(signum: int, frame: FrameType | None) -> None:
    if _Signals.printing:
        _Signals.pending = True
        return
    raise _Stopped


@app.command("watch")
def watch(
    verifier: VerifierOption = None,
    ca: CaOption = None,
    token_file: ReadTokenOption = None,
    after: Annotated[
        int | None,
        typer.Option(
            "--after",
            min=0,
            max=2**63 - 1,
            help="start after this event id (a cursor printed earlier) [default: the first]",
        ),
    ] = None,
    node: Annotated[
        str | None, typer.Option("--node", help="only this node's events (id or name)")
    ] = None,
    output: FormatOption = OutputFormat.TEXT,
    until_idle: Annotated[
        bool,
        typer.Option("--until-idle", help="exit 0 once every stored event is printed"),
    ] = False,
    limit: Annotated[
        int | None, typer.Option("--limit", min=1, help="exit 0 after printing N events")
    ] = None,
    max_backoff: Annotated[
        float,
        typer.Option(
            "--max-backoff", min=0.1, help="longest wait, in seconds, before reconnecting"
        ),
    ] = 30.0,
) -> None:
    """Print the verifier's events as they happen, resuming after a dropped stream from the
    last event printed (no event twice, none skipped). SIGINT/SIGTERM exit 0."""

    def emit(event: dict[str, Any]) -> None:
        line = json.dumps(event, sort_keys=True) if output is OutputFormat.JSON else None
        _Signals.printing = True
        try:
            print(line if line is not None else format_event(event), flush=True)
        finally:
            _Signals.printing = False
        if _Signals.pending:
            raise _Stopped

    def warn(message: str) -> None:
        print(message, file=sys.stderr, flush=True)

    watcher = Watcher(
        connect=lambda: client(verifier, ca, token_file),
        emit=emit,
        warn=warn,
        cursor=after,
        node=node,
        until_idle=until_idle,
        limit=limit,
        backoff=Backoff(min(INITIAL_BACKOFF, max_backoff), max_backoff),
    )
    previous = {sig: signal.signal(sig, _stop) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        watcher.run()
    except _Stopped:
        pass
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
