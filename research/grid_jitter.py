"""How much of one sampling grid's score jitter its own noise draw explains.

v4 reads a slice through four sampling grids and averages their scores; one grid's score misses
that average by the grid's noise draw. This script scores every grid of each image separately and
measures, per grid, a robust noise SD of the grid's own pixels (inside soft tissue) at two scales,
and two statistics of each of v4's 96 patch-embedding channels over the grid (the log power of its
high-pass across tokens, its mean). It then fits, on one folder, how the first grid's miss (its
score minus the four-grid mean) follows that grid's statistics relative to the four grids' mean
(least squares on the noise SDs; ridge on the 192 embedding statistics, standardised), and applies
the fit to another folder: the first grid's score minus the predicted miss, written as ``evaluate --predictions`` CSV
so that ``scripts/label_ordering.py`` reports its ordering beside v4's one and four grids.

    python research/grid_jitter.py measure work/sim_t46 --labels train-ref.json --out work/jitter_train.npz --limit 600
    python research/grid_jitter.py measure work/sim_val-ref --out work/jitter_heldout.npz
    python research/grid_jitter.py fit work/jitter_train.npz --apply work/jitter_heldout.npz --predictions work/corrected.csv
    python research/grid_jitter.py fit work/jitter_train.npz --features embedding --apply work/jitter_heldout.npz
"""

from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import sys
import time
from pathlib import Path

import numpy as np
import tifffile
import torch
import torch.nn.functional as F
from scipy import ndimage

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.archs.heads import average_probabilities, expected_score  # noqa: E402
from clinreadnet_cli.atomic import write_text_atomic  # noqa: E402
from clinreadnet_cli.checkpoint import load_model  # noqa: E402
from clinreadnet_cli.noise import MAD_TO_SD, TISSUE_HU  # noqa: E402
from clinreadnet_cli.preprocess import GRID_OFFSETS, sample_slice, window_hu  # noqa: E402

SCALES = (3, 7)  # high-pass residual: the grid minus its n x n mean


def tissue_unit(cfg) -> tuple[float, float]:
    """The noise figure's soft-tissue HU range in the model's window, on its [0, 1] input."""
    low, high = window_hu(np.array(TISSUE_HU), cfg.window_width, cfg.window_level)
    return float(low), float(high)


def grid_noise(grids: np.ndarray, tissue: tuple[float, float]) -> np.ndarray:
    """(G, S, S) grid images in [0, 1] -> (G, len(SCALES)) ln robust SD of each grid's high-pass
    residual, over the soft tissue (``tissue_unit``) of the grids' mean (one mask for all four)."""
    mean = ndimage.uniform_filter(grids.mean(axis=0), 5)
    mask = ndimage.binary_erosion((mean > tissue[0]) & (mean < tissue[1]), iterations=2)
    if mask.sum() < 200:
        return np.full((len(grids), len(SCALES)), np.nan)
    out = np.empty((len(grids), len(SCALES)))
    for g, image in enumerate(grids):
        for s, size in enumerate(SCALES):
            residual = (image - ndimage.uniform_filter(image, size))[mask]
            out[g, s] = np.log(MAD_TO_SD * np.median(np.abs(residual - np.median(residual))) + 1e-6)
    return out


def embedding_stats(model, grids: torch.Tensor) -> torch.Tensor:
    """(N, 1, S, S) grid images -> (N, 192): per patch-embedding channel, the log power of its
    high-pass across tokens (the map minus its 3 x 3 token mean), then its mean over tokens."""
    embedded = model.backbone.patch_embed((grids - 0.5) / 0.5).permute(0, 3, 1, 2)  # as forward_intermediates feeds it
    high_pass = embedded - F.avg_pool2d(F.pad(embedded, (1, 1, 1, 1), mode="replicate"), 3, stride=1)
    return torch.cat([high_pass.pow(2).mean(dim=(2, 3)).clamp_min(1e-8).log(), embedded.mean(dim=(2, 3))], dim=1)


