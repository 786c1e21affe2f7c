"""Evaluate a weights file on a labelled split: PLCC, SROCC, KROCC (tau-b) and Score."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

from .checkpoint import load_model, resolve_weights
from .data import DatasetError, LabelledSlice, SliceDataset, check_readable, load_labelled, read_manifest, slice_ref
from .metrics import correlation_metrics
from .noise import measure_noise
from .patient_size import size_adjusted_noise
from .preprocess import prepare_slice, unit_to_hu
from .training import LATEST

SPLITS = ("test", "val", "train", "all")


@dataclass
class ImagePrediction:
    item: LabelledSlice
    score: float
    label: int  # arg-max class
    head_sd: float  # the four heads' disagreement (the record's uncertainty)
    noise_hu: float  # the classical noise figure of the same image (NaN where it cannot be measured)


@dataclass
class EvaluationInputs:
    data: Path
    weights: Path
    split_file: Path | None
    run: Path | None  # the training run they come from, if any
    input_range: str = "auto"  # how the images' values are read: the run's own unless given


def resolve_inputs(data: Path | None, weights: str | Path | None, split: str, split_file: Path | None,
                   run: Path | None, runs_folder: Path = Path("runs"),
                   input_range: str | None = None) -> EvaluationInputs:
    """What ``evaluate`` reads. Given ``--data`` (and for test/all ``--weights``, default the shipped
    weights), those; otherwise a training run: ``run``, else the newest one named in
    ``runs/latest.json``, gives the data, its best weights, its split and how it read the images."""
    needs_run = data is None or (weights is None and split in ("val", "train")) or run is not None
    if not needs_run:
        weights_path = resolve_weights(weights)
        return EvaluationInputs(Path(data), weights_path, split_file or weights_path.parent / "split.json", None,
                                input_range or "auto")
    if run is None:
        latest = runs_folder / LATEST
        try:
            run = Path(json.loads(latest.read_text())["run"])
        except (OSError, ValueError, KeyError, TypeError):
            raise DatasetError(f"no --data given and no training run to take it from ({latest} not found or "
                               "damaged); pass --data (and --weights), or --run DIR") from None
    try:
        options = json.loads((run / "config.json").read_text())
        run_data = options["data"]
    except (OSError, ValueError, KeyError, TypeError):
        raise DatasetError(f"{run}: not a training run folder (no readable config.json)") from None
    return EvaluationInputs(Path(data or run_data), resolve_weights(weights) if weights else run / "best.safetensors",
                            split_file or run / "split.json", run, input_range or options.get("input_range", "auto"))


def error_by_uncertainty(predictions: list[ImagePrediction], bins: int = 10) -> list[dict]:
    """Does the uncertainty mean something? Images in ``bins`` equal groups by head_sd, lowest first:
    each group's head_sd range, mean absolute error and share of errors above one grade (0.5)."""
    if len(predictions) < bins:
        return []
    ordered = sorted(predictions, key=lambda p: p.head_sd)
    rows = []
    for group in np.array_split(np.arange(len(ordered)), bins):
        chosen = [ordered[i] for i in group]
        errors = np.array([abs(p.score - p.item.score) for p in chosen])
        rows.append({"head_sd_from": chosen[0].head_sd, "head_sd_to": chosen[-1].head_sd, "images": len(chosen),
                     "mean_abs_error": float(errors.mean()), "share_error_above_0.5": float((errors > 0.5).mean())})
    return rows


def select_split(data: str | Path, split: str, split_file: Path | None) -> list[LabelledSlice]:
    """The labelled slices of ``split``: ``test`` and ``all`` read the dataset as it is;
    ``train`` and ``val`` take the keys a training run wrote to its split.json."""
    if split not in SPLITS:
        raise DatasetError(f"unknown split {split!r}; choose one of {', '.join(SPLITS)}")
    items = load_labelled(data, split="test" if split == "test" else "train")
    if split in ("test", "all"):
        return items
    if split_file is None or not split_file.is_file():
        raise DatasetError(f"--split {split} needs the run's split.json (looked for {split_file})")
    keys = json.loads(split_file.read_text())[split]
    by_key = {i.key: i for i in items}
    missing = [k for k in keys if k not in by_key]
    if missing:
        raise DatasetError(f"{split_file}: {len(missing)} {split} image(s) not in {data}, e.g. {missing[0]!r}")
    return [by_key[k] for k in keys]


