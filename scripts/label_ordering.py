"""How well the proxy labels of a ``simulate`` folder order its images by acquisition, before any
training: the same ordering report ``evaluate`` gives a model, computed on the labels and on the
noise figure of the manifest.

    python scripts/label_ordering.py work/sim
"""

from __future__ import annotations

import argparse
import csv
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.evaluation import acquisitions_from_manifest, ordering_report  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("data", type=Path)
    args = parser.parse_args()
    with (args.data / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    acq = acquisitions_from_manifest(rows)
    scorers = {"label": np.array([float(r["score"]) for r in rows]),
               "noise_hu (manifest)": -np.array([float(r["noise_hu"] or "nan") for r in rows])}
    reports = {name: ordering_report(acq, values) for name, values in scorers.items()}
    print(f"{len(rows)} images, {len(set(r['source'] for r in rows))} slices, "
          f"{len(set(r['group'] for r in rows))} patients")
    print("| measure | " + " | ".join(reports) + " |\n|---|" + "---|" * len(reports))
    for m in ("cross_slice", "cross_patient", "within_slice", "untouched_vs_low_dose"):
        print(f"| {m} ({reports['label'][m + '_pairs']:,} pairs) | "
              + " | ".join(f"{r[m]:.4f}" for r in reports.values()) + " |")
    kinds = sorted({r["kind"] for r in rows} - {"source"})
    for kind in kinds:  # each reconstruction kind on its own (plus the untouched sources)
        keep = np.array([r["kind"] in (kind, "source") for r in rows])
        sub = acquisitions_from_manifest([r for r, k in zip(rows, keep) if k])
        report = ordering_report(sub, scorers["label"][keep])
        print(f"labels, {kind} only: cross_slice {report['cross_slice']:.4f}, "
              f"within_slice {report['within_slice']:.4f}")


if __name__ == "__main__":
    main()
