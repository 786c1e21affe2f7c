"""How far apart two scorers really are on the held-out patients: each ordering measure's
difference (candidate minus baseline) with its leave-one-patient-out jackknife standard error.

A candidate is judged against v4 on eleven held-out patients; a gap of a few thousandths across
slices may be smaller than what the choice of patients alone moves. Dropping one patient at a time
(both scorers on the same images, so the difference is paired) gives the spread of each
difference over patients.

    python research/patient_jackknife.py work/sim_val-ref work/heldout-v4-four-grids.csv work/heldout-48.csv
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.evaluation import acquisitions_from_manifest, ordering_report  # noqa: E402

MEASURES = ("cross_slice", "cross_patient", "within_reconstruction", "untouched_vs_low_dose")


def differences(rows: list[dict], baseline: np.ndarray, candidate: np.ndarray) -> dict[str, float]:
    acq = acquisitions_from_manifest(rows)
    first, second = ordering_report(acq, baseline), ordering_report(acq, candidate)
    return {m: second[m] - first[m] for m in MEASURES}


def jackknife(rows: list[dict], baseline: np.ndarray, candidate: np.ndarray) -> dict[str, tuple[float, float]]:
    """{measure: (difference on every patient, its leave-one-patient-out standard error)}."""
    patients = acquisitions_from_manifest(rows).patient
    whole = differences(rows, baseline, candidate)
    left_out = []
    for patient in np.unique(patients):
        keep = np.flatnonzero(patients != patient)
        left_out.append(differences([rows[i] for i in keep], baseline[keep], candidate[keep]))
    spread = {}
    for m in MEASURES:
        values = np.array([d[m] for d in left_out])
        values = values[np.isfinite(values)]
        # the jackknife standard error: sqrt((n - 1) / n * sum of squared deviations from their mean)
        spread[m] = float(np.sqrt((len(values) - 1) / len(values) * ((values - values.mean()) ** 2).sum())) \
            if len(values) > 1 else float("nan")
    return {m: (whole[m], spread[m]) for m in MEASURES}


def predictions(path: Path) -> dict[str, float]:
    with path.open() as f:
        return {Path(r["path"]).name: float(r["prediction"]) for r in csv.DictReader(f)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path, help="the simulate folder the predictions were made on (its manifest)")
    parser.add_argument("baseline", type=Path, help="evaluate --predictions CSV of the baseline")
    parser.add_argument("candidates", type=Path, nargs="+", help="the same of each candidate")
    args = parser.parse_args()
    with (args.data / "manifest.csv").open() as f:
        manifest = list(csv.DictReader(f))
    base = predictions(args.baseline)
    print("| candidate | " + " | ".join(MEASURES) + " |\n|---|" + "---|" * len(MEASURES))
    for path in args.candidates:
        scored = predictions(path)
        rows = [r for r in manifest if Path(r["path"]).name in scored and Path(r["path"]).name in base]
        keys = [Path(r["path"]).name for r in rows]
        result = jackknife(rows, np.array([base[k] for k in keys]), np.array([scored[k] for k in keys]))
        print(f"| {path.name} | " + " | ".join(f"{d:+.4f} ± {se:.4f}" for d, se in result.values()) + " |")


if __name__ == "__main__":
    main()
