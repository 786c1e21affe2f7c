"""How far each weights file's MTMSA modulator moves from a uniform mix of its temperatures
(Eq. 13-14: alpha, one convex combination of the temperatures per window), on the sample data's
DICOM slices, and the learnt temperatures.

    python scripts/mtmsa_mixing.py --weights sim-v2 --weights sim-v1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import pydicom
import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clinreadnet_cli.checkpoint import load_model, resolve_weights  # noqa: E402
from clinreadnet_cli.preprocess import prepare_slice  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="append", required=True)
    args = parser.parse_args()
    files = sorted((REPO / "sample_data" / "dicom").glob("*/*.dcm"))
    for weights in args.weights:
        model = load_model(resolve_weights(weights)).eval()
        blocks = [m for m in model.modules() if hasattr(m, "mixing_weights")]
        alphas: list[torch.Tensor] = []
        for block in blocks:
            block.register_forward_hook(lambda module, inputs, _: alphas.append(module.mixing_weights(inputs[0])))
        batch = []
        for path in files:
            ds = pydicom.dcmread(path)
            hu = ds.pixel_array.astype(np.float32) * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
            batch.append(prepare_slice(hu, "hu", model.config))
        with torch.no_grad():
            model(torch.stack(batch))
        alpha = torch.cat(alphas)
        temperatures = [(b.log_temperatures.exp() if hasattr(b, "log_temperatures") else b.temperatures).tolist()
                        for b in blocks]
        print(f"{weights}: {alpha.shape[0]} windows of {len(files)} slices; alpha per temperature "
              f"min {[round(a, 3) for a in alpha.min(0).values.tolist()]} max {[round(a, 3) for a in alpha.max(0).values.tolist()]}; "
              f"temperatures per block {[[round(t, 3) for t in ts] for ts in temperatures]}")


if __name__ == "__main__":
    main()
