"""Tiny configurations: the real architecture at a size that runs in milliseconds on a CPU."""

from __future__ import annotations

import pytest
import torch

from clinreadnet_cli.config import get_config

# 128 px -> stage grids 32, 16, 8, 4; window 2 makes stage 4 hold 4 windows, so its second
# block really is a shifted-window block with a mask.
TINY = dict(img_size=128, embed_dim=16, depths=(1, 1, 1, 2), num_heads=(1, 2, 2, 4), window_size=2)


def tiny_config(name: str = "clinreadnet", **overrides):
    return get_config(name, **{**TINY, **overrides})


@pytest.fixture(autouse=True)
def _seed():
    torch.manual_seed(0)


@pytest.fixture
def batch():
    return torch.rand(4, 1, TINY["img_size"], TINY["img_size"])
