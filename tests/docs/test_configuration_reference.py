"""docs/configuration.md lists every key of every daemon's config file, as the commands define
them today; and every shipped example config loads cleanly into its daemon."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer import _click as click

from stockade.cli.daemon_options import DAEMONS, load_config_file, reference_page

ROOT = Path(__file__).resolve().parents[2]


def test_the_reference_page_is_current():
    page = (ROOT / "docs" / "configuration.md").read_text()
    assert page == reference_page(), "run: .venv/bin/python scripts/config_reference.py"


@pytest.mark.parametrize("daemon", DAEMONS, ids=lambda daemon: daemon.command)
def test_shipped_example_configs_load(daemon):
    example = ROOT / "deploy" / "config" / Path(daemon.config_file).name
    if not example.exists():
        pytest.skip(f"no example config shipped for {daemon.command}")
    command = daemon.click_command()
    with click.Context(command) as ctx:
        settings = load_config_file(ctx, example)
    assert settings, f"{example} sets nothing"
