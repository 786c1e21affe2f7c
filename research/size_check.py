"""Is the patient's size what the cross-slice pairs miss? The noise figure and each model's score,
with the patient's size taken into account three ways, on an ``ordering_check.py`` output and
(optionally) on a held-out ``simulate`` folder.

    python scripts/size_check.py scripts/default_weights/heldout_23_slices.json --sources WORK \\
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

``--fit FOLDER CSV MODEL`` fits beta instead on another simulate folder (training patients; one
flux, so that size sets the noise) scored by MODEL (``evaluate --predictions`` CSV), and adds MODEL
with that beta to every set (the held-out CSV must be MODEL's too). The fit maximises the mean over
the folder's reconstruction kernels of each kernel's cross-slice share: each other simulator has
one kernel, and pairs across two kernels are decided by the kernels more than by the size.
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
FIT_BETAS = tuple(np.round(np.arange(0.0, 2.01, 0.125), 3))


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
    adjusted = size_adjusted_noise(noise, diameter)
    scores = {"noise_hu": noise, "noise_hu_size": adjusted, predictions.name: np.array(
        [float(p["prediction"]) for _, p in scored])}
    return (acquisitions_from_manifest([r for r, _ in scored]), scores, diameter,
            np.array([size[r["source"]][1] for r, _ in scored]))


def size_term(diameter: np.ndarray, beta: float) -> np.ndarray:
    return beta * (diameter - REFERENCE_DIAMETER_MM) / 100


def fit_beta(acq: Acquisitions, score: np.ndarray, diameter: np.ndarray) -> tuple[float, float]:
    """The beta of FIT_BETAS with the highest mean over kernels of the cross-slice share, and that mean."""
    def per_kernel_mean(beta: float) -> float:
        kernels = ordering_report(acq, score + size_term(diameter, beta))["by_reconstruction"].values()
        return float(np.nanmean([k["cross_slice"] for k in kernels]))

    return max(((float(beta), per_kernel_mean(beta)) for beta in FIT_BETAS), key=lambda fit: fit[1])


def rows_of(acq: Acquisitions, scores: dict[str, np.ndarray], diameter: np.ndarray, spacing: np.ndarray,
            fitted: tuple[str, float] | None = None) -> list:
    """(scorer, what was added, cross-slice share) rows; ``fitted``: (model, its fitted beta)."""
    def cross(higher_is_better: np.ndarray) -> float:
        return ordering_report(acq, higher_is_better)["cross_slice"]

    log_noise = np.log(scores["noise_hu"])
    rows = [(name, "", cross(-scores[name])) for name in CLASSICAL]
    rows += [("noise_hu", f"size in pixels, {rate} per pixel", cross(-(log_noise - rate * diameter / spacing)))
             for rate in RATES_PER_PIXEL]
    models = [n for n in scores if n not in CLASSICAL]
    for name in models:
        rows.append((name, "", cross(scores[name])))
        rows += [(name, f"+ {beta} x (D_w - {REFERENCE_DIAMETER_MM:.0f}) / 100",
                  cross(scores[name] + size_term(diameter, beta))) for beta in BETAS]
    if fitted is not None and (fitted[0] in models or len(models) == 1):  # a held-out CSV is the model's
        model, beta = fitted[0] if fitted[0] in models else models[0], fitted[1]
        rows.append((model, f"+ {beta} x (D_w - {REFERENCE_DIAMETER_MM:.0f}) / 100, beta fitted",
                     cross(scores[model] + size_term(diameter, beta))))
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", type=Path, help="ordering_check.py output JSON (with wed_mm)")
    parser.add_argument("--sources", type=Path, required=True, help="the folder of the slices' source archives")
    parser.add_argument("--heldout", type=Path, help="a simulate folder (manifest.csv) scored by evaluate")
    parser.add_argument("--predictions", type=Path, help="evaluate --predictions CSV of --heldout")
    parser.add_argument("--fit", nargs=3, metavar=("FOLDER", "CSV", "MODEL"),
                        help="fit beta on a simulate folder scored by MODEL (evaluate --predictions CSV)")
    args = parser.parse_args()
    if bool(args.heldout) != bool(args.predictions):
        parser.error("--heldout and --predictions go together")
    sets = check_sets(json.loads(args.check.read_text()), args.sources)
    if args.heldout:
        sets[f"held out ({args.heldout.name})"] = heldout_set(args.heldout, args.predictions, args.sources)
    fitted = None
    if args.fit:
        folder, predictions, model = Path(args.fit[0]), Path(args.fit[1]), args.fit[2]
        acq, scores, diameter, _ = heldout_set(folder, predictions, args.sources)
        beta, share = fit_beta(acq, scores[predictions.name], diameter)
        fitted = (model, beta)
        print(f"beta fitted on {folder.name} ({len(diameter)} images, {model}): {beta} "
              f"(mean over its kernels of the cross-slice share: {share:.4f})")
    for name, image_set in sets.items():
        print(f"\n{name}\n| scorer | size taken into account | across slices |\n|---|---|---|")
        for scorer, added, share in rows_of(*image_set, fitted=fitted):
            print(f"| {scorer} | {added or '–'} | {share:.4f} |")


if __name__ == "__main__":
    main()