class MeasuredSliceDataset(SliceDataset):
    """The network input and the noise figure of each image, from one read (the loader's workers
    measure while the model scores).

    Windowed [0, 1] images (the LDCTIQAG2023 layout, and what ``simulate`` writes) are mapped back
    to HU through the canonical window, the one ``simulate`` writes in; for data windowed otherwise
    the figure is off by a constant factor, which leaves its ordering and correlations unchanged.
    """

    def __getitem__(self, index: int) -> tuple[torch.Tensor, float]:
        ref = slice_ref(self.items[index], self.input_range)
        raw = ref.load()
        hu = unit_to_hu(raw) if ref.value_range == "unit" else raw
        figure = measure_noise(hu, "hu")
        return prepare_slice(raw, ref.value_range, self.cfg), math.nan if figure.noise_hu is None else figure.noise_hu


def evaluate(weights: Path, items: list[LabelledSlice], device: torch.device, batch_size: int = 8,
             workers: int = 2, input_range: str = "auto") -> tuple[dict[str, float], list[ImagePrediction]]:
    """The model's correlations with the labels, and each image's prediction beside its noise figure."""
    check_readable(items, input_range)
    model = load_model(weights).to(device)
    loader = DataLoader(MeasuredSliceDataset(items, model.config, None, input_range), batch_size=batch_size,
                        num_workers=workers)
    predictions: list[ImagePrediction] = []
    for images, noise in loader:
        pred = model.predict(images.to(device))  # eval mode, inference_mode
        for score, label, spread, figure in zip(pred.score.tolist(), pred.label.tolist(), pred.head_sd.tolist(),
                                                noise.tolist()):
            predictions.append(ImagePrediction(item=items[len(predictions)], score=score, label=label, head_sd=spread,
                                               noise_hu=figure))
    metrics = correlation_metrics([p.score for p in predictions], [p.item.score for p in predictions])
    return metrics, predictions


def simulation_checks(data: str | Path, predictions: list[ImagePrediction]) -> dict[str, dict[str, float]] | None:
    """Degradation ordering when ``data`` is a folder written by ``simulate`` (it has a manifest):
    ``{"model": ..., "noise_hu": ..., "noise_hu_size": ...}``, see ``ordering_report``; the last, the
    noise figure with the patient's size divided out, where the manifest has each image's ``wed_mm``."""
    manifest_path = Path(data) / "manifest.csv"
    if not manifest_path.is_file():
        return None
    manifest = read_manifest(manifest_path, {"path", "source", "group", "kind", "dose", "views"})
    rows = [(k, manifest.get(p.item.path.name)) for k, p in enumerate(predictions)]
    rows = [(k, row) for k, row in rows if row is not None]
    if not rows:
        return None
    acquisitions = acquisitions_from_manifest([row for _, row in rows])
    noise = np.array([predictions[k].noise_hu for k, _ in rows])
    checks = {"model": ordering_report(acquisitions, np.array([predictions[k].score for k, _ in rows])),
              # more noise is worse: order by -noise_hu
              "noise_hu": ordering_report(acquisitions, -noise)}
    diameter = np.array([float(row.get("wed_mm") or "nan") for _, row in rows])
    if np.isfinite(diameter).any():  # manifests written before the wed_mm column have no sizes
        checks["noise_hu_size"] = ordering_report(acquisitions, -size_adjusted_noise(noise, diameter))
    return checks


@dataclass(frozen=True)
class Acquisitions:
    """Per image of a simulated set: its source slice, patient, kind, dose and views (arrays)."""

    source: np.ndarray
    patient: np.ndarray
    untouched: np.ndarray  # bool
    dose: np.ndarray
    views: np.ndarray  # the untouched source counts as the full view count
    # How the image was reconstructed: "scanner" (the untouched source and the add-difference
    # images: the source's own kernel) or "full <filter>" (simulate's full FBP reconstructions),
    # with " on <grid>" for those made on another grid (simulate --grids).
    reconstruction: np.ndarray


def reconstruction_of(row: dict) -> str:
    if row["kind"] != "full":
        return "scanner"
    kernel = f"full {row.get('filter') or ''}".strip()
    return f"{kernel} on {row['grid']}" if row.get("grid") else kernel


