"""Contexts (``stockade config``): the resolution rule (flag > environment > context, a
context's credentials only for its own verifier), the file (strict, 0600, absolute paths)
and the commands, end to end; a malformed file is one typed error naming file and field."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from stockade.cli.contexts import (
    Config,
    Connection,
    Context,
    config_path,
    load_config,
    parse_config,
    render_config,
    resolve,
    save_config,
    with_context,
    without_context,
)
from stockade.errors import InputError
from support.cli import one_error_line, run_stockade

PROD = Context(
    "prod",
    "https://verifier.example:8443",
    Path("/etc/prod/ca.pem"),
    Path("/etc/prod/token"),
    Path("/etc/prod/key.pem"),
)
DEV = Context("dev", "http://127.0.0.1:8080")
CONFIG = Config({"prod": PROD, "dev": DEV}, "prod")


# -- resolve: pure ---------------------------------------------------------------------


def test_every_empty_field_comes_from_the_current_context():
    assert resolve(Connection(), CONFIG) == Connection(
        PROD.verifier, PROD.ca, PROD.token_file, PROD.verifier_key, "prod"
    )


def test_a_flag_or_variable_comes_before_the_context():
    given = Connection(PROD.verifier + "/", Path("/mine/ca.pem"), Path("/mine/token"))
    resolved = resolve(given, CONFIG)
    assert (resolved.verifier, resolved.ca, resolved.token_file) == (
        given.verifier,
        given.ca,
        given.token_file,
    )
    assert resolved.verifier_key == PROD.verifier_key and resolved.context == "prod"


def test_a_token_in_the_environment_comes_before_the_contexts_token_file():
    resolved = resolve(Connection(), CONFIG, token_in_environment=True)
    assert resolved.token_file is None and resolved.ca == PROD.ca


def test_another_verifier_leaves_the_current_context_out():
    given = Connection("https://elsewhere.example")
    assert resolve(given, CONFIG) == given  # its token is never sent to another verifier


def test_another_verifier_with_a_selected_context_is_an_error():
    with pytest.raises(InputError, match="context 'prod' is for verifier"):
        resolve(Connection("https://elsewhere.example"), CONFIG, selected="prod")


def test_a_selected_context_comes_before_the_current_one():
    resolved = resolve(Connection(), CONFIG, selected="dev")
    assert resolved == Connection(DEV.verifier, context="dev")


def test_an_unknown_selected_context_is_an_error_naming_the_known_ones():
    with pytest.raises(InputError, match=r"no context 'staging' in .*contexts: dev, prod"):
        resolve(Connection(), CONFIG, selected="staging")
    with pytest.raises(InputError, match="no context 'staging'"):
        resolve(Connection(), None, selected="staging")


def test_no_file_and_no_current_context_change_nothing():
    given = Connection("https://v.example")
    assert resolve(given, None) == given
    assert resolve(Connection(), Config({"dev": DEV})) == Connection()


# -- the file ----------------------------------------------------------------------------


def test_the_file_round_trips_and_quotes_every_scalar(tmp_path: Path):
    odd = Context("odd", "https://v.example/#: x", Path("/p/with: colon/# and 'quotes'"))
    config = with_context(CONFIG, odd)
    path = tmp_path / "config.yaml"
    save_config(path, config)
    assert load_config(path) == config
    assert stat.S_IMODE(path.stat().st_mode) == 0o600


def test_the_first_context_becomes_current_and_deleting_it_leaves_none():
    first = with_context(Config(), DEV)
    assert first.current == "dev"
    assert with_context(first, PROD).current == "dev"
    assert without_context(with_context(first, PROD), "dev") == Config({"prod": PROD}, None)


@pytest.mark.parametrize(
    ("document", "field"),
    [
        ([], "not a mapping"),
        ({"current": "prod"}, "unknown field 'current'"),
        ({"contexts": ["prod"]}, "contexts: not a mapping"),
        ({"contexts": {"prod": {"ca": "/ca.pem"}}}, "contexts.prod: no verifier"),
        ({"contexts": {"prod": {"verifier": "ftp://x"}}}, "contexts.prod.verifier"),
        ({"contexts": {"prod": {"verifier": "https://x", "ca": "ca.pem"}}}, "contexts.prod.ca"),
        ({"contexts": {"prod": {"verifier": "https://x", "token": "/t"}}}, "unknown field 'token'"),
        ({"contexts": {"prod": {"verifier": 3}}}, "contexts.prod.verifier: not a non-empty"),
        ({"contexts": {"bad name": {"verifier": "https://x"}}}, "context name 'bad name'"),
        ({"current-context": "gone", "contexts": {}}, "current-context: no context"),
        ({"current-context": 7}, "current-context: not a string"),
    ],
)
def test_a_malformed_document_names_the_field(document: object, field: str):
    with pytest.raises(InputError, match="contexts file 'F'") as raised:
        parse_config(document, "contexts file 'F'")
    assert field in str(raised.value)


def test_an_empty_file_is_no_contexts(tmp_path: Path):
    path = tmp_path / "config.yaml"
    path.write_text("")
    assert load_config(path) == Config()
    assert load_config(tmp_path / "absent.yaml") is None
    assert json.loads(render_config(Config())) == {"current-context": None, "contexts": {}}


def test_where_the_file_lives():
    assert config_path({"STOCKADE_CONFIG": "/x/c.yaml"}) == Path("/x/c.yaml")
    assert config_path({"XDG_CONFIG_HOME": "/xdg"}) == Path("/xdg/stockade/config.yaml")
    home = Path(os.path.expanduser("~"))
    assert config_path({"XDG_CONFIG_HOME": "relative"}) == home / ".config/stockade/config.yaml"
    assert config_path({}) == home / ".config/stockade/config.yaml"


# -- the commands, end to end --------------------------------------------------------------


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    environ = {
        key: value
        for key, value in os.environ.items()
        if not key.startswith("STOCKADE_") or key == "STOCKADE_EXECUTABLE"
    }
    return {**environ, "STOCKADE_CONFIG": str(tmp_path / "conf" / "config.yaml")}


def test_set_use_get_and_delete_contexts(tmp_path: Path, env: dict[str, str]):
    (tmp_path / "token").write_text("t0ken\n")
    made = run_stockade(
        "config", "set-context", "prod", "--verifier", "https://127.0.0.1:1",
        "--token-file", "token", env=env, cwd=tmp_path,
    )  # fmt: skip
    assert made.returncode == 0, made.stderr
    assert "created (current)" in made.stdout
    assert run_stockade("config", "set-context", "dev", "--verifier", "http://127.0.0.1:2",
                        env=env).returncode == 0  # fmt: skip
    path = Path(env["STOCKADE_CONFIG"])
    assert stat.S_IMODE(path.stat().st_mode) == 0o600
    stored = load_config(path)
    assert stored is not None and stored.contexts["prod"].token_file == tmp_path / "token"

    listed = json.loads(run_stockade("config", "get-contexts", "--format", "json", env=env).stdout)
    assert listed["current"] == "prod"
    assert [(c["name"], c["current"]) for c in listed["contexts"]] == [
        ("dev", False),
        ("prod", True),
    ]
    table = run_stockade("config", "get-contexts", env=env).stdout.splitlines()
    assert table[0].split() == ["NAME", "VERIFIER", "CA", "TOKEN", "FILE", "VERIFIER", "KEY"]
    assert table[2].startswith("*") and "prod" in table[2]

    assert run_stockade("config", "current-context", env=env).stdout == "prod\n"
    assert run_stockade("--context", "dev", "config", "current-context", env=env).stdout == "dev\n"
    assert run_stockade("config", "use-context", "dev", env=env).returncode == 0
    assert run_stockade("config", "current-context", env=env).stdout == "dev\n"
    assert run_stockade("config", "delete-context", "dev", env=env).returncode == 0
    one_error_line(run_stockade("config", "current-context", env=env), 2)
    one_error_line(run_stockade("config", "use-context", "dev", env=env), 2)


def test_a_new_context_needs_a_verifier_and_a_valid_name(env: dict[str, str]):
    assert "--verifier" in one_error_line(run_stockade("config", "set-context", "x", env=env), 2)
    bad = run_stockade("config", "set-context", "a b", "--verifier", "https://v", env=env)
    assert "context name" in one_error_line(bad, 2)
    bad = run_stockade("config", "set-context", "x", "--verifier", "v.example", env=env)
    assert "not an http:// or https:// URL" in one_error_line(bad, 2)


def test_commands_reach_the_verifier_of_the_context(tmp_path: Path, env: dict[str, str]):
    token = tmp_path / "absent-token"
    run_stockade("config", "set-context", "prod", "--verifier", "https://127.0.0.1:1", env=env)
    run_stockade("config", "set-context", "dev", "--verifier", "http://127.0.0.1:2",
                 "--token-file", str(token), env=env)  # fmt: skip
    current = run_stockade("nodes", "list", env=env)
    assert "https://127.0.0.1:1 unreachable" in one_error_line(current, 2)
    # --context and $STOCKADE_CONTEXT pick another; its token file is read (and missing)
    chosen = run_stockade("--context", "dev", "nodes", "list", env=env)
    assert str(token) in one_error_line(chosen, 2)
    chosen = run_stockade("nodes", "list", env={**env, "STOCKADE_CONTEXT": "dev"})
    assert str(token) in one_error_line(chosen, 2)
    # the flag comes first, and another verifier does not get the current context's token
    flagged = run_stockade("--context", "dev", "nodes", "list", "--verifier", "http://127.0.0.1:3",
                           env=env)  # fmt: skip
    assert "context 'dev' is for verifier" in one_error_line(flagged, 2)
    run_stockade("config", "use-context", "dev", env=env)
    elsewhere = run_stockade("nodes", "list", "--verifier", "http://127.0.0.1:3", env=env)
    assert "http://127.0.0.1:3 unreachable" in one_error_line(elsewhere, 2)
    variable = run_stockade("nodes", "list", env={**env, "STOCKADE_VERIFIER": "http://127.0.0.1:4"})
    assert "http://127.0.0.1:4 unreachable" in one_error_line(variable, 2)


def test_context_errors_are_json_with_format_json(env: dict[str, str]):
    unknown = run_stockade("--context", "nope", "nodes", "list", "--format", "json", env=env)
    assert "no context 'nope'" in one_error_line(unknown, 2)
    assert unknown.stderr.startswith("{")
    assert json.loads(unknown.stderr)["error"] == "input"
    absent = run_stockade("nodes", "list", "--format", "json", env=env)
    assert "no verifier URL" in one_error_line(absent, 2)
    assert json.loads(absent.stderr)["error"] == "input"


def test_a_malformed_file_is_one_error_naming_file_and_field(env: dict[str, str]):
    path = Path(env["STOCKADE_CONFIG"])
    path.parent.mkdir()
    path.write_text("contexts:\n  prod:\n    verifier: https://v\n    ca: relative.pem\n")
    for args in (("nodes", "list"), ("config", "get-contexts")):
        message = one_error_line(run_stockade(*args, env=env), 2)
        assert str(path) in message and "contexts.prod.ca" in message, message
    path.write_text("contexts: [unclosed\n")
    assert str(path) in one_error_line(run_stockade("config", "get-contexts", env=env), 2)
    path.write_text("contexts:\n  a: {verifier: https://v}\n  a: {verifier: https://w}\n")
    assert "twice" in one_error_line(run_stockade("nodes", "list", env=env), 2)


def test_the_verifier_key_comes_from_the_context(tmp_path: Path, env: dict[str, str]):
    key = tmp_path / "verifier-key.pub.pem"
    key.write_text("not a key\n")
    no_key = run_stockade("results", "show", "node-a", "--verifier", "https://127.0.0.1:1",
                          env=env)  # fmt: skip
    assert "no verifier key pinned" in one_error_line(no_key, 2)
    run_stockade("config", "set-context", "prod", "--verifier", "https://127.0.0.1:1",
                 "--verifier-key", str(key), env=env)  # fmt: skip
    keyed = run_stockade("results", "show", "node-a", env=env)
    message = one_error_line(keyed, 2)
    assert "no verifier key pinned" not in message  # the context's key was read


def test_a_file_edited_as_yaml_reads_like_the_written_one(tmp_path: Path):
    written = tmp_path / "written.yaml"
    save_config(written, CONFIG)
    edited = tmp_path / "edited.yaml"
    lines = ["# edited by hand", f"current-context: {CONFIG.current}", "contexts:"]
    for name, context in CONFIG.contexts.items():
        lines.append(f"  {name}:")
        lines.append(f"    verifier: {context.verifier}")
        for key, value in (
            ("ca", context.ca),
            ("token-file", context.token_file),
            ("verifier-key", context.verifier_key),
        ):
            if value is not None:
                lines.append(f"    {key}: {value}")
    edited.write_text("\n".join(lines) + "\n")
    assert load_config(edited) == load_config(written) == CONFIG


@pytest.mark.parametrize(
    "text",
    ['{"current-context": null, "contexts": {}, "contexts": {}}', '{"contexts": {"a": NaN}}'],
)
def test_the_json_form_is_read_strictly(tmp_path: Path, text: str):
    path = tmp_path / "config.yaml"
    path.write_text(text)
    with pytest.raises(InputError, match="contexts file"):
        load_config(path)
