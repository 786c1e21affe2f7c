"""The ablation study's data and table (used by scripts/ablations.sh).

    python scripts/ablation_table.py subset SIM_DIR OUT_DIR --images 1600
    python scripts/ablation_table.py table WORK_DIR --card docs/ablations.md

``subset`` links every k-th source slice of a ``clinreadnet simulate`` folder, with all of its
acquisitions, into OUT_DIR (same layout: image/, train.json, manifest.csv), so every row trains
on the same images and ``train``'s patient split is the same for all. With ``--model-input`` it
writes each image as the rows' network input instead (decimated and cropped to 224², 8-bit,
deflate): the same pixels the rows train on, ~25 times smaller, small enough to carry to a GPU
machine (8 bits of the 350 HU window are 1.4 HU steps, against noise of 10 HU and more). ``table`` reads each run's
``eval.json`` (``clinreadnet evaluate --format json``) and writes the table between the
``<!-- ablations:start -->`` and ``<!-- ablations:end -->`` lines of docs/ablations.md.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

import numpy as np
import tifffile

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.atomic import write_text_atomic  # noqa: E402
from clinreadnet_cli.config import get_config  # noqa: E402
from clinreadnet_cli.data import read_manifest  # noqa: E402
from clinreadnet_cli.metrics import correlation_metrics  # noqa: E402
from clinreadnet_cli.preprocess import sample_slice  # noqa: E402

ROWS = ("swin_t-plain", "swin_t", "swin_t+soqn", "swin_t+soqn+mtmsa", "clinreadnet", "bam-channel", "bam-spatial")

START, END = "<!-- ablations:start -->", "<!-- ablations:end -->"


def shared_input_config():
    """The input path every row shares (so one prepared subset serves them all)."""
    configs = [get_config(name) for name in ROWS]
    paths = {(c.input_path, c.img_size, c.window_width, c.window_level) for c in configs}
    if len(paths) != 1:
        raise SystemExit(f"the ablation rows do not share one input path: {sorted(paths)}")
    return configs[0]


def write_model_input(source: Path, target: Path, cfg) -> None:
    """One subset image as the network sees it, 8-bit: read back with ``input_range = "unit"``."""
    sampled = sample_slice(tifffile.imread(source), "unit", cfg)[0]
    tmp = target.with_suffix(".tmp")
    tifffile.imwrite(tmp, np.round(sampled * 255).astype(np.uint8), compression="zlib")
    os.replace(tmp, target)


def subset(sim: Path, out: Path, images: int, model_input: bool = False) -> None:
    with open(sim / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sources = sorted({r["source"] for r in rows})
    per_source = len(rows) / len(sources)
    step = max(1, round(len(sources) / max(1, images / per_source)))
    kept_sources = set(sources[::step])
    kept = [r for r in rows if r["source"] in kept_sources]
    labels = json.loads((sim / "train.json").read_text())
    (out / "image").mkdir(parents=True, exist_ok=True)
    cfg = shared_input_config()
    for r in kept:
        target = out / r["path"]
        if target.exists() or target.is_symlink():
            continue
        if model_input:
            write_model_input(sim / r["path"], target, cfg)
        else:
            os.symlink((sim / r["path"]).resolve(), target)
    write_text_atomic(out / "train.json", json.dumps({Path(r["path"]).name: labels[Path(r["path"]).name]
                                                      for r in kept}, indent=1) + "\n")
    with open(out / "manifest.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    os.replace(out / "manifest.csv.tmp", out / "manifest.csv")
    print(f"{len(kept)} images of {len(kept_sources)} source slices (every {step}th) in {out}")


def patient_scores(run: Path) -> dict[str, list[tuple[float, float]]]:
    """The run's validation (label, prediction) pairs grouped by patient, from evaluate's predictions CSV."""
    options = json.loads((run / "config.json").read_text())
    manifest = read_manifest(Path(options["data"]) / "manifest.csv", {"path", "group"})
    by_patient: dict[str, list[tuple[float, float]]] = {}
    with open(run / "predictions.csv", newline="") as f:
        for r in csv.DictReader(f):
            by_patient.setdefault(manifest[Path(r["path"]).name]["group"], []).append(
                (float(r["label"]), float(r["prediction"])))
    return by_patient


def bootstrap_scores(runs: dict[str, dict], resamples: int = 1000, seed: int = 0) -> dict[str, np.ndarray]:
    """Score of every run on the same resamples of the validation patients (drawn with replacement),
    so that two rows' difference comes with its own spread."""
    patients = sorted(next(iter(runs.values())))
    rng = np.random.default_rng(seed)
    draws = [rng.choice(len(patients), len(patients)) for _ in range(resamples)]
    out = {}
    for name, by_patient in runs.items():
        scores = []
        for draw in draws:
            pairs = [pair for k in draw for pair in by_patient[patients[k]]]
            labels, predicted = zip(*pairs)
            scores.append(correlation_metrics(list(predicted), list(labels))["score"])
        out[name] = np.array(scores)
    return out


