"""How closely a distilled student follows its teacher, on its own training images and on the
held-out patients: whether it underfits (as far off on both) or overfits (off on the held-out only).

    python research/teacher_fit.py RUN/teacher.safetensors TRAIN.csv HELDOUT.csv TEACHER_HELDOUT.csv

TRAIN.csv: ``evaluate --split train --predictions`` of the student on the run's data (the teacher's
scores come from the run's ``teacher.safetensors``: the head-averaged distribution's expected score);
HELDOUT.csv and TEACHER_HELDOUT.csv: ``evaluate --predictions`` of the student and of the teacher on
the held-out patients.
"""

from __future__ import annotations

import argparse
import csv
import json
from pathlib import Path

import numpy as np
from safetensors import safe_open

from clinreadnet_cli.archs.heads import expected_score


def teacher_scores(path: Path) -> dict[str, float]:
    with safe_open(str(path), framework="pt") as f:
        keys, probs = json.loads(f.metadata()["keys"]), f.get_tensor("head_probs")
    return dict(zip(keys, expected_score(probs.mean(dim=1)).tolist()))


def predictions(path: Path) -> dict[str, float]:
    with path.open() as f:
        return {Path(r["path"]).name: float(r["prediction"]) for r in csv.DictReader(f)}


def report(name: str, student: dict[str, float], teacher: dict[str, float]) -> None:
    common = sorted(set(student) & set(teacher))
    s, t = np.array([student[k] for k in common]), np.array([teacher[k] for k in common])
    gap = s - t
    print(f"{name}: {len(common)} images, student - teacher mean {gap.mean():+.3f}, SD {gap.std():.3f}, "
          f"90th percentile of |gap| {np.percentile(np.abs(gap), 90):.3f}, correlation {np.corrcoef(s, t)[0, 1]:.4f}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("teacher", type=Path, help="the run's teacher.safetensors")
    parser.add_argument("train", type=Path, help="the student's predictions on the run's training images")
    parser.add_argument("heldout", type=Path, help="the student's predictions on the held-out patients")
    parser.add_argument("teacher_heldout", type=Path, help="the teacher's predictions on the held-out patients")
    args = parser.parse_args()
    report("training images", predictions(args.train), teacher_scores(args.teacher))
    report("held-out patients", predictions(args.heldout), predictions(args.teacher_heldout))


if __name__ == "__main__":
    main()
