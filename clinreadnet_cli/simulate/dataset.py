"""Build a training set in the LDCTIQAG2023 layout from normal-dose sources.

out/image/0000.tif ...   float32 in [0, 1], the canonical window
out/train.json           {"0000.tif": score, ...}
out/manifest.csv         one row per image: path, score, group (patient), source, acquisition,
                         measurements; itself a CSV dataset for ``train --data``

Slices are simulated in worker processes; each slice's random numbers come from (seed, slice
number), so results do not depend on the number of workers. Images go to a hidden folder that
replaces image/ only when every slice is done; train.json and the manifest are written atomically.
"""

from __future__ import annotations

import csv
import io
import itertools
import json
import os
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Callable, Iterator

import numpy as np
import tifffile

from ..atomic import atomic_path, write_text_atomic
from ..config import ClinReadNetConfig
from ..patient_size import water_equivalent_diameter
from ..preprocess import window_hu
from ..readers import InputError
from ..readers.content import content_problem
from . import labels
from .lowdose import Acquisition, simulate_slice
from .physics import grid_name
from .sources import SourceSlice

MANIFEST_FIELDS = ("path", "score", "group", "source", "kind", "filter", "dose", "views", "i0", "electronic_sd",
                   "full_dose_fraction", "noise_hu", "degradation_hu", "degradation", "wed_mm", "grid")
PARTIAL_DIR = ".image.partial"


@dataclass(frozen=True)
class Window:
    """The intensity window the images are written in: the model config's canonical one."""

    width: float = ClinReadNetConfig.window_width
    level: float = ClinReadNetConfig.window_level


@dataclass
class SimulationRun:
    records: list[dict] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)  # images not written: the readers would reject them
    slices: int = 0
    seconds: float = 0.0

    @property
    def slices_per_second(self) -> float:
        return self.slices / self.seconds if self.seconds > 0 else 0.0


def existing_dataset(out: Path) -> bool:
    return (out / "train.json").exists() or (out / "image").exists()


def _write_tiff(path: Path, image: np.ndarray) -> None:
    with atomic_path(path) as tmp:
        tifffile.imwrite(tmp, image.astype(np.float32), photometric="minisblack")


def _simulate_job(first: int, source: SourceSlice, hu: np.ndarray, acquisition: Acquisition, window: Window,
                  include_source: bool, seed: int, number: int, image_dir: Path, name_width: int
                  ) -> tuple[list[dict], list[str]]:
    """Simulate slice ``number``, write its images as ``first``, ``first + 1``, ... into
    ``image_dir`` and return their manifest rows, and why any image was not written: one that
    ``score`` and ``train`` would refuse (a photon-starved acquisition of a large patient at a low
    flux is noise alone) is left out, so that training on the folder does not stop at it."""
    rng = np.random.default_rng([seed, number])
    sim = simulate_slice(hu, source.pixel_mm, acquisition, rng)
    names = (f"{k:0{name_width}d}.tif" for k in itertools.count(first))
    # The source's size is every acquisition's: at one flux it sets how noisy each of them is
    wed = water_equivalent_diameter(hu, (source.pixel_mm, source.pixel_mm))
    common = {"group": source.patient, "source": source.source, "i0": f"{sim.i0:.4g}",
              "electronic_sd": round(sim.electronic_sd, 2), "wed_mm": f"{wed:.1f}" if np.isfinite(wed) else "",
              "grid": ""}

    rows: list[dict] = []
    skipped: list[str] = []

    def write(image_hu: np.ndarray, row: dict) -> None:
        unit = window_hu(image_hu, window.width, window.level)
        problem = content_problem(unit, "unit")
        if problem:
            what = "the untouched source" if row["kind"] == "source" else (
                f"{row['kind']} {row['filter']}{' on ' + row['grid'] if row['grid'] else ''} at "
                f"{row['dose']:.0%} dose, {row['views']} views")
            skipped.append(f"{source.source}: {what} not written: {problem}")
            return
        name = next(names)
        _write_tiff(image_dir / name, unit)
        rows.append({"path": f"image/{name}", **row})

    if include_source:
        write(hu, {"score": 4.0, **common, "kind": "source", "filter": "", "dose": 1.0, "full_dose_fraction": "1",
                   "views": "", "noise_hu": sim.source_noise_hu, "degradation_hu": 0.0, "degradation": 0.0})
    for mode, grid in acquisition.reconstructions():
        name_of_grid = grid_name(grid)
        recons = [r for r in sim.images if (r.mode, r.grid) == (mode, name_of_grid)]
        scores = labels.monotone_scores({(r.dose, r.views): labels.degradation_to_score(r.degradation)
                                         for r in recons})
        # dose stays the protocol's share of its full dose; with a photon budget that full dose is
        # full_dose_fraction of the source's
        full_dose = sim.full_dose_fraction if mode == "full" else 1.0
        for r in recons:
            write(r.image, {"score": scores[(r.dose, r.views)], **common, "kind": mode, "filter": r.fbp_filter,
                            "dose": r.dose, "views": r.views, "full_dose_fraction": f"{full_dose:.4g}",
                            "grid": name_of_grid, "noise_hu": r.noise_hu, "degradation_hu": r.degradation_hu,
                            "degradation": r.degradation})
    return rows, skipped


