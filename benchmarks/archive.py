"""Archive scale: ``clinreadnet score-archive`` with each engine, and plain ``score`` on one study,
each timed as a whole process (start-up included) against the model-only rate on the same slices.

archive rows: model only; local engine (rate, peak RSS at two archive sizes); Ray at 1 and 2
actors (rate); records that differ between the engines (0 expected). startup rows: ``score`` on
one study against the model alone, alternated and repeated.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import torch

from common import SOURCES
from scoring import PeakMemory, build_series, model_only, process_peak_rss

from clinreadnet_cli.checkpoint import load_model, weights_identity
from clinreadnet_cli.config import slices_per_batch
from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.inference import InferenceOptions, prepare_for_inference, resolve_options
from clinreadnet_cli.preprocess import prepare_slice
from clinreadnet_cli.readers import discover
from clinreadnet_cli.runtimes import export_path

CLI = [sys.executable, "-m", "clinreadnet_cli"]


def build_archive(root: Path, series: int, slices: int) -> Path:
    """``series`` uncompressed 512² DICOM series of ``slices`` slices, each from a source patient in turn."""
    sources = sorted(SOURCES.glob("*.npz"))
    for k in range(series):
        hu = np.load(sources[k % len(sources)])["hu"]
        write_series(hu[np.arange(slices) % len(hu)], root / f"patient{k:03d}" / "ct", thickness=1.0,
                     patient_id=f"P{k:03d}")
    return root


def model_seconds(paths: list[Path], weights: Path, batch: int, limit: int,
                  options: InferenceOptions | None = None) -> tuple[int, float]:
    """(slices, seconds) of the model alone over the first ``limit`` slices under ``paths``
    (``options``: torch eager fp32 unless given)."""
    model = load_model(weights)
    refs = [ref for s in discover(paths).series for ref in s.slices][:limit]
    tensors = [prepare_slice(ref.load(), ref.value_range, model.config) for ref in refs]
    predict = prepare_for_inference(model, torch.device("cpu"), options or InferenceOptions(),
                                    export=export_path(weights_identity(weights)["weights_sha256"], model.config))
    # As `score` batches: --batch-size counts forward passes, one per slice and sampling grid
    return len(tensors), model_only(tensors, predict, slices_per_batch(batch, model.config.sampling_grids))


def read_records(out: Path) -> dict[tuple, dict]:
    rows = [r for f in sorted((out / "records").glob("*.parquet")) for r in pq.read_table(f).to_pylist()]
    return {(r["path"], r["slice"]): {k: v for k, v in r.items() if k != "unit"} for r in rows}


def startup_rows(tmp: Path, weights: Path, batch: int, threads: int, study_slices: int, repeats: int,
                 runs: list[InferenceOptions]) -> list[dict]:
    """Plain ``score --runtime R --precision P`` on one study, whole process (start-up included),
    against the model alone on its slices through the same R and P (auto: what ``score`` resolves
    them to); the two alternate ``repeats`` times and the medians are reported. The exported model
    is in the cache before the first command."""
    study = build_series(tmp / "study", study_slices)
    rows = []
    for asked in runs:
        options = resolve_options("cpu", asked.precision, runtime=asked.runtime)
        model_runs, command_runs = [], []
        for _ in range(repeats):
            model_runs.append(model_seconds([study], weights, batch, study_slices, options)[1])
            command_runs.append(process_peak_rss([*CLI, "score", str(study), "--weights", str(weights), "--format",
                                                  "jsonl", "--batch-size", str(batch), "--threads", str(threads),
                                                  "--runtime", asked.runtime, "--precision", asked.precision]).seconds)
        model, command = float(np.median(model_runs)), float(np.median(command_runs))
        label = (f"score --runtime {asked.runtime} --precision {asked.precision} ({options.runtime} "
                 f"{options.precision}), {study_slices}-slice study")
        rows += [{"benchmark": "startup", "measure": f"{label}: model only (median of {repeats})",
                  "value": model, "unit": "s", "runs": model_runs, "rate": study_slices / model},
                 {"benchmark": "startup", "measure": f"{label}: whole command, start-up included",
                  "value": command, "unit": "s", "ratio": model / command, "runs": command_runs,
                  "rate": study_slices / command}]
    return rows


def archive_rows(tmp: Path, weights: Path, series: int, slices: int, batch: int, threads: int,
                 actors: tuple[int, ...] = (1, 2)) -> list[dict]:
    small = max(1, series // 5)
    big_root, small_root = build_archive(tmp / "big", series, slices), build_archive(tmp / "small", small, slices)
    n_big = series * slices
    n, seconds = model_seconds([big_root], weights, batch, limit=min(n_big, 480))
    model_rate = n / seconds
    rows = [{"benchmark": "archive", "measure": f"model only ({n} slices of the archive, batch {batch})",
             "value": model_rate, "unit": "slices/s"}]

    def archive_run(root: Path, out: str, *extra: str) -> PeakMemory:
        command = [*CLI, "score-archive", str(root), "--out", str(tmp / out), "--weights", str(weights),
                   "--batch-size", str(batch), "--threads", str(threads), *extra]
        return process_peak_rss(command)

    rss_big, wall, _ = archive_run(big_root, "local-big")
    rows.append({"benchmark": "archive", "measure": f"local engine, {series} series / {n_big} slices, whole command",
                 "value": n_big / wall, "unit": "slices/s", "ratio": n_big / wall / model_rate, "wall_s": wall})
    rss_small = archive_run(small_root, "local-small").mib
    rows += [{"benchmark": "archive", "measure": f"local engine, {k} series: peak RSS (main + decoding processes)",
              "value": rss, "unit": "MiB", "ratio": rss / rss_small} for k, rss in ((small, rss_small), (series, rss_big))]
    local = read_records(tmp / "local-big")
    for count in actors:
        wall = archive_run(big_root, f"ray-{count}", "--engine", "ray", "--workers", str(count),
                           "--units-per-task", str(series)).seconds
        rows.append({"benchmark": "archive", "measure": f"ray engine, {count} actor(s), {series} series, whole command",
                     "value": n_big / wall, "unit": "slices/s", "ratio": n_big / wall / model_rate, "wall_s": wall})
        ray_records = read_records(tmp / f"ray-{count}")
        differing = sum(ray_records.get(key) != record for key, record in local.items()) + len(set(ray_records) - set(local))
        rows.append({"benchmark": "archive", "measure": f"records differing, local vs ray {count} actor(s) "
                                                        f"(of {len(local)})", "value": differing, "unit": "records"})

    return rows
