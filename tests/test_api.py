"""The Python API gives the records the command line gives."""

from __future__ import annotations

import json

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
