"""``stockade run`` (the Typer command in stockade.cli.run) on a real runc container."""

from __future__ import annotations

import pytest
import typer
from runtime_support import REFERENCE, TAG, sign
from typer.testing import CliRunner

from stockade.agent.run import ContainerRefused
from stockade.cli.run import run

pytestmark = pytest.mark.swtpm


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command()(run)
    return app


def _invoke(node, layout, tmp_path, name, *command):
    args = [
        f"{layout}:{TAG}",
        "--reference",
        REFERENCE,
        "--tcti",
        node.tcti,
        "--log",
        str(node.log_path),
        "--policy",
        str(node.policy_path),
        "--org-key",
        str(node.org_pub),
        "--mount",
        f"{node.out}:/out",
        "--name",
        name,
        "--runc-root",
        str(tmp_path / "runc"),
        "--",
        *command,
    ]
    return CliRunner().invoke(_app(), args)


def test_stockade_run_passes_the_exit_status(node, keys, image_layout, tmp_path):
    sign(image_layout, REFERENCE, keys.build)
    result = _invoke(node, image_layout, tmp_path, "cli-ok", "/probe", "write", "/out/ran")
    assert result.exit_code == 0, result.output
    assert (node.out / "ran").exists()
    result = _invoke(node, image_layout, tmp_path, "cli-exit", "/probe", "exit", "7")
    assert result.exit_code == 7


def test_stockade_run_refusal_is_a_verification_failure(node, image_layout, tmp_path):
    result = _invoke(node, image_layout, tmp_path, "cli-refused", "/probe", "write", "/out/ran")
    assert isinstance(result.exception, ContainerRefused)
    assert result.exception.exit_code == 1
    assert "unsigned" in str(result.exception)
    assert not (node.out / "ran").exists()
