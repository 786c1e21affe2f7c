"""The weights shipped in weights/ load by name and by default, keep the input path they were
trained with, and tell the sample data's degraded slices from its untouched ones (IM0001-2 untouched;
IM0003-4 simulated at 0.25/720 and 0.1/180 dose/views; see sample_data/README.md). Earlier releases
left the tree: their names say where they went, and the headers they were stored with still read."""

from __future__ import annotations

import hashlib
import json
import subprocess
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

from clinreadnet_cli.checkpoint import (FORMAT, NAMED_WEIGHTS, RETIRED_AT_COMMIT, RETIRED_WEIGHTS, SHIPPED_WEIGHTS, WeightsError,
                                        default_weights, read_config, resolve_weights)
from clinreadnet_cli.cli import app

REPO = Path(__file__).resolve().parents[1]
# The configs in the headers of weights v1 and v2 (in the git history at RETIRED_AT_COMMIT), written
# before input_path (v1), the MTMSA switches (v1) and sampling_grids (v1, v2) existed.
V1_CONFIG = {"classifier_heads": 4, "depths": [2, 2, 6, 2], "description": "Full ClinReadNet: SOQN + (S)W-MTMSA + HRPS loss", "drop_path_rate": 0.1, "drop_rate": 0.0, "embed_dim": 96, "img_size": 224, "in_chans": 1, "loss": {"coarse_group": 3, "coarse_rps": True, "cross_entropy": True, "entropy": True, "fine_rps": True, "hrps": True, "lambda_ce": 1.0, "lambda_coarse": 1.0, "lambda_entropy": 5e-05, "lambda_fine": 1.0}, "mtmsa": {"modulator_ratio": 0.25, "temperatures": ["low", "medium", "high"]}, "name": "clinreadnet", "num_classes": 21, "num_heads": [3, 6, 12, 24], "patch_size": 4, "soqn": {"beta": 0.8, "dropout": 0.1, "gamma": 0.2, "hidden_ratio": 0.5, "ordinal_branch": True, "sobel_branch": True, "weighted_residual": True}, "soqn_stages": [0, 1], "window_level": 40.0, "window_size": 7, "window_width": 350.0}  # noqa: E501
V2_CONFIG = {"bam": None, "classifier_heads": 4, "depths": [2, 2, 6, 2], "description": "Full ClinReadNet: SOQN + (S)W-MTMSA + HRPS loss (Tab. 3, row 4; Tab. 4-8, last row)", "drop_path_rate": 0.1, "drop_rate": 0.0, "embed_dim": 96, "img_size": 224, "in_chans": 1, "input_path": "decimate", "loss": {"coarse_group": 3, "coarse_rps": True, "cross_entropy": True, "entropy": True, "fine_rps": True, "head_partition": "contiguous", "hrps": True, "lambda_ce": 1.0, "lambda_coarse": 1.0, "lambda_entropy": 5e-05, "lambda_fine": 1.0, "partition_seed": 0}, "mtmsa": {"log_temperatures": True, "mixing_sharpness": True, "modulator_ratio": 0.25, "temperatures": ["low", "medium", "high"]}, "name": "clinreadnet", "num_classes": 21, "num_heads": [3, 6, 12, 24], "patch_size": 4, "pooling": "stages", "soqn": {"beta": 0.8, "dropout": 0.1, "gamma": 0.2, "hidden_ratio": 0.5, "ordinal_branch": True, "sobel_branch": True, "weighted_residual": True}, "soqn_stages": [0, 1], "window_level": 40.0, "window_size": 7, "window_width": 350.0}  # noqa: E501


def test_default_weights_are_v4_the_one_file_in_the_tree(monkeypatch):
    monkeypatch.delenv("CLINREADNET_WEIGHTS", raising=False)
    assert default_weights() == SHIPPED_WEIGHTS == NAMED_WEIGHTS["clinreadnet.sim-v4"] == resolve_weights("sim-v4")
    assert sorted(p.name for p in (REPO / "weights").glob("*.safetensors")) == [SHIPPED_WEIGHTS.name]
    config = read_config(SHIPPED_WEIGHTS)
    assert config.name == "clinreadnet" and (config.input_path, config.sampling_grids) == ("decimate", 4)


