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


def smoothed_hu(hu: np.ndarray) -> np.ndarray:
    """The 9 x 9 mean of a slice (float32) that ``tissue_mask(smooth=True)`` and the patient's outline
    (``patient_size``) threshold: ``decoding.prepare`` computes it once for both."""
    return box_mean(hu.astype(np.float32, copy=False), 9)


def box_mean(image: np.ndarray, size: int) -> np.ndarray:
    """The ``size`` x ``size`` mean of a 2-D float32 image, edges reflected as
    ``ndimage.uniform_filter(image, size)`` reflects them. The window's sum is taken whole, then
    divided once: on integer HU (the pixels of nearly every CT) the sum is exact in float32, so
    the mean is the exact mean rounded once, where ndimage rounds each pass's mean. Sums of
    2, 4, 8 ... neighbours are built by doubling, about three times faster than ndimage's
    running sums."""
    half = size // 2
    columns = _window_sums(np.pad(image, ((half, half), (0, 0)), mode="symmetric"), size, axis=0)
    sums = _window_sums(np.pad(columns, ((0, 0), (half, half)), mode="symmetric"), size, axis=1)
    sums /= np.float32(size * size)
    return sums


def _window_sums(padded: np.ndarray, size: int, axis: int) -> np.ndarray:
    """Sums of ``size`` consecutive elements along ``axis`` (float32): the sums of 2^k neighbours,
    each from two of the previous width, added up along the binary digits of ``size``."""
    count = padded.shape[axis] - size + 1

    def take(array, start, length):
        return array[(slice(None),) * axis + (slice(start, start + length),)]

    total, offset, width, sums = None, 0, 1, padded
    while True:
        if size & width:
            part = take(sums, offset, count)
            total = part.astype(np.float32) if total is None else total + part
            offset += width
        if 2 * width > size:
            return total
        pairs = sums.shape[axis] - width
        sums = take(sums, 0, pairs) + take(sums, width, pairs)
        width *= 2


def tissue_mask(hu: np.ndarray, smooth: bool = False, smoothed: np.ndarray | None = None) -> np.ndarray:
    """Soft tissue away from edges: -50..150 HU, eroded 3 pixels. ``smooth`` thresholds a 9 x 9
    mean instead of the pixels, so the mask of a noisy image (up to ~300 HU SD) is not riddled by
    its noise; ``smoothed``: that mean (``smoothed_hu``) where the caller has it already."""
    image = (smoothed_hu(hu) if smoothed is None else smoothed) if smooth else hu
    low, high = TISSUE_HU
    return erode_cross((image > low) & (image < high), 3)


def erode_cross(mask: np.ndarray, iterations: int) -> np.ndarray:
    """``ndimage.binary_erosion(mask, iterations=iterations)`` of a boolean mask (the 4-neighbour
    cross, nothing beyond the edges), as whole-array ANDs on the mask's bounding box instead of
    ndimage's pass per pixel."""
    out = np.zeros_like(mask, dtype=bool)
    box = bounding_box(mask, margin=0)
    if box is None:
        return out
    padded = np.pad(mask[box], 1)  # the pixels beyond the box, and beyond the image's edges, are outside
    inner = padded[1:-1, 1:-1]
    for _ in range(iterations):
        inner &= (padded[:-2, 1:-1] & padded[2:, 1:-1]) & (padded[1:-1, :-2] & padded[1:-1, 2:])
    out[box] = inner
    return out


def bounding_box(mask: np.ndarray, margin: int) -> tuple[slice, slice] | None:
    """The (rows, columns) slices of the smallest box holding every True pixel of a 2-D mask,
    grown by ``margin`` pixels within the image; None for an empty mask."""
    rows, columns = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return None
    return (slice(max(rows[0] - margin, 0), rows[-1] + margin + 1),
            slice(max(columns[0] - margin, 0), columns[-1] + margin + 1))


def noise_sd_hu(image_hu: np.ndarray, mask: np.ndarray) -> float:
    """Robust noise SD inside ``mask`` (NaN if it holds fewer than MIN_TISSUE_PIXELS pixels)."""
    if np.count_nonzero(mask) < MIN_TISSUE_PIXELS:
        return float("nan")
    image = image_hu.astype(np.float32, copy=False)
    # The 5 x 5 mean only on the mask's box and the 2 pixels around it: the same sums, though
    # ndimage's running mean (float64) then starts at the box's edge instead of the image's, which
    # could move a mean by a float32 rounding step (it moved none on the CT sources)
    box = bounding_box(mask, margin=2)
    inside, region = mask[box], image[box]
    residual = (region[inside] - box_mean(region, 5)[inside]).astype(np.float64)
    residual -= median(residual)
    return float(MAD_TO_SD * median(np.abs(residual, out=residual)))


def median(values: np.ndarray) -> float:
    """``np.median`` of a 1-D float array, partitioning the array in place instead of a copy, around
    one element (numpy's vectorised path; two elements or more take its far slower one)."""
    if np.isnan(values.max()):
        return float("nan")
    half = values.size // 2
    values.partition(half)
    return values[half] if values.size % 2 else (values[:half].max() + values[half]) / 2


def measure_noise(image: np.ndarray, value_range: str, smoothed: np.ndarray | None = None) -> NoiseFigure:
    """The noise figure of one slice as read (HU), or None with the reason it cannot be measured;
    ``smoothed``: its ``smoothed_hu``, where the caller has it already."""
    if value_range != "hu":
        return NoiseFigure(None, "not in HU")
    hu = np.asarray(image, dtype=np.float32)
    if not np.isfinite(hu).all():
        return NoiseFigure(None, "non-finite pixels")
    value = noise_sd_hu(hu, tissue_mask(hu, smooth=True, smoothed=smoothed))
    if not np.isfinite(value):
        return NoiseFigure(None, f"fewer than {MIN_TISSUE_PIXELS} soft-tissue pixels")
    return NoiseFigure(value)
