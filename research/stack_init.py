"""Weights v4 rebuilt on the decimate-stack input path (the four sampling grids as four channels of
one forward), untrained: how each way of widening v4's one-channel patch embedding to four channels
reads the held-out patients before any fine-tune.

    python research/stack_init.py weights/clinreadnet-sim-v4.safetensors work/stack-init --init dealt

``first``: channel 0 holds v4's weights, the others zero (v4 through one grid, exactly);
``mean``: each channel a quarter of them (v4 on the 2x2 mean: half the noise SD);
``dealt``: embedding dimension k reads grid k mod 4 alone, so each dimension sees one grid's noise
at v4's level and the four grids' draws are spread across the dimensions.
"""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import torch

from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import deal_across_grids, load_model, save_weights
from clinreadnet_cli.config import input_overrides

INITS = ("first", "mean", "dealt")


def widened(weight: torch.Tensor, init: str) -> torch.Tensor:
    """(out, 1, k, k) -> (out, 4, k, k) as ``init`` says."""
    out = weight.new_zeros(weight.shape[0], 4, *weight.shape[2:])
    if init == "first":
        out[:, 0] = weight[:, 0]
    elif init == "mean":
        out[:] = weight / 4
    else:
        out = deal_across_grids(weight, 4)  # what fine-tuning onto the stack path starts from
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("source", type=Path)
    parser.add_argument("out", type=Path, help="folder for the widened weights files")
    parser.add_argument("--init", choices=INITS, action="append", required=True)
    args = parser.parse_args()
    source = load_model(args.source)
    cfg = dataclasses.replace(source.config, sampling_grids=1, **input_overrides("decimate-stack"))
    args.out.mkdir(parents=True, exist_ok=True)
    for init in args.init:
        model = create_model(dataclasses.replace(cfg, description=f"v4 on decimate-stack, patch embedding {init}"))
        state = source.state_dict()
        key = "backbone.patch_embed.proj.weight"
        state[key] = widened(state[key], init)
        model.load_state_dict(state)
        print(save_weights(model, args.out / f"v4-stack-{init}.safetensors", dtype=torch.float16))


if __name__ == "__main__":
    main()