def simulate_dataset(sources: list[SourceSlice], out: Path, acquisition: Acquisition, *, seed: int = 0,
                     workers: int | None = None, include_source: bool = True, window: Window = Window(),
                     on_slice: Callable[[], None] | None = None) -> SimulationRun:
    """Simulate every source slice over the acquisition grid into ``out`` (see the module doc)."""
    out.mkdir(parents=True, exist_ok=True)
    partial = out / PARTIAL_DIR
    shutil.rmtree(partial, ignore_errors=True)
    partial.mkdir()
    workers = workers or os.cpu_count() or 1
    per_slice = len(acquisition.doses) * len(acquisition.views) * len(acquisition.reconstructions()) + include_source
    name_width = max(4, len(str(len(sources) * per_slice - 1)))
    run = SimulationRun()
    started = time.perf_counter()
    rows: dict[int, list[dict]] = {}

    def jobs() -> Iterator[tuple[int, SourceSlice, np.ndarray]]:
        for number, source in enumerate(sources):
            try:
                hu = source.load()
            except InputError as exc:
                run.errors.append(exc)
                continue
            if hu.ndim != 2 or min(hu.shape) < 16:
                run.errors.append(InputError(source.source, f"slice of shape {hu.shape} is not a 2-D image"))
                continue
            yield number, source, hu

    pending: dict[Future, tuple[int, SourceSlice]] = {}

    def collect_one() -> None:
        done, _ = wait(pending, return_when=FIRST_COMPLETED)
        for future in done:
            number, source = pending.pop(future)
            try:
                rows[number], skipped = future.result()
                run.skipped.extend(skipped)
                run.slices += 1
            except Exception as exc:  # one bad slice does not stop the others
                run.errors.append(InputError(source.source, f"simulation failed ({type(exc).__name__}: {exc})"))
            if on_slice:
                on_slice()

    with ProcessPoolExecutor(max_workers=workers) as pool:
        for number, source, hu in jobs():
            if len(pending) >= 2 * workers:  # bounded: only a few slices in memory at a time
                collect_one()
            future = pool.submit(_simulate_job, number * per_slice, replace(source, load=None), hu, acquisition,
                                 window, include_source, seed, number, partial, name_width)
            pending[future] = (number, source)
        while pending:
            collect_one()

    run.records = [row for number in sorted(rows) for row in rows[number]]
    shutil.rmtree(out / "image", ignore_errors=True)
    os.replace(partial, out / "image")
    labels_json = {Path(r["path"]).name: round(float(r["score"]), 4) for r in run.records}
    write_text_atomic(out / "train.json", json.dumps(labels_json, indent=1) + "\n")
    write_text_atomic(out / "manifest.csv", manifest_csv(run.records))
    run.seconds = time.perf_counter() - started
    return run


def manifest_csv(records: list[dict], fields: tuple[str, ...] = MANIFEST_FIELDS) -> str:
    """The text of a ``manifest.csv``: one row per record, floats to four decimals."""
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=fields, lineterminator="\n")
    writer.writeheader()
    for r in records:
        writer.writerow({k: (f"{r[k]:.4f}" if isinstance(r[k], float) else r[k]) for k in fields})
    return buffer.getvalue()
