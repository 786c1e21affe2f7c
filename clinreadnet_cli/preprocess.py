"""The one preprocessing path shared by ``score``, ``train`` and ``evaluate``.

slice (HU or already-windowed [0, 1]) -> intensity window -> clip to [0, 1] -> pad to square
-> antialiased resize to the network input -> tensor (1, S, S).
"""

from __future__ import annotations

from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F

from .config import ClinReadNetConfig

ValueRange = Literal["hu", "unit"]


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


def prepare_slice(image: np.ndarray, value_range: ValueRange, cfg: ClinReadNetConfig) -> torch.Tensor:
    """A 2-D slice -> the network's (1, S, S) float32 input in [0, 1]."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {image.shape}")
    if value_range == "hu":
        unit = window_hu(image, cfg.window_width, cfg.window_level)
    else:
        unit = np.clip(image.astype(np.float32, copy=False), 0.0, 1.0)
    tensor = pad_to_square(torch.from_numpy(np.ascontiguousarray(unit)))
    if tensor.shape[-1] != cfg.img_size:
        tensor = F.interpolate(tensor[None, None], size=(cfg.img_size, cfg.img_size), mode="bilinear",
                               antialias=True, align_corners=False)[0, 0].clamp_(0.0, 1.0)
    return tensor.unsqueeze(0)
