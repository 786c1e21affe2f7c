"""Does the score of one acquisition jump when it is reconstructed on another matrix or pixel size?

    python scripts/matrix_spacing_check.py --data work/sim --split work/runs/clinreadnet-v2/split.json \
        --weights weights/clinreadnet-sim-v2.safetensors --weights weights/clinreadnet-sim.safetensors
    python scripts/matrix_spacing_check.py --slices benchmarks/results/matrix_spacing.json \
        --weights weights/clinreadnet-sim-v3.safetensors --out OUT.json   # the same slices again

Held-out slices (as in ``ordering_check.py``) are projected once (ASTRA, 1,000 views, photon
budget 1e6 per bin and view, full and 25 % dose) and each scan is reconstructed (Ram-Lak FBP)
onto four grids: the source's own (512², its spacing), 768² over the same field of view, and
512² at 0.6 mm and at 0.9 mm pixels (a smaller and a larger field of view). Every image is scored
with every weights file; the table gives the mean score per grid and dose and the mean absolute
change from the source grid. Results also in ``benchmarks/results/matrix_spacing.json``.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "scripts"))

from ordering_check import add_slice_options, chosen_slices, load_source, noisy_full_dose, weights_labels  # noqa: E402

from clinreadnet_cli.checkpoint import load_model  # noqa: E402
from clinreadnet_cli.inference import InferenceOptions, prepare_for_inference  # noqa: E402
from clinreadnet_cli.noise import measure_noise  # noqa: E402
from clinreadnet_cli.preprocess import prepare_slice  # noqa: E402
from clinreadnet_cli.simulate.physics import ParallelScanner, ReconGrid, hu_to_mu, mu_to_hu, reduce_dose  # noqa: E402

I0, ELECTRONIC = 1e6, 10.0
GRIDS = {"source grid": None, "768² same FOV": ReconGrid(768), "512² at 0.6 mm": ReconGrid(512, 0.6),
         "512² at 0.9 mm": ReconGrid(512, 0.9)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_slice_options(parser)
    parser.add_argument("--sources", type=Path, default=REPO.parent / "shared" / "data" / "ct_sources")
    parser.add_argument("--weights", type=Path, action="append", required=True)
    parser.add_argument("--per-patient", type=int, default=1)
    parser.add_argument("--seed", type=int, default=11)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "matrix_spacing.json")
    args = parser.parse_args()
    picked = chosen_slices(parser, args)

    torch.set_num_threads(2)
    models = {label: load_model(p) for label, p in zip(weights_labels(args.weights), args.weights)}
    predictors = {n: (m.config, prepare_for_inference(m, torch.device("cpu"), InferenceOptions()))
                  for n, m in models.items()}
    scores: dict[str, dict[str, list[float]]] = {}
    for number, (_, source) in enumerate(picked):
        hu, pixel_mm = load_source(args.sources, source)
        scanner = ParallelScanner(hu.shape, pixel_mm, 1000)
        rng = np.random.default_rng([args.seed, number])
        full = noisy_full_dose(scanner.project(hu_to_mu(hu)), I0, ELECTRONIC, rng)
        for dose, sinogram in reduce_dose(full, (1.0, 0.25), I0, ELECTRONIC, rng).items():
            for grid, recon_grid in GRIDS.items():
                image = mu_to_hu(scanner.reconstruct(sinogram, grid=recon_grid))
                key = f"{grid}, dose {dose:g}"
                entry = scores.setdefault(key, {})
                entry.setdefault("noise_hu", []).append(measure_noise(image, "hu").noise_hu or np.nan)
                for name, (cfg, predict) in predictors.items():
                    entry.setdefault(name, []).append(float(predict(prepare_slice(image, "hu", cfg)[None]).score))
        print(f"{number + 1}/{len(picked)} slices", file=sys.stderr)

    names = ["noise_hu", *predictors]
    print(f"{len(picked)} held-out slices; mean (mean |change| from the source grid at the same dose)")
    print("| grid, dose | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
    for key, entry in scores.items():
        reference = scores[f"source grid, {key.split(', ')[-1]}"]
        cells = [f"{np.nanmean(entry[n]):.2f} ({np.nanmean(np.abs(np.subtract(entry[n], reference[n]))):.2f})"
                 for n in names]
        print(f"| {key} | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"slices": picked, "scores": scores}, indent=1) + "\n")


if __name__ == "__main__":
    main()
