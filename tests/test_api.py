"""The Python API gives the records the command line gives."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from clinreadnet_cli import Scorer, score_array, score_paths
from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import save_weights
from clinreadnet_cli.cli import app
from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.readers import InputError

from .conftest import ct_phantom, tiny_config


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    torch.manual_seed(0)
    return save_weights(create_model(tiny_config()), tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_score_paths_gives_the_command_line_records(tmp_path, weights):
    write_series(ct_phantom(3, 96), tmp_path / "study")
    (tmp_path / "study" / "broken.dcm").write_bytes(b"DICM" * 10)
    cli = [json.loads(line) for line in
           CliRunner().invoke(app, ["score", str(tmp_path / "study"), "--weights", str(weights)]).stdout.splitlines()]
    assert score_paths(tmp_path / "study", weights=weights) == cli
    assert [r["slice"] for r in cli if "score" in r] == [0, 1, 2] and sum("error" in r for r in cli) == 1


def test_score_array_scores_one_slice_and_refuses_what_is_not_ct(weights):
    hu = ct_phantom(1, 96)[0]
    record = score_array(hu, weights=weights)
    assert 0 <= record["score"] <= 4 and record["noise_hu"] == pytest.approx(20, rel=0.15)
    assert record == Scorer(weights).score_array(hu)  # the cached scorer and a fresh one agree
    assert record["wed_mm"] is None  # no spacing, no mm; with one, the patient's size
    sized = score_array(hu, weights=weights, pixel_spacing_mm=(0.7, 0.7))
    assert sized["wed_mm"] > 0 and sized["score"] == record["score"]  # beside the score, never inside it
    with pytest.raises(InputError, match="constant image"):
        score_array(np.zeros((96, 96)), weights=weights)


def test_the_documented_snippet_runs_and_writes_nothing(tmp_path, monkeypatch, capsys):
    from pathlib import Path

    repo = Path(__file__).resolve().parents[1]
    text = (repo / "docs" / "api.md").read_text()
    snippet = text.split("```python\n", 1)[1].split("```", 1)[0]
    monkeypatch.chdir(repo)
    before = sorted(p.stat().st_mtime_ns for p in repo.rglob("*") if ".venv" not in p.parts and p.is_file())
    exec(compile(snippet, "docs/api.md", "exec"), {})
    scores = eval(capsys.readouterr().out.splitlines()[0])
    assert len(scores) == 4 and scores[-1] < scores[0]  # the sample's most degraded slice scores lowest
    after = sorted(p.stat().st_mtime_ns for p in repo.rglob("*") if ".venv" not in p.parts and p.is_file())
    assert before == after


def test_the_first_run_exports_in_a_child_and_never_imports_torch(weights, tmp_path):
    """The export (torch, about 1 GiB at its peak on the real model) runs in a child process: the
    process that then compiles and runs the model holds none of it, and a file whose tensors
    cannot be loaded is a WeightsError naming it."""
    pytest.importorskip("openvino")
    from safetensors import safe_open
    from safetensors.torch import load_file, save_file

    damaged = tmp_path / "damaged.safetensors"  # its header and config intact, one tensor missing
    tensors = load_file(weights)
    with safe_open(weights, "pt") as f:
        save_file({k: v for k, v in tensors.items() if k != sorted(tensors)[0]}, damaged, metadata=f.metadata())
    script = f"""
import json, sys
import numpy as np
from clinreadnet_cli import Scorer
from clinreadnet_cli.checkpoint import WeightsError
scorer = Scorer({str(weights)!r}, runtime="openvino")
scores = scorer.predict([np.zeros((1, 128, 128), np.float32)]).score.tolist()
try:
    Scorer({str(damaged)!r}, runtime="openvino")
    damaged = None
except WeightsError as exc:
    damaged = str(exc)
print(json.dumps({{"torch": "torch" in sys.modules, "scores": scores, "damaged": damaged}}))
"""
    env = {**os.environ, "CLINREADNET_CACHE": str(tmp_path / "cache")}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    answer = json.loads(done.stdout)
    assert answer["torch"] is False and len(answer["scores"]) == 1
    assert str(damaged) in answer["damaged"] and "missing" in answer["damaged"]  # the export child's own error
    (exported,) = (tmp_path / "cache" / "onnx").iterdir()  # the damaged file left no folder behind
    assert (exported / "model.onnx").is_file()


def test_a_cache_that_cannot_be_written_is_one_clear_error(weights, tmp_path, monkeypatch):
    pytest.importorskip("openvino")
    from clinreadnet_cli.config import ConfigError

    (tmp_path / "a-file").write_text("")
    monkeypatch.setenv("CLINREADNET_CACHE", str(tmp_path / "a-file"))
    with pytest.raises(ConfigError, match="cannot be written .*CLINREADNET_CACHE"):
        Scorer(weights, runtime="openvino")
