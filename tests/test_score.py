from __future__ import annotations

import csv
import io
import json
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
import torch
from PIL import Image
from typer.testing import CliRunner

from clinreadnet_cli import records as record_io
from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import save_weights
from clinreadnet_cli.cli import app
from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.readers import Series, SliceRef
from clinreadnet_cli.api import Scorer
from clinreadnet_cli.patient_size import water_equivalent_diameter
from clinreadnet_cli.scoring import cuda_available

from .conftest import ct_phantom, tiny_config, unit_phantom

runner = CliRunner()
RECORD_KEYS = {"path", "series", "series_uid", "slice", "score", "grade", "class", "head_scores", "head_sd", "entropy",
               "uncertain", "noise_hu", "noise_note", "wed_mm", "noise_hu_size", "study_uid", "sop_uid", "instance_number", "z_mm",
               "slice_thickness_mm", "kvp", "mas", "ctdivol_mgy", "kernel", "manufacturer", "weights", "weights_sha256",
               "sampling_grids"}


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model(tiny_config()), tmp_path_factory.mktemp("w") / "tiny.safetensors")


@pytest.fixture(scope="module")
def study(tmp_path_factory) -> Path:
    """Good files of every kind, with broken ones beside them."""
    root = tmp_path_factory.mktemp("study")
    rng = np.random.default_rng(0)
    hu = ct_phantom(3, 96)
    paths = write_series(hu, root / "series")
    sitk.WriteImage(sitk.GetImageFromArray(hu.astype(np.int16)), str(root / "vol.nii.gz"))
    sitk.WriteImage(sitk.GetImageFromArray(hu[:2].astype(np.int16)), str(root / "vol.mha"))
    tifffile.imwrite(root / "slice.tif", unit_phantom(1)[0])
    bad = root / "bad"
    bad.mkdir()
    good = paths[0].read_bytes()
    (bad / "corrupt.dcm").write_bytes(good[:132] + b"\xff" * 400)  # DICM preamble, garbage after it
    (bad / "truncated.dcm").write_bytes(good[: len(good) // 2])  # header fine, pixel data cut
    (bad / "empty.dcm").write_bytes(b"")
    (bad / "protocol-notes").write_text("scanned on the new protocol\n")  # text, no extension
    (root / "README.md").write_text("# study\n")  # paperwork beside the images: skipped
    (root / "labels.json").write_text("{}")
    Image.fromarray(rng.integers(0, 255, (16, 16, 3), dtype=np.uint8)).save(bad / "photo.png")
    return root


def run(*args):
    return runner.invoke(app, ["score", *map(str, args)])


def test_good_files_scored_and_each_bad_one_a_single_clear_error(study, weights):
    result = run(study, "--weights", weights, "--format", "json")
    assert result.exit_code == 1
    records = json.loads(result.stdout)
    scored = [r for r in records if "score" in r]
    errors = {Path(r["path"]).name: r["error"] for r in records if "error" in r}
    assert len(scored) == 3 + 3 + 2 + 1  # series, NIfTI, MHA, TIFF
    assert set(errors) == {"corrupt.dcm", "truncated.dcm", "empty.dcm", "protocol-notes", "photo.png"}
    assert errors["empty.dcm"] == "empty file"
    assert "PNG is not a CT format" in errors["photo.png"]
    assert "not a DICOM file" in errors["protocol-notes"]
    assert "README.md: skipped, not an image" in result.stderr and "labels.json: skipped" in result.stderr
    assert "truncated" in errors["truncated.dcm"]  # refused from its header, before any decoding
    assert errors["corrupt.dcm"]
    for name in errors:  # each bad file is named once on stderr
        assert result.stderr.count(name) == 1


def test_json_schema(study, weights):
    records = json.loads(run(study / "series", study / "vol.nii.gz", "--weights", weights, "--format", "json").stdout)
    assert len(records) == 6
    for r in records:
        assert set(r) == RECORD_KEYS
        assert isinstance(r["score"], float) and 0 <= r["score"] <= 4
        assert r["grade"] in ("bad", "poor", "fair", "good", "excellent")
        assert isinstance(r["class"], int) and 0 <= r["class"] <= 20
        assert len(r["head_scores"]) == 4 and all(0 <= h <= 4 for h in r["head_scores"])
        assert isinstance(r["slice"], int)
        # The study's slices carry 20 HU white noise: the noise figure finds it.
        assert r["noise_hu"] == pytest.approx(20.0, rel=0.1) and r["noise_note"] is None
    dicom = [r for r in records if r["path"].endswith(".dcm")]
    # The patient's size from the pixels and the file's spacing: 0.7 mm in the series, 1 mm in the NIfTI
    hu = ct_phantom(3, 96)
    for r, slice_hu in zip(dicom, hu):
        assert r["wed_mm"] == pytest.approx(water_equivalent_diameter(slice_hu, (0.7, 0.7)), abs=0.1)
    assert [r["wed_mm"] for r in records if r["path"].endswith(".nii.gz")] == pytest.approx(
        [water_equivalent_diameter(s, (1.0, 1.0)) for s in hu], abs=0.1)
    # The noise of a 250 mm patient at the same flux: the growth of noise with size divided out
    for r in records:
        assert r["noise_hu_size"] == pytest.approx(r["noise_hu"] * math.exp(-0.00965 * (r["wed_mm"] - 250)), rel=2e-3)
    assert [r["slice"] for r in dicom] == [0, 1, 2] and all(r["series_uid"] for r in dicom)
    volume = [r for r in records if r["path"].endswith(".nii.gz")]
    assert [r["slice"] for r in volume] == [0, 1, 2] and all(r["series_uid"] is None for r in volume)


def test_noise_is_null_with_a_reason_where_it_cannot_be_measured(study, weights, tmp_path):
    bone_only = np.clip(ct_phantom(1, 64), None, 0) + 1000 * (ct_phantom(1, 64) > 500)  # air, lung, bone
    write_series(bone_only, tmp_path / "air")
    records = json.loads(run(study / "slice.tif", tmp_path / "air", "--weights", weights, "--format", "json").stdout)
    notes = {Path(r["path"]).suffix: (r["noise_hu"], r["noise_note"]) for r in records}
    assert notes[".tif"] == (None, "not in HU")  # a windowed [0, 1] TIFF
    assert [r["wed_mm"] for r in records if r["path"].endswith(".tif")] == [None]  # nor its size
    assert all(r["noise_hu_size"] is None for r in records)  # neither has a noise figure and a size
    assert notes[".dcm"][0] is None and "soft-tissue" in notes[".dcm"][1]
    assert all(isinstance(r["score"], float) for r in records)  # the score does not need it


def test_csv_and_jsonl_carry_the_same_records(study, weights):
    as_json = json.loads(run(study, "--weights", weights, "--format", "json").stdout)
    rows = list(csv.DictReader(io.StringIO(run(study, "--weights", weights, "--format", "csv").stdout)))
    lines = [json.loads(line) for line in run(study, "--weights", weights, "--format", "jsonl").stdout.splitlines()]
    assert lines == as_json
    assert list(rows[0]) == record_io.FIELDS
    assert len(rows) == len(as_json)
    for row, rec in zip(rows, as_json):
        assert row["path"] == rec["path"]
        if "error" in rec:
            assert row["error"] == rec["error"] and row["score"] == ""
        else:
            assert float(row["score"]) == rec["score"] and int(row["class"]) == rec["class"]
            assert [float(h) for h in row["head_scores"].split(";")] == rec["head_scores"]


def test_table_shows_series_and_summary(study, weights):
    result = run(study / "series", "--weights", weights, "--threshold", "4.1", "--format", "table")
    assert result.exit_code == 0
    assert "IM0001.dcm" in result.stdout and "3 slices" in result.stdout and "3 below 4.1" in result.stdout
    assert "class" not in result.stdout  # the raw class means nothing to a reader; score and grade say it


def test_output_file_is_written_whole_or_not_at_all(study, weights, tmp_path, monkeypatch):
    out = tmp_path / "scores.json"
    result = run(study / "series", "--weights", weights, "--output", out)
    assert result.exit_code == 0 and result.stdout == ""
    assert len(json.loads(out.read_text())) == 3  # format taken from the suffix
    before = out.read_text()

    def failing_write(self, record):
        self.stream.write(json.dumps(record)[:10])  # half a record...
        raise OSError(28, "No space left on device")  # ...then the disk fills up

    monkeypatch.setattr(record_io.RecordWriter, "write", failing_write)
    result = run(study / "series", "--weights", weights, "--output", out)
    assert result.exit_code == 2 and "No space left on device" in result.stderr
    assert out.read_text() == before  # the old file is untouched
    assert sorted(p.name for p in tmp_path.iterdir()) == ["scores.json"]  # no temp file left


@pytest.mark.parametrize("args, message", [
    (["--weights", "/nonexistent/w.safetensors"], "no weights at"),
    (["--device", "cuda"], "no CUDA device"),
    (["--output", "scores.xlsx"], "cannot tell the format"),
    (["--device", "cpu", "--precision", "fp16"], "fp16 needs CUDA"),
])
def test_usage_errors_exit_2(study, weights, args, message):
    if "--weights" not in args:
        args = [*args, "--weights", str(weights)]
    if "--device" in args and cuda_available():
        pytest.skip("this machine has CUDA")
    result = run(study / "series", *args)
    assert result.exit_code == 2 and message in result.stderr and result.stdout == ""


def test_fast_options_score_the_same_slices_closely(study, weights):
    def scores(*options):
        result = run(study / "series", "--weights", weights, "--format", "json", "--device", "cpu", *options)
        assert result.exit_code == 0
        return [r["score"] for r in json.loads(result.stdout)]

    reference = scores()
    for options in (["--threads", "1"], ["--int8"], ["--precision", "bf16"]):
        assert scores(*options) == pytest.approx(reference, abs=0.1)


def test_paperwork_named_explicitly_is_an_error(study, weights):
    result = run(study / "README.md", "--weights", weights, "--format", "json")
    assert result.exit_code == 1
    (record,) = json.loads(result.stdout)
    assert record["path"].endswith("README.md") and "not a DICOM file" in record["error"]


def test_nothing_to_score_exits_2(tmp_path, weights):
    result = run(tmp_path, "--weights", weights)
    assert result.exit_code == 2 and "nothing to score" in result.stderr


def test_unusable_weights_file_exits_2(study, tmp_path):
    bad = tmp_path / "w.safetensors"
    bad.write_text("not weights")
    result = run(study / "series", "--weights", bad)
    assert result.exit_code == 2 and str(bad) in result.stderr


def test_in_process_decoding_holds_one_batch(weights):
    """Memory is bounded by the batch: slices are decoded as the model consumes them."""
    loads = []

    def loader(k):
        def load():
            loads.append(k)
            return unit_phantom(1, 32)[0]
        return load

    series = Series(label="long", series_uid=None)
    series.slices = [SliceRef(Path("x"), k, "unit", loader(k)) for k in range(200)]
    stream = Scorer(weights, device="cpu", batch_size=4).stream([series])
    first = next(stream)
    assert first.slice == 0
    assert len(loads) == 4  # the batch scored, nothing more
    assert sum(1 for _ in stream) == 199 and len(loads) == 200


def test_output_format_follows_the_destination(study, weights, tmp_path):
    piped = run(study / "series", "--weights", weights)  # the test runner's stdout is not a terminal
    assert [json.loads(line)["slice"] for line in piped.stdout.splitlines()] == [0, 1, 2]
    assert run(study / "series", "--weights", weights, "--output", tmp_path / "s.csv").exit_code == 0
    assert (tmp_path / "s.csv").read_text().startswith("path,series,")
    mismatch = run(study / "series", "--weights", weights, "--format", "json", "--output", tmp_path / "x.csv")
    assert mismatch.exit_code == 2 and "make them agree" in mismatch.stderr and not (tmp_path / "x.csv").exists()
    unknown = run(study / "series", "--weights", weights, "--output", tmp_path / "x.txt")
    assert unknown.exit_code == 2 and "cannot tell the format" in unknown.stderr


def test_a_missing_path_is_a_usage_error_before_the_model_loads(tmp_path):
    result = run(tmp_path / "no-such-study", "--weights", tmp_path / "no-weights-either.safetensors")
    assert result.exit_code == 2 and "no such file or folder" in result.stderr
    assert "no weights" not in result.stderr  # paths are checked first


def test_records_carry_the_dicom_acquisition_and_the_weights(tmp_path, weights):
    import hashlib

    paths = write_series(ct_phantom(2, 96), tmp_path / "s", thickness=1.25, z0=-40.0)
    for path in paths:
        ds = pydicom.dcmread(path)
        ds.KVP, ds.Exposure, ds.CTDIvol, ds.ConvolutionKernel = 100, 42, 3.1, "B30f"
        ds.save_as(path)
    records = [json.loads(line) for line in run(tmp_path / "s", "--weights", weights).stdout.splitlines()]
    first = pydicom.dcmread(paths[0])
    assert records[0]["study_uid"] == first.StudyInstanceUID and records[0]["sop_uid"] == first.SOPInstanceUID
    assert [r["z_mm"] for r in records] == [-40.0, -38.75] and [r["instance_number"] for r in records] == [1, 2]
    assert (records[0]["kvp"], records[0]["mas"], records[0]["ctdivol_mgy"], records[0]["kernel"]) == (100, 42, 3.1, "B30f")
    assert records[0]["slice_thickness_mm"] == 1.25 and records[0]["manufacturer"] == "clinreadnet"
    assert records[0]["weights"] == str(weights)
    assert records[0]["weights_sha256"] == hashlib.sha256(weights.read_bytes()).hexdigest()


def test_sampling_grids_option_reads_the_same_tensors_through_other_grids(tmp_path, weights):
    import dataclasses

    write_series(ct_phantom(2, 256), tmp_path / "s")
    model = create_model(tiny_config(sampling_grids=4))
    four = save_weights(model, tmp_path / "four.safetensors")
    model.config = dataclasses.replace(model.config, sampling_grids=1)
    one = save_weights(model, tmp_path / "one.safetensors")  # the same tensors, a header of one grid

    def records(*args):
        result = run(tmp_path / "s", *args)
        assert result.exit_code == 0, result.stderr
        return [json.loads(line) for line in result.stdout.splitlines()]

    by_header, fast, own_one = records("--weights", four), records("--weights", four, "--sampling-grids", "1"), \
        records("--weights", one)
    assert [r["sampling_grids"] for r in by_header + fast + own_one] == [4, 4, 1, 1, 1, 1]
    assert [r["score"] for r in fast] == [r["score"] for r in own_one]  # one grid: exactly the one-grid file
    assert [r["score"] for r in fast] != [r["score"] for r in by_header]
    assert fast[0]["weights_sha256"] == by_header[0]["weights_sha256"]
    assert [r["sampling_grids"] for r in records("--weights", weights, "--sampling-grids", "4")] == [4, 4]
    refused = run(tmp_path / "s", "--weights", four, "--sampling-grids", "3")
    assert refused.exit_code == 2 and "sampling_grids" in refused.stderr


def test_quality_gate_exits_3_after_writing_every_record(study, weights, tmp_path):
    passed = run(study / "series", "--weights", weights, "--fail-below", "0")
    assert passed.exit_code == 0
    failed = run(study / "series", "--weights", weights, "--fail-below-mean", "4.1", "--summary", tmp_path / "sum.csv")
    assert failed.exit_code == 3 and "quality gate not met" in failed.stderr
    assert len(failed.stdout.splitlines()) == 3  # every record written first
    rows = list(csv.DictReader((tmp_path / "sum.csv").open()))
    assert [r["level"] for r in rows] == ["series", "study"] and rows[0]["slices"] == "3"
    scores = [json.loads(line)["score"] for line in failed.stdout.splitlines()]
    assert float(rows[0]["mean"]) == pytest.approx(sum(scores) / 3, abs=1e-4)
    assert float(rows[0]["min"]) == pytest.approx(min(scores), abs=1e-4)


def test_workers_auto_is_one_on_the_cpu_and_every_core_but_one_with_a_gpu(monkeypatch, tmp_path):
    from clinreadnet_cli.engine.local import decode_workers

    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(16)))
    assert decode_workers("auto", "cpu") == 1
    assert decode_workers("auto", "cuda") == 15
    assert decode_workers("3", "cuda") == 3
    for bad in ("0", "-1", "many"):
        with pytest.raises(ValueError, match="--workers takes a count"):
            decode_workers(bad, "cpu")
    result = runner.invoke(app, ["score", str(tmp_path), "--workers", "none"])
    assert result.exit_code == 2 and "--workers takes a count" in result.stderr


@pytest.mark.parametrize("name", ["scores.jsonl", "scores"])  # a results suffix, and none at all
def test_records_redirected_into_the_study_are_not_read_back(weights, tmp_path, name):
    """`clinreadnet score study/ > study/scores.jsonl`: the shell creates the file before the run,
    and the run skips it (as paperwork by its suffix, or as its own stdout) instead of failing on it."""
    study = tmp_path / "study"
    write_series(ct_phantom(2, 96), study)
    with open(study / name, "w") as stdout:
        done = subprocess.run([sys.executable, "-m", "clinreadnet_cli", "score", str(study), "--weights", str(weights)],
                              stdout=stdout, stderr=subprocess.PIPE, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert len((study / name).read_text().splitlines()) == 2
    assert f"{study / name}: skipped" in done.stderr
