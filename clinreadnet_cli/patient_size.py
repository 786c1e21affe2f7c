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

from .noise import bounding_box, smoothed_hu

BODY_HU = -500.0
MU_WATER_PER_MM = 0.0193  # water at ~70 keV, the effective energy of a 120 kVp beam (also the simulator's)
REFERENCE_DIAMETER_MM = 250.0  # the adjusted figure reads as the noise of a patient of this size


def water_equivalent_diameter(hu: np.ndarray, spacing_mm: tuple[float, float],
                              smoothed: np.ndarray | None = None) -> float:
    """D_w in mm of one HU slice with (row, column) pixel spacing ``spacing_mm``; NaN without a body.
    ``smoothed``: the slice's ``noise.smoothed_hu``, where the caller has it already."""
    from scipy import ndimage

    hu = np.asarray(hu, np.float32)
    above = (smoothed_hu(hu) if smoothed is None else smoothed) > BODY_HU
    box = bounding_box(above, margin=0)
    if box is None:
        return math.nan
    # Labelled on the box around every region: the same regions, numbered in the same (raster) order
    above, hu = above[box], hu[box]
    regions, count = ndimage.label(above)
    # Sizes counted over the labelled pixels only: counting the background's one label, pixel after
    # pixel, costs more than all the regions together
    largest = 1 + int(np.argmax(np.bincount(regions[above])[1:])) if count > 1 else 1
    body = regions == largest
    box = bounding_box(body, margin=0)
    body, hu = body[box], hu[box]
    # ndimage.binary_fill_holes on the body's box: what of the box (and a frame around it, standing
    # for the rest of the image, all outside the body) is not 4-connected to the frame is a hole
    outside, _ = ndimage.label(np.pad(~body, 1, constant_values=True))
    filled = outside[1:-1, 1:-1] != outside[0, 0]
    # Unclipped, so that noise adds nothing on average, even in the lungs: sum(HU / 1000 + 1) over
    # the body, as the body's HU summed in float64, / 1000, plus its pixel count
    inside = hu[filled]
    water = float(np.add.reduce(inside, dtype=np.float64)) / 1000.0 + inside.size
    area = water * spacing_mm[0] * spacing_mm[1]
    return 2.0 * math.sqrt(area / math.pi)


def measure_diameter(image: np.ndarray, value_range: str, spacing_mm: tuple[float, float] | None,
                     smoothed: np.ndarray | None = None) -> float | None:
    """The ``wed_mm`` of a score record: D_w of a slice read in HU whose pixel spacing is known,
    else None (a windowed [0, 1] image has lost its HU; without a spacing there are no mm).
    ``smoothed``: as for ``water_equivalent_diameter``."""
    if value_range != "hu" or spacing_mm is None:
        return None
    diameter = water_equivalent_diameter(image, spacing_mm, smoothed)
    return diameter if math.isfinite(diameter) else None


def size_adjusted_noise(noise_hu, diameter_mm):
    """noise_hu scaled to a patient of REFERENCE_DIAMETER_MM at the same flux: the SD falls by
    exp(mu_water x (D_w - reference) / 2). Numbers or arrays; NaN where either is NaN."""
    return noise_hu * np.exp(-MU_WATER_PER_MM * (np.asarray(diameter_mm) - REFERENCE_DIAMETER_MM) / 2.0)