def measure(args) -> None:
    labels = json.loads((args.data / args.labels).read_text())
    keys = sorted(labels)
    if args.limit and args.limit < len(keys):
        keys = sorted(np.random.default_rng(0).choice(keys, args.limit, replace=False).tolist())
    model = load_model(args.weights).eval()
    cfg = dataclasses.replace(model.config, sampling_grids=len(GRID_OFFSETS))
    tissue = tissue_unit(cfg)
    scores, noise, embedding, began = [], [], [], time.perf_counter()
    for start in range(0, len(keys), args.batch):
        batch = [sample_slice(tifffile.imread(args.data / "image" / k), "unit", cfg) for k in keys[start:start + args.batch]]
        noise += [grid_noise(b, tissue) for b in batch]
        x = torch.from_numpy(np.stack(batch)).reshape(-1, 1, cfg.img_size, cfg.img_size)
        with torch.inference_mode():
            per_grid = expected_score(average_probabilities(model.forward_intermediates(x)[0]))
            embedding.append(embedding_stats(model, x).reshape(len(batch), len(GRID_OFFSETS), -1).numpy())
        scores.append(per_grid.reshape(len(batch), -1).numpy())
        print(f"{start + len(batch)}/{len(keys)} images, {time.perf_counter() - began:.0f} s", file=sys.stderr)
    np.savez(args.out, keys=np.array(keys), labels=np.array([labels[k] for k in keys]),
             scores=np.concatenate(scores), noise=np.stack(noise), embedding=np.concatenate(embedding))


def features(measured, kind: str) -> np.ndarray:
    """The first grid's statistics minus the four grids' mean: (N, features)."""
    stats = np.nan_to_num(measured[kind])
    return stats[:, 0, :] - stats.mean(axis=1)


def first_grid_miss(measured) -> np.ndarray:
    return measured["scores"][:, 0] - measured["scores"].mean(axis=1)


def fit(args) -> None:
    train = np.load(args.train)
    x, miss = features(train, args.features), first_grid_miss(train)
    if args.features == "noise":  # two log SDs: plain least squares
        centre, scale, ridge = 0.0, 1.0, 0.0
    else:  # 192 statistics on a few hundred images: standardised, ridge
        centre, scale, ridge = x.mean(axis=0), x.std(axis=0) + 1e-9, args.ridge * len(x)
    a = (x - centre) / scale
    weights = np.linalg.solve(a.T @ a + ridge * np.eye(a.shape[1]), a.T @ miss)
    explained = 1 - np.var(miss - a @ weights) / np.var(miss)
    print(f"fit on {len(x)} images ({args.features}): miss SD {miss.std():.4f}, explained {explained:.3f}")
    if not args.apply:
        return
    held = np.load(args.apply)
    miss, predicted = first_grid_miss(held), (features(held, args.features) - centre) / scale @ weights
    corrected = held["scores"][:, 0] - predicted
    print(f"applied to {len(miss)} images: miss SD {miss.std():.4f} -> {(miss - predicted).std():.4f}, "
          f"explained {1 - np.var(miss - predicted) / np.var(miss):.3f}")
    columns = {"one grid": held["scores"][:, 0], "four grids": held["scores"].mean(axis=1), "corrected": corrected}
    for name, values in columns.items():
        path = args.predictions.with_name(f"{args.predictions.stem}-{name.replace(' ', '-')}.csv")
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "prediction", "class"])
        for key, label, value in zip(held["keys"], held["labels"], values):
            writer.writerow([key, f"{label:.4f}", f"{value:.4f}", ""])
        write_text_atomic(path, buffer.getvalue())
        print(f"wrote {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    m = sub.add_parser("measure")
    m.add_argument("data", type=Path)
    m.add_argument("--labels", default="train.json")
    m.add_argument("--weights", default="weights/clinreadnet-sim-v4.safetensors")
    m.add_argument("--out", type=Path, required=True)
    m.add_argument("--limit", type=int, default=0)
    m.add_argument("--batch", type=int, default=4)
    f = sub.add_parser("fit")
    f.add_argument("train", type=Path)
    f.add_argument("--features", choices=("noise", "embedding"), default="noise")
    f.add_argument("--ridge", type=float, default=0.1, help="embedding features: ridge weight per image")
    f.add_argument("--apply", type=Path)
    f.add_argument("--predictions", type=Path, default=Path("work/grid_jitter.csv"))
    args = parser.parse_args()
    (measure if args.command == "measure" else fit)(args)


if __name__ == "__main__":
    main()
