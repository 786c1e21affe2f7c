"""score-archive: units, the results folder, resuming, and the two engines giving the same records."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pytest
import SimpleITK as sitk
import tifffile
import torch
from typer.testing import CliRunner

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import read_config, save_weights
from clinreadnet_cli.cli import app
from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.engine import local
from clinreadnet_cli.decoding import DecodeSettings
from clinreadnet_cli.engine.base import ArchiveError, ArchiveStore, plan_units

from .conftest import ct_phantom, tiny_config, unit_phantom

runner = CliRunner()


@pytest.fixture(scope="module")
def weights(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    return save_weights(create_model(tiny_config()), tmp_path_factory.mktemp("w") / "tiny.safetensors")


def make_archive(root: Path, series: int = 6, slices: int = 3) -> Path:
    """``series`` DICOM series in study folders, a NIfTI volume, a TIFF, a damaged file, paperwork."""
    for k in range(series):
        write_series(ct_phantom(slices, 64, seed=k), root / f"study{k // 2}" / f"series{k}")
    sitk.WriteImage(sitk.GetImageFromArray(ct_phantom(2, 64, seed=99).astype(np.int16)), str(root / "vol.nii.gz"))
    tifffile.imwrite(root / "slice.tif", unit_phantom(1)[0])
    (root / "study0" / "broken.dcm").write_bytes(b"\0" * 128 + b"DICM" + b"\xff" * 300)
    (root / "README.md").write_text("# archive\n")
    return root


@pytest.fixture(scope="module")
def archive(tmp_path_factory) -> Path:
    return make_archive(tmp_path_factory.mktemp("archive"))


def read_records(out: Path) -> list[dict]:
    rows = [r for f in sorted((out / "records").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return sorted(rows, key=lambda r: (r["path"], r["slice"] if r["slice"] is not None else -1))


def archive_cli(*args):
    return runner.invoke(app, ["score-archive", *map(str, args)])


def test_units_are_dicom_series_and_single_files(archive):
    plan = plan_units([archive])
    kinds = sorted(u.key.split(":")[0] for u in plan.units)
    assert kinds.count("series") == 6 and kinds.count("file") == 3  # + volume, TIFF, damaged file
    assert all(len(u.paths) == 3 for u in plan.units if u.key.startswith("series:"))
    assert any("README.md" in note for note in plan.notes)
    assert [u.id for u in plan_units([archive]).units] == [u.id for u in plan.units]  # stable across runs


def test_archive_records_are_score_records(archive, weights, tmp_path):
    out = tmp_path / "results"
    result = archive_cli(archive, "--out", out, "--weights", weights)
    assert result.exit_code == 1, result.stderr  # the damaged file fails its unit
    assert "1 series failed" in result.stderr
    rows = read_records(out)
    scored = runner.invoke(app, ["score", str(archive), "--weights", str(weights), "--format", "jsonl"])
    expected = sorted((json.loads(line) for line in scored.stdout.splitlines()),
                      key=lambda r: (r["path"], r["slice"] if r["slice"] is not None else -1))
    assert len(rows) == len(expected) == 6 * 3 + 2 + 1 + 1
    for row, record in zip(rows, expected):
        assert {k: v for k, v in row.items() if k != "unit" and (v is not None or k in record)} == record
    table = pq.read_table(out / "series.parquet").to_pylist()
    assert len(table) == 6 + 2 and {r["slices"] for r in table} == {3, 2, 1}
    manifest = [json.loads(line) for line in (out / "manifest.jsonl").read_text().splitlines()]
    assert sorted(e["status"] for e in manifest) == ["done"] * 8 + ["failed"]


def test_rerun_skips_finished_and_retries_failed_on_request(archive, weights, tmp_path):
    out = tmp_path / "results"
    archive_cli(archive, "--out", out, "--weights", weights)
    before = read_records(out)
    again = archive_cli(archive, "--out", out, "--weights", weights)
    assert "0 to score" in again.stderr and again.exit_code == 1  # the failed series is still failed
    assert read_records(out) == before
    retried = archive_cli(archive, "--out", out, "--weights", weights, "--retry-failed")
    assert "1 to score" in retried.stderr
    after = read_records(out)
    assert len(after) == len(before)  # the failed unit's error record replaced, not repeated
    assert [r for r in after if r["error"]] and len([r for r in after if r["error"]]) == 1


def test_other_weights_or_a_foreign_folder_are_refused(archive, weights, tmp_path):
    out = tmp_path / "results"
    first = archive_cli(archive, "--out", out, "--weights", weights)
    assert first.exit_code == 1 and (out / "run.json").is_file(), first.stderr  # 1: the archive's damaged file
    torch.manual_seed(1)  # other tensors than the fixture's, whatever ran before
    other = save_weights(create_model(tiny_config()), tmp_path / "other.safetensors")
    refused = archive_cli(archive, "--out", out, "--weights", other)
    assert refused.exit_code == 2 and "weights_sha256" in refused.stderr, (refused.exit_code, refused.stderr)
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.tex").write_text("...")
    foreign = archive_cli(archive, "--out", tmp_path / "mine", "--weights", weights)
    assert foreign.exit_code == 2 and "not a results folder" in foreign.stderr
    assert (tmp_path / "mine" / "thesis.tex").exists()
    assert archive_cli(archive, "--out", out, "--weights", other, "--overwrite").exit_code == 1


def test_other_sampling_grids_are_refused_and_a_folder_from_before_them_reads_the_weights_own(
        archive, weights, tmp_path):
    out = tmp_path / "results"
    archive_cli(archive, "--out", out, "--weights", weights)
    assert {r["sampling_grids"] for r in read_records(out) if r["score"] is not None} == {1}
    refused = archive_cli(archive, "--out", out, "--weights", weights, "--sampling-grids", "4")
    assert refused.exit_code == 2 and "sampling_grids differ" in refused.stderr
    info = out / "run.json"
    stored = json.loads(info.read_text())
    del stored["sampling_grids"]  # as written before records named their grids
    info.write_text(json.dumps(stored))
    assert "0 to score" in archive_cli(archive, "--out", out, "--weights", weights).stderr
    assert archive_cli(archive, "--out", out, "--weights", weights, "--sampling-grids", "4").exit_code == 2


def test_a_folder_written_with_other_record_fields_is_refused(archive, weights, tmp_path):
    """Records gained wed_mm: a folder whose shards lack it is not resumed into mixed columns."""
    out = tmp_path / "results"
    archive_cli(archive, "--out", out, "--weights", weights)
    for shard in (out / "records").glob("*.parquet"):
        pq.write_table(pq.read_table(shard).drop_columns(["wed_mm"]), shard)
    refused = archive_cli(archive, "--out", out, "--weights", weights)
    assert refused.exit_code == 2 and "other fields (wed_mm)" in refused.stderr
    assert archive_cli(archive, "--out", out, "--weights", weights, "--overwrite").exit_code == 1
    assert all("wed_mm" in r for r in read_records(out))
    shard = min((out / "records").glob("*.parquet"))
    shard.write_bytes(shard.read_bytes()[:100])  # cut short: the child that reads it says why
    damaged = archive_cli(archive, "--out", out, "--weights", weights)
    assert damaged.exit_code == 2 and f"{shard} is damaged (" in damaged.stderr


def test_rows_no_manifest_line_owns_are_dropped_on_open(archive, weights, tmp_path):
    """A run killed between renaming a shard in and appending its manifest lines."""
    out = tmp_path / "results"
    archive_cli(archive, "--out", out, "--weights", weights)
    rows = read_records(out)
    info = json.loads((out / "run.json").read_text())
    orphan = ArchiveStore(out, info).write_shard(rows[:4])
    os.replace(orphan / "part.parquet", out / "records" / "part-20990101T000000-deadbeef-000.parquet")
    ArchiveStore(out, info)  # opening the folder again, as a rerun does
    assert read_records(out) == rows


def test_killed_run_resumes_with_every_record_exactly_once(weights, tmp_path):
    root = make_archive(tmp_path / "big", series=16, slices=4)
    out = tmp_path / "results"
    command = [sys.executable, "-m", "clinreadnet_cli", "score-archive", str(root), "--out", str(out),
               "--weights", str(weights), "--shard-records", "4", "--workers", "1"]
    process = subprocess.Popen(command, stderr=subprocess.DEVNULL)
    manifest = out / "manifest.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if manifest.exists() and len(manifest.read_text().splitlines()) >= 4:
            break
        time.sleep(0.05)
    process.send_signal(signal.SIGKILL)
    process.wait()
    finished = len(manifest.read_text().splitlines())
    assert 4 <= finished < 19, "the kill should land halfway"
    subprocess.run(command, check=False, stderr=subprocess.DEVNULL)
    rows = read_records(out)
    keys = [(r["path"], r["slice"]) for r in rows]
    assert len(keys) == len(set(keys)) == 16 * 4 + 2 + 1 + 1
    assert len(pq.read_table(out / "series.parquet")) == 16 + 2


CRASHING_POOL = """
import json, os, sys
from clinreadnet_cli.checkpoint import read_config
from clinreadnet_cli.decoding import DecodeSettings
from clinreadnet_cli.engine import local
from clinreadnet_cli.engine.base import plan_units

