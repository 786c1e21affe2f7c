"""Copy a training run's weights into a shippable file, stored as fp16 (loaded back as fp32).

    python scripts/export_weights.py runs/clinreadnet/best.safetensors weights/clinreadnet-sim-v2.safetensors
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch

from clinreadnet_cli.checkpoint import load_model, save_weights


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--fp32", action="store_true", help="keep fp32 storage (twice the size)")
    args = parser.parse_args()
    model = load_model(args.source)
    save_weights(model, args.target, dtype=None if args.fp32 else torch.float16)
    # fp16 storage must not move scores: compare on a fixed batch.
    probe = torch.rand(4, 1, model.config.img_size, model.config.img_size, generator=torch.Generator().manual_seed(0))
    before, after = model.predict(probe).score, load_model(args.target).predict(probe).score
    print(f"wrote {args.target} ({args.target.stat().st_size / 2**20:.1f} MiB); "
          f"largest score change from storage precision {float((before - after).abs().max()):.2e}")


if __name__ == "__main__":
    main()
