"""The options every daemon shares: a configuration file, the log format and level, and the
probe listener — and the one rule for where a setting comes from.

A daemon command (``verifier serve``, ``agent run``, ``kube webhook``, ``kube controller``,
``kube approve-csrs``) reads each setting from, first to last:

1. its flag on the command line;
2. its environment variable: an explicit one where the flag names it (``$STOCKADE_VERIFIER``),
   else ``<PREFIX>_<FLAG>`` (``--data-dir`` of ``verifier serve`` is
   ``$STOCKADE_VERIFIER_SERVE_DATA_DIR``; the prefix is :func:`daemon_context`'s);
3. its key in the ``--config`` file (YAML: each key is the flag without its dashes,
   ``data-dir: /var/lib/stockade``; a list for a repeatable flag; ``true``/``false`` for a
   switch);
4. its default.

That is Click's own order (command line > environment > ``default_map`` > default): the file
becomes the command's ``default_map`` in an eager callback that runs before any other option
is read. Every value in the file is converted by the flag's own type, so a file can say
nothing a flag could not; an unknown key, a wrong type or an unreadable file stops the start
with one line naming the file and the key (exit 2). Relative paths in a file are relative to
the file's directory. docs/configuration.md lists every key of every daemon
(``scripts/config_reference.py`` writes it from the commands; a test keeps it current).
"""

from __future__ import annotations

import typing
from dataclasses import dataclass
from pathlib import Path, PurePath
from typing import Annotated, Any

import typer
from typer import _click as click
from typer._click.exceptions import BadParameter
from typer.core import TyperOption

from stockade.logs import LogFormat, LogLevel

MAX_CONFIG_BYTES = 256 * 1024
CONFIG_FLAG = "--config"


def daemon_context(prefix: str) -> dict[str, Any]:
    """``context_settings`` of a daemon command: its environment-variable prefix."""
    return {"auto_envvar_prefix": prefix}


def config_key(param: click.Parameter) -> str:
    """The file key of an option: its first long flag without the dashes (``--data-dir`` ->
    ``data-dir``; ``--migrate/--no-migrate`` -> ``migrate``)."""
    flag = next((opt for opt in param.opts if opt.startswith("--")), param.opts[0])
    return flag.lstrip("-")


def _settable(param: click.Parameter) -> typing.TypeGuard[TyperOption]:
    """Options a file may set: all but ``--config`` and ``--help``."""
    return isinstance(param, TyperOption) and not {CONFIG_FLAG, "--help"} & set(param.opts)


def _element(param: TyperOption) -> Any:
    """The annotation of one value: ``Path`` for ``list[Path]``."""
    annotation = param.type_descriptor.annotation
    if param.type_descriptor.is_list:
        inner = typing.get_args(annotation)
        return inner[0] if inner else str
    return annotation


def _is_path(param: click.Parameter) -> bool:
    if not isinstance(param, TyperOption):
        return False
    element = _element(param)
    return param.type_descriptor.is_path or (
        isinstance(element, type) and issubclass(element, PurePath)
    )


def _file_value(param: click.Parameter, value: Any, base: Path) -> Any:
    """Relative paths in a file are relative to the file."""

    def anchored(item: Any) -> Any:
        if _is_path(param) and isinstance(item, str):
            path = Path(item).expanduser()
            return str(path if path.is_absolute() else base / path)
        return item

    if isinstance(value, list):
        return [anchored(item) for item in value]
    return anchored(value)


def _read_config(path: Path) -> dict[str, Any]:
    from stockade.errors import InputError
    from stockade.strict_yaml import load_yaml

    try:
        with path.open("rb") as stream:
            data = stream.read(MAX_CONFIG_BYTES + 1)
    except OSError as error:
        raise BadParameter(f"cannot read '{path}': {error.strerror}") from None
    if len(data) > MAX_CONFIG_BYTES:
        raise BadParameter(f"'{path}' is larger than {MAX_CONFIG_BYTES} bytes")
    try:
        document = load_yaml(data, str(path))
    except InputError as error:
        raise BadParameter(str(error)) from None
    if document is None:  # empty, or only comments
        return {}
    if not isinstance(document, dict):
        raise BadParameter(f"'{path}' must be a mapping of settings")
    return document


def load_config_file(ctx: click.Context, path: Path) -> dict[str, Any]:
    """``path`` checked against ``ctx.command``'s parameters, as a ``default_map``."""
    document = _read_config(path)
    params = {config_key(param): param for param in ctx.command.params if _settable(param)}
    defaults: dict[str, Any] = {}
    for key, raw in document.items():
        param = params.get(key)
        if param is None:
            known = ", ".join(sorted(params))
            raise BadParameter(f"{path}: unknown key '{key}' (the keys are: {known})")
        if param.multiple and not isinstance(raw, list):
            raise BadParameter(f"{path}: '{key}' must be a list")
        value = _file_value(param, raw, path.parent)
        try:
            param.get_runtime_param().coerce(value, param=param, ctx=ctx)
        except BadParameter as error:
            raise BadParameter(f"{path}: '{key}': {error.message}") from None
        defaults[param.name or key] = value
    return defaults


