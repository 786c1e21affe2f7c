"""What the readers hand to the scoring workflow: series of lazily decoded slices, and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..preprocess import ValueRange


class InputError(Exception):
    """An input that cannot be scored; the message is the reason, ``path`` the file."""

    def __init__(self, path: Path | str, reason: str):
        super().__init__(reason)
        self.path = Path(path)
        self.reason = reason

    def __str__(self) -> str:
        return f"{self.path}: {self.reason}"


@dataclass
class SliceRef:
    """One slice, decoded only when ``load()`` is called (in a worker thread)."""

    path: Path  # the file holding this slice
    index: int  # 0-based position in its series / volume
    value_range: ValueRange
    load: Callable[[], np.ndarray]  # -> 2-D float32 array (HU or [0, 1]); raises on bad data
    pixel_spacing_mm: tuple[float, float] | None = None  # (between rows, between columns), when known


@dataclass
class Series:
    """Slices scored and summarised together: a DICOM series, a volume, a multi-page TIFF."""

    label: str  # how a person recognises it: series description + UID, or the file
    series_uid: str | None
    patient_id: str | None = None
    slices: list[SliceRef] = field(default_factory=list)


@dataclass
class Discovery:
    series: list[Series] = field(default_factory=list)
    errors: list[InputError] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # inputs skipped on purpose (DICOMDIR, reports, ...)
