"""Write a subset of the CT source archives as one ``.npz`` for ``clinreadnet simulate --source``,
so that a simulation of chosen patients or slices is a command, not a one-off selection.

    # every slice of the held-out patients (those named in an ordering-check result file)
    python scripts/select_sources.py heldout.npz --patients-from scripts/default_weights/heldout_patients.json
    # the training patients (the rest), at most two slices each, evenly spaced along each patient
    python scripts/select_sources.py train60.npz --patients-from scripts/default_weights/heldout_patients.json \
        --exclude --per-patient 2

Patients are named as ``simulate`` names them (``simulate.find_sources``: the archive's
``patient_id``, its file name where that is empty), so the groups of a simulation select them.
Every per-slice array of an archive is kept, so provenance (``sop_uid``, ``kernel``, …) travels.
"""

from __future__ import annotations

import argparse
import json
import sys
from collections import defaultdict
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from clinreadnet_cli.atomic import atomic_path  # noqa: E402
from clinreadnet_cli.simulate import find_sources  # noqa: E402

DEFAULT_SOURCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_sources"


def evenly_spaced(indices: list[int], count: int) -> list[int]:
    """``count`` of the given slice indices spread from first to last (all of them if fewer; the
    middle one for one)."""
    if len(indices) <= count:
        return indices
    if count == 1:
        return [indices[len(indices) // 2]]
    return [indices[round(i * (len(indices) - 1) / (count - 1))] for i in range(count)]


def select(sources: Path, patients: set[str], exclude: bool, per_patient: int | None) -> dict[str, np.ndarray]:
    picked: dict[str, list[np.ndarray]] = defaultdict(list)
    archives_used = 0
    for path in sorted(sources.glob("*.npz")):
        slices, errors, _ = find_sources([path])
        if errors:
            raise SystemExit(f"{errors[0].path}: {errors[0].reason}")
        by_patient: dict[str, list[int]] = defaultdict(list)
        for index, source in enumerate(slices):
            if (source.patient in patients) != exclude:
                by_patient[source.patient].append(index)
        keep = sorted(i for members in by_patient.values()
                      for i in (evenly_spaced(members, per_patient) if per_patient else members))
        if not keep:
            continue
        archives_used += 1
        n = len(slices)
        with np.load(path, allow_pickle=False) as archive:
            for name in archive.files:
                array = archive[name]
                if array.shape[:1] == (n,):
                    picked[name].append(array[keep])
    # only arrays every contributing archive has can be stacked
    return {name: np.concatenate(parts) for name, parts in sorted(picked.items()) if len(parts) == archives_used}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("out", type=Path, help="the .npz to write")
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES, help="folder of source .npz archives")
    parser.add_argument("--patients", nargs="*", default=[], help="patient IDs to select")
    parser.add_argument("--patients-from", type=Path,
                        help="a result file of scripts/ordering_check.py: its 'slices' name the patients")
    parser.add_argument("--exclude", action="store_true", help="select every patient except those named")
    parser.add_argument("--per-patient", type=int, help="at most this many slices a patient, evenly spaced")
    args = parser.parse_args()
    patients = set(args.patients)
    if args.patients_from:
        patients |= {patient for patient, _ in json.loads(args.patients_from.read_text())["slices"]}
    if not patients:
        parser.error("name patients with --patients or --patients-from")
    if args.per_patient is not None and args.per_patient < 1:
        parser.error("--per-patient must be >= 1")
    arrays = select(args.sources, patients, args.exclude, args.per_patient)
    if not arrays:
        sys.exit(f"no slice of {args.sources} matches")
    with atomic_path(args.out) as tmp:
        with open(tmp, "wb") as handle:
            np.savez_compressed(handle, **arrays)
    found = sorted(set(arrays["patient_id"].astype(str)))
    print(f"{args.out}: {len(arrays['hu'])} slices of {len(found)} patients", file=sys.stderr)


if __name__ == "__main__":
    main()
