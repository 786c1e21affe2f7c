"""What a decoded slice must look like to be scored: finite, not constant, an image, and in HU when it says so.

Damaged pixel data and non-CT content get a reason (and so an error record) instead of a score.
"""

from __future__ import annotations

import math

import numpy as np

# HU a CT slice can hold: air -1000, bone and metal up to a few thousand. Below the range are
# the padding values scanners put outside the reconstruction circle (-2048, -3024).
HU_PLAUSIBLE = (-1200.0, 4000.0)
HU_AIR = -400.0  # air or lung: every CT slice in HU has some (or padding below it)
MIN_PLAUSIBLE_SHARE = 0.5
# Neighbouring pixels of any image of anatomy are strongly correlated, even at 10 % dose; random
# bytes or pure noise are not.
MIN_NEIGHBOUR_CORRELATION = 0.15


def content_problem(image: np.ndarray, value_range: str) -> str | None:
    """Why a decoded slice cannot be scored, or None: non-finite, constant, structureless, not HU."""
    finite = np.isfinite(image)
    if not finite.all():
        return f"{image.size - int(finite.sum())} non-finite pixel(s) (NaN or inf): damaged pixel data"
    low, high = float(image.min()), float(image.max())
    if high - low < 1e-6 * max(1.0, abs(high)):
        return f"constant image (every pixel {low:g}): not a CT image"
    correlation = neighbour_correlation(image)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        return (f"no spatial structure (neighbouring pixels correlate r = {correlation:.2f}): "
                "noise or random bytes, not a CT image")
    if value_range != "hu":
        return None
    plausible = float(((image >= HU_PLAUSIBLE[0]) & (image <= HU_PLAUSIBLE[1])).mean())
    if plausible < MIN_PLAUSIBLE_SHARE:
        return (f"only {plausible:.0%} of pixels lie within {HU_PLAUSIBLE[0]:g}…{HU_PLAUSIBLE[1]:g} HU "
                f"(values span {low:g}…{high:g}): not CT in HU (wrong RescaleSlope/Intercept?)")
    if low > HU_AIR:
        return (f"no air in the slice (lowest value {low:g} HU > {HU_AIR:g}): "
                "values are not HU (missing RescaleIntercept?)")
    return None


def neighbour_correlation(image: np.ndarray) -> float:
    """Pearson correlation of horizontally and vertically adjacent pixels (on at most 256² of them)."""
    step = max(1, math.ceil(max(image.shape) / 256))
    x = image[::step, ::step].astype(np.float64)
    a = np.concatenate([x[:, :-1].ravel(), x[:-1, :].ravel()])
    b = np.concatenate([x[:, 1:].ravel(), x[1:, :].ravel()])
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])
