"""How well the proxy labels of a ``simulate`` folder order its images by acquisition, before any
training: the same ordering report ``evaluate`` gives a model, computed on the labels and on the
noise figure of the manifest.

    python scripts/label_ordering.py work/sim
    python scripts/label_ordering.py work/sim --unit source --write labels-source.json
    python scripts/label_ordering.py work/sim --predictions run/predictions.csv --by-patient

``--unit kernel`` (default) reads the manifest's labels: degradation in units of the quantum noise
of the image's own reconstruction kernel (``simulate/labels.py``). ``--unit source`` computes the
candidate of weights-v2 work: the same RMS degradation in HU, in units of the untouched source's
own noise for every kernel (a smooth kernel's lower noise then counts as less degradation), with
the same curve and the same monotone grid. ``--unit reference`` measures it in units of the quantum
noise of the image's own full-dose reference: the kernel unit, and under ``simulate
--photon-budget`` the budget's full dose instead of the source's, so a label depends on the
acquisition relative to its protocol and not on how well the budget serves the body. ``--write``
saves the labels as a train.json, to train on them with ``train --split-file`` beside a run on the
manifest's labels. ``--predictions`` reads ``evaluate --predictions``' CSV instead and reports the
model's scores and the labels it was evaluated against, on its images only. ``--by-patient`` adds,
per patient, the untouched slices' own noise (manifest) and each scorer's untouched mean and
untouched-vs-low-dose ordering.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.atomic import write_text_atomic  # noqa: E402
from clinreadnet_cli.evaluation import acquisitions_from_manifest, ordering_report  # noqa: E402
from clinreadnet_cli.simulate.labels import degradation_to_score, monotone_scores  # noqa: E402


def grid_labels(rows: list[dict], unit: str) -> np.ndarray:
    """Labels recomputed from the manifest's degradation in another unit, with the label curve and
    monotone per slice and reconstruction (kernel and grid). ``source``: ``degradation_hu`` over
    the untouched source's ``noise_hu``. ``reference``: the manifest's kernel-unit ``degradation`` times
    sqrt(``full_dose_fraction``), i.e. in units of the quantum noise of the image's own full-dose
    reference (the photon budget's, where there is one): pure dose loss then measures
    sqrt(1/d - 1) whatever the body size and the budget."""
    source_noise = {r["source"]: float(r["noise_hu"]) for r in rows if r["kind"] == "source"}
    grids: dict[tuple, dict] = defaultdict(dict)
    for i, r in enumerate(rows):
        if r["kind"] != "source":
            if unit == "source":
                degradation = float(r["degradation_hu"]) / source_noise[r["source"]]
            else:
                # manifests written before --photon-budget have no share: their full dose is the source's
                degradation = float(r["degradation"]) * float(r.get("full_dose_fraction") or 1) ** 0.5
            point = float(r["dose"]), int(r["views"])
            series = r["source"], r["kind"], r["filter"], r.get("grid", "")
            grids[series][point] = (i, degradation_to_score(degradation))
    labels = np.full(len(rows), 4.0)
    for grid in grids.values():
        monotone = monotone_scores({point: raw for point, (_, raw) in grid.items()})
        for point, (i, _) in grid.items():
            labels[i] = monotone[point]
    return labels


def print_by_patient(rows: list[dict], scorers: dict[str, np.ndarray]) -> None:
    """Per patient: untouched slices and their own noise, then each scorer's untouched mean and
    untouched-vs-own-low-dose ordering (where the held-out misses sit)."""
    print("\n| patient | untouched slices | their noise_hu | " + " | ".join(
        f"{name}: untouched mean / vs low dose" for name in scorers) + " |\n|---|---|---|" + "---|" * len(scorers))
    patients = defaultdict(list)
    for i, r in enumerate(rows):
        patients[r.get("group") or r["source"]].append(i)  # as acquisitions_from_manifest tells patients apart
    for patient, index in sorted(patients.items()):
        subset = [rows[i] for i in index]
        untouched = [float(r["noise_hu"]) for r in subset if r["kind"] == "source"]
        if not untouched:
            continue
        acq = acquisitions_from_manifest(subset)
        reports = [ordering_report(acq, values[index]) for values in scorers.values()]
        print(f"| {patient} | {len(untouched)} | {np.mean(untouched):.1f} | " + " | ".join(
            f"{r['untouched_mean']:.2f} / {r['untouched_vs_low_dose']:.3f}" for r in reports) + " |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    parser.add_argument("--unit", choices=("kernel", "source", "reference"), default="kernel")
    parser.add_argument("--write", type=Path, help="save these labels as a train.json")
    parser.add_argument("--predictions", type=Path, help="report evaluate's predictions CSV instead of the labels")
    parser.add_argument("--by-patient", action="store_true", help="add the untouched-vs-low-dose table per patient")
    args = parser.parse_args()
    with (args.data / "manifest.csv").open() as f:
        rows = manifest_rows = list(csv.DictReader(f))
    labels = np.array([float(r["score"]) for r in rows]) if args.unit == "kernel" else grid_labels(rows, args.unit)
    noise = -np.array([float(r["noise_hu"] or "nan") for r in rows])
    scorers = {f"label ({args.unit} unit)": labels, "noise_hu (manifest)": noise}
    if args.predictions:
        with args.predictions.open() as f:
            predicted = {Path(r["path"]).name: r for r in csv.DictReader(f)}
        keep = [i for i, r in enumerate(rows) if Path(r["path"]).name in predicted]
        rows = [rows[i] for i in keep]
        scorers = {"model": np.array([float(predicted[Path(r["path"]).name]["prediction"]) for r in rows]),
                   "its labels": np.array([float(predicted[Path(r["path"]).name]["label"]) for r in rows]),
                   "noise_hu (manifest)": noise[keep]}
    acq = acquisitions_from_manifest(rows)
    reports = {name: ordering_report(acq, values) for name, values in scorers.items()}
    print(f"{len(rows)} images, {len(set(r['source'] for r in rows))} slices, "
          f"{len(set(r['group'] for r in rows))} patients")
    print("| measure | " + " | ".join(reports) + " |\n|---|" + "---|" * len(reports))
    first = next(iter(reports.values()))
    for m in ("cross_slice", "cross_patient", "within_slice", "within_reconstruction", "untouched_vs_low_dose"):
        print(f"| {m} ({first[m + '_pairs']:,} pairs) | " + " | ".join(f"{r[m]:.4f}" for r in reports.values()) + " |")
    for m in ("untouched_mean", "worst_mean"):
        print(f"| {m} | " + " | ".join(f"{r[m]:.3f}" for r in reports.values()) + " |")
    for kind in first.get("by_reconstruction", {}):
        print(f"| {kind}: within / across slices | " + " | ".join(
            f"{r['by_reconstruction'][kind]['within_slice']:.4f} / {r['by_reconstruction'][kind]['cross_slice']:.4f}"
            for r in reports.values()) + " |")
    if args.by_patient:
        print_by_patient(rows, scorers)
    if args.by_patient and args.predictions:
        others = [float(r["noise_hu"]) for r in manifest_rows
                  if r["kind"] == "source" and Path(r["path"]).name not in predicted]
        if others:
            print(f"\nthe {len(others)} untouched slices of the other (training) patients: noise_hu "
                  f"{min(others):.1f} / {np.median(others):.1f} / {max(others):.1f} (min / median / max)")
    if args.write and not args.predictions:
        write_text_atomic(args.write, json.dumps({Path(r["path"]).name: round(float(v), 4)
                                                  for r, v in zip(rows, labels)}, indent=1) + "\n")
        print(f"wrote {len(rows)} labels to {args.write}")


if __name__ == "__main__":
    main()
