from __future__ import annotations

import json
import subprocess
import sys

import pytest
from typer.testing import CliRunner

from clinreadnet_cli.cli import app
from clinreadnet_cli.config import list_configs

runner = CliRunner()


def test_help_lists_the_three_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("score", "train", "evaluate"):
        assert command in result.stdout


@pytest.mark.parametrize("command", ["train", "evaluate"])
def test_unbuilt_commands_say_so_on_stderr(command):
    result = runner.invoke(app, [command])
    assert result.exit_code == 2
    assert result.stdout == ""
    assert "not available in this version yet" in result.stderr


def test_models_json_lists_every_config():
    result = runner.invoke(app, ["models", "--format", "json"])
    assert result.exit_code == 0
    configs = json.loads(result.stdout)
    assert [c["name"] for c in configs] == list_configs()
    assert all(c["num_classes"] == 21 for c in configs)


def test_python_dash_m_entry_point():
    out = subprocess.run([sys.executable, "-m", "clinreadnet_cli", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("clinreadnet ")


def test_score_without_paths_is_a_usage_error():
    result = runner.invoke(app, ["score"])
    assert result.exit_code == 2 and result.stdout == ""
