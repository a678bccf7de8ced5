"""The options many commands share, declared once: output format, the Stockade home, and how
an operator reaches the verifier (URL, TLS CA, token, the pinned verifier key)."""

from __future__ import annotations

from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from typer._click.globals import get_current_context

if TYPE_CHECKING:
    from stockade.cli.contexts import Connection
    from stockade.statements import VerifierKeys
    from stockade.verifier_client import VerifierClient


class OutputFormat(StrEnum):
    TEXT = "text"
    JSON = "json"


FormatOption = Annotated[OutputFormat, typer.Option("--format")]
NodeArgument = Annotated[str, typer.Argument(help="node id or name")]
HomeOption = Annotated[
    Path | None,
    typer.Option("--home", help="Stockade home [default: $STOCKADE_HOME or ~/.stockade]"),
]
VerifierOption = Annotated[
    str | None,
    typer.Option(
        "--verifier",
        envvar="STOCKADE_VERIFIER",
        help="verifier base URL [default: the context's]",
    ),
]
CaOption = Annotated[
    Path | None,
    typer.Option(
        "--ca",
        envvar="STOCKADE_CA",
        help="CA certificate of the verifier's TLS [default: the context's]",
    ),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="operator token file [default: $STOCKADE_OPERATOR_TOKEN, else the context's]",
    ),
]
# Reads of trust state need a reader or operator credential (<data dir>/reader-token, or a
# named credential); the variable keeps its name for both.
ReadTokenOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="reader or operator token file [default: $STOCKADE_OPERATOR_TOKEN, else the "
        "context's]",
    ),
]
VerifierKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--verifier-key",
        envvar="STOCKADE_VERIFIER_KEY",
        help="the verifier's statement key to pin: its <data dir>/keys/verifier-key.pub.pem "
        "(or a JWK set saved from a channel you trust) [default: the context's]",
    ),
]


def connection(
    verifier: str | None = None,
    ca: Path | None = None,
    token_file: Path | None = None,
    verifier_key: Path | None = None,
    *,
    key: bool = False,
) -> Connection:
    """The verifier this command reaches and how: each option (or its environment variable),
    else the context's (``--context``/``$STOCKADE_CONTEXT``, else the current context of the
    contexts file; ``cli/contexts.py`` ``resolve``). The file is read only when an option is
    left empty."""
    import os

    from stockade.cli.contexts import (
        CONTEXT_ENV,
        META_KEY,
        OPERATOR_TOKEN_ENV,
        Connection,
        config_path,
        load_config,
        resolve,
    )

    given = Connection(verifier, ca, token_file, verifier_key)
    token_in_environment = bool(os.environ.get(OPERATOR_TOKEN_ENV))
    current = get_current_context(silent=True)
    selected = current.meta.get(META_KEY) if current is not None else None
    if selected is None:
        selected = os.environ.get(CONTEXT_ENV) or None
    complete = verifier and ca and (token_file or token_in_environment)
    if complete and (verifier_key or not key) and selected is None:
        return given
    path = config_path()
    return resolve(
        given,
        load_config(path),
        selected=selected,
        token_in_environment=token_in_environment,
        where=f"contexts file '{path}'",
    )


MAX_PINNED_KEY_BYTES = 64 * 1024


@dataclass(frozen=True)
class PinnedKeyFile:
    """The pinned verifier key file, read before the request (an unreadable or missing one
    stops the command before it calls anyone) and parsed after it, when its keys are used:
    a read command does not load the cryptography stack before its request."""

    path: Path
    data: bytes

    def keys(self) -> VerifierKeys:
        from stockade.statements import VerifierKeys

        return VerifierKeys.parse(self.data, f"verifier key file {self.path}")


def pinned_key_file(path: Path | None, verifier: str | None = None) -> PinnedKeyFile:
    """The relying party's pinned verifier key file (``--verifier-key``, else the context's
    for ``verifier``). Keys fetched from the verifier on the call being checked prove
    nothing, so there is no other default."""
    from stockade.errors import InputError

    if path is None:
        path = connection(verifier, key=True).verifier_key
    if path is None:
        raise InputError(
            "no verifier key pinned: pass --verifier-key FILE (the verifier's "
            "keys/verifier-key.pub.pem), set $STOCKADE_VERIFIER_KEY or add it to the context "
            "(stockade config set-context NAME --verifier-key FILE); a key fetched from the "
            "answer being checked would prove nothing"
        )
    try:
        with path.open("rb") as handle:
            data = handle.read(MAX_PINNED_KEY_BYTES + 1)
    except OSError as error:
        raise InputError(f"cannot read the verifier key file {path}: {error}") from None
    return PinnedKeyFile(path, data)


def pinned_keys(path: Path | None, verifier: str | None = None) -> VerifierKeys:
    """:func:`pinned_key_file`, parsed now."""
    return pinned_key_file(path, verifier).keys()


def client(verifier: str | None, ca: Path | None, token_file: Path | None = None) -> VerifierClient:
    """An operator's client of the verifier (``--verifier``, ``--ca``, ``--token-file``, else
    the context's)."""
    from stockade.errors import InputError
    from stockade.verifier_client import VerifierClient

    resolved = connection(verifier, ca, token_file)
    if not resolved.verifier:
        raise InputError(
            "no verifier URL: pass --verifier, set $STOCKADE_VERIFIER or choose a context "
            "(stockade config set-context NAME --verifier URL; stockade config use-context NAME)"
        )
    return VerifierClient.from_options(
        resolved.verifier, resolved.ca, resolved.token_file, plain_http=True
    )
