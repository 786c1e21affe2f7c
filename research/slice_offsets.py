"""Which slices read high or low for their protocol? Each slice's offset from the other slices at
the same acquisitions, grouped by what its source file says of it, on an ``ordering_check.py`` output.

    python scripts/slice_offsets.py scripts/default_weights/heldout_23_slices.json --sources WORK

A scorer that ordered protocols perfectly across slices would give every slice the same value at
the same (dose, views); what the slice itself adds is its offset. For every degraded image, the
offset is its value minus the mean over all slices at its (dose, views); a slice's offset is the
mean over its acquisitions (an image a figure could not measure, null in the JSON, is left
out). Classical figures are read as -ln(noise) so that higher is better for
every scorer. To compare scorers in their different units, the spread of the slices' offsets (SD)
is divided by the scorer's own step from full to 10 % dose at full views (mean over the slices):
0.25 means the slice moves the value by a quarter of what that dose step does.

The slices are grouped by the source's reconstruction kernel (the ``kernel`` field of the source
archives in ``--sources``, as ``select_sources`` writes them), with each slice's pixel spacing and
slice thickness beside it in the per-slice table.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO / "scripts"))

from ordering_check import CLASSICAL, source_archive  # noqa: E402


def slice_offsets(acquisitions: list, values: np.ndarray) -> tuple[dict[str, float], float]:
    """(source -> mean offset from the other slices at the same (dose, views), the mean step from
    full to 10 % dose at the most views) over the degraded images of one simulator's check."""
    degraded = [i for i, (_, _, untouched, _, _) in enumerate(acquisitions) if not untouched]
    protocol = [tuple(acquisitions[i][3:5]) for i in degraded]
    mean_of = {p: np.nanmean([values[i] for i, q in zip(degraded, protocol) if q == p]) for p in set(protocol)}
    by_source: dict[str, list[float]] = {}
    for i, p in zip(degraded, protocol):
        by_source.setdefault(acquisitions[i][0], []).append(values[i] - mean_of[p])
    most_views = max(p[1] for p in protocol)
    step = mean_of[(max(p[0] for p in protocol), most_views)] - mean_of[(min(p[0] for p in protocol), most_views)]
    return {source: float(np.nanmean(offsets)) for source, offsets in by_source.items()}, float(step)


def source_facts(sources: Path, source: str) -> dict:
    """Kernel, pixel spacing and slice thickness of ``archive.npz#k`` as its archive records them."""
    archive, k = source_archive(sources, source)
    return {"kernel": str(archive["kernel"][k]).strip() if "kernel" in archive.files else "?",
            "pixel_mm": float(archive["pixel_spacing_mm"][k][0]),
            "thickness_mm": float(archive["slice_thickness_mm"][k]) if "slice_thickness_mm" in archive.files
            else float("nan")}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("report", type=Path, help="ordering_check.py output JSON")
    parser.add_argument("--sources", type=Path, default=REPO.parent / "shared" / "data" / "ct_sources")
    args = parser.parse_args()
    results = json.loads(args.report.read_text())["results"]
    for simulator, report in results.items():
        acquisitions = report["acquisitions"]
        scorers = list(report["scores"])
        offsets, spreads = {}, {}
        for name in scorers:
            raw = np.array(report["scores"][name], float)
            values = -np.log(raw) if name in CLASSICAL else raw
            offsets[name], step = slice_offsets(acquisitions, values)
            spreads[name] = np.std(list(offsets[name].values())) / step
        facts = {source: source_facts(args.sources, source) for source in offsets[scorers[0]]}
        print(f"\n{simulator}: offset of each slice from the others at the same acquisitions "
              "(score points; -ln noise for the classical figures)")
        print("| slice | kernel | pixel mm | thickness mm | " + " | ".join(scorers) + " |")
        print("|---|---|---|---|" + "---|" * len(scorers))
        order = sorted(facts, key=lambda s: offsets[scorers[-1]][s])
        for source in order:
            f = facts[source]
            print(f"| {source} | {f['kernel']} | {f['pixel_mm']:.2f} | {f['thickness_mm']:.1f} | "
                  + " | ".join(f"{offsets[n][source]:+.2f}" for n in scorers) + " |")
        print("\n| source kernel | slices | " + " | ".join(scorers) + " |")
        print("|---|---|" + "---|" * len(scorers))
        for kernel in sorted({f["kernel"] for f in facts.values()}):
            members = [s for s in facts if facts[s]["kernel"] == kernel]
            print(f"| {kernel} | {len(members)} | "
                  + " | ".join(f"{np.mean([offsets[n][s] for s in members]):+.2f}" for n in scorers) + " |")
        print("| spread of the offsets / full-to-10 %-dose step | | "
              + " | ".join(f"{spreads[n]:.2f}" for n in scorers) + " |")


if __name__ == "__main__":
    main()
