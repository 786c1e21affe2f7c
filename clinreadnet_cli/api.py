"""Score CT slices from Python: the same records as ``clinreadnet score``.

    from clinreadnet_cli import score_array, score_paths

    record = score_array(hu_slice)                    # one 2-D slice in HU (numpy)
    records = score_paths(["study/"], weights="sim-v4")  # files and folders, errors as records

``Scorer`` keeps one model loaded for many calls; the two functions reuse one Scorer per
weights and options. Nothing here writes files but the exported model, once, in the cache
folder (``runtimes``).
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import cached_property, lru_cache
from pathlib import Path
from typing import Callable, Iterable, Iterator

import numpy as np

from .checkpoint import load_model, resolve_weights, scoring_config, weights_identity
from .config import slices_per_batch
from .decoding import Item, series_batches
from .inference import prepare_for_inference, resolve_options
from .prediction import ArrayPrediction
from .readers import DEFAULT_LIMITS, InputError, Limits, Series, SliceRef, discover
from .records import to_record
from .scoring import PredictSlices, SliceScore, resolve_device, resolve_device_type, score_batch


@dataclass(frozen=True)
class ScorerSpec:
    """How to build the model where it runs (this process, or each Ray actor)."""

    weights: Path
    device: str = "auto"
    precision: str = "auto"
    threads: int | None = None  # torch compute threads; None: torch's choice (Ray: the actor's CPUs)
    batch_size: int = 8  # forward passes per model call (a slice takes one per sampling grid)
    int8: bool = False
    compile_model: bool = False
    sampling_grids: int | None = None  # None: the weights' own (checkpoint.scoring_config)
    runtime: str = "auto"  # inference.RUNTIMES, or auto

    def config(self):
        """The config slices are read with (decoding needs it before the model is loaded)."""
        return scoring_config(self.weights, self.sampling_grids)

    def slices_per_batch(self) -> int:
        return slices_per_batch(self.batch_size, self.config().sampling_grids)

    def build(self) -> "Scorer":
        return Scorer(self.weights, device=self.device, precision=self.precision, int8=self.int8,
                      compile_model=self.compile_model, batch_size=self.batch_size,
                      sampling_grids=self.sampling_grids, runtime=self.runtime, threads=self.threads)


class Scorer:
    """A loaded model and how to run it. Raises WeightsError / ConfigError / ValueError on bad options.

    ``sampling_grids`` reads slices through that many sampling grids instead of the weights' own
    number (records say which was used); ``batch_size`` counts forward passes, one per slice and grid
    (OpenVINO runs every call at that batch, a shorter one padded: 1 for a slice at a time);
    ``runtime``: ``inference.RUNTIMES`` or auto; ``threads``: compute threads (default: the runtime's).
    On an exported runtime whose export is in the cache, torch is never imported."""

    def __init__(self, weights: str | Path | None = None, device: str = "auto", precision: str = "auto",
                 int8: bool = False, compile_model: bool = False, batch_size: int = 8,
                 sampling_grids: int | None = None, runtime: str = "auto", threads: int | None = None):
        self.path = resolve_weights(weights)
        self.device_type = resolve_device_type(device)
        self.options = resolve_options(self.device_type, precision, int8, compile_model, runtime)
        self.config = scoring_config(self.path, sampling_grids)  # the tensors are the same for any number of grids
        # {"weights", "weights_sha256", "sampling_grids"}, in every record
        self.identity = {**weights_identity(self.path), "sampling_grids": self.config.sampling_grids}
        self.batch_size = slices_per_batch(batch_size, self.config.sampling_grids)  # slices per model call
        self.threads = threads  # None: the runtime's own choice (torch's, OpenVINO's: the physical cores)
        self._release: Callable[[], None] | None = None  # set by a runtime that can free its buffers
        self.predict: PredictSlices = (self._torch_predictor() if self.options.runtime == "torch"
                                       else self._exported_predictor())

    @cached_property
    def model(self):
        """The torch model (loaded on first use where the runtime does without it: quality maps)."""
        model = load_model(self.path)
        model.config = self.config
        return model

    def _exported_predictor(self) -> PredictSlices:
        from . import runtimes

        onnx = runtimes.export_path(self.identity["weights_sha256"], self.config)
        runtimes.export_weights(self.path, self.config, onnx)  # the first run with these weights (torch, ~20 s)
        logits = runtimes.runtime_logits(self.options.runtime, onnx, self.threads, self.options.precision,
                                         batch=self.batch_size)
        self._release = getattr(logits, "release", None)
        if self.config.input_path == "resize":  # v1's antialiased resize to the input size is torch's
            from .preprocess import model_input

            return lambda slices: ArrayPrediction.from_logits(
                logits(np.stack([model_input(pixels, self.config).numpy() for pixels in slices])))
        return lambda slices: ArrayPrediction.from_logits(logits(np.stack(slices)))

    def _torch_predictor(self) -> PredictSlices:
        import torch

        from .preprocess import model_input

        if self.threads:
            torch.set_num_threads(self.threads)
        device = resolve_device(self.device_type)
        predict = prepare_for_inference(self.model, device, self.options)

        def predict_slices(slices: list[np.ndarray]):
            batch = torch.stack([model_input(pixels, self.config) for pixels in slices])
            if device.type == "cuda":
                batch = batch.pin_memory()  # lets predict() copy it to the GPU without blocking
            return predict(batch)

        return predict_slices

    def release_memory(self) -> None:
        """Hand back the working memory of inference before other work (a Structured Report) or
        a wait (a DICOM node between series); the next batch allocates it again."""
        if self._release is not None:
            self._release()

    def score_items(self, items: list[Item]) -> list[SliceScore | InputError]:
        """One decoded batch (``engine.base.Batch.items``) through the model."""
        return score_batch(self.predict, items)

    def stream(self, series: Iterable[Series],
               on_slice: Callable[[], None] | None = None) -> Iterator[SliceScore | InputError]:
        """One SliceScore per slice, or one InputError per failing input, in series/slice order,
        decoded in this process (series already in memory), scored by this Scorer's one predictor."""
        for batch in series_batches(series, self.config, self.batch_size):
            for result in self.score_items(batch.items):
                if on_slice:
                    on_slice()
                yield result

    def records(self, paths: Iterable[str | Path], input_range: str = "auto", limits: Limits = DEFAULT_LIMITS,
                all_orientations: bool = False) -> Iterator[dict]:
        """Records for every slice under ``paths`` (files and folders), error records for what failed,
        in series/slice order, decoded in this process (``clinreadnet score`` decodes in processes
        beside the model: ``engine.local``; the records are the same)."""
        found = discover(paths, input_range, limits, all_orientations)
        # The command's order: inputs by their first file, a failed file where it stands.
        inputs = [(str(e.path), e) for e in found.errors] + [(min(str(r.path) for r in s.slices), s)
                                                            for s in found.series]
        for _, item in sorted(inputs, key=lambda pair: pair[0]):
            if isinstance(item, InputError):
                yield to_record(item)
            else:
                yield from (to_record(scored, self.identity) for scored in self.stream([item]))

    def score_array(self, image: np.ndarray, value_range: str = "hu", name: str = "array",
                    pixel_spacing_mm: tuple[float, float] | None = None) -> dict:
        """The record of one 2-D slice (HU, or ``value_range="unit"`` for windowed [0, 1] values);
        with its (row, column) ``pixel_spacing_mm`` the record has the patient's ``wed_mm`` too.

        Raises InputError where the slice cannot be scored (NaN, constant, not CT in HU, ...).
        """
        array = np.asarray(image, dtype=np.float32)
        series = Series(label=name, series_uid=None,
                        slices=[SliceRef(path=Path(name), index=0, value_range=value_range, decode=lambda: array,
                                         pixel_spacing_mm=pixel_spacing_mm)])
        (item,) = list(self.stream([series]))
        if isinstance(item, InputError):
            raise item
        return to_record(item, self.identity)


@lru_cache(maxsize=4)
def _scorer(weights: str | None, device: str, precision: str, sampling_grids: int | None,
            batch_size: int = 8) -> Scorer:
    return Scorer(weights, device=device, precision=precision, sampling_grids=sampling_grids, batch_size=batch_size)


def score_array(image: np.ndarray, weights: str | Path | None = None, value_range: str = "hu",
                device: str = "auto", precision: str = "auto", sampling_grids: int | None = None,
                pixel_spacing_mm: tuple[float, float] | None = None) -> dict:
    """Score one 2-D slice; see ``Scorer.score_array``."""
    # A Scorer of one slice a call: OpenVINO is compiled for the batch, so a larger one would run
    # its padding too on every call
    scorer = _scorer(None if weights is None else str(weights), device, precision, sampling_grids, batch_size=1)
    return scorer.score_array(image, value_range, pixel_spacing_mm=pixel_spacing_mm)


def score_paths(paths: Iterable[str | Path] | str | Path, weights: str | Path | None = None, input_range: str = "auto",
                device: str = "auto", precision: str = "auto", sampling_grids: int | None = None) -> list[dict]:
    """Score files and folders; see ``Scorer.records``."""
    if isinstance(paths, (str, Path)):
        paths = [paths]
    scorer = _scorer(None if weights is None else str(weights), device, precision, sampling_grids)
    return list(scorer.records(paths, input_range))