real = local.decode_unit

def crashing(unit, settings):
    if "series3" in unit.paths[0]:
        os._exit(11)
    return real(unit, settings)

local.decode_unit = crashing  # the first workers fork with it; the successor starts clean
units = plan_units([sys.argv[1]]).units
with local.DecodePool(DecodeSettings(read_config(sys.argv[2]), batch_size=2), workers=2) as pool:
    events = [(tag, None if batch is local.END else [getattr(item, "reason", None) for item in batch.items])
              for tag, batch in pool.events(units)]
    kinds = sorted(type(process).__name__ for process, _ in pool._workers)
print(json.dumps({"paths": [unit.paths[0] for unit in units], "events": events, "kinds": kinds}))
"""


def test_a_crashing_decoder_costs_its_unit_only(archive, weights):
    """A reader library that kills its process (a hostile file) fails one unit; the pool goes on.

    In a process of its own, as the CLI runs it: the first workers fork from a process with one
    thread, and the dead one's successor, started once the pool's receiving thread runs, comes
    from the fork server (a fork from a threaded process can deadlock on a copied lock)."""
    done = subprocess.run([sys.executable, "-c", CRASHING_POOL, str(archive), str(weights)],
                          capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    result = json.loads(done.stdout)
    assert result["kinds"] == ["ForkProcess", "ForkServerProcess"]  # the successor came from the server
    paths, events = result["paths"], result["events"]
    ends = [tag for tag, reasons in events if reasons is None]
    assert sorted(ends) == list(range(len(paths)))
    crashed = [reasons for tag, reasons in events if reasons is not None and "series3" in paths[tag]]
    assert len(crashed) == 1 and "decoding process died" in crashed[0][0]
    decoded = sum(1 for _, reasons in events if reasons is not None for reason in reasons if reason is None)
    assert decoded == 5 * 3 + 2 + 1


def test_ray_engine_gives_the_same_records(archive, weights, tmp_path):
    """Both engines through the command, each in a process of its own: a Ray driver leaves threads
    (and signal handlers) behind in the process that ran it, which the rest of the suite must not share."""
    pytest.importorskip("ray")
    outs = {}
    for engine in ("local", "ray"):
        done = subprocess.run([sys.executable, "-m", "clinreadnet_cli", "score-archive", str(archive), "--out",
                               str(tmp_path / engine), "--weights", str(weights), "--engine", engine, "--workers", "1",
                               "--threads", "1", "--device", "cpu"], capture_output=True, text=True, timeout=600)
        assert done.returncode == 1, done.stderr[-3000:]  # one series of the archive is broken on purpose
        assert "9 series scored" in done.stderr and "1 failed" in done.stderr
        outs[engine] = read_records(tmp_path / engine)
    strip = [{k: v for k, v in r.items() if k != "unit"} for r in outs["local"]]
    assert strip == [{k: v for k, v in r.items() if k != "unit"} for r in outs["ray"]]
    assert len(outs["ray"]) == 6 * 3 + 4


def test_store_refuses_a_file_as_out(tmp_path, weights):
    (tmp_path / "f").write_text("x")
    with pytest.raises(ArchiveError):
        ArchiveStore(tmp_path / "f", {"weights_sha256": "x"})


def test_a_results_folder_is_written_and_reopened_without_arrow_in_the_process(archive, weights, tmp_path):
    """Arrow's libraries (43 MiB once a table is written, and pandas with them where it is
    installed) would stay in a node through every later series: the folder's Parquet files are
    made by a child process, and the process that scores imports neither."""
    out = tmp_path / "results"
    archive_cli(archive, "--out", out, "--weights", weights)
    rows = read_records(out)
    script = f"""
