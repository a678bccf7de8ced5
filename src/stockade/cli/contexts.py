"""Contexts: the verifiers an operator talks to, by name (``stockade config``).

A context names a verifier URL and, optionally, the TLS CA, the token file and the pinned
verifier key to use with it. They live in one YAML file, ``$STOCKADE_CONFIG`` or
``${XDG_CONFIG_HOME:-~/.config}/stockade/config.yaml``::

    current-context: prod
    contexts:
      prod:
        verifier: https://verifier.example:8443
        ca: /home/op/prod/ca.pem
        token-file: /home/op/prod/reader-token
        verifier-key: /home/op/prod/verifier-key.pub.pem

Every command that reaches a verifier resolves its connection here (``resolve``), field by
field: the flag, else its environment variable, else the context (``--context NAME`` or
``$STOCKADE_CONTEXT``, else the file's current context). A context lends its CA, token and
key only to its own verifier: when the verifier comes from a flag or the environment and is
another URL, the current context is left out (its token is never sent elsewhere), and a
context named with ``--context`` is an error.

``resolve``, ``parse_config`` and ``render_config`` are pure; ``config_path``,
``load_config`` and ``save_config`` do the file I/O.
"""

from __future__ import annotations

import os
import re
from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from stockade.errors import InputError

CONFIG_ENV = "STOCKADE_CONFIG"
MAX_CONFIG_BYTES = 1024 * 1024  # contexts files are a few hundred bytes
CONTEXT_ENV = "STOCKADE_CONTEXT"
OPERATOR_TOKEN_ENV = "STOCKADE_OPERATOR_TOKEN"  # the token itself (verifier_client)
# Where the root callback leaves ``--context`` for the command (``click.Context.meta``).
META_KEY = "stockade.context"

_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,62}")
_PATH_FIELDS = ("ca", "token-file", "verifier-key")
_FIELDS = ("verifier", *_PATH_FIELDS)
_TOP_LEVEL = ("current-context", "contexts")


@dataclass(frozen=True)
class Context:
    """One named verifier, and what to reach it with (paths are absolute)."""

    name: str
    verifier: str
    ca: Path | None = None
    token_file: Path | None = None
    verifier_key: Path | None = None


@dataclass(frozen=True)
class Config:
    """The contexts file: every context by name, and the current one (if any)."""

    contexts: Mapping[str, Context] = field(default_factory=dict)
    current: str | None = None


@dataclass(frozen=True)
class Connection:
    """How one command reaches the verifier; ``context``: the context that filled the
    fields it left empty, if any."""

    verifier: str | None = None
    ca: Path | None = None
    token_file: Path | None = None
    verifier_key: Path | None = None
    context: str | None = None


def check_name(name: str) -> str:
    """A context name: letters, digits, ``.``, ``_`` and ``-``, at most 63 characters."""
    if not _NAME.fullmatch(name):
        raise InputError(
            f"context name {name!r}: use letters, digits, '.', '_' and '-' (at most 63, "
            "starting with a letter or digit)"
        )
    return name


def check_verifier_url(url: str, where: str = "--verifier") -> str:
    """An http(s) URL with a host; ``InputError`` naming ``where`` otherwise."""
    scheme, separator, rest = url.partition("://")
    if not separator or scheme.lower() not in ("http", "https") or not rest.strip("/"):
        raise InputError(f"{where}: {url!r} is not an http:// or https:// URL")
    return url


def same_verifier(first: str, second: str) -> bool:
    return first.rstrip("/") == second.rstrip("/")


def resolve(
    given: Connection,
    config: Config | None,
    *,
    selected: str | None = None,
    token_in_environment: bool = False,
    where: str = "the contexts file",
) -> Connection:
    """The connection one command uses: each field of ``given`` (the flag, or its
    environment variable, already merged by the option), else the context's.

    The context is ``selected`` (``--context``/``$STOCKADE_CONTEXT``), else the file's current
    one. ``token_in_environment``: ``$STOCKADE_OPERATOR_TOKEN`` holds a token, which comes
    before the context's token file. A given verifier that is not the context's leaves the
    current context out (its credentials are for its own verifier) and makes a selected one
    an error."""
    if config is None:
        if selected is not None:
            raise InputError(f"no context {selected!r}: {where} holds no contexts")
        return given
    name = selected if selected is not None else config.current
    if name is None:
        return given
    context = config.contexts.get(name)
    if context is None:
        known = ", ".join(sorted(config.contexts)) or "none"
        raise InputError(f"no context {name!r} in {where} (contexts: {known})")
    if given.verifier and not same_verifier(given.verifier, context.verifier):
        if selected is None:
            return given
        raise InputError(
            f"context {name!r} is for verifier {context.verifier}, but the verifier given "
            f"(--verifier or $STOCKADE_VERIFIER) is {given.verifier}"
        )
    token_file = given.token_file
    if token_file is None and not token_in_environment:
        token_file = context.token_file
    return Connection(
        verifier=given.verifier or context.verifier,
        ca=given.ca if given.ca is not None else context.ca,
        token_file=token_file,
        verifier_key=given.verifier_key if given.verifier_key is not None else context.verifier_key,
        context=name,
    )


# -- the file as data -----------------------------------------------------------------


