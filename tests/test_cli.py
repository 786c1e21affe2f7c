from __future__ import annotations

import json
import subprocess
import sys

from typer.testing import CliRunner

from clinreadnet_cli.cli import app
from clinreadnet_cli.config import list_configs

runner = CliRunner()


def test_help_lists_the_three_commands():
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("score", "train", "evaluate"):
        assert command in result.stdout


def test_train_without_data_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["train", "--out", str(tmp_path / "run")])
    assert result.exit_code == 2 and "--data is required" in result.stderr and result.stdout == ""


def test_evaluate_without_weights_is_a_usage_error(tmp_path):
    result = runner.invoke(app, ["evaluate", "--data", str(tmp_path), "--weights", str(tmp_path / "none.safetensors")])
    assert result.exit_code == 2 and "no weights at" in result.stderr


def test_models_json_lists_every_config():
    result = runner.invoke(app, ["configs", "--format", "json"])
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