def acquisitions_from_manifest(rows: list[dict]) -> Acquisitions:
    untouched = np.array([r["kind"] == "source" for r in rows])
    views = np.array([np.nan if u else float(r["views"]) for r, u in zip(rows, untouched)])
    views[untouched] = np.nanmax(views) if (~untouched).any() else 1.0
    _, source = np.unique([r["source"] for r in rows], return_inverse=True)
    _, patient = np.unique([r.get("group") or r["source"] for r in rows], return_inverse=True)
    return Acquisitions(source=source, patient=patient, untouched=untouched,
                        dose=np.array([float(r["dose"]) for r in rows]), views=views,
                        reconstruction=np.array([reconstruction_of(r) for r in rows]))


def _shares(counts: dict[str, list[int]]) -> dict:
    """{name: [pairs, correctly ordered]} -> the share ordered (NaN without pairs) and the pair count."""
    report: dict = {}
    for name, (pairs, correct) in counts.items():
        report[name] = correct / pairs if pairs else math.nan
        report[f"{name}_pairs"] = pairs
    return report


LOW_DOSE = 0.25  # "low dose" in the untouched-vs-low-dose check: 25 % of the source's dose or less


def scored_pairs(scores: np.ndarray, chunk: int):
    """(a, b) index blocks covering every pair of images with a finite score, ``chunk`` rows of
    a (the side tested as more degraded) at a time, so that pair masks stay small."""
    idx = np.flatnonzero(np.isfinite(scores))
    for start in range(0, len(idx), chunk):
        yield idx[start:start + chunk, None], idx[None, :]


def _tally(counter: list[int], pairs: np.ndarray, right: np.ndarray) -> None:
    """Add a pair mask to a [pairs, correctly ordered] counter."""
    counter[0] += int(pairs.sum())
    counter[1] += int((pairs & right).sum())


