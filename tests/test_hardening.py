"""One score run over a corpus of valid, damaged and hostile inputs (tests/corpus.py)."""

from __future__ import annotations

import json
import os
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk
import torch
from typer.testing import CliRunner

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import save_weights
from clinreadnet_cli.cli import app
from clinreadnet_cli.dicom_export import write_series

from .conftest import ct_phantom, tiny_config
from .corpus import build_corpus


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model(tiny_config()), tmp_path_factory.mktemp("w") / "tiny.safetensors")


def test_one_run_scores_every_valid_input_and_gives_each_bad_one_a_single_error(tmp_path, weights):
    expected = build_corpus(tmp_path / "corpus")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "corpus"), "--weights", str(weights),
                                      "--format", "jsonl"])
    assert result.exit_code == 1, result.stderr
    assert "Traceback" not in result.stderr
    records = [json.loads(line) for line in result.stdout.splitlines()]
    by_path: dict[str, list[dict]] = {}
    for record in records:
        by_path.setdefault(record["path"], []).append(record)

    for path, slices in expected.scored.items():
        got = by_path.pop(path, [])
        assert [r.get("error") for r in got] == [None] * slices, path
        assert sorted(r["slice"] for r in got) == sorted(r["slice"] for r in got)  # ints, every one
    for path, word in expected.errors.items():
        got = by_path.pop(path, [])
        assert len(got) == 1 and "error" in got[0], (path, got)
        assert word.lower() in got[0]["error"].lower(), (path, got[0]["error"])
        assert result.stderr.count(Path(path).name) >= 1  # named on stderr too
    for path, (slices, word) in expected.partly.items():
        got = by_path.pop(path, [])
        failed = [r for r in got if "error" in r]
        assert len(got) == slices + 1 and len(failed) == 1 and word in failed[0]["error"], (path, got)
        assert failed[0]["slice"] is not None  # the record says which slice
    for path in expected.either:
        assert by_path.pop(path, []), f"{path} gave no record at all"
    for path in expected.skipped:
        assert path not in by_path and f"{path}: skipped, not a regular file" in result.stderr
    assert not by_path, f"records for files the corpus does not know: {list(by_path)}"
    assert any("[/x] [bold]name.dcm" in r["path"] for r in records)  # a markup-like path, verbatim


def test_a_markup_like_path_is_printed_verbatim_in_errors(tmp_path, weights):
    folder = tmp_path / "odd ["
    folder.mkdir()
    (folder / "x] [bold]notes.bin").write_bytes(b"not an image")
    result = CliRunner().invoke(app, ["score", str(tmp_path), "--weights", str(weights)])
    assert result.exit_code == 1 and f"{folder}/x] [bold]notes.bin: not a DICOM file" in result.stderr


@pytest.fixture(scope="module")
def long_volume(tmp_path_factory) -> Path:
    """2,000 slices: long enough that a run can be stopped halfway."""
    path = tmp_path_factory.mktemp("long") / "long.nii"
    sitk.WriteImage(sitk.GetImageFromArray(np.tile(ct_phantom(1, 64), (2000, 1, 1)).astype(np.int16)), str(path))
    return path


def _start(args: list[str]) -> subprocess.Popen:
    # As from a terminal: Ctrl-C at its default, whatever the test process inherited (a job started
    # in the background, or a library, may have left SIGINT ignored, which a child would inherit).
    return subprocess.Popen([sys.executable, "-m", "clinreadnet_cli", "score", *args], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))


def _wait_for_records(folder: Path, at_least: int, process: subprocess.Popen) -> Path:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        partial = list(folder.glob("*.partial"))
        if partial and partial[0].read_text().count("\n") >= at_least:
            return partial[0]
        time.sleep(0.02)
    raise AssertionError(f"no partial output with {at_least} records (exit {process.poll()})")


@pytest.mark.parametrize("stop", ["kill", "interrupt"])
def test_a_stopped_run_keeps_every_finished_record(tmp_path, weights, long_volume, stop):
    out = tmp_path / "scores.jsonl"
    process = _start([str(long_volume), "--weights", str(weights), "--output", str(out), "--batch-size", "4"])
    partial = _wait_for_records(tmp_path, 40, process)
    process.send_signal(signal.SIGKILL if stop == "kill" else signal.SIGINT)
    _, stderr = process.communicate(timeout=60)
    assert partial.exists(), f"exit {process.returncode}: {stderr[-500:]}"
    lines = partial.read_text().splitlines()
    assert not out.exists()  # the named file only ever holds a finished run
    assert len(lines) >= 40 and all(json.loads(line)["slice"] == k for k, line in enumerate(lines))
    if stop == "interrupt":
        assert process.returncode == 130
        assert stderr.strip().endswith(f"the records so far are in {partial}")


def test_a_closed_pipe_ends_the_run_quietly(weights, long_volume):
    process = _start([str(long_volume), "--weights", str(weights), "--format", "jsonl"])
    assert process.stdout.readline()
    process.stdout.close()  # what `| head -1` does
    process.wait(timeout=120)
    assert process.returncode == -signal.SIGPIPE  # killed by SIGPIPE like any Unix filter: no traceback
    assert "Traceback" not in process.stderr.read()


@pytest.mark.parametrize("target, problem", [("folder", "is a folder"), ("link", "is a symbolic link"),
                                              ("missing/out.jsonl", "does not exist")])
def test_output_target_is_checked_before_scoring(tmp_path, weights, target, problem):
    (tmp_path / "folder").mkdir()
    (tmp_path / "link").symlink_to(tmp_path / "elsewhere.jsonl")
    result = CliRunner().invoke(app, ["score", str(tmp_path / "nothing-here"), "--weights", str(weights),
                                      "--output", str(tmp_path / target), "--format", "jsonl"])
    assert result.exit_code == 2 and problem in result.stderr
    assert not (tmp_path / "elsewhere.jsonl").exists()


def ct_series(root: Path) -> Path:
    write_series(ct_phantom(2, 96), root / "series")
    return root / "series"


def test_output_respects_the_umask(tmp_path, weights):
    out = tmp_path / "scores.csv"
    old = os.umask(0o022)
    try:
        CliRunner().invoke(app, ["score", str(ct_series(tmp_path)), "--weights", str(weights), "--output", str(out)])
    finally:
        os.umask(old)
    assert stat.S_IMODE(out.stat().st_mode) == 0o644
