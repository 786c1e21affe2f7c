"""The weights shipped in weights/ load by default and tell the sample data's degraded slices
from its clean ones (files IM0001-4 untouched; IM0005-8 simulated at 0.5/1000, 0.25/720,
0.1/360 and 0.1/180 dose/views; see sample_data/README.md). LungFCP-01-0001 is a validation
patient of the shipped weights, Pancreas-CT-CB_001 a training patient."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

from typer.testing import CliRunner

from clinreadnet_cli.checkpoint import SHIPPED_WEIGHTS, read_config
from clinreadnet_cli.cli import app

REPO = Path(__file__).resolve().parents[1]


def test_shipped_weights_hold_the_full_model():
    assert read_config(SHIPPED_WEIGHTS).name == "clinreadnet"


def test_score_uses_the_shipped_weights_and_ranks_the_sample_degradations(monkeypatch):
    monkeypatch.delenv("CLINREADNET_WEIGHTS", raising=False)
    result = CliRunner().invoke(app, ["score", str(REPO / "sample_data" / "dicom"), "--format", "json"])
    assert result.exit_code == 0
    series = defaultdict(list)
    for record in json.loads(result.stdout):
        series[Path(record["path"]).parent.name].append(record["score"])
    assert sorted(series) == ["lungfcp-01-0001", "pancreas-ct-cb-001"]
    for name, scores in series.items():
        clean, degraded = scores[:4], scores[4:]
        assert min(clean) > max(degraded), name
        assert all(a > b for a, b in zip(degraded, degraded[1:])), name  # more degraded, lower score
        assert sum(clean) / 4 >= 3.0, name
        assert degraded[-1] <= 1.0, name  # 10 % dose, 180 views
