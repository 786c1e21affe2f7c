"""Tiny configurations: the real architecture at a size that runs in milliseconds on a CPU."""

from __future__ import annotations

import numpy as np
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


def ct_phantom(n: int, size: int = 64, noise_hu: float = 20.0, seed: int = 0) -> np.ndarray:
    """(n, size, size) float32 HU slices that pass the readers' content checks: air around a
    40 HU body holding a -800 HU lung and a 700 HU bone, with Gaussian noise, clipped below at
    -1024 HU like the CT sources (and like DICOM stored unsigned with intercept -1024)."""
    rng = np.random.default_rng(seed)
    y, x = (np.mgrid[:size, :size] - size / 2) / (size / 2)
    hu = np.full((size, size), -1000.0)
    hu[(x / 0.85) ** 2 + (y / 0.7) ** 2 < 1] = 40.0
    hu[(x + 0.35) ** 2 + y**2 < 0.2**2] = -800.0
    hu[(x - 0.3) ** 2 + (y - 0.2) ** 2 < 0.1**2] = 700.0
    noisy = hu[None] + rng.normal(0, noise_hu, (n, size, size))
    return np.clip(noisy, -1024.0, None).round().astype(np.float32)


def unit_phantom(n: int, size: int = 64, seed: int = 0) -> np.ndarray:
    """``ct_phantom`` through the soft-tissue window as float32 in [0, 1] (the LDCTIQAG2023 convention)."""
    return np.clip((ct_phantom(n, size, seed=seed) + 135.0) / 350.0, 0.0, 1.0).astype(np.float32)


@pytest.fixture(autouse=True, scope="session")
def _export_cache(tmp_path_factory):
    """Models exported for OpenVINO / ONNX Runtime go to a folder of the test session's, not ~/.cache."""
    import os

    previous = os.environ.get("CLINREADNET_CACHE")
    os.environ["CLINREADNET_CACHE"] = str(tmp_path_factory.mktemp("export-cache"))
    yield
    if previous is None:
        os.environ.pop("CLINREADNET_CACHE", None)
    else:
        os.environ["CLINREADNET_CACHE"] = previous
