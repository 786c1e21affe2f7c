"""The one preprocessing path shared by ``score``, ``train`` and ``evaluate``.

slice (HU or already-windowed [0, 1]) -> intensity window -> clip to [0, 1] -> pad to square
-> the weights' input path (config ``input_path``) -> tensor (C, S, S), C = ``in_chans`` x
``sampling_grids``:

- ``decimate`` (weights v2): keep every s-th pixel, s = round(side / 256) (2 for 512², 1 for
  256²), then centre crop or pad to the input size. Sampling, unlike averaging, keeps the
  per-pixel FBP noise the score has to see. A matrix larger than 512² (the training data's) is
  first area-resampled to 512², so a 768² or 1024² reconstruction of the same field of view is
  read with the pixel size, and about the pixel noise, of a 512² one (sampled every third or
  fourth pixel instead, its finer pixels' higher noise lowered the score by up to 0.9).
- ``decimate-detail``: ``decimate`` plus a second channel, the native-resolution detail energy:
  the mean |pixel - diagonal neighbour| over each cell of s x s native pixels that sampling keeps
  one of (x 4, clipped to [0, 1]). Sampling alone drops the upper half of the native band, so a
  smooth kernel (e.g. Hann at half Nyquist) reads as a sharp, quiet image; the detail channel
  keeps what the kernel removed visible, as a magnitude a linear patch embedding can use (a
  signed difference is zero-mean noise that one has to square first).
- ``sampling_grids = 4`` (weights v3), on either decimate path: the slice is read through all four
  grids of the 2x sampling, offset by one native pixel, stacked on the channel axis (grid-major:
  C = 4 x ``in_chans``); the model scores each and averages their class probabilities. One grid
  reads a quarter of the pixels, so its score carries that grid's noise draw (0.07 points SD
  between grids on the held-out simulation); the average uses them all.
- ``decimate-stack``: the four grids of the 2x sampling as the four channels of one forward
  (in_chans 4): the patch embedding reads every native pixel of the central 448², so one forward
  sees all four noise draws that ``sampling_grids = 4`` scores one by one.
- ``crop``: a native-resolution centre crop (or pad).
- ``resize`` (weights v1): antialiased resize, which filters out most of the fine FBP noise.
"""

from __future__ import annotations

import functools

from typing import TYPE_CHECKING, Literal

import numpy as np

from .config import DECIMATE_PATHS, DETAIL_PATHS, STACK_PATHS, ClinReadNetConfig

if TYPE_CHECKING:
    import torch

# numpy only (torch just for v1's resize), so that decoding processes start without importing torch.

ValueRange = Literal["hu", "unit"]
DECIMATED_SIDE = 256  # a 512² slice is read every second pixel
LARGEST_SIDE = 512  # larger matrices are area-resampled to this first (the training data's matrix)
GRID_OFFSETS = ((0, 0), (0, 1), (1, 0), (1, 1))  # (down, right) in native pixels, first grid first
# Windowed [0, 1] inputs (dataset TIFFs, `simulate`'s output) are in the config's default window
UNIT_WINDOW = (ClinReadNetConfig.window_width, ClinReadNetConfig.window_level)
DETAIL_GAIN = 4.0  # scanner noise gives a detail energy of ~0.07 in window units: scaled to the image's range


def window_hu(hu: np.ndarray, width: float, level: float) -> np.ndarray:
    """Map HU through the window [level - width/2, level + width/2] onto [0, 1], clipped."""
    low = level - width / 2.0
    unit = hu.astype(np.float32, copy=False) - np.float32(low)
    unit /= np.float32(width)  # in place: one new array instead of three, the same float32 arithmetic
    return np.clip(unit, 0.0, 1.0, out=unit)


def unit_to_hu(unit: np.ndarray) -> np.ndarray:
    """Windowed [0, 1] values back to HU through ``UNIT_WINDOW`` (exact between its bounds)."""
    width, level = UNIT_WINDOW
    return unit * np.float32(width) + np.float32(level - width / 2.0)


def rewindow_unit(unit: np.ndarray, cfg: ClinReadNetConfig) -> np.ndarray:
    """Windowed [0, 1] values moved to the weights' window: exact for a window inside
    ``UNIT_WINDOW``, whose outside is all the clipping lost."""
    if (cfg.window_width, cfg.window_level) == UNIT_WINDOW:
        return unit
    return window_hu(unit_to_hu(unit), cfg.window_width, cfg.window_level)


def pad_to_square(image: np.ndarray) -> np.ndarray:
    """Centre a (..., H, W) image on a square canvas of zeros (the bottom of the window)."""
    h, w = image.shape[-2:]
    if h == w:
        return image
    size = max(h, w)
    top, left = (size - h) // 2, (size - w) // 2
    return np.pad(image, [(0, 0)] * (image.ndim - 2) + [(top, size - h - top), (left, size - w - left)])


def centre_crop_or_pad(image: np.ndarray, size: int) -> np.ndarray:
    """The central size x size of a square (..., N, N) image, zero-padded where N < size."""
    side = image.shape[-1]
    if side < size:
        before = (size - side) // 2
        return np.pad(image, [(0, 0)] * (image.ndim - 2) + [(before, size - side - before)] * 2)
    start = (side - size) // 2
    return image[..., start:start + size, start:start + size]


def decimation_step(side: int) -> int:
    return max(1, round(side / DECIMATED_SIDE))


