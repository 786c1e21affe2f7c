"""The model side of scoring: a batch of prepared slices in, one SliceScore per slice out.

torch-free itself: the exported runtimes score without torch; the torch runtime brings it.

Decoding (``decoding``: read, check, sample, noise figure) and the model are kept apart so that
the engines can decode in other processes or on other machines; all of them call ``score_batch``.
``api.Scorer.stream`` runs both in one process, for series already in memory (arrays, the report).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from .config import ConfigError
from .decoding import Item, PreparedSlice
from .noise import NoiseFigure
from .prediction import grade_name
from .readers import InputError

if TYPE_CHECKING:
    import torch

# Sampled slices (preprocess.sample_slice) in, an object with Prediction's properties out
PredictSlices = Callable[[list[np.ndarray]], Any]


# A slice whose heads disagree by this much (SD of their scores) is flagged uncertain; see the
# model card for what the spread means on held-out data.
UNCERTAIN_HEAD_SD = 0.35


@dataclass
class SliceScore:
    path: Path
    series: str
    series_uid: str | None
    slice: int
    score: float
    grade: str
    label: int  # arg-max class 0..20
    head_scores: list[float]
    head_sd: float  # spread of the four heads' scores: the model's own uncertainty
    entropy: float  # of the head-averaged distribution over the classes, 0 (one class) .. 1 (flat)
    noise: NoiseFigure  # the classical noise figure, beside (never inside) the score
    wed_mm: float | None = None  # the patient's water-equivalent diameter, beside (never inside) the score
    meta: dict = field(default_factory=dict)  # where the slice comes from (DICOM UIDs, acquisition), see SliceRef

    @property
    def uncertain(self) -> bool:
        return self.head_sd >= UNCERTAIN_HEAD_SD


NVIDIA_GPUS = "/proc/driver/nvidia/gpus"  # Linux: one entry per GPU the NVIDIA driver sees


def nvidia_gpus_listed() -> bool:
    """Whether Linux's NVIDIA driver lists a GPU (read without importing torch)."""
    return os.path.isdir(NVIDIA_GPUS) and bool(os.listdir(NVIDIA_GPUS))


def gpu_driver_present() -> bool:
    """Whether this machine may have a CUDA device: not on Linux without an NVIDIA driver, which
    ``score`` can tell without importing torch."""
    return not os.path.exists("/proc/cpuinfo") or nvidia_gpus_listed()


def resolve_device_type(name: str) -> str:
    """``resolve_device(name).type``, importing torch only where a GPU may be present."""
    if name == "cpu" or (name == "auto" and not gpu_driver_present()):
        return "cpu"
    return resolve_device(name).type


def cuda_available() -> bool:
    """``torch.cuda.is_available()``, not asked where Linux lists no NVIDIA driver: there the answer
    is no, and probing CUDA in a process that has loaded OpenVINO and ONNX Runtime beside torch has
    crashed it (a segmentation fault, now and then, in the test suite)."""
    if not gpu_driver_present():
        return False
    import torch

    return torch.cuda.is_available()


def resolve_device(name: str) -> "torch.device":
    """``auto`` -> CUDA when present, else CPU. Raises ConfigError for an unusable choice."""
    import torch

    if name == "auto":
        return torch.device("cuda" if cuda_available() else "cpu")
    if name == "cuda" and not cuda_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def score_batch(predict: PredictSlices, items: list[Item]) -> list[SliceScore | InputError]:
    """Score the prepared slices among ``items`` in one model call; failures pass through in place."""
    prepared = [item for item in items if isinstance(item, PreparedSlice)]
    if not prepared:
        return list(items)
    pred = predict([p.pixels for p in prepared])
    scores, labels, heads = pred.score.tolist(), pred.label.tolist(), pred.head_scores.tolist()
    spreads, entropies = pred.head_sd.tolist(), pred.entropy.tolist()
    out: list[SliceScore | InputError] = []
    k = 0
    for item in items:
        if isinstance(item, InputError):
            out.append(item)
            continue
        out.append(SliceScore(
            path=item.path, series=item.series, series_uid=item.series_uid, slice=item.slice, score=scores[k],
            grade=grade_name(scores[k]), label=labels[k], head_scores=heads[k], head_sd=spreads[k],
            entropy=entropies[k], noise=item.noise, wed_mm=item.wed_mm, meta=item.meta,
        ))
        k += 1
    return out