def interval(values: np.ndarray) -> str:
    return f"{np.percentile(values, 2.5):.3f} … {np.percentile(values, 97.5):.3f}"


def table(work: Path, card: Path) -> None:
    lines = ["| config | paper | PLCC | SROCC | KROCC | Score (95 % interval) | Score − `clinreadnet`'s (95 % interval) "
             "| within slice | across slices | untouched vs ≤ 25 % dose | train s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    row_order = [*ROWS, "clinreadnet-shuffled"]  # the paper's order, then the partition variant
    runs = sorted((p for p in work.iterdir() if (p / "eval.json").is_file()),
                  key=lambda p: (row_order.index(p.name) if p.name in row_order else len(row_order), p.name))
    measured = {run.name: patient_scores(run) for run in runs if (run / "predictions.csv").is_file()}
    spread = bootstrap_scores(measured) if measured else {}
    reference = spread.get("clinreadnet")
    reference_score = json.loads((work / "clinreadnet" / "eval.json").read_text())["score"] if reference is not None else None
    for run in runs:
        result = json.loads((run / "eval.json").read_text())
        options = json.loads((run / "config.json").read_text())
        name = options["model"]
        partition = options.get("model_overrides", {}).get("loss", {}).get("head_partition")
        description = get_config(name).description + (f"; heads: {partition} classes" if partition else "")
        order = result.get("ordering", {}).get("model", {})
        seconds = sum(json.loads(line).get("train_seconds", 0) for line in (run / "metrics.jsonl").read_text().splitlines())
        score = f"{result['score']:.4f}" + (f" ({interval(spread[run.name])})" if run.name in spread else "")
        versus = ("–" if run.name == "clinreadnet" or reference is None or run.name not in spread
                  else f"{result['score'] - reference_score:+.4f} ({interval(spread[run.name] - reference)})")
        cells = [f"`{name}`" + (f" ({partition})" if partition else ""), description,
                 *(f"{result[k]:.4f}" for k in ("plcc", "srocc", "krocc")), score, versus,
                 *(f"{order[k]:.4f}" if k in order else "–" for k in ("within_slice", "cross_slice", "untouched_vs_low_dose")),
                 f"{seconds:.0f}"]
        lines.append("| " + " | ".join(cells) + " |")
    text = card.read_text()
    if START not in text or END not in text:
        raise SystemExit(f"{card}: no {START} ... {END} section to write the table into")
    before, rest = text.split(START, 1)
    after = rest.split(END, 1)[1]
    write_text_atomic(card, before + START + "\n" + "\n".join(lines) + "\n" + END + after)
    print("\n".join(lines))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    commands = parser.add_subparsers(dest="command", required=True)
    make = commands.add_parser("subset")
    make.add_argument("sim", type=Path)
    make.add_argument("out", type=Path)
    make.add_argument("--images", type=int, default=1600)
    make.add_argument("--model-input", action="store_true",
                      help="write the network input (224², 8-bit) instead of linking the 512² images")
    write = commands.add_parser("table")
    write.add_argument("work", type=Path)
    write.add_argument("--card", type=Path, default=Path("docs/ablations.md"))
    args = parser.parse_args()
    if args.command == "subset":
        subset(args.sim, args.out, args.images, args.model_input)
    else:
        table(args.work, args.card)


if __name__ == "__main__":
    main()