@functools.lru_cache(maxsize=8)
def _area_weights(side: int, size: int) -> np.ndarray:
    """(size, side): row i holds the share of each input pixel in output pixel i (rows sum to 1).
    Cached: a series has one matrix size, and building the matrix costs more than applying it."""
    edges = np.linspace(0.0, side, size + 1)  # output pixel boundaries, in input pixels
    first, last = np.arange(side), np.arange(1, side + 1)
    overlap = np.clip(np.minimum(edges[1:, None], last) - np.maximum(edges[:-1, None], first), 0.0, None)
    weights = (overlap / overlap.sum(axis=1, keepdims=True)).astype(np.float32)
    weights.flags.writeable = False
    return weights


def area_resample(image: np.ndarray, size: int) -> np.ndarray:
    """A square (N, N) image resampled to (size, size) by area: each output pixel is the mean of
    the input area it covers (exact box filter, any ratio, both directions)."""
    side = image.shape[-1]
    if side == size:
        return image
    weights = _area_weights(side, size)
    return weights @ image.astype(np.float32, copy=False) @ weights.T


def sample_slice(image: np.ndarray, value_range: ValueRange, cfg: ClinReadNetConfig,
                 grid: int | None = None) -> np.ndarray:
    """A 2-D slice -> (C, S, S) float32 in [0, 1], numpy only: windowed, squared and sampled by the
    input path; S is the input size except on the ``resize`` path, whose resize is ``model_input``'s.
    ``grid``: on a decimate path, that one sampling grid alone (a training draw) instead of the
    config's ``sampling_grids`` (a stacked-grid path reads all four, always)."""
    if image.ndim != 2:
        raise ValueError(f"expected a 2-D slice, got shape {image.shape}")
    if value_range == "hu":
        unit = window_hu(image, cfg.window_width, cfg.window_level)
    else:
        unit = rewindow_unit(np.clip(image.astype(np.float32, copy=False), 0.0, 1.0), cfg)
    square = pad_to_square(unit)
    if cfg.input_path in DECIMATE_PATHS:
        if square.shape[-1] > LARGEST_SIDE:
            square = area_resample(square, LARGEST_SIDE)
        step = decimation_step(square.shape[-1])
        channels = []
        if cfg.input_path in STACK_PATHS:
            offsets = GRID_OFFSETS
        else:
            offsets = GRID_OFFSETS[:cfg.sampling_grids] if grid is None else GRID_OFFSETS[grid:grid + 1]
        for dy, dx in offsets:
            channels.append(grid_sample(square, dy, dx, step))
            if cfg.input_path in DETAIL_PATHS:
                channels.append(native_detail(grid_shifts(square, ((dy, dx),))[0], step))
        sampled = np.stack([centre_crop_or_pad(c, cfg.img_size) for c in channels])
    elif cfg.input_path == "crop":
        sampled = centre_crop_or_pad(square, cfg.img_size)[None]
    else:
        sampled = square[None]
    return np.ascontiguousarray(sampled, dtype=np.float32)


def grid_shifts(square: np.ndarray, offsets: tuple[tuple[int, int], ...]) -> list[np.ndarray]:
    """The square moved up and/or left by each (down, right) offset of GRID_OFFSETS (the far edge
    repeats), so that ``[::2, ::2]`` of each is one of the four 2x decimation grids; on a 256²
    slice (step 1) the grids are four crops one pixel apart, nearly the same pixels."""
    return [np.pad(square, ((0, dy), (0, dx)), mode="edge")[dy:, dx:] if dy or dx else square
            for dy, dx in offsets]


def grid_sample(square: np.ndarray, dy: int, dx: int, step: int) -> np.ndarray:
    """``[::step, ::step]`` of the square moved as ``grid_shifts`` moves it: a view of the square
    where the whole grid lies inside it (a 512² slice), with no copy of the image per grid."""
    sampled = square[dy::step, dx::step]
    if sampled.shape == square[::step, ::step].shape:
        return sampled
    return grid_shifts(square, ((dy, dx),))[0][::step, ::step]  # its last row or column repeats the edge


def native_detail(square: np.ndarray, step: int) -> np.ndarray:
    """DETAIL_GAIN x the mean |pixel - diagonal neighbour| over each step x step cell (the grid that
    ``square[::step, ::step]`` samples; the last row and column repeat their neighbours), clipped
    to [0, 1]."""
    neighbour = np.pad(square[1:, 1:], ((0, 1), (0, 1)), mode="edge")
    difference = np.abs(square - neighbour)
    cells = -(-square.shape[-1] // step)
    extra = cells * step - square.shape[-1]
    difference = np.pad(difference, ((0, extra), (0, extra)), mode="edge")
    energy = difference.reshape(cells, step, cells, step).mean(axis=(1, 3))
    return np.clip(DETAIL_GAIN * energy, 0.0, 1.0)


def model_input(sampled: np.ndarray, cfg: ClinReadNetConfig) -> "torch.Tensor":
    """``sample_slice``'s output as the network's (C, S, S) input tensor (the ``resize`` path resizes here)."""
    import torch
    import torch.nn.functional as F

    tensor = torch.from_numpy(sampled)
    if tensor.shape[-1] != cfg.img_size:
        tensor = F.interpolate(tensor[None], size=(cfg.img_size, cfg.img_size), mode="bilinear", antialias=True,
                               align_corners=False)[0].clamp_(0.0, 1.0)
    return tensor


def prepare_slice(image: np.ndarray, value_range: ValueRange, cfg: ClinReadNetConfig,
                  grid: int | None = None) -> "torch.Tensor":
    """A 2-D slice -> the network's (C, S, S) float32 input in [0, 1] (``grid``: see ``sample_slice``)."""
    return model_input(sample_slice(image, value_range, cfg, grid), cfg)
