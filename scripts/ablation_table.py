"""The ablation study's data and table (used by scripts/ablations.sh).

    python scripts/ablation_table.py subset SIM_DIR OUT_DIR --images 1600
    python scripts/ablation_table.py table WORK_DIR --card weights/MODEL_CARD.md

``subset`` links every k-th source slice of a ``clinreadnet simulate`` folder, with all of its
acquisitions, into OUT_DIR (same layout: image/, train.json, manifest.csv), so every row trains
on the same images and ``train``'s patient split is the same for all. ``table`` reads each run's
``eval.json`` (``clinreadnet evaluate --format json``) and writes the table between the
``<!-- ablations:start -->`` and ``<!-- ablations:end -->`` lines of the model card.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.atomic import write_text_atomic  # noqa: E402
from clinreadnet_cli.config import get_config  # noqa: E402

START, END = "<!-- ablations:start -->", "<!-- ablations:end -->"


def subset(sim: Path, out: Path, images: int) -> None:
    with open(sim / "manifest.csv", newline="") as f:
        rows = list(csv.DictReader(f))
    sources = sorted({r["source"] for r in rows})
    per_source = len(rows) / len(sources)
    step = max(1, round(len(sources) / max(1, images / per_source)))
    kept_sources = set(sources[::step])
    kept = [r for r in rows if r["source"] in kept_sources]
    labels = json.loads((sim / "train.json").read_text())
    (out / "image").mkdir(parents=True, exist_ok=True)
    for r in kept:
        link = out / r["path"]
        if not link.exists():
            os.symlink((sim / r["path"]).resolve(), link)
    write_text_atomic(out / "train.json", json.dumps({Path(r["path"]).name: labels[Path(r["path"]).name]
                                                      for r in kept}, indent=1) + "\n")
    with open(out / "manifest.csv.tmp", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(kept)
    os.replace(out / "manifest.csv.tmp", out / "manifest.csv")
    print(f"{len(kept)} images of {len(kept_sources)} source slices (every {step}th) in {out}")


def table(work: Path, card: Path) -> None:
    lines = ["| config | paper | PLCC | SROCC | KROCC | Score | within slice | across slices | untouched vs ≤ 25 % dose | train s |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for run in sorted(p for p in work.iterdir() if (p / "eval.json").is_file()):
        result = json.loads((run / "eval.json").read_text())
        options = json.loads((run / "config.json").read_text())
        name = options["model"]
        partition = options.get("model_overrides", {}).get("loss", {}).get("head_partition")
        description = get_config(name).description + (f"; heads: {partition} classes" if partition else "")
        order = result.get("ordering", {}).get("model", {})
        seconds = sum(json.loads(line).get("train_seconds", 0) for line in (run / "metrics.jsonl").read_text().splitlines())
        cells = [f"`{name}`" + (f" ({partition})" if partition else ""), description,
                 *(f"{result[k]:.4f}" for k in ("plcc", "srocc", "krocc", "score")),
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
    write = commands.add_parser("table")
    write.add_argument("work", type=Path)
    write.add_argument("--card", type=Path, default=Path("weights/MODEL_CARD.md"))
    args = parser.parse_args()
    if args.command == "subset":
        subset(args.sim, args.out, args.images)
    else:
        table(args.work, args.card)


if __name__ == "__main__":
    main()