import json, sys
from pathlib import Path
from clinreadnet_cli.engine.base import ArchiveStore, Unit, unit_entry
out = Path({str(out)!r})
store = ArchiveStore(out, json.loads((out / "run.json").read_text()))  # reads the shards back
rows = {rows[:5]!r}
unit = Unit("file:again", (rows[0]["path"],))
store.commit(store.write_shard([{{**r, "unit": unit.id}} for r in rows]), [unit_entry(unit, rows, 1.0)])
store.write_series_table()
print(json.dumps(sorted(m for m in sys.modules if m.split(".")[0] in ("pandas", "pyarrow"))))
"""
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout) == []
    assert len(read_records(out)) == len(rows) + 5  # the new unit's rows are there, typed as before


def test_the_parquet_writer_imports_this_package_whatever_the_current_folder(tmp_path, monkeypatch):
    """The child is not started with ``python -m``, which would import a stray json.py (or another
    checkout's package) from the current folder first."""
    from clinreadnet_cli.engine import tables

    (tmp_path / "json.py").write_text("raise ImportError('the stray json.py was imported')\n")
    monkeypatch.chdir(tmp_path)
    spec = [("path", "string"), ("score", "float64")]
    tables.write_table(tmp_path / "t.parquet", b'{"path": "a", "score": 2.5}\n{"path": "b"}\n', spec)
    assert pq.read_table(tmp_path / "t.parquet").to_pylist() == [{"path": "a", "score": 2.5}, {"path": "b", "score": None}]
    with pytest.raises(ValueError, match="2 of 3 rows arrived"):  # input cut short is refused, not written
        tables._ask({"op": "write", "path": str(tmp_path / "u.parquet"), "spec": spec, "rows": 3},
                    b'{"path": "a"}\n{"path": "b"}\n')
    assert not (tmp_path / "u.parquet").exists()
