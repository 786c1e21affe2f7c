"""Do a model's features carry what its score misses? A linear probe on the pooled feature maps.

For the full reconstructions of one kernel (``--filter``), each weights file's pooled stage
features (one sampling grid, the first) are read on a training simulation and a held-out one; a
ridge regression per stage (and on all four together) is fitted to the training simulation's
labels and scored on the held-out images with the same ordering report ``evaluate`` gives, beside
the model's own score. A probe that orders what the model does not says the information is in
the features and the head or the training did not use it; a probe that fails too says the
features do not hold it.

    python scripts/feature_probe.py --train work/sim_t46-ref --heldout work/sim_val-ref \\
        --filter hann:0.5 weights/clinreadnet-sim-v3.safetensors runs/a20/best.safetensors

Each folder needs ``manifest.csv`` and the labels to fit (``--labels``, default train.json).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import tifffile
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.archs.clinreadnet import Prediction  # noqa: E402
from clinreadnet_cli.checkpoint import load_model  # noqa: E402
from clinreadnet_cli.data import read_manifest  # noqa: E402
from clinreadnet_cli.evaluation import acquisitions_from_manifest, ordering_report  # noqa: E402
from clinreadnet_cli.preprocess import prepare_slice  # noqa: E402

MANIFEST_COLUMNS = {"path", "kind", "filter", "source", "dose", "views"}


def kernel_images(folder: Path, kernel: str | None, labels_name: str) -> tuple[list[dict], np.ndarray]:
    """The manifest rows of ``kernel``'s full reconstructions (every labelled image without one)
    and their labels."""
    labels = json.loads((folder / labels_name).read_text())
    rows = [r for name, r in read_manifest(folder / "manifest.csv", MANIFEST_COLUMNS).items()
            if name in labels and (kernel is None or (r["kind"] == "full" and r["filter"] == kernel))]
    if not rows:
        raise SystemExit(f"{folder}: no labelled images" + (f" of full reconstructions with the filter {kernel!r}"
                                                             if kernel else ""))
    return rows, np.array([labels[Path(r["path"]).name] for r in rows])


@torch.inference_mode()
def pooled_features(model, folder: Path, rows: list[dict], batch: int = 8) -> tuple[list[np.ndarray], np.ndarray]:
    """Per stage, (N, width) spatial means of the feature maps; and the model's own scores."""
    stages, scores = [], []
    for start in range(0, len(rows), batch):
        x = torch.stack([prepare_slice(tifffile.imread(folder / r["path"]), "unit", model.config)[:model.config.in_chans]
                         for r in rows[start:start + batch]])
        logits, maps = model.forward_intermediates(x)
        stages.append([m.mean(dim=(1, 2)).float().numpy() for m in maps])
        scores.append(Prediction.from_logits(logits).score.numpy())
    return [np.concatenate(s) for s in zip(*stages)], np.concatenate(scores)


def cached_features(model, weights: Path, folder: Path, rows: list[dict], cache: Path | None):
    """``pooled_features``, kept in ``cache`` (one .npz per weights file and folder) when given."""
    if cache is None:
        return pooled_features(model, folder, rows)
    path = cache / f"{weights.parent.name}-{weights.stem}-{folder.name}-{len(rows)}.npz"
    if not path.is_file():
        stages, scores = pooled_features(model, folder, rows)
        cache.mkdir(parents=True, exist_ok=True)
        np.savez(path, scores=scores, **{f"stage{i}": s for i, s in enumerate(stages)})
    with np.load(path) as f:
        return [f[f"stage{i}"] for i in range(len(f.files) - 1)], f["scores"]


