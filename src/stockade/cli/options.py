"""The options many commands share, declared once: output format, the Stockade home, and how
an operator reaches the verifier (URL, TLS CA, token, the pinned verifier key)."""

from __future__ import annotations

from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer

if TYPE_CHECKING:
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
    typer.Option("--verifier", envvar="STOCKADE_VERIFIER", help="verifier base URL"),
]
CaOption = Annotated[
    Path | None,
    typer.Option("--ca", envvar="STOCKADE_CA", help="CA certificate of the verifier's TLS"),
]
TokenFileOption = Annotated[
    Path | None,
    typer.Option("--token-file", help="operator token file [default: $STOCKADE_OPERATOR_TOKEN]"),
]
# Reads of trust state need a reader or operator credential (<data dir>/reader-token, or a
# named credential); the variable keeps its name for both.
ReadTokenOption = Annotated[
    Path | None,
    typer.Option(
        "--token-file",
        help="reader or operator token file [default: $STOCKADE_OPERATOR_TOKEN]",
    ),
]
VerifierKeyOption = Annotated[
    Path | None,
    typer.Option(
        "--verifier-key",
        envvar="STOCKADE_VERIFIER_KEY",
        help="the verifier's statement key to pin: its <data dir>/keys/verifier-key.pub.pem "
        "(or a JWK set saved from a channel you trust)",
    ),
]


def pinned_keys(path: Path | None) -> VerifierKeys:
    """The relying party's pinned verifier keys. Keys fetched from the verifier on the call
    being checked prove nothing, so there is no default."""
    from stockade.errors import InputError
    from stockade.statements import VerifierKeys

    if path is None:
        raise InputError(
            "no verifier key pinned: pass --verifier-key FILE (the verifier's "
            "keys/verifier-key.pub.pem) or set $STOCKADE_VERIFIER_KEY; a key fetched from the "
            "answer being checked would prove nothing"
        )
    return VerifierKeys.load(path)


def client(verifier: str | None, ca: Path | None, token_file: Path | None = None) -> VerifierClient:
    """An operator's client of the verifier (``--verifier``, ``--ca``, ``--token-file``)."""
    from stockade.verifier_client import VerifierClient

    return VerifierClient.from_options(verifier, ca, token_file)
