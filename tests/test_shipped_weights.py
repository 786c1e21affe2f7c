"""The weights shipped in weights/ load by name and by default, keep the input path they were
trained with, and tell the sample data's degraded slices from its clean ones (files IM0001-4 untouched; IM0005-8
simulated at 0.5/1000, 0.25/720, 0.1/360 and 0.1/180 dose/views; see sample_data/README.md)."""

from __future__ import annotations

import json
from collections import defaultdict
from pathlib import Path

import pytest
from typer.testing import CliRunner

from clinreadnet_cli.checkpoint import NAMED_WEIGHTS, SHIPPED_WEIGHTS, default_weights, read_config
from clinreadnet_cli.cli import app

REPO = Path(__file__).resolve().parents[1]


def test_default_weights_are_v4_and_each_keeps_its_input_path(monkeypatch):
    monkeypatch.delenv("CLINREADNET_WEIGHTS", raising=False)
    assert default_weights() == SHIPPED_WEIGHTS == NAMED_WEIGHTS["clinreadnet.sim-v4"]
    for name in ("clinreadnet.sim-v4", "clinreadnet.sim-v3"):
        config = read_config(NAMED_WEIGHTS[name])
        assert config.name == "clinreadnet" and (config.input_path, config.sampling_grids) == ("decimate", 4), name
    v2 = read_config(NAMED_WEIGHTS["clinreadnet.sim-v2"])  # stored before sampling_grids existed: one grid
    assert v2.name == "clinreadnet" and (v2.input_path, v2.sampling_grids) == ("decimate", 1)
    assert v2.mtmsa.log_temperatures and v2.mtmsa.mixing_sharpness
    v1 = read_config(NAMED_WEIGHTS["clinreadnet.sim-v1"])  # stored before input_path and the MTMSA switches existed
    assert v1.name == "clinreadnet" and v1.input_path == "resize"
    assert not v1.mtmsa.log_temperatures and not v1.mtmsa.mixing_sharpness


@pytest.mark.parametrize("weights", [None, "sim-v3", "sim-v2", "clinreadnet.sim-v1"])  # None: v4
def test_shipped_weights_rank_the_sample_degradations(weights, monkeypatch):
    monkeypatch.delenv("CLINREADNET_WEIGHTS", raising=False)
    args = ["score", str(REPO / "sample_data" / "dicom"), "--format", "json"]
    result = CliRunner().invoke(app, args + (["--weights", weights] if weights else []))
    assert result.exit_code == 0
    series = defaultdict(list)
    for record in json.loads(result.stdout):
        series[Path(record["path"]).parent.name].append(record)
        assert record["noise_hu"] > 0  # CT in HU: the noise figure is always there
    assert sorted(series) == ["lungfcp-01-0001", "pancreas-ct-cb-001"]
    untouched = []
    for series_name, records in series.items():
        scores = [r["score"] for r in records]
        clean, degraded = scores[:4], scores[4:]
        untouched += clean
        assert min(clean) > max(degraded), series_name
        assert all(a > b for a, b in zip(degraded, degraded[1:])), series_name  # more degraded, lower score
        assert degraded[-1] <= 1.0, series_name  # 10 % dose, 180 views
        noise = [r["noise_hu"] for r in records]
        assert max(noise[:4]) < min(noise[5:]), series_name  # the noise figure sees the dose loss too
    # Untouched slices average at least "good" (the lung series alone is a noisier acquisition, 23-25 HU).
    assert sum(untouched) / len(untouched) >= 3.0


@pytest.mark.parametrize("runtime, precision, tolerance", [
    ("openvino", "fp32", 1e-3),  # what --runtime auto takes on the CPU: torch's scores
    ("openvino", "bf16", 0.03), ("torch", "bf16", 0.03),  # past 0.01 (0.019 / 0.012): asked for, never auto
])
def test_the_default_weights_keep_their_order_on_every_cpu_runtime(runtime, precision, tolerance):
    """Each CPU runtime and precision scores the sample slices within ``tolerance`` of torch fp32,
    in the same order."""
    import numpy as np

    from clinreadnet_cli.api import Scorer

    def scores(**options) -> np.ndarray:
        scorer = Scorer(None, device="cpu", **options)
        return np.array([r["score"] for r in scorer.records([REPO / "sample_data"])])

    reference, other = scores(runtime="torch", precision="fp32"), scores(runtime=runtime, precision=precision)
    assert len(reference) == 21 and np.abs(other - reference).max() <= tolerance
    first, second = np.triu_indices(len(reference), 1)
    assert np.array_equal(np.sign(reference[first] - reference[second]), np.sign(other[first] - other[second]))
