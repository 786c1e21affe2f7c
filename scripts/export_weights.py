"""Copy a training run's weights into a shippable file, stored as fp16 (loaded back as fp32).

    python scripts/export_weights.py runs/clinreadnet/best.safetensors weights/clinreadnet-sim-v2.safetensors

``--sampling-grids 4`` stores the config's reading of the decimate path as every sampling grid, their
predictions averaged (the tensors do not change: each grid is scored by the same network).
``--average-with B.safetensors ...`` stores the mean of the source's tensors and those of other runs
of the same architecture fine-tuned from one start (a "model soup"; integer buffers are the source's);
``--shares 0.6 0.4`` weighs them instead (source first; the shares sum to 1), which interpolates two
fine-tunes of one start that fail in opposite ways.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import load_model, save_weights
from clinreadnet_cli.config import SAMPLING_GRIDS


def averaged_state(source: torch.nn.Module, others: list[Path],
                   shares: list[float] | None = None) -> dict[str, torch.Tensor]:
    """The mean of the floating tensors of ``source`` and ``others`` (weighted by ``shares``, source
    first, when given), which must be the same network fed the same way (only the loss, the sampling
    grids and the description may differ): then the tensors match one to one."""
    def fed(config) -> dict:
        return {k: v for k, v in config.to_dict().items() if k not in ("loss", "sampling_grids", "description")}

    models = [load_model(path) for path in others]
    unlike = [str(p) for p, m in zip(others, models) if fed(m.config) != fed(source.config)]
    if unlike:
        raise SystemExit(f"{', '.join(unlike)}: another config (architecture, window or input path) than the source")
    states = [source.state_dict()] + [m.state_dict() for m in models]
    weights = torch.tensor(shares if shares is not None else [1.0 / len(states)] * len(states), dtype=torch.float64)

    def mixed(key: str) -> torch.Tensor:
        stacked = torch.stack([s[key] for s in states]).double()
        return torch.tensordot(weights, stacked, dims=1).to(states[0][key].dtype)

    return {k: mixed(k) if v.is_floating_point() else v for k, v in states[0].items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("target", type=Path)
    parser.add_argument("--fp32", action="store_true", help="keep fp32 storage (twice the size)")
    parser.add_argument("--sampling-grids", type=int, choices=SAMPLING_GRIDS,
                        help="how many decimation grids a slice is read through (default: the source's)")
    parser.add_argument("--average-with", type=Path, nargs="+", default=[], metavar="WEIGHTS",
                        help="average the source's tensors with these files' (equal shares)")
    parser.add_argument("--shares", type=float, nargs="+", metavar="SHARE",
                        help="with --average-with: each file's share, the source's first; they sum to 1")
    args = parser.parse_args()
    if args.shares is not None and (len(args.shares) != 1 + len(args.average_with)
                                    or abs(sum(args.shares) - 1) > 1e-6 or min(args.shares) < 0):
        parser.error("--shares needs one non-negative share for the source and one per --average-with file, "
                     "summing to 1")
    model = load_model(args.source)
    if args.sampling_grids is not None or args.average_with:
        config = model.config
        if args.sampling_grids is not None:
            config = dataclasses.replace(config, sampling_grids=args.sampling_grids)
        state = averaged_state(model, args.average_with, args.shares) if args.average_with else model.state_dict()
        model = create_model(config)
        model.load_state_dict(state)
        model.eval()
    save_weights(model, args.target, dtype=None if args.fp32 else torch.float16)
    # fp16 storage must not move scores: compare on a fixed batch (all the config's sampling grids).
    channels = model.config.in_chans * model.config.sampling_grids
    probe = torch.rand(4, channels, model.config.img_size, model.config.img_size,
                       generator=torch.Generator().manual_seed(0))
    before, after = model.predict(probe).score, load_model(args.target).predict(probe).score
    print(f"wrote {args.target} ({args.target.stat().st_size / 2**20:.1f} MiB); "
          f"largest score change from storage precision {float((before - after).abs().max()):.2e}")


if __name__ == "__main__":
    main()