def parse_config(document: Any, where: str) -> Config:
    """The contexts file's document (YAML as JSON carries it); ``InputError`` naming
    ``where`` and the field at fault. An empty document is no contexts."""
    if document is None:
        return Config()
    if not isinstance(document, dict):
        raise InputError(f"{where}: the document is not a mapping")
    for key in document:
        if key not in _TOP_LEVEL:
            raise InputError(f"{where}: unknown field {key!r} (expected {', '.join(_TOP_LEVEL)})")
    entries = document.get("contexts")
    if entries is None:
        entries = {}
    if not isinstance(entries, dict):
        raise InputError(f"{where}: contexts: not a mapping of context names")
    contexts = {name: _parse_context(name, entry, where) for name, entry in entries.items()}
    current = document.get("current-context")
    if current is not None:
        if not isinstance(current, str):
            raise InputError(f"{where}: current-context: not a string")
        if current not in contexts:
            raise InputError(f"{where}: current-context: no context named {current!r}")
    return Config(contexts, current)


def _parse_context(name: str, entry: Any, where: str) -> Context:
    try:
        check_name(name)
    except InputError as error:
        raise InputError(f"{where}: contexts: {error}") from None
    at = f"{where}: contexts.{name}"
    if not isinstance(entry, dict):
        raise InputError(f"{at}: not a mapping")
    for key, value in entry.items():
        if key not in _FIELDS:
            raise InputError(f"{at}: unknown field {key!r} (expected {', '.join(_FIELDS)})")
        if not isinstance(value, str) or not value:
            raise InputError(f"{at}.{key}: not a non-empty string")
        if key in _PATH_FIELDS and not os.path.isabs(value):
            raise InputError(f"{at}.{key}: {value!r} is not an absolute path")
    if "verifier" not in entry:
        raise InputError(f"{at}: no verifier")
    check_verifier_url(entry["verifier"], f"{at}.verifier")

    def path(key: str) -> Path | None:
        return Path(entry[key]) if key in entry else None

    return Context(name, entry["verifier"], path("ca"), path("token-file"), path("verifier-key"))


def render_config(config: Config) -> str:
    """The file's text: JSON, indented (YAML 1.2 is a superset, so it stays a YAML file a
    person may edit as YAML). Written as JSON because it is read on every command that uses
    a context, and the standard library reads JSON without the ~13 ms of importing PyYAML."""
    import json

    contexts: dict[str, dict[str, str]] = {}
    for name in sorted(config.contexts):
        context = config.contexts[name]
        entry = {"verifier": context.verifier}
        for key, value in (
            ("ca", context.ca),
            ("token-file", context.token_file),
            ("verifier-key", context.verifier_key),
        ):
            if value is not None:
                entry[key] = str(value)
        contexts[name] = entry
    document = {"current-context": config.current, "contexts": contexts}
    return json.dumps(document, indent=2, ensure_ascii=False) + "\n"


def with_context(config: Config, context: Context) -> Config:
    """``config`` with ``context`` added or replaced; the first context becomes current."""
    contexts = {**config.contexts, context.name: context}
    return replace(config, contexts=contexts, current=config.current or context.name)


def without_context(config: Config, name: str) -> Config:
    contexts = {key: value for key, value in config.contexts.items() if key != name}
    current = None if config.current == name else config.current
    return Config(contexts, current)


# -- the file on disk -------------------------------------------------------------------


def config_path(environ: Mapping[str, str] | None = None) -> Path:
    """``$STOCKADE_CONFIG``, else ``$XDG_CONFIG_HOME/stockade/config.yaml`` (an absolute
    ``XDG_CONFIG_HOME`` only, as the XDG spec says), else ``~/.config/stockade/config.yaml``."""
    environ = os.environ if environ is None else environ
    explicit = environ.get(CONFIG_ENV)
    if explicit:
        return Path(explicit)
    xdg = environ.get("XDG_CONFIG_HOME", "")
    base = Path(xdg) if os.path.isabs(xdg) else Path(os.path.expanduser("~")) / ".config"
    return base / "stockade" / "config.yaml"


def load_config(path: Path) -> Config | None:
    """The contexts file at ``path``; None when there is none."""
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        return None
    except OSError as error:
        raise InputError(
            f"cannot read the contexts file '{path}': {error.strerror or error}"
        ) from None
    where = f"contexts file '{path}'"
    if data.lstrip().startswith(b"{"):  # as written by save_config: JSON, read strictly
        from stockade.strict_json import loads_strict

        document = loads_strict(data, where, max_size=MAX_CONFIG_BYTES, error=InputError)
        return parse_config(document, where)
    from stockade.strict_yaml import load_yaml  # edited by hand as YAML

    try:
        document = load_yaml(data, where)
    except InputError as error:  # libyaml's message spans lines: one line here
        raise InputError(" ".join(str(error).split())) from None
    return parse_config(document, where)


def save_config(path: Path, config: Config) -> None:
    """Write the contexts file atomically, 0600 (it names token files), its directory 0700
    when created."""
    from stockade.home import write_atomic

    try:
        path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
        write_atomic(path, render_config(config), mode=0o600)
    except OSError as error:
        raise InputError(
            f"cannot write the contexts file '{path}': {error.strerror or error}"
        ) from None


def absolute(path: Path) -> Path:
    """``path`` made absolute (``~`` expanded), symbolic links kept: a context keeps naming
    the link an operator rotates."""
    return Path(os.path.abspath(os.path.expanduser(path)))