def test_older_headers_still_read_as_they_were_written(tmp_path):
    def stored(config: dict) -> Path:
        path = tmp_path / f"{len(config)}.safetensors"
        save_file({"x": torch.zeros(1)}, path, metadata={"format": FORMAT, "config": json.dumps(config)})
        return path

    v2 = read_config(stored(V2_CONFIG))  # one grid
    assert v2.name == "clinreadnet" and (v2.input_path, v2.sampling_grids) == ("decimate", 1)
    assert v2.mtmsa.log_temperatures and v2.mtmsa.mixing_sharpness
    v1 = read_config(stored(V1_CONFIG))  # resize, and the MTMSA as first built
    assert v1.name == "clinreadnet" and v1.input_path == "resize"
    assert not v1.mtmsa.log_temperatures and not v1.mtmsa.mixing_sharpness


@pytest.mark.parametrize("name", ["sim-v3", "clinreadnet.sim-v1"])
def test_a_retired_name_says_in_one_line_where_the_file_went(name, tmp_path, monkeypatch):
    file_name, _ = RETIRED_WEIGHTS[name if name.startswith("clinreadnet.") else f"clinreadnet.{name}"]
    command = f"git show {RETIRED_AT_COMMIT}:weights/{file_name} > {file_name}"
    with pytest.raises(WeightsError, match=command.split(" > ")[0]):
        resolve_weights(name)
    result = CliRunner().invoke(app, ["score", str(REPO / "sample_data" / "tiff"), "--weights", name])
    assert result.exit_code == 2 and command in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and not result.stdout
    monkeypatch.chdir(tmp_path)  # a file of that name, where it was asked for, is that file
    (tmp_path / name).write_bytes(b"")
    assert resolve_weights(name) == Path(name)


def test_the_retired_weights_are_in_the_history_where_the_docs_say():
    """The commit every doc names (tags do not travel with each clone) holds each retired file, the
    SHA-256 records name it by."""
    shallow = subprocess.run(["git", "rev-parse", "--is-shallow-repository"], cwd=REPO, capture_output=True, text=True)
    if shallow.returncode or shallow.stdout.strip() != "false":
        pytest.skip("not a git checkout with its full history")
    for file_name, sha256 in RETIRED_WEIGHTS.values():
        blob = subprocess.run(["git", "show", f"{RETIRED_AT_COMMIT}:weights/{file_name}"], cwd=REPO,
                              capture_output=True, check=True).stdout
        assert hashlib.sha256(blob).hexdigest() == sha256
    docs = [REPO / "README.md", REPO / "weights" / "README.md", *(REPO / "docs").glob("*.md"),
            *(REPO / "research").glob("*")]
    for doc in docs:
        if doc.is_file():
            assert "weights-sim-v" not in doc.read_text() and "research-log-2026-12" not in doc.read_text(), doc


def test_the_default_weights_rank_the_sample_degradations(monkeypatch):
    monkeypatch.delenv("CLINREADNET_WEIGHTS", raising=False)
    result = CliRunner().invoke(app, ["score", str(REPO / "sample_data" / "dicom"), "--format", "json"])
    assert result.exit_code == 0
    records = json.loads(result.stdout)
    assert [Path(r["path"]).name for r in records] == ["IM0001.dcm", "IM0002.dcm", "IM0003.dcm", "IM0004.dcm"]
    scores, noise = [r["score"] for r in records], [r["noise_hu"] for r in records]
    untouched, degraded = scores[:2], scores[2:]
    assert min(untouched) > max(degraded) and degraded[0] > degraded[1]  # more degraded, lower score
    assert degraded[1] <= 1.0  # 10 % dose, 180 views
    assert max(noise[:2]) < min(noise[2:]) and noise[2] < noise[3]  # the noise figure sees the dose loss too
    assert all(r["weights"] == "clinreadnet.sim-v4" for r in records)


@pytest.mark.parametrize("runtime, precision, tolerance", [
    ("openvino", "fp32", 1e-3),  # what --runtime auto takes on the CPU: torch's scores
    ("openvino", "bf16", 0.03), ("torch", "bf16", 0.03),  # past 0.01 (0.019 / 0.012): asked for, never auto
])
def test_the_default_weights_keep_their_order_on_every_cpu_runtime(runtime, precision, tolerance):
    """Each CPU runtime and precision scores the sample slices within ``tolerance`` of torch fp32,
    in the same order."""
    from clinreadnet_cli.api import Scorer

    def scores(**options) -> np.ndarray:
        scorer = Scorer(None, device="cpu", **options)
        return np.array([r["score"] for r in scorer.records([REPO / "sample_data"])])

    reference, other = scores(runtime="torch", precision="fp32"), scores(runtime=runtime, precision=precision)
    assert len(reference) == 6 and np.abs(other - reference).max() <= tolerance
    first, second = np.triu_indices(len(reference), 1)
    assert np.array_equal(np.sign(reference[first] - reference[second]), np.sign(other[first] - other[second]))