def more_degraded(acq: Acquisitions, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Image a is more degraded than image b (index arrays, broadcast): a's dose and views are
    both <= b's, one of them strictly."""
    return ((acq.dose[a] <= acq.dose[b]) & (acq.views[a] <= acq.views[b])
            & ((acq.dose[a] < acq.dose[b]) | (acq.views[a] < acq.views[b])))


CROSS_SLICE_CAUSES = ("dose_only", "views_only", "dose_and_views", "degraded_slice_noisier", "degraded_slice_quieter")


def cross_slice_causes(acq: Acquisitions, scores: np.ndarray, full_dose_noise: np.ndarray,
                       chunk: int = 512) -> dict:
    """The cross-slice pairs of ``ordering_report`` split by what makes A the more degraded image
    (less dose alone, fewer views alone, both) and by which slice is noisier at its own full dose
    and full views (``full_dose_noise`` per image, in HU). Where one photon budget serves every
    patient, a larger body (or finer pixels) is noisier at the same protocol: the pairs whose more
    degraded image comes from the slice that is quieter at full dose are the ones a score has to
    judge by protocol rather than by noise."""
    counts = {name: [0, 0] for name in CROSS_SLICE_CAUSES}
    for a, b in scored_pairs(scores, chunk):
        pairs = more_degraded(acq, a, b) & (acq.source[a] != acq.source[b])
        right = scores[a] < scores[b]
        less_dose, fewer_views = acq.dose[a] < acq.dose[b], acq.views[a] < acq.views[b]
        for name, mask in (("dose_only", pairs & ~fewer_views), ("views_only", pairs & ~less_dose),
                           ("dose_and_views", pairs & less_dose & fewer_views),
                           ("degraded_slice_noisier", pairs & (full_dose_noise[a] > full_dose_noise[b])),
                           ("degraded_slice_quieter", pairs & (full_dose_noise[a] < full_dose_noise[b]))):
            _tally(counts[name], mask, right)
    return _shares(counts)


def cross_group_interval(acq: Acquisitions, scores: np.ndarray, groups: np.ndarray, resamples: int = 2000,
                         level: float = 0.95, seed: int = 0, chunk: int = 512) -> tuple[float, float]:
    """A bootstrap interval of the share of pairs ordered across groups: ``ordering_report``'s
    cross-slice share with ``groups=acq.source``, its cross-patient share with ``acq.patient``.

    The pairs of a few slices are far from independent: one slice scored high at every dose
    decides many of them. So the groups are resampled with replacement, and each resample's share
    is taken over the pairs between two different groups it drew (a group drawn twice counts its
    pairs with each other group twice, and is never paired with its own copy)."""
    names, group_of = np.unique(groups, return_inverse=True)
    pairs = np.zeros((len(names), len(names)))
    right = np.zeros_like(pairs)
    for a, b in scored_pairs(scores, chunk):
        worse = more_degraded(acq, a, b) & (groups[a] != groups[b])
        ga, gb = np.broadcast_arrays(group_of[a], group_of[b])
        np.add.at(pairs, (ga[worse], gb[worse]), 1)
        np.add.at(right, (ga[worse], gb[worse]), (scores[a] < scores[b])[worse])
    pairs, right = pairs + pairs.T, right + right.T  # unordered group pairs: (i, j) and (j, i) alike
    rng = np.random.default_rng(seed)
    shares = []
    for _ in range(resamples):
        drawn = np.bincount(rng.integers(len(names), size=len(names)), minlength=len(names))
        weight = np.outer(drawn, drawn)  # pairs of groups i != j, each as often as both were drawn
        np.fill_diagonal(weight, 0)
        if (total := (weight * pairs).sum()) > 0:
            shares.append((weight * right).sum() / total)
    tail = (1 - level) / 2 * 100
    return float(np.percentile(shares, tail)), float(np.percentile(shares, 100 - tail))


def ordering_report(acq: Acquisitions, scores: np.ndarray, chunk: int = 512) -> dict:
    """How well ``scores`` (higher = better quality) order images by their acquisition.

    Image A is more degraded than B when A's dose and views are both <= B's, one of them
    strictly; the pair is ordered correctly when A scores strictly lower. Pairs are counted
    within one source slice, across slices and across patients; ``untouched_vs_low_dose`` pairs
    each untouched slice with its own versions at <= 25 % dose. ``within_reconstruction`` keeps
    the within-slice pairs of one reconstruction (two acquisitions reconstructed alike: what a
    scanner protocol comparison is), and ``by_reconstruction`` gives within- and cross-slice
    ordering for each reconstruction on its own. Images without a score (NaN, e.g. no soft tissue
    for the noise figure) are left out. Also the mean score of the untouched sources and of the
    worst acquisition (least dose, fewest views).
    """
    keep = np.isfinite(scores)
    names = ("within_slice", "cross_slice", "cross_patient", "untouched_vs_low_dose", "within_reconstruction")
    counts = {name: [0, 0] for name in names}
    kinds = sorted(set(acq.reconstruction[keep]))
    per_kind = {kind: {"within_slice": [0, 0], "cross_slice": [0, 0]} for kind in kinds}
    for a, b in scored_pairs(scores, chunk):
        worse = more_degraded(acq, a, b)
        right = scores[a] < scores[b]
        same_slice = acq.source[a] == acq.source[b]
        same_reconstruction = acq.reconstruction[a] == acq.reconstruction[b]
        for name, mask in (("within_slice", worse & same_slice), ("cross_slice", worse & ~same_slice),
                           ("cross_patient", worse & (acq.patient[a] != acq.patient[b])),
                           ("untouched_vs_low_dose", same_slice & acq.untouched[b] & ~acq.untouched[a]
                            & (acq.dose[a] <= LOW_DOSE)),
                           ("within_reconstruction", worse & same_slice & same_reconstruction)):
            _tally(counts[name], mask, right)
        for kind in kinds if len(kinds) > 1 else ():
            alike = worse & same_reconstruction & (acq.reconstruction[a] == kind)
            for where, mask in (("within_slice", alike & same_slice), ("cross_slice", alike & ~same_slice)):
                _tally(per_kind[kind][where], mask, right)
    report: dict = _shares(counts)
    if len(kinds) > 1:
        report["by_reconstruction"] = {kind: _shares(kind_counts) for kind, kind_counts in per_kind.items()}
    simulated = keep & ~acq.untouched
    worst = simulated & (acq.dose == acq.dose[simulated].min(initial=np.inf)) & (
        acq.views == acq.views[simulated].min(initial=np.inf))
    report["untouched_mean"] = float(scores[keep & acq.untouched].mean()) if (keep & acq.untouched).any() else math.nan
    report["worst_mean"] = float(scores[worst].mean()) if worst.any() else math.nan
    return report
