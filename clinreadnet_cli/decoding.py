"""Decoding, the half of scoring that needs no model: read a slice, check it, sample it for the
network's input, measure its noise figure, and batch the results.

torch-free, so decoding processes (engine.local) and Ray tasks (engine.ray) start light; the model
half is ``scoring.score_batch``. Batches never span two series: a slice is scored in the same
batch whatever else is scored beside it, so every path gives identical records.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from .config import ClinReadNetConfig
from .noise import NoiseFigure, measure_noise, smoothed_hu
from .patient_size import measure_diameter
from .preprocess import sample_slice
from .readers import DEFAULT_LIMITS, InputError, Limits, Series, SliceRef


@dataclass(frozen=True)
class DecodeSettings:
    """What decoding needs to know, picklable for worker processes and Ray tasks."""

    cfg: ClinReadNetConfig  # window, input path, input size (from the weights' header)
    batch_size: int = 8
    input_range: str = "auto"
    limits: Limits = DEFAULT_LIMITS
    all_orientations: bool = False


@dataclass
class PreparedSlice:
    """A decoded slice ready for the model, and where it comes from."""

    path: Path | str  # a file, or an instance's WADO-RS address
    series: str
    series_uid: str | None
    slice: int
    pixels: np.ndarray  # (C, S, S) float32 from preprocess.sample_slice
    noise: NoiseFigure
    wed_mm: float | None  # the patient's water-equivalent diameter (patient_size), beside the score too
    meta: dict = field(default_factory=dict)


Item = PreparedSlice | InputError


@dataclass
class Batch:
    """Up to batch_size prepared slices of one unit, with the unit's failures in their place."""

    items: list[Item]
    warnings: list[str] = field(default_factory=list)  # inputs read with a fallback (first batch of a unit)


def prepare(ref: SliceRef, series: Series, cfg: ClinReadNetConfig) -> PreparedSlice:
    """Decode, check and sample one slice. Raises InputError naming the file and slice."""
    try:
        image = ref.load()
        pixels = sample_slice(image, ref.value_range, cfg)
        smoothed = smoothed_hu(image) if ref.value_range == "hu" else None  # what both figures threshold, once
        noise = measure_noise(image, ref.value_range, smoothed)
        wed_mm = measure_diameter(image, ref.value_range, ref.pixel_spacing_mm, smoothed)
    except InputError:
        raise
    except Exception as exc:
        raise InputError(ref.path, f"{type(exc).__name__}: {exc}", slice=ref.index) from None
    return PreparedSlice(path=ref.path, series=series.label, series_uid=series.series_uid, slice=ref.index,
                         pixels=pixels, noise=noise, wed_mm=wed_mm, meta=ref.meta)


def series_batches(series: Iterable[Series], cfg: ClinReadNetConfig, batch_size: int,
                   errors: Iterable[InputError] = (), warnings: Iterable[str] = ()) -> Iterator[Batch]:
    """Batches of up to ``batch_size`` prepared slices of one series each, in series and slice
    order; ``errors`` first. A volume that cannot be read fails once, not once per slice."""
    items: list[Item] = list(errors)
    reported: set[tuple[Path, str]] = set()
    pending_warnings = list(warnings)
    ready = 0
    for s in series:
        for ref in s.slices:
            try:
                items.append(prepare(ref, s, cfg))
                ready += 1
            except InputError as exc:
                if (exc.path, exc.reason) not in reported:
                    reported.add((exc.path, exc.reason))
                    items.append(exc)
            if ready == batch_size:
                yield Batch(items, pending_warnings)
                items, pending_warnings, ready = [], [], 0
        if ready:  # a series' last slices are a batch of their own
            yield Batch(items, pending_warnings)
            items, pending_warnings, ready = [], [], 0
    if items or pending_warnings:
        yield Batch(items, pending_warnings)
