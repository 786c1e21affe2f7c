"""Evaluate a weights file on a labelled split: PLCC, SROCC, KROCC (tau-b) and Score."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader

from .checkpoint import load_model
from .data import DatasetError, LabelledSlice, SliceDataset, load_labelled
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
