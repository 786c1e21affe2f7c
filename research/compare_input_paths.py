"""Compare input paths (how a slice becomes the network input) on held-out patients, with a short
training run each, and say how much of the noise each path lets through.

    python scripts/compare_input_paths.py --data work/sim --split work/runs/clinreadnet-v2/split.json

For each path: train ``clinreadnet`` for ``--epochs`` on every ``--stride``-th source slice of the
main run's training patients (the main run's validation patients are never seen), then evaluate
on the main run's validation split with ``evaluate``'s ordering report. Independently of any
training, the classical noise figure is measured on the network input each path produces (in
window units) and its cross-slice ordering reported: what the path leaves for the network to see.
Results: a table on stdout and ``benchmarks/results/input_paths.json``.
"""

from __future__ import annotations

import argparse
import csv
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clinreadnet_cli.atomic import write_text_atomic  # noqa: E402
from clinreadnet_cli.config import get_config  # noqa: E402
from clinreadnet_cli.evaluation import acquisitions_from_manifest, ordering_report  # noqa: E402
from clinreadnet_cli.noise import noise_sd_hu, tissue_mask  # noqa: E402
from clinreadnet_cli.preprocess import prepare_slice  # noqa: E402

PATHS = {"resize-224": dict(input_path="resize"), "decimate-224": dict(input_path="decimate"),
         "crop-224": dict(input_path="crop"), "decimate-256": dict(input_path="decimate", img_size=256)}


def noise_after_path(rows: list[dict], data: Path, overrides: dict) -> np.ndarray:
    """The noise figure of each image as the network sees it (HU scale, from the window)."""
    import tifffile

    cfg = get_config("clinreadnet", **overrides)
    values = []
    for r in rows:
        unit = tifffile.imread(data / r["path"])
        hu_full = unit * cfg.window_width + cfg.window_level - cfg.window_width / 2
        seen = prepare_slice(unit, "unit", cfg)[0].numpy() * cfg.window_width + cfg.window_level - cfg.window_width / 2
        mask = tissue_mask(hu_full, smooth=True)  # the tissue of the slice, carried onto the input grid
        seen_mask = prepare_slice(mask.astype(np.float32), "unit", cfg)[0].numpy() > 0.99
        values.append(noise_sd_hu(seen, seen_mask))
    return np.array(values, float)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", type=Path, required=True)
    parser.add_argument("--split", type=Path, required=True)
    parser.add_argument("--work", type=Path, default=REPO / "work" / "input-paths")
    parser.add_argument("--epochs", type=int, default=1)
    parser.add_argument("--stride", type=int, default=4, help="train on every n-th source slice")
    parser.add_argument("--paths", nargs="+", default=list(PATHS), choices=list(PATHS))
    parser.add_argument("--no-training", action="store_true", help="only what each path lets through")
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "input_paths.json")
    args = parser.parse_args()
    cli = [sys.executable, "-m", "clinreadnet_cli"]

    with (args.data / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    split = json.loads(args.split.read_text())
    val_names, train_names = set(split["val"]), set(split["train"])
    sources = sorted({r["source"] for r in rows if Path(r["path"]).name in train_names})
    kept_sources = set(sources[::args.stride])
    args.work.mkdir(parents=True, exist_ok=True)
    subset = args.work / "train-subset.csv"
    with subset.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["path", "score", "group"])
        for r in rows:
            if Path(r["path"]).name in train_names and r["source"] in kept_sources:
                writer.writerow([str((args.data / r["path"]).resolve()), r["score"], r["group"]])
    val_rows = [r for r in rows if Path(r["path"]).name in val_names]
    acq = acquisitions_from_manifest(val_rows)
    print(f"training on {len(kept_sources)} source slices; evaluating on {len(val_rows)} held-out images",
          file=sys.stderr)

    results = {}
    for name in args.paths:
        overrides = PATHS[name]
        noise = noise_after_path(val_rows, args.data, overrides)
        seen = ordering_report(acq, -noise)
        results[name] = {"noise_seen": seen}
        print(f"{name}: noise figure on the input orders {seen['cross_slice']:.4f} across slices, "
              f"{seen['within_reconstruction']:.4f} within one reconstruction", file=sys.stderr)
        if args.no_training:
            continue
        run = args.work / name
        started = time.perf_counter()
        if not (run / "best.safetensors").is_file():
            options = ["--data", str(subset), "--out", str(run), "--epochs", str(args.epochs), "--config",
                       str(REPO / "scripts" / "default_weights" / "stage1.toml"), "--input-path", overrides["input_path"],
                       "--img-size", str(overrides.get("img_size", 224)), "--val-fraction", "0.1"]
            subprocess.run([*cli, "train", *options], check=True)
        train_seconds = time.perf_counter() - started
        evaluated = subprocess.run([*cli, "evaluate", "--data", str(args.data), "--split", "val", "--split-file",
                                    str(args.split), "--weights", str(run / "best.safetensors"), "--format", "json"],
                                   check=True, capture_output=True, text=True)
        report = json.loads(evaluated.stdout)
        results[name].update(model=report["ordering"]["model"], plcc=report["plcc"], srocc=report["srocc"],
                             train_seconds=round(train_seconds, 1))
        print(f"{name}: done", file=sys.stderr)

    print("| input path | noise figure on the input: across slices | noise figure on the input: within one "
          "reconstruction | model: across slices | model: within one reconstruction | model: within a slice "
          "| untouched vs ≤ 25 % | PLCC | SROCC |\n|---|---|---|---|---|---|---|---|---|")
    for name, r in results.items():
        m = r.get("model")
        trained = " | ".join("–" * 6)
        if m:
            trained = (f"{m['cross_slice']:.4f} | {m['within_reconstruction']:.4f} | {m['within_slice']:.4f} "
                       f"| {m['untouched_vs_low_dose']:.4f} | {r['plcc']:.4f} | {r['srocc']:.4f}")
        seen = r["noise_seen"]
        print(f"| {name} | {seen['cross_slice']:.4f} | {seen['within_reconstruction']:.4f} | {trained} |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    write_text_atomic(args.out, json.dumps({"epochs": args.epochs, "stride": args.stride, "results": results}, indent=1))


if __name__ == "__main__":
    main()
