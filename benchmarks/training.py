"""Training throughput of the train command on the paper's 800 training images.

Builds 1,000 float32 512x512 TIFFs in the LDCTIQAG2023 layout from the real CT sources (random
slices, windowed, with random added noise and random labels: timing does not depend on what is
learnt), splits them 800 / 200 like the paper and times one epoch of `train` (the paper's
augmentation, NAdam, HRPS loss), then the validation pass.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile

from common import SOURCES

from clinreadnet_cli.preprocess import window_hu
from clinreadnet_cli.training import TrainConfig, train



def build_dataset(root: Path, n: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    hu = np.load(SOURCES / "tcia-pancreatic-ct-cbct-seg_Pancreas-CT-CB_001.npz")["hu"]
    (root / "image").mkdir(parents=True)
    labels = {}
    for i in range(n):
        noisy = hu[rng.integers(len(hu))] + rng.normal(0, rng.uniform(0, 60), hu.shape[1:])
        tifffile.imwrite(root / "image" / f"{i:04d}.tif", window_hu(noisy, 350, 40))
        labels[f"{i:04d}.tif"] = round(float(rng.integers(0, 21)) / 5, 1)
    (root / "train.json").write_text(json.dumps(labels))


def epoch_throughput(model: str, images: int, img_size: int, batch: int, workers: int, device: str) -> list[dict]:
    """One epoch of the train command on ``images`` generated slices (80 % train, 20 % validation)."""
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        build_dataset(tmp / "data", images)
        cfg = TrainConfig(data=str(tmp / "data"), out=str(tmp / "run"), model=model, img_size=img_size,
                          epochs=1, batch_size=batch, workers=workers, device=device)
        start = time.perf_counter()
        result = train(cfg)
        total = time.perf_counter() - start
    seconds = result.history[0]["train_seconds"]
    n_train = round(images * (1 - cfg.val_fraction))
    label = f"train {model} {img_size}², batch {batch}, {n_train} images"
    return [
        {"benchmark": "training", "measure": f"{label}: one epoch", "value": n_train / seconds, "unit": "images/s",
         "seconds": seconds},
        {"benchmark": "training", "measure": f"{label}: epoch + validation + checkpoints", "value": total,
         "unit": "s"},
    ]
