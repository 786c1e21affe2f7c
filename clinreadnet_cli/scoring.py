"""The score workflow: decode slices in background threads while the model scores batches.

At most ``2 x batch_size`` prepared slices exist at once, so memory is bounded by the batch,
not by the study: a 1,000-slice series is never held as float32 in one piece.
"""

from __future__ import annotations

from collections import deque
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch

from .archs import ClinReadNet
from .archs.clinreadnet import Prediction
from .archs.heads import grade_name
from .config import ConfigError
from .inference import InferenceOptions, prepare_for_inference
from .noise import NoiseFigure, measure_noise
from .preprocess import prepare_slice
from .readers import InputError, Series, SliceRef


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
    meta: dict = field(default_factory=dict)  # where the slice comes from (DICOM UIDs, acquisition), see SliceRef

    @property
    def uncertain(self) -> bool:
        return self.head_sd >= UNCERTAIN_HEAD_SD


def resolve_device(name: str) -> torch.device:
    """``auto`` -> CUDA when present, else CPU. Raises ConfigError for an unusable choice."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name == "cuda" and not torch.cuda.is_available():
        raise ConfigError("--device cuda asked for, but no CUDA device is available")
    return torch.device(name)


def score_series(
    series: Iterable[Series],
    model: ClinReadNet,
    device: torch.device,
    batch_size: int = 8,
    workers: int = 2,
    on_slice: Callable[[], None] | None = None,
    options: InferenceOptions | None = None,
) -> Iterator[SliceScore | InputError]:
    """Yield one SliceScore per slice, or one InputError per failing input, in series/slice order.

    ``options`` default to the device's (fp32 on CPU; bf16 autocast and channels-last on CUDA).
    """
    predict = prepare_for_inference(model, device, options or InferenceOptions.default_for(device))
    cfg = model.config
    jobs = ((s, ref) for s in series for ref in s.slices)

    def prepare(ref: SliceRef) -> tuple[torch.Tensor, NoiseFigure]:
        try:
            image = ref.load()
            return prepare_slice(image, ref.value_range, cfg), measure_noise(image, ref.value_range)
        except InputError:
            raise
        except Exception as exc:
            raise InputError(ref.path, f"{type(exc).__name__}: {exc}", slice=ref.index) from None

    reported: set[tuple[Path, str]] = set()  # a volume that cannot be read fails once, not per slice
    with ThreadPoolExecutor(max_workers=max(1, workers), thread_name_prefix="decode") as pool:
        in_flight: deque[tuple[Series, SliceRef, Future]] = deque()

        def submit_next() -> None:
            job = next(jobs, None)
            if job is not None:
                in_flight.append((*job, pool.submit(prepare, job[1])))

        for _ in range(2 * batch_size):
            submit_next()
        pending: list[tuple[Series, SliceRef, tuple[torch.Tensor, NoiseFigure] | InputError]] = []
        while in_flight or pending:
            if in_flight:
                s, ref, future = in_flight.popleft()
                submit_next()
                try:
                    pending.append((s, ref, future.result()))
                except InputError as exc:
                    pending.append((s, ref, exc))
                if on_slice:
                    on_slice()
            ready = sum(not isinstance(item, InputError) for *_, item in pending)
            if ready < batch_size and in_flight:
                continue
            for result in _run_batch(predict, device, pending):
                key = (result.path, str(result)) if isinstance(result, InputError) else None
                if key is None or key not in reported:
                    if key:
                        reported.add(key)
                    yield result
            pending = []


def _run_batch(predict: Callable[[torch.Tensor], Prediction], device: torch.device,
               items) -> list[SliceScore | InputError]:
    tensors = [item[0] for *_, item in items if not isinstance(item, InputError)]
    if not tensors:
        return [item for *_, item in items]
    batch = torch.stack(tensors)
    if device.type == "cuda":
        batch = batch.pin_memory()  # lets predict() copy it to the GPU without blocking
    pred = predict(batch)
    scores, labels, heads = pred.score.tolist(), pred.label.tolist(), pred.head_scores.tolist()
    spreads, entropies = pred.head_sd.tolist(), pred.entropy.tolist()
    out: list[SliceScore | InputError] = []
    k = 0
    for s, ref, item in items:
        if isinstance(item, InputError):
            out.append(item)
            continue
        out.append(SliceScore(
            path=ref.path, series=s.label, series_uid=s.series_uid, slice=ref.index, score=scores[k],
            grade=grade_name(scores[k]), label=labels[k], head_scores=heads[k], head_sd=spreads[k],
            entropy=entropies[k], noise=item[1], meta=ref.meta,
        ))
        k += 1
    return out
