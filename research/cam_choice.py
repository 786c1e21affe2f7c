"""Which stage and which CAM method show where a slice is degraded? Measured, not assumed.

    python scripts/cam_choice.py [--weights clinreadnet.sim-v1] [--slices 12]

Real CT slices (the CT sources, one per patient, from the patients listed last in the sources)
get low dose (10 % dose, 180 views, add-difference) in one half only: the degradation of the
whole slice, image - source, is added to the left half, and in a second image to the right half.
For every stage's feature map and every method the share of the map's mass that lies in the
degraded half is averaged over slices and both sides (so anatomy that draws the map to one side
cancels out); 0.5 is chance. Results go to stdout and benchmarks/results/cam_choice.json.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clinreadnet_cli.checkpoint import load_model, resolve_weights  # noqa: E402
from clinreadnet_cli.explain import CAM_METHODS, quality_maps  # noqa: E402
from clinreadnet_cli.preprocess import prepare_slice  # noqa: E402
from clinreadnet_cli.simulate import degraded_in  # noqa: E402

SOURCES = REPO.parent / "shared" / "data" / "ct_sources"


def half_degraded(hu: np.ndarray, pixel_mm: float, rng) -> tuple[np.ndarray, np.ndarray]:
    """The slice with the 10 %-dose, 180-view degradation in its left half, and in its right half."""
    left = np.zeros(hu.shape, dtype=bool)
    left[:, : hu.shape[1] // 2] = True
    return degraded_in(hu, pixel_mm, left, 0.1, 180, rng), degraded_in(hu, pixel_mm, ~left, 0.1, 180, rng)


def degraded_half_share(maps: np.ndarray, left: bool) -> np.ndarray:
    half = maps.shape[-1] // 2
    inside = maps[..., :half] if left else maps[..., half:]
    return inside.sum(axis=(-2, -1)) / np.maximum(maps.sum(axis=(-2, -1)), 1e-12)


def source_slices(count: int) -> list[tuple[str, np.ndarray, float]]:
    """One slice from each of the last ``count`` patients of the sources (middle slice of each)."""
    picked = []
    for archive in sorted(SOURCES.glob("*.npz"), reverse=True):
        data = np.load(archive)
        patients = data["patient_id"]
        for patient in sorted(set(patients.tolist()), reverse=True):
            index = np.flatnonzero(patients == patient)[len(np.flatnonzero(patients == patient)) // 2]
            picked.append((f"{archive.name}#{index}", data["hu"][index].astype(np.float32),
                           float(data["pixel_spacing_mm"][index][0])))
            if len(picked) == count:
                return picked
    return picked


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--weights", default=None)
    parser.add_argument("--slices", type=int, default=12)
    parser.add_argument("--json", dest="json_path", type=Path, default=REPO / "benchmarks/results/cam_choice.json")
    args = parser.parse_args()
    torch.manual_seed(0)
    model = load_model(resolve_weights(args.weights))
    rng = np.random.default_rng(0)
    inputs, sides, names = [], [], []
    for name, hu, pixel_mm in source_slices(args.slices):
        for image, left in zip(half_degraded(hu, pixel_mm, rng), (True, False)):
            inputs.append(prepare_slice(image, "hu", model.config))
            sides.append(left)
            names.append(name)
    batch = torch.stack(inputs)
    stages = len(model.feature_modules())
    results = {}
    for method in CAM_METHODS:
        for stage in range(stages):
            began = time.perf_counter()
            maps = np.concatenate([quality_maps(model, batch[i:i + 8], stage, method) for i in range(0, len(batch), 8)])
            shares = np.array([degraded_half_share(m, left) for m, left in zip(maps, sides)])
            results[f"{method}/stage{stage + 1}"] = {
                "degraded_half_share": float(shares.mean()), "worst": float(shares.min()),
                "above_half": float((shares > 0.5).mean()),
                "ms_per_slice": 1000 * (time.perf_counter() - began) / len(batch)}
            r = results[f"{method}/stage{stage + 1}"]
            print(f"{method:10s} stage {stage + 1}: mass in the degraded half {r['degraded_half_share']:.3f} "
                  f"(worst {r['worst']:.3f}, {r['above_half']:.0%} of images > 0.5), {r['ms_per_slice']:.0f} ms/slice")
    args.json_path.write_text(json.dumps({"weights": str(resolve_weights(args.weights)), "slices": sorted(set(names)),
                                          "images": len(batch), "results": results}, indent=2) + "\n")


if __name__ == "__main__":
    main()
