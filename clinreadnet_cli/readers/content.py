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
    low, high = float(image.min()), float(image.max())  # NaN or inf where any pixel is: no isfinite pass
    if not (math.isfinite(low) and math.isfinite(high)):
        return f"{image.size - int(np.isfinite(image).sum())} non-finite pixel(s) (NaN or inf): damaged pixel data"
    if high - low < 1e-6 * max(1.0, abs(high)):
        return f"constant image (every pixel {low:g}): not a CT image"
    correlation = neighbour_correlation(image)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        return (f"no spatial structure (neighbouring pixels correlate r = {correlation:.2f}): "
                "noise or random bytes, not a CT image")
    if value_range != "hu":
        return None
    plausible = 1.0  # every pixel, when the extremes are (most slices): no count needed
    if low < HU_PLAUSIBLE[0] or high > HU_PLAUSIBLE[1]:
        plausible = np.count_nonzero((image >= HU_PLAUSIBLE[0]) & (image <= HU_PLAUSIBLE[1])) / image.size
    if plausible < MIN_PLAUSIBLE_SHARE:
        return (f"only {plausible:.0%} of pixels lie within {HU_PLAUSIBLE[0]:g}…{HU_PLAUSIBLE[1]:g} HU "
                f"(values span {low:g}…{high:g}): not CT in HU (wrong RescaleSlope/Intercept?)")
    if low > HU_AIR:
        return (f"no air in the slice (lowest value {low:g} HU > {HU_AIR:g}): "
                "values are not HU (missing RescaleIntercept?)")
    return None


def neighbour_correlation(image: np.ndarray) -> float:
    """Pearson correlation of horizontally and vertically adjacent pixels (on at most 256² of them).

    From sums over the sampled grid, without building the pairs: the pairs' first pixels are every
    pixel but the last (counted once per neighbour to its right and below), their second pixels
    every pixel but the first; 0 where either side is constant."""
    step = max(1, math.ceil(max(image.shape) / 256))
    x = image[::step, ::step].astype(np.float64)
    rows, columns = x.shape
    n = rows * (columns - 1) + (rows - 1) * columns
    flat = x.ravel()
    if n < 2 or np.ptp(flat[:-1]) == 0 or np.ptp(flat[1:]) == 0:
        return 0.0
    x -= flat.mean()  # centred, so that the sums of squares lose nothing to a large mean
    total, squares = flat.sum(), _dot(flat, flat)
    first, second = (x[:, -1], x[-1]), (x[:, 0], x[0])  # no neighbour to the right or below; to the left or above
    sum_a = 2 * total - sum(v.sum() for v in first)
    sum_b = 2 * total - sum(v.sum() for v in second)
    squares_a = 2 * squares - sum(_dot(v, v) for v in first)
    squares_b = 2 * squares - sum(_dot(v, v) for v in second)
    # Horizontal pairs: the flat image against itself shifted by one, less the pairs across row ends;
    # vertical pairs: shifted by a row
    products = _dot(flat[:-1], flat[1:]) - _dot(x[:-1, -1], x[1:, 0]) + _dot(flat[:-columns], flat[columns:])
    covariance = products / n - (sum_a / n) * (sum_b / n)
    variance_a, variance_b = squares_a / n - (sum_a / n) ** 2, squares_b / n - (sum_b / n) ** 2
    return float(np.clip(covariance / math.sqrt(variance_a * variance_b), -1.0, 1.0))


def _dot(a: np.ndarray, b: np.ndarray) -> float:
    """a . b of 1-D arrays without BLAS, whose threads cost more than the product on arrays this size."""
    return np.einsum("i,i->", a, b)
