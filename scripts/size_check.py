"""Is the patient's size what the cross-slice pairs miss? The noise figure and each model's score,
with the patient's size taken into account three ways, on an ``ordering_check.py`` output and
(optionally) on a held-out ``simulate`` folder.

    python scripts/size_check.py benchmarks/results/ordering_check_v4_23slices.json --sources WORK \\
        [--heldout WORK/sim_val-ref --predictions WORK/pred-v4.csv]

For each image set, across-slice ordering (``evaluation.ordering_report``) of:
- ``noise_hu`` and ``noise_hu_size`` (``patient_size.size_adjusted_noise``: the growth of quantum
  noise with the water-equivalent diameter divided out, mu_water / 2 per mm, not fitted);
- the noise figure with the size read in pixels instead of mm (D_w / pixel spacing) for a range of
  rates per pixel: what a figure can do with the size an image shows when its pixel spacing is not
  known, as the network's input path (``decimate``) does not know it;
- each model's score plus beta x (D_w - 250 mm) / 100 mm for a range of beta: how far a size term
  added to today's score would go.
The rates and betas are scanned on the data they are reported on, so their best values are
ceilings for this data, not fitted settings. The held-out folder needs ``evaluate --predictions``'
CSV (its ``prediction`` and ``noise_hu`` columns) and the sources of its manifest (``--sources``).
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from clinreadnet_cli.evaluation import Acquisitions, acquisitions_from_manifest, ordering_report  # noqa: E402
from clinreadnet_cli.patient_size import (REFERENCE_DIAMETER_MM, size_adjusted_noise,  # noqa: E402
                                          water_equivalent_diameter)
from ordering_check import CLASSICAL, acquisitions_of, load_source  # noqa: E402

RATES_PER_PIXEL = (0.001, 0.002, 0.003, 0.004, 0.006)
BETAS = (0.25, 0.5, 0.75, 1.0, 1.5, 2.0)


def check_sets(report: dict, sources: Path) -> dict[str, tuple]:
    """simulator -> (acquisitions, {scorer: scores}, D_w in mm, pixel spacing in mm) of an ordering_check JSON."""
    sets = {}
    for simulator, result in report["results"].items():
        meta = result["acquisitions"]
        acq = acquisitions_of(meta, simulator)
        spacing = {source: load_source(sources, source)[1] for source, *_ in meta}
        scores = {name: np.array(values, float) for name, values in result["scores"].items()}
        sets[simulator] = (acq, scores, np.array(result["wed_mm"], float), np.array([spacing[m[0]] for m in meta]))
    return sets


def heldout_set(folder: Path, predictions: Path, sources: Path) -> tuple:
    """The same for a simulate folder scored by ``evaluate --predictions`` (D_w of each image's source)."""
    with (folder / "manifest.csv").open() as f:
        rows = {Path(r["path"]).name: r for r in csv.DictReader(f)}
    with predictions.open() as f:
        scored = [(rows[Path(p["path"]).name], p) for p in csv.DictReader(f)]
    size = {}
    for row, _ in scored:
        if row["source"] not in size:
            hu, mm = load_source(sources, row["source"])
            size[row["source"]] = (water_equivalent_diameter(hu, (mm, mm)), mm)
    noise = np.array([float(p["noise_hu"]) if p["noise_hu"] else np.nan for _, p in scored])
    diameter = np.array([size[r["source"]][0] for r, _ in scored])
    adjusted = np.array([size_adjusted_noise(n, d) for n, d in zip(noise, diameter)])
    scores = {"noise_hu": noise, "noise_hu_size": adjusted, predictions.name: np.array(
        [float(p["prediction"]) for _, p in scored])}
    return (acquisitions_from_manifest([r for r, _ in scored]), scores, diameter,
            np.array([size[r["source"]][1] for r, _ in scored]))


def rows_of(acq: Acquisitions, scores: dict[str, np.ndarray], diameter: np.ndarray, spacing: np.ndarray) -> list:
    """(scorer, what was added, cross-slice share) rows."""
    def cross(higher_is_better: np.ndarray) -> float:
        return ordering_report(acq, higher_is_better)["cross_slice"]

    log_noise = np.log(scores["noise_hu"])
    rows = [(name, "", cross(-scores[name])) for name in CLASSICAL]
    rows += [("noise_hu", f"size in pixels, {rate} per pixel", cross(-(log_noise - rate * diameter / spacing)))
             for rate in RATES_PER_PIXEL]
    for name in (n for n in scores if n not in CLASSICAL):
        rows.append((name, "", cross(scores[name])))
        rows += [(name, f"+ {beta} x (D_w - {REFERENCE_DIAMETER_MM:.0f}) / 100",
                  cross(scores[name] + beta * (diameter - REFERENCE_DIAMETER_MM) / 100)) for beta in BETAS]
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", type=Path, help="ordering_check.py output JSON (with wed_mm)")
    parser.add_argument("--sources", type=Path, required=True, help="the folder of the slices' source archives")
    parser.add_argument("--heldout", type=Path, help="a simulate folder (manifest.csv) scored by evaluate")
    parser.add_argument("--predictions", type=Path, help="evaluate --predictions CSV of --heldout")
    args = parser.parse_args()
    if bool(args.heldout) != bool(args.predictions):
        parser.error("--heldout and --predictions go together")
    sets = check_sets(json.loads(args.check.read_text()), args.sources)
    if args.heldout:
        sets[f"held out ({args.heldout.name})"] = heldout_set(args.heldout, args.predictions, args.sources)
    for name, image_set in sets.items():
        print(f"\n{name}\n| scorer | size taken into account | across slices |\n|---|---|---|")
        for scorer, added, share in rows_of(*image_set):
            print(f"| {scorer} | {added or '–'} | {share:.4f} |")


if __name__ == "__main__":
    main()
