"""Evaluate a weights file on a labelled split: PLCC, SROCC, KROCC (tau-b) and Score."""

from __future__ import annotations

import json
import math
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .checkpoint import load_model
from .data import DatasetError, LabelledSlice, SliceDataset, load_labelled, read_manifest
from .metrics import correlation_metrics

SPLITS = ("test", "val", "train", "all")


@dataclass
class ImagePrediction:
    item: LabelledSlice
    score: float
    label: int  # arg-max class


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


def evaluate(weights: Path, items: list[LabelledSlice], device: torch.device, batch_size: int = 8,
             workers: int = 2, input_range: str = "auto") -> tuple[dict[str, float], list[ImagePrediction]]:
    model = load_model(weights).to(device)
    loader = DataLoader(SliceDataset(items, model.config, None, input_range), batch_size=batch_size,
                        num_workers=workers)
    predictions: list[ImagePrediction] = []
    for images, _ in loader:
        pred = model.predict(images.to(device))  # eval mode, inference_mode
        for score, label in zip(pred.score.tolist(), pred.label.tolist()):
            predictions.append(ImagePrediction(item=items[len(predictions)], score=score, label=label))
    metrics = correlation_metrics([p.score for p in predictions], [p.item.score for p in predictions])
    return metrics, predictions


def simulation_checks(data: str | Path, predictions: list[ImagePrediction]) -> dict[str, float] | None:
    """Degradation ordering when ``data`` is a folder written by ``simulate`` (it has a manifest)."""
    manifest = Path(data) / "manifest.csv"
    if not manifest.is_file():
        return None
    return degradation_ordering(predictions, read_manifest(manifest, {"path", "source", "kind", "dose", "views"}))


def degradation_ordering(predictions: list[ImagePrediction], manifest: dict[str, dict]) -> dict[str, float]:
    """How well scores order acquisitions of the same source slice.

    A pair counts when one image has lower-or-equal dose and fewer-or-equal views than the other,
    one of them strictly; it is ordered correctly when the more degraded image scores strictly
    lower. The untouched source counts as full dose with the most views of its slice. Also the
    mean score of the untouched sources and of the worst acquisition (least dose, fewest views).
    """
    by_source: dict[str, list[tuple[float, float, float]]] = defaultdict(list)
    for p in predictions:
        row = manifest.get(p.item.path.name)
        if row is None:
            continue
        views = math.inf if row["kind"] == "source" else float(row["views"])
        by_source[row["source"]].append((float(row["dose"]), views, p.score))
    pairs = correct = 0
    untouched, worst = [], []
    for images in by_source.values():
        simulated = [(d, v) for d, v, _ in images if v != math.inf]
        most_views, least = max((v for _, v in simulated), default=0.0), min(simulated, default=None)
        ranked = []
        for d, v, s in images:
            if v == math.inf:
                untouched.append(s)
                v = most_views
            elif (d, v) == least:
                worst.append(s)
            ranked.append((d, v, s))
        for d1, v1, s1 in ranked:
            for d2, v2, s2 in ranked:
                if d1 <= d2 and v1 <= v2 and (d1, v1) != (d2, v2):
                    pairs += 1
                    correct += s1 < s2
    nan = float("nan")
    return {"pairs": pairs, "ordering_accuracy": correct / pairs if pairs else nan,
            "untouched_mean": sum(untouched) / len(untouched) if untouched else nan,
            "worst_mean": sum(worst) / len(worst) if worst else nan}
