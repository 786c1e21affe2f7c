"""The patient's size as the beam sees it: the water-equivalent diameter of a CT slice.

D_w = 2 sqrt(A_w / pi), A_w = sum over the patient of (HU / 1000 + 1) x pixel area (AAPM report
220). The patient is the largest connected region whose 9 x 9 mean is above -500 HU, with its holes
(lungs, bowel gas) filled, so that a table or a second object beside the body does not count and
a low-dose image's noise neither grows nor shrinks the outline.

At one photon flux, the quantum noise of a reconstruction grows with the attenuation its rays
cross, about as exp(mu_water x D_w / 2) in SD: the same protocol gives a larger patient a noisier
image. ``size_adjusted_noise`` is the noise figure with that growth divided out, a classical
estimate of the protocol's dose that does not depend on the patient's size. Neither enters the
score.
"""

from __future__ import annotations

import math

import numpy as np

BODY_HU = -500.0
MU_WATER_PER_MM = 0.0193  # water at ~70 keV, the effective energy of a 120 kVp beam (also the simulator's)
REFERENCE_DIAMETER_MM = 250.0  # the adjusted figure reads as the noise of a patient of this size


def water_equivalent_diameter(hu: np.ndarray, spacing_mm: tuple[float, float]) -> float:
    """D_w in mm of one HU slice with (row, column) pixel spacing ``spacing_mm``; NaN without a body."""
    from scipy import ndimage

    hu = np.asarray(hu, np.float32)
    regions, count = ndimage.label(ndimage.uniform_filter(hu, 9) > BODY_HU)
    if count == 0:
        return math.nan
    largest = 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
    body = ndimage.binary_fill_holes(regions == largest)
    # Unclipped, so that noise adds nothing on average, even in the lungs
    area = float((hu[body].astype(np.float64) / 1000.0 + 1.0).sum()) * spacing_mm[0] * spacing_mm[1]
    return 2.0 * math.sqrt(area / math.pi)


def measure_diameter(image: np.ndarray, value_range: str, spacing_mm: tuple[float, float] | None) -> float | None:
    """The ``wed_mm`` of a score record: D_w of a slice read in HU whose pixel spacing is known,
    else None (a windowed [0, 1] image has lost its HU; without a spacing there are no mm)."""
    if value_range != "hu" or spacing_mm is None:
        return None
    diameter = water_equivalent_diameter(image, spacing_mm)
    return diameter if math.isfinite(diameter) else None


def size_adjusted_noise(noise_hu, diameter_mm):
    """noise_hu scaled to a patient of REFERENCE_DIAMETER_MM at the same flux: the SD falls by
    exp(mu_water x (D_w - reference) / 2). Numbers or arrays; NaN where either is NaN."""
    return noise_hu * np.exp(-MU_WATER_PER_MM * (np.asarray(diameter_mm) - REFERENCE_DIAMETER_MM) / 2.0)
