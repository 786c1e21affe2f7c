"""Scoring a DICOM series: decode only (the I/O limit: reading, the input path and the noise
figure), model only, the score workflow end to end, and the peak memory of the
``clinreadnet score`` command as the study grows."""

from __future__ import annotations

import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch

from common import SOURCES

from clinreadnet_cli.api import Scorer
from clinreadnet_cli.decoding import DecodeSettings
from clinreadnet_cli.engine.base import plan_units
from clinreadnet_cli.engine.local import DecodePool, score_events
from clinreadnet_cli.checkpoint import load_model, weights_identity
from clinreadnet_cli.config import slices_per_batch
from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.inference import InferenceOptions, prepare_for_inference
from clinreadnet_cli.noise import measure_noise
from clinreadnet_cli.preprocess import prepare_slice
from clinreadnet_cli.readers import discover
from clinreadnet_cli.runtimes import export_path
from clinreadnet_cli.scoring import SliceScore


def build_series(out: Path, n: int) -> Path:
    """``n`` uncompressed 512² slices cycled from one real CT series of the sources, 1 mm apart."""
    hu = np.load(SOURCES / "tcia-pancreatic-ct-cbct-seg_Pancreas-CT-CB_001.npz")["hu"]
    write_series(hu[np.arange(n) % len(hu)], out, thickness=1.0, names=[f"IM{k:05d}.dcm" for k in range(n)])
    return out


def model_only(tensors: list[torch.Tensor], predict, batch: int) -> float:
    """Seconds the model alone takes over ``tensors`` (prepared slices), after one warm-up batch."""
    batches = torch.stack(tensors).split(batch)
    predict(batches[0])  # warm-up
    start = time.perf_counter()
    for b in batches:
        predict(b).score.tolist()  # .tolist() waits for the device, as the workflow does
    return time.perf_counter() - start


def throughput(series_dir: Path, weights: Path, device: torch.device, batch: int, workers: int,
               options: InferenceOptions) -> list[dict]:
    """Decode only, model only and the workflow end to end (decoding processes beside the model)."""
    model = load_model(weights)
    series = discover([series_dir]).series
    n = sum(len(s.slices) for s in series)

    start = time.perf_counter()
    tensors = []
    for ref in (ref for s in series for ref in s.slices):
        image = ref.load()
        tensors.append(prepare_slice(image, ref.value_range, model.config))
        measure_noise(image, ref.value_range)
    decode = time.perf_counter() - start

    export = export_path(weights_identity(weights)["weights_sha256"], model.config)
    forwards = slices_per_batch(batch, model.config.sampling_grids)  # as `score` batches them
    model_seconds = model_only(tensors, prepare_for_inference(model, device, options, export=export), forwards)
    del tensors

    scorer = Scorer(weights, device=device.type, precision=options.precision, batch_size=batch,
                    runtime=options.runtime)
    start = time.perf_counter()  # the steady state of `clinreadnet score`: decoding processes beside the model
    with DecodePool(DecodeSettings(model.config, scorer.batch_size), workers) as pool:
        scored = sum(isinstance(item, SliceScore) for _, items in score_events(pool.events(plan_units([series_dir]).units), scorer)
                     if items is not None for item in items)
    end_to_end = time.perf_counter() - start
    assert scored == n
    grids = f", {model.config.sampling_grids} grids" if model.config.sampling_grids > 1 else ""
    label = (f"{n}-slice DICOM series, {model.config.input_path} {model.config.img_size}²{grids}, "
             f"{options.runtime} {options.precision}, {workers} decoding process(es)")
    return [
        {"benchmark": "scoring", "measure": f"{label}: decode only", "value": n / decode, "unit": "slices/s"},
        {"benchmark": "scoring", "measure": f"{label}: model only", "value": n / model_seconds, "unit": "slices/s"},
        {"benchmark": "scoring", "measure": f"{label}: end to end (score workflow)", "value": n / end_to_end,
         "unit": "slices/s", "ratio": model_seconds / end_to_end},  # end-to-end rate / model-only rate
    ]


def decode_scaling(series_dir: Path, weights: Path, batch: int, workers: list[int]) -> list[dict]:
    """Decoding alone (no model) through the score command's decoding processes, at each count:
    how far decoding would keep up with a faster model (a GPU)."""
    cfg = load_model(weights).config
    units = plan_units([series_dir]).units
    rows = []
    for count in workers:
        start = time.perf_counter()
        with DecodePool(DecodeSettings(cfg, batch), count) as pool:
            n = sum(len(b.items) for _, b in pool.events(units) if b is not None)
        rate = n / (time.perf_counter() - start)
        rows.append({"benchmark": "scoring", "measure": f"{n}-slice DICOM series, decode only, {count} decoding "
                     f"process(es)", "value": rate, "unit": "slices/s", "ratio": rate / (rows[0]["value"] if rows else rate)})
    return rows


class PeakMemory(NamedTuple):
    """A command's memory: ``mib``, the sum of each of its processes' high-water marks (an upper
    bound: it adds peaks that came at different times, such as a child that exited before the
    others peaked); ``together_mib``, the most its processes held at one time (polled every 20 ms,
    so a peak shorter than that can be missed; and, as any sum of RSS, pages two processes share
    count twice: a poll that lands in the instant a child is started, before it runs its own
    program on memory it still shares with its parent, counts the parent twice, once in about
    24 starts of the node's Parquet writer); ``seconds``, its wall time."""

    mib: float
    seconds: float
    together_mib: float


def command_peak_rss(series_dir: Path, weights: Path, device: str, batch: int, extra: list[str],
                     env: dict[str, str] | None = None) -> PeakMemory:
    """The memory of one ``clinreadnet score`` process (and its children)."""
    command = [sys.executable, "-m", "clinreadnet_cli", "score", str(series_dir), "--weights", str(weights),
               "--format", "jsonl", "--device", device, "--batch-size", str(batch), *extra]
    return process_peak_rss(command, env)


def process_peak_rss(command: list[str], env: dict[str, str] | None = None) -> PeakMemory:
    """The memory of the process and its children (decoding processes, an export).

    Read from each process's own high-water mark (VmHWM in /proc, Linux), polled until it exits:
    rusage's ru_maxrss would not do, because a child starts from the high-water mark of the
    parent it was forked from, and this benchmark process is large.
    """
    start = time.perf_counter()
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, env=env)
    peaks: dict[int, int] = {}
    together = 0
    while process.poll() is None:
        together = max(together, poll_peaks(process.pid, peaks))
        time.sleep(0.02)
    wall = time.perf_counter() - start
    if process.returncode not in (0, 1):
        raise RuntimeError(f"{' '.join(command)} exited with {process.returncode}")
    return PeakMemory(sum(peaks.values()) / 1024, wall, together / 1024)


def poll_peaks(pid: int, peaks: dict[int, int]) -> int:
    """Each of ``pid``'s and its descendants' high-water marks so far (KiB), into ``peaks``; returns
    what they hold now, together (KiB)."""
    now = 0
    for member in [pid, *descendants(pid)]:
        try:
            status = dict(line.split(":", 1) for line in Path(f"/proc/{member}/status").read_text().splitlines())
            peaks[member] = max(peaks.get(member, 0), int(status["VmHWM"].split()[0]))
            now += int(status["VmRSS"].split()[0])
        except (OSError, KeyError, ValueError):  # exiting: its memory map is already gone
            pass
    return now


def descendants(pid: int) -> list[int]:
    """Every descendant: decoding processes forked from a forkserver are grandchildren."""
    try:
        children = [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []
    return children + [d for c in children for d in descendants(c)]
