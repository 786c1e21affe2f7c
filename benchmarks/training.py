"""Seconds per training epoch of the train command on the paper's 800 training images.

    python benchmarks/train_epoch.py                       # clinreadnet, 224, batch 8, 1 epoch
    python benchmarks/train_epoch.py --model swin_t --json out.json

Builds 1,000 float32 512x512 TIFFs in the LDCTIQAG2023 layout from the real CT sources (random
slices, windowed, with random added noise and random labels: timing does not depend on what is
learnt), splits them 800 / 200 like the paper and times one epoch of `train` (the paper's
augmentation, NAdam, HRPS loss), then the validation pass.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import numpy as np
import tifffile
import torch

from common import SOURCES, print_rows, write_json

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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="clinreadnet")
    parser.add_argument("--img-size", type=int, default=224)
    parser.add_argument("--images", type=int, default=1000, help="total; 20 %% are held out for validation")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        start = time.perf_counter()
        build_dataset(tmp / "data", args.images)
        built = time.perf_counter() - start
        cfg = TrainConfig(data=str(tmp / "data"), out=str(tmp / "run"), model=args.model, img_size=args.img_size,
                          epochs=1, batch_size=args.batch, workers=args.workers, device=args.device)
        start = time.perf_counter()
        result = train(cfg)
        total = time.perf_counter() - start
    record = result.history[0]
    n_train = round(args.images * (1 - cfg.val_fraction))
    rows = {
        "train_images": n_train,
        "train_epoch_seconds": record["train_seconds"],
        "train_images_per_second": n_train / record["train_seconds"],
        "epoch_with_validation_and_checkpoints_seconds": total,
        "dataset_build_seconds": built,
    }
    print(f"{args.model} at {args.img_size}, batch {args.batch}, {args.workers} loader workers, "
          f"{torch.get_num_threads()} torch threads")
    print_rows(rows)
    write_json(args.json_path, rows, args, device="cuda" if torch.cuda.is_available() and args.device != "cpu" else "cpu")


if __name__ == "__main__":
    main()