def _apply_config(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None:
        ctx.default_map = {**(ctx.default_map or {}), **load_config_file(ctx, value)}
    return value


ConfigOption = Annotated[
    Path | None,
    typer.Option(
        "--config",
        is_eager=True,
        callback=_apply_config,
        help="YAML file of settings: each key a flag without its dashes; flags and "
        "environment variables win over it (docs/configuration.md)",
    ),
]
LogFormatOption = Annotated[
    LogFormat,
    typer.Option("--log-format", help="text, or json: one object per line for collectors"),
]
LogLevelOption = Annotated[LogLevel, typer.Option("--log-level", help="least severe level logged")]
ProbeAddressOption = Annotated[
    str | None,
    typer.Option(
        "--probe-address",
        help="HOST:PORT for GET /livez, /readyz and /metrics (plain HTTP; off when unset)",
    ),
]


@dataclass(frozen=True)
class ConfigKey:
    """One documented key of a daemon's file."""

    key: str
    environment: str
    kind: str
    default: str
    help: str


def config_keys(command: click.Command, prefix: str) -> list[ConfigKey]:
    """Every key ``command`` accepts in its ``--config`` file, for the reference page."""
    keys: list[ConfigKey] = []
    for param in command.params:
        if not isinstance(param, TyperOption) or not _settable(param):
            continue
        environment = param.envvar if isinstance(param.envvar, str) else None
        if environment is None:
            environment = f"{prefix}_{(param.name or '').upper()}"
        kind = _kind(param)
        default = param.default
        shown = "" if default is None or callable(default) else str(_shown(default))
        keys.append(ConfigKey(config_key(param), environment, kind, shown, param.help or ""))
    return keys


def _kind(param: TyperOption) -> str:
    """The YAML type a key takes: boolean, integer, number, path, string, one of a choice, or
    a list of one of those."""
    descriptor = param.type_descriptor
    annotation = _element(param)
    if descriptor.is_choice:
        kind = "one of " + "|".join(str(getattr(c, "value", c)) for c in descriptor.choices or ())
    elif _is_path(param):
        kind = "path"
    else:
        kind = {bool: "boolean", int: "integer", float: "number"}.get(annotation, "string")
    return f"list of {kind}" if descriptor.is_list else kind


def _shown(value: Any) -> Any:
    if isinstance(value, list | tuple):
        return ", ".join(str(_shown(item)) for item in value) or "none"
    if isinstance(value, bool):
        return "true" if value else "false"
    return getattr(value, "value", value)


@dataclass(frozen=True)
class Daemon:
    """A long-running command: where its function lives, its environment prefix and the file
    it is conventionally given on a host (``--config``)."""

    command: str
    module: str
    function: str
    environment: str
    config_file: str

    def click_command(self) -> click.Command:
        from importlib import import_module

        single = typer.Typer(add_completion=False)
        single.command(context_settings=daemon_context(self.environment))(
            getattr(import_module(self.module), self.function)
        )
        return typer.main.get_command(single)


DAEMONS = (
    Daemon(
        "stockade verifier serve",
        "stockade.cli.verifier",
        "serve",
        "STOCKADE_VERIFIER_SERVE",
        "/etc/stockade/verifier.yaml",
    ),
    Daemon(
        "stockade agent run",
        "stockade.cli.agent",
        "run",
        "STOCKADE_AGENT_RUN",
        "/etc/stockade/agent.yaml",
    ),
    Daemon(
        "stockade kube serve",
        "stockade.cli.kube",
        "serve",
        "STOCKADE_KUBE_SERVE",
        "/etc/stockade/kube-serve.yaml",
    ),
    Daemon(
        "stockade kube controller",
        "stockade.cli.kube_controller",
        "controller",
        "STOCKADE_KUBE_CONTROLLER",
        "/etc/stockade/kube-controller.yaml",
    ),
    Daemon(
        "stockade kube approve-csrs",
        "stockade.cli.kube_controller",
        "approve_csrs",
        "STOCKADE_KUBE_APPROVE_CSRS",
        "/etc/stockade/kube-approve-csrs.yaml",
    ),
)


def reference_page() -> str:
    """docs/configuration.md: every key of every daemon's file, from the commands themselves."""
    lines = [
        "# Configuration files",
        "",
        "<!-- Written by scripts/config_reference.py from the commands; do not edit by hand",
        "     (tests/docs/test_configuration_reference.py fails when it is out of date). -->",
        "",
        "Every daemon reads its settings from, first to last: its flags, its environment",
        "variables, the YAML file given with `--config FILE` (or the `..._CONFIG_FILE`",
        "variable), and its defaults. Each key of a file is a flag without its dashes; a",
        "repeatable flag takes a list, a `--x/--no-x` switch `true` or `false`. Relative paths",
        "are relative to the file. An unknown key, a value of the wrong type, a key given twice,",
        "a YAML alias or a file over 256 KiB stops the start with one line naming the file and",
        "the key (exit code 2). Example files: `deploy/config/`.",
        "",
    ]
    for daemon in DAEMONS:
        command = daemon.click_command()
        lines += [
            f"## `{daemon.command}`",
            "",
            f"Conventional file: `{daemon.config_file}`; environment prefix "
            f"`{daemon.environment}_`.",
            "",
            "| key | type | default | environment | meaning |",
            "|---|---|---|---|---|",
        ]
        for key in config_keys(command, daemon.environment):
            meaning = " ".join(key.help.split()).replace("|", "\\|")
            default = f"`{key.default}`" if key.default else ""
            lines.append(
                f"| `{key.key}` | {key.kind.replace('|', ' or ')} | {default} | "
                f"`{key.environment}` | {meaning} |"
            )
        lines.append("")
    return "\n".join(lines)
