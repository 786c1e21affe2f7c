"""The one preprocessing path shared by ``score``, ``train`` and ``evaluate``.

slice (HU or already-windowed [0, 1]) -> intensity window -> clip to [0, 1] -> pad to square
-> the weights' input path (config ``input_path``) -> tensor (1, S, S):

- ``decimate`` (weights v2): keep every s-th pixel, s = round(side / 256), then centre crop or pad
  to the input size. Sampling, unlike averaging, keeps the per-pixel FBP noise the score has to
  see; s follows the matrix, so a 768² slice is read like a 512² one of the same field of view.
- ``crop``: a native-resolution centre crop (or pad).
- ``resize`` (weights v1): antialiased resize, which filters out most of the fine FBP noise.
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .config import ClinReadNetConfig

ValueRange = Literal["hu", "unit"]
DECIMATED_SIDE = 256  # a 512² slice is read every second pixel


def window_hu(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU through the window [level - width/2, level + width/2] onto [0, 1], clipped."""
    low = level - width / 2.0
    return np.clip((hu.astype(np.float32, copy=False) - low) / width, 0.0, 1.0)


def pad_to_square(image: torch.Tensor) -> torch.Tensor:
    """Centre a (..., H, W) image on a square canvas of zeros (the bottom of the window)."""
    h, w = image.shape[-2:]
    if h == w:
        return image
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    return F.pad(image, (left, size - w - left, top, size - h - top))


def centre_crop_or_pad(image: torch.Tensor, size: int) -> torch.Tensor:
    """The central size x size of a square (..., N, N) image, zero-padded where N < size."""
    side = image.shape[-1]
    if side < size:
        before = (size - side) // 2
        return F.pad(image, (before, size - side - before, before, size - side - before))
    start = (side - size) // 2
    return image[..., start:start + size, start:start + size]


def decimation_step(side: int) -> int:
    return max(1, round(side / DECIMATED_SIDE))


def prepare_slice(image: np.ndarray, value_range: ValueRange, cfg: ClinReadNetConfig) -> torch.Tensor:
    """A 2-D slice -> the network's (1, S, S) float32 input in [0, 1]."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {image.shape}")
    if value_range == "hu":
        unit = window_hu(image, cfg.window_width, cfg.window_level)
    else:
        unit = np.clip(image.astype(np.float32, copy=False), 0.0, 1.0)
    tensor = pad_to_square(torch.from_numpy(np.ascontiguousarray(unit)))
    if cfg.input_path == "decimate":
        step = decimation_step(tensor.shape[-1])
        tensor = centre_crop_or_pad(tensor[::step, ::step], cfg.img_size).contiguous()
    elif cfg.input_path == "crop":
        tensor = centre_crop_or_pad(tensor, cfg.img_size).contiguous()
    elif tensor.shape[-1] != cfg.img_size:
        tensor = F.interpolate(tensor[None, None], size=(cfg.img_size, cfg.img_size), mode="bilinear",
                               antialias=True, align_corners=False)[0, 0].clamp_(0.0, 1.0)
    return tensor.unsqueeze(0)
