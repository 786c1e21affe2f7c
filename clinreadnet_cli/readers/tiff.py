"""TIFF (single and multi-page) through tifffile.

Float pages in [0, 1] are taken as already windowed (the LDCTIQAG2023 convention); integer
TIFFs have no agreed meaning, so the user states it with ``--input-range hu|unit``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import tifffile

from .limits import DEFAULT_LIMITS, Limits
from .types import InputError, Series, SliceRef

TIFF_SUFFIXES = (".tif", ".tiff")
UNIT_TOLERANCE = 1e-3  # float rounding around 0 and 1


def _load_page(path: Path, page: int, input_range: str) -> np.ndarray:
    try:
        data = tifffile.imread(path, key=page)
    except Exception as exc:
        raise InputError(path, f"cannot read TIFF page {page} ({type(exc).__name__}: {exc})") from None
    if data.ndim != 2:
        raise InputError(path, f"TIFF page {page} has shape {data.shape}, not a 2-D grayscale slice")
    if np.issubdtype(data.dtype, np.floating):
        if input_range == "auto":
            low, high = float(np.nanmin(data)), float(np.nanmax(data))
            if low < -UNIT_TOLERANCE or high > 1 + UNIT_TOLERANCE:
                raise InputError(path, f"float TIFF values span [{low:g}, {high:g}], not [0, 1]; "
                                       "pass --input-range hu if they are Hounsfield units")
        return data.astype(np.float32)
    if input_range == "unit":  # integers scaled by their type's full range
        return data.astype(np.float32) / np.float32(np.iinfo(data.dtype).max)
    return data.astype(np.float32)


def tiff_series(path: Path, input_range: str, limits: Limits = DEFAULT_LIMITS) -> Series:
    try:
        with tifffile.TiffFile(path) as tif:
            pages, offsets = [], set()
            for page in tif.pages:
                if page.offset in offsets:
                    raise InputError(path, f"damaged TIFF: its chain of pages loops back to offset {page.offset}")
                if len(pages) == limits.max_slices:
                    raise InputError(path, f"more than {limits.max_slices} TIFF pages (--limit max_slices=N)")
                offsets.add(page.offset)
                pages.append((page.shape, page.dtype, page.samplesperpixel))
    except InputError:
        raise
    except Exception as exc:
        raise InputError(path, f"not a readable TIFF ({type(exc).__name__}: {exc})") from None
    if not pages:
        raise InputError(path, "TIFF holds no pages")
    shape, dtype, samples = pages[0]
    if samples != 1 or len(shape) != 2:
        raise InputError(path, f"TIFF pages of shape {shape} ({samples} samples per pixel): not a grayscale slice")
    for page_shape, *_ in pages:
        if len(page_shape) != 2:
            raise InputError(path, f"a TIFF page of shape {page_shape}: not a grayscale slice")
        limits.check_slices(path, page_shape[0], page_shape[1], len(pages), np.dtype(dtype).itemsize)
    is_float = np.issubdtype(dtype, np.floating)
    if not is_float and input_range == "auto":
        raise InputError(path, f"integer TIFF ({dtype}): say what its values are with --input-range hu or unit")
    value_range = "hu" if input_range == "hu" else "unit"
    series = Series(label=path.name, series_uid=None)
    series.slices = [
        SliceRef(path=path, index=k, value_range=value_range, decode=lambda k=k: _load_page(path, k, input_range))
        for k in range(len(pages))
    ]
    return series
