"""How far each weights file's MTMSA modulator moves from a uniform mix of its temperatures
(Eq. 13-14: alpha, one convex combination of the temperatures per window), on the sample data's
DICOM slices, and the learnt temperatures.

    python scripts/mtmsa_mixing.py --weights sim-v2 --weights sim-v1
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clinreadnet_cli.checkpoint import load_model, resolve_weights  # noqa: E402
from clinreadnet_cli.preprocess import prepare_slice  # noqa: E402
from clinreadnet_cli.readers import discover  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--weights", action="append", required=True)
    args = parser.parse_args()
    slices = [ref for series in discover([REPO / "sample_data" / "dicom"]).series for ref in series.slices]
    for weights in args.weights:
        model = load_model(resolve_weights(weights)).eval()
        blocks = [m for m in model.modules() if hasattr(m, "mixing_weights")]
        alphas: list[torch.Tensor] = []
        for block in blocks:
            block.register_forward_hook(lambda module, inputs, _: alphas.append(module.mixing_weights(inputs[0])))
        with torch.no_grad():
            model(torch.stack([prepare_slice(ref.load(), ref.value_range, model.config) for ref in slices]))
        alpha = torch.cat(alphas)
        temperatures = [(b.log_temperatures.exp() if hasattr(b, "log_temperatures") else b.temperatures).tolist()
                        for b in blocks]
        print(f"{weights}: {alpha.shape[0]} windows of {len(slices)} slices; alpha per temperature "
              f"min {[round(a, 3) for a in alpha.min(0).values.tolist()]} max {[round(a, 3) for a in alpha.max(0).values.tolist()]}; "
              f"temperatures per block {[[round(t, 3) for t in ts] for ts in temperatures]}")


if __name__ == "__main__":
    main()
