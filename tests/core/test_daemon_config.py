"""Where a daemon's setting comes from: flag > environment > ``--config`` file > default, each
file value converted by its flag's own type, relative paths anchored at the file, and every
bad file stopped at start with one line naming the file and the key."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated

import pytest
import typer
from typer.testing import CliRunner

from stockade.cli.daemon_options import (
    DAEMONS,
    MAX_CONFIG_BYTES,
    ConfigOption,
    LogFormatOption,
    config_keys,
    daemon_context,
)
from stockade.logs import LogFormat

PREFIX = "STOCKADE_TEST_DAEMON"
seen: dict[str, object] = {}
app = typer.Typer()


@app.command(context_settings=daemon_context(PREFIX))
def daemon(
    config_file: ConfigOption = None,
    port: Annotated[int, typer.Option(help="TCP port")] = 8443,
    data_dir: Annotated[Path | None, typer.Option(help="where")] = None,
    webhook: Annotated[list[str] | None, typer.Option(help="URL")] = None,
    ek_ca: Annotated[list[Path] | None, typer.Option(help="CA")] = None,
    watch: Annotated[bool, typer.Option("--watch/--no-watch")] = True,
    verifier: Annotated[str, typer.Option(envvar="STOCKADE_TEST_VERIFIER")] = "https://default",
    log_format: LogFormatOption = LogFormat.TEXT,
) -> None:
    seen.update(
        port=port, data_dir=data_dir, webhook=webhook, ek_ca=ek_ca, watch=watch,
        verifier=verifier, log_format=log_format,
    )  # fmt: skip


def run(*args: str, env: dict[str, str] | None = None) -> tuple[int, str]:
    seen.clear()
    result = CliRunner().invoke(app, list(args), env={"COLUMNS": "2000", **(env or {})})
    return result.exit_code, result.output


@pytest.fixture(autouse=True)
def _clean_environment(monkeypatch):
    for name in list(os.environ):
        if name.startswith(PREFIX) or name == "STOCKADE_TEST_VERIFIER":
            monkeypatch.delenv(name)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "etc" / "daemon.yaml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(text)
    return path


def test_flag_beats_environment_beats_file_beats_default(tmp_path):
    config = write(tmp_path, "port: 9000\nverifier: https://from-file\nlog-format: json\n")
    assert run("--config", str(config))[0] == 0
    assert (seen["port"], seen["verifier"], seen["log_format"]) == (
        9000, "https://from-file", LogFormat.JSON,
    )  # fmt: skip
    environment = {f"{PREFIX}_PORT": "9100", "STOCKADE_TEST_VERIFIER": "https://from-env"}
    assert run("--config", str(config), env=environment)[0] == 0
    assert (seen["port"], seen["verifier"]) == (9100, "https://from-env")
    assert run("--config", str(config), "--port", "9200", env=environment)[0] == 0
    assert seen["port"] == 9200
    assert run()[0] == 0
    assert (seen["port"], seen["verifier"]) == (8443, "https://default")


def test_the_file_can_come_from_the_environment(tmp_path):
    config = write(tmp_path, "port: 9300\n")
    assert run(env={f"{PREFIX}_CONFIG_FILE": str(config)})[0] == 0
    assert seen["port"] == 9300


def test_lists_switches_and_relative_paths(tmp_path):
    config = write(
        tmp_path,
        "webhook: [https://a.example/x, https://b.example/y]\nwatch: false\n"
        "data-dir: data\nek-ca: [ca/root.pem, /abs/issuer.pem]\n",
    )
    assert run("--config", str(config))[0] == 0
    assert seen["webhook"] == ["https://a.example/x", "https://b.example/y"]
    assert seen["watch"] is False
    assert seen["data_dir"] == config.parent / "data"
    assert seen["ek_ca"] == [config.parent / "ca" / "root.pem", Path("/abs/issuer.pem")]


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("prot: 1\n", "unknown key 'prot'"),
        ("port: eighty\n", "'port'"),
        ("log-format: xml\n", "'log-format'"),
        ("webhook: https://one\n", "'webhook' must be a list"),
        ("config: other.yaml\n", "unknown key 'config'"),
        ("- port\n", "must be a mapping"),
        ("port: 1\nport: 2\n", "port"),
        ("a: &x [1]\nb: *x\n", "alias"),
        ("port: [\n", "daemon.yaml"),
    ],
)
def test_a_bad_file_stops_the_start_naming_file_and_key(tmp_path, text, message):
    config = write(tmp_path, text)
    code, output = run("--config", str(config))
    assert code == 2, output
    assert message in output
    assert "Traceback" not in output and seen == {}


def test_missing_and_oversized_files_are_refused(tmp_path):
    code, output = run("--config", str(tmp_path / "absent.yaml"))
    assert code == 2 and "cannot read" in output
    big = write(tmp_path, "# " + "x" * MAX_CONFIG_BYTES + "\n")
    code, output = run("--config", str(big))
    assert code == 2 and "larger than" in output


def test_an_empty_file_sets_nothing(tmp_path):
    assert run("--config", str(write(tmp_path, "# nothing yet\n")))[0] == 0
    assert seen["port"] == 8443


def test_every_daemon_takes_a_config_file_and_its_keys_are_its_flags():
    for daemon in DAEMONS:
        command = daemon.click_command()
        flags = {opt for param in command.params for opt in param.opts}
        assert "--config" in flags, f"{daemon.command} has no --config"
        assert "--log-format" in flags, f"{daemon.command} has no --log-format"
        keys = config_keys(command, daemon.environment)
        assert keys, daemon.command
        for key in keys:
            assert f"--{key.key}" in flags, (daemon.command, key.key)
            assert key.environment.startswith("STOCKADE_"), key
