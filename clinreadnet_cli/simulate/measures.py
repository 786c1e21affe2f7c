"""Image measures of simulated slices: tissue masks, noise, artefact energy, SSIM."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from skimage.metrics import structural_similarity

MIN_TISSUE_PIXELS = 500  # below this a noise estimate is not trusted


def body_mask(hu: np.ndarray) -> np.ndarray:
    """The patient (and couch): everything denser than -500 HU, holes (lungs, bowel gas) filled."""
    return ndimage.binary_fill_holes(ndimage.binary_opening(hu > -500, iterations=2))


def tissue_mask(hu: np.ndarray) -> np.ndarray:
    """Soft tissue away from edges: -50..150 HU, eroded 3 pixels (the sources' noise ROI)."""
    return ndimage.binary_erosion((hu > -50) & (hu < 150), iterations=3)


def noise_sd_hu(image_hu: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise SD: 1.4826 x MAD of the 5x5 high-pass residual inside ``mask`` (NaN if too small).

    The same estimator as the sources' ``noise_hu_est``; anatomy leaks into it a little, so it
    ranks images by noise rather than measuring it absolutely.
    """
    if mask.sum() < MIN_TISSUE_PIXELS:
        return float("nan")
    image = image_hu.astype(np.float64)
    residual = (image - ndimage.uniform_filter(image, 5))[mask]
    return float(1.4826 * np.median(np.abs(residual - np.median(residual))))


def rms_difference_hu(image_hu: np.ndarray, reference_hu: np.ndarray, mask: np.ndarray) -> float:
    """RMS of image - reference inside ``mask``: with noise-free inputs, the streak energy."""
    diff = image_hu.astype(np.float64)[mask] - reference_hu.astype(np.float64)[mask]
    return float(np.sqrt(np.mean(diff * diff)))


def ssim_in_body(image: np.ndarray, reference: np.ndarray, mask: np.ndarray) -> float:
    """Mean SSIM (Wang et al. 2004: Gaussian window sigma 1.5) of two [0, 1] windowed images,
    averaged over ``mask`` so the empty air around the patient does not inflate it."""
    _, ssim_map = structural_similarity(reference, image, data_range=1.0, gaussian_weights=True, sigma=1.5,
                                        use_sample_covariance=False, full=True)
    return float(ssim_map[mask].mean())
