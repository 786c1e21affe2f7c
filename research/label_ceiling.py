"""How far could a network that learnt its training labels perfectly go on the other simulators?
The proxy label model (``simulate/labels.py``, reference unit) applied to the images of an
``ordering_check.py --cache`` folder, ordered by the same report as the scorers.

    python scripts/label_ceiling.py scripts/default_weights/heldout_23_slices.json \\
        --cache WORK/oc-cache --sources WORK

Each simulated slice of the check has what a label needs: its full-dose, full-view reconstruction
(the reference, label 4) and, because the check's doses are nested binomial thinnings, the
reference's own quantum noise: the RMS inside the body of (50 % dose − full dose) at full views
has the reference's noise variance exactly. Each image's degradation is then RMS(image −
reference) / that noise, as ``label_ordering.py --unit reference`` measures it on ``simulate``
folders, and the label is ``degradation_to_score``, made monotone over the slice's grid.

The labels need the reference and know nothing else of the patient, so they are what the
training targets hold. Printed beside them: the scorers of the ordering check's JSON (the noise
figures and each model), and the labels with their unit fixed at the median slice's reference
noise for every slice (the same degradation energy in HU, the patient's own full-dose noise not
divided out), to show what dividing by each patient's reference buys.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from clinreadnet_cli.evaluation import CROSS_SLICE_CAUSES, cross_slice_causes, ordering_report  # noqa: E402
from clinreadnet_cli.simulate.labels import degradation_to_score, monotone_scores  # noqa: E402
from clinreadnet_cli.simulate.measures import body_mask, rms_hu  # noqa: E402
from ordering_check import (DOSES, VIEWS, acquisitions_of, cache_path, full_dose_noise,  # noqa: E402
                            higher_is_better, read_cache)

FULL, HALF = (max(DOSES), max(VIEWS)), (0.5, max(VIEWS))


def slice_degradations(meta: list, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per image: RMS(image − its slice's full-dose, full-view reconstruction) inside the body in
    HU (0 for the untouched source), and its slice's reference noise in HU."""
    energy, unit = np.zeros(len(meta)), np.zeros(len(meta))
    for source in {m[0] for m in meta}:
        index = {(m[3], m[4]) if not m[2] else "untouched": i for i, m in enumerate(meta) if m[0] == source}
        body = body_mask(images[index["untouched"]])
        reference = images[index[FULL]].astype(np.float64)
        reference_noise = rms_hu(images[index[HALF]] - reference, body)
        for key, i in index.items():
            energy[i] = 0.0 if key == "untouched" else rms_hu(images[i] - reference, body)
            unit[i] = reference_noise
    return energy, unit


def labels_from(meta: list, degradation: np.ndarray) -> np.ndarray:
    """``degradation_to_score``, monotone over each slice's (dose, views) grid; untouched 4."""
    labels = np.full(len(meta), 4.0)
    for source in {m[0] for m in meta}:
        grid = {(m[3], m[4]): i for i, m in enumerate(meta) if m[0] == source and not m[2]}
        monotone = monotone_scores({point: degradation_to_score(degradation[i]) for point, i in grid.items()})
        for point, i in grid.items():
            labels[i] = monotone[point]
    return labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("check", type=Path, help="an ordering_check.py output JSON (slices and scores)")
    parser.add_argument("--cache", type=Path, required=True, help="its --cache folder (the images)")
    parser.add_argument("--seed", type=int, default=7, help="the check's --seed")
    args = parser.parse_args()
    check = json.loads(args.check.read_text())
    for simulator, result in check["results"].items():
        _, meta, images = read_cache(cache_path(args.cache, simulator, args.seed))
        if [list(m) for m in meta] != result["acquisitions"]:
            sys.exit(f"{args.cache}: {simulator}'s images are not those of {args.check}")
        energy, unit = slice_degradations(meta, images)
        scorers = {"labels (reference unit)": labels_from(meta, energy / unit),
                   "labels (one unit for all)": labels_from(meta, energy / np.median(unit))}
        scorers.update({name: higher_is_better(name, values) for name, values in result["scores"].items()})
        acq = acquisitions_of(meta, simulator)
        noise_at_full_dose = full_dose_noise(acq, np.array(result["scores"]["noise_hu"], float))
        reports = {name: ordering_report(acq, values) for name, values in scorers.items()}
        causes = {name: cross_slice_causes(acq, values, noise_at_full_dose) for name, values in scorers.items()}
        print(f"\n{simulator} ({len(meta)} images; reference noise {np.min(unit):.1f}–{np.max(unit):.1f} HU)")
        print("| measure | " + " | ".join(scorers) + " |\n|---|" + "---|" * len(scorers))
        for m in ("cross_slice", "cross_patient", "within_slice", "untouched_vs_low_dose"):
            print(f"| {m} | " + " | ".join(f"{r[m]:.4f}" for r in reports.values()) + " |")
        for cause in CROSS_SLICE_CAUSES:
            print(f"| across slices, {cause} | " + " | ".join(f"{c[cause]:.4f}" for c in causes.values()) + " |")


if __name__ == "__main__":
    main()
