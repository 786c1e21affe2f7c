"""Image measures of simulated slices: body mask and degradation energy; tissue and noise come
from the score command's classical noise figure (``clinreadnet_cli.noise``)."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from ..noise import MIN_TISSUE_PIXELS, noise_sd_hu, tissue_mask

__all__ = ["MIN_TISSUE_PIXELS", "body_mask", "noise_sd_hu", "rms_hu", "tissue_mask"]


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient (and couch): everything denser than -500 HU, holes (lungs, bowel gas) filled."""
    return ndimage.binary_fill_holes(ndimage.binary_opening(hu > -500, iterations=2))


def rms_hu(image_hu: np.ndarray, mask: np.ndarray) -> float:
    """RMS inside ``mask`` (of a difference image: the energy of its noise and streaks)."""
    values = image_hu.astype(np.float64)[mask]
    return float(np.sqrt(np.mean(values * values)))