def standardised(train_x: np.ndarray, test_x: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Both feature sets scaled by the training set's per-feature mean and SD."""
    mean, sd = train_x.mean(0), train_x.std(0) + 1e-6
    return (train_x - mean) / sd, (test_x - mean) / sd


def mlp(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, strength: float, hidden: int = 256,
        steps: int = 3000) -> np.ndarray:
    """Predictions of a one-hidden-layer network on standardised features, weight decay ``strength``."""
    torch.manual_seed(0)
    a, b = (torch.from_numpy(x).float() for x in standardised(train_x, test_x))
    y = torch.from_numpy(train_y).float()
    net = torch.nn.Sequential(torch.nn.Linear(a.shape[1], hidden), torch.nn.GELU(), torch.nn.Linear(hidden, 1))
    optimiser = torch.optim.AdamW(net.parameters(), lr=1e-3, weight_decay=strength)
    for _ in range(steps):
        optimiser.zero_grad()
        torch.nn.functional.mse_loss(net(a).squeeze(1), y).backward()
        optimiser.step()
    with torch.no_grad():
        return net(b).squeeze(1).numpy()


def ridge(train_x: np.ndarray, train_y: np.ndarray, test_x: np.ndarray, strength: float) -> np.ndarray:
    """Predictions of a ridge regression on standardised features; ``strength`` x N on the diagonal."""
    a, b = standardised(train_x, test_x)
    beta = np.linalg.solve(a.T @ a + strength * len(a) * np.eye(a.shape[1]), a.T @ (train_y - train_y.mean()))
    return b @ beta + train_y.mean()


def dose_means(rows: list[dict], scores: np.ndarray) -> str:
    """Mean score at the lowest and the highest dose, at the most views (the dose spread); over
    every kind of image, the untouched slices' mean."""
    if any(r["kind"] == "source" for r in rows):
        return f"untouched {np.mean([s for r, s in zip(rows, scores) if r['kind'] == 'source']):.2f}"
    views = max(float(r["views"]) for r in rows)
    doses = sorted({float(r["dose"]) for r in rows})
    means = [np.mean([s for r, s in zip(rows, scores) if float(r["views"]) == views and float(r["dose"]) == d])
             for d in (doses[0], doses[-1])]
    return f"{means[0]:.2f} → {means[1]:.2f}"


def row(acq, scores: np.ndarray, labels: np.ndarray, rows: list[dict]) -> str:
    """A table row's measures for one scorer."""
    report = ordering_report(acq, scores)
    shares = " | ".join(f"{report[k]:.3f}" if report[k] == report[k] else "–"  # NaN: no such pairs
                        for k in ("within_reconstruction", "cross_slice", "untouched_vs_low_dose"))
    return f"{shares} | {np.corrcoef(scores, labels)[0, 1]:.3f} | {dose_means(rows, scores)}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("weights", nargs="+", type=Path)
    parser.add_argument("--train", type=Path, required=True, help="simulation the probe is fitted on")
    parser.add_argument("--heldout", type=Path, required=True, help="simulation it is scored on")
    parser.add_argument("--filter", help="one reconstruction kernel (manifest `filter`); default every image")
    parser.add_argument("--labels", default="train.json", help="labels file in each folder")
    parser.add_argument("--strength", type=lambda v: [float(x) for x in v.split(",")], default=[1.0],
                        help="ridge penalty per image on standardised features; a comma list fits each")
    parser.add_argument("--mlp", type=lambda v: [float(x) for x in v.split(",")], default=[],
                        help="also a one-hidden-layer network on all stages, per weight decay in this comma list")
    parser.add_argument("--cache", type=Path, help="keep the features here (an .npz per weights file and folder)")
    args = parser.parse_args()

    train_rows, train_y = kernel_images(args.train, args.filter, args.labels)
    test_rows, test_y = kernel_images(args.heldout, args.filter, args.labels)
    acq = acquisitions_from_manifest(test_rows)
    print(f"{args.filter or 'every image'}: probe fitted on {len(train_rows)} images of {args.train}, "
          f"scored on {len(test_rows)} of {args.heldout} (one sampling grid)\n")
    print("| weights | scorer | within one reconstruction | across slices | untouched vs low dose | "
          "PLCC with labels | most views: lowest → full dose |")
    print("|---|---|---|---|---|---|---|")
    print(f"| | labels | {row(acq, test_y, test_y, test_rows)} |")
    for weights in args.weights:
        model = load_model(weights)
        train_stages, _ = cached_features(model, weights, args.train, train_rows, args.cache)
        test_stages, model_scores = cached_features(model, weights, args.heldout, test_rows, args.cache)
        train_all, test_all = np.concatenate(train_stages, 1), np.concatenate(test_stages, 1)
        scorers = {"model": model_scores}
        for strength in args.strength:
            for i, (a, b) in enumerate(zip(train_stages, test_stages)):
                scorers[f"probe ({strength:g}), stage {i + 1}"] = ridge(a, train_y, b, strength)
            scorers[f"probe ({strength:g}), all stages"] = ridge(train_all, train_y, test_all, strength)
        for decay in args.mlp:
            scorers[f"one-layer network ({decay:g}), all stages"] = mlp(train_all, train_y, test_all, decay)
        for name, scores in scorers.items():
            print(f"| {weights if name == 'model' else ''} | {name} | {row(acq, scores, test_y, test_rows)} |")


if __name__ == "__main__":
    main()
