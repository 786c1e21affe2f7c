"""The classical noise figure: a robust noise SD in HU inside soft tissue, at native resolution.

noise_hu = 1.4826 x MAD of the 5 x 5 high-pass residual (image - its 5 x 5 mean) over soft tissue.

Reported beside the network's score in every record and as a baseline in ``evaluate``; it never
enters the score. The same estimator measures the simulation's sources (their ``noise_hu_est``).
Anatomy leaks into it a little, so it ranks images by noise rather than measuring it absolutely.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

MIN_TISSUE_PIXELS = 500  # below this a noise estimate is not trusted
TISSUE_HU = (-50.0, 150.0)
MAD_TO_SD = 1.4826


@dataclass(frozen=True)
class NoiseFigure:
    noise_hu: float | None
    note: str | None = None  # why noise_hu is None


def tissue_mask(hu: np.ndarray, smooth: bool = False) -> np.ndarray:
    """Soft tissue away from edges: -50..150 HU, eroded 3 pixels. ``smooth`` thresholds a 9 x 9
    mean instead of the pixels, so the mask of a noisy image (up to ~300 HU SD) is not riddled by
    its noise."""
    from scipy import ndimage  # here: the main process of `score` decodes nothing, so never pays its import

    image = ndimage.uniform_filter(hu.astype(np.float32), 9) if smooth else hu
    low, high = TISSUE_HU
    return ndimage.binary_erosion((image > low) & (image < high), iterations=3)


def noise_sd_hu(image_hu: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise SD inside ``mask`` (NaN if it holds fewer than MIN_TISSUE_PIXELS pixels)."""
    if mask.sum() < MIN_TISSUE_PIXELS:
        return float("nan")
    from scipy import ndimage

    image = image_hu.astype(np.float32, copy=False)
    residual = (image[mask] - ndimage.uniform_filter(image, 5)[mask]).astype(np.float64)
    return float(MAD_TO_SD * np.median(np.abs(residual - np.median(residual))))


def measure_noise(image: np.ndarray, value_range: str) -> NoiseFigure:
    """The noise figure of one slice as read (HU), or None with the reason it cannot be measured."""
    if value_range != "hu":
        return NoiseFigure(None, "not in HU")
    hu = np.asarray(image, dtype=np.float32)
    if not np.isfinite(hu).all():
        return NoiseFigure(None, "non-finite pixels")
    value = noise_sd_hu(hu, tissue_mask(hu, smooth=True))
    if not np.isfinite(value):
        return NoiseFigure(None, f"fewer than {MIN_TISSUE_PIXELS} soft-tissue pixels")
    return NoiseFigure(value)
