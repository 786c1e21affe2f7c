"""What the readers hand to the scoring workflow: series of lazily decoded slices, and errors."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from ..preprocess import ValueRange
from .content import content_problem


class InputError(Exception):
    """An input that cannot be scored: ``path`` the file, ``slice`` the slice where only one failed."""

    def __init__(self, path: Path | str, reason: str, slice: int | None = None):
        reason = " ".join(reason.split())  # one line, whatever a library's message held
        super().__init__(reason)
        self.path = path if isinstance(path, str) and "://" in path else Path(path)  # a URL stays whole
        self.reason = reason
        self.slice = slice

    def __reduce__(self):  # crosses process boundaries (decoding processes, Ray tasks) intact
        return (InputError, (self.path, self.reason, self.slice))

    def __str__(self) -> str:
        where = f" slice {self.slice}" if self.slice is not None else ""
        return f"{self.path}:{where}: {self.reason}" if where else f"{self.path}: {self.reason}"


# What a record says about where its slice comes from (DICOM; null where the file does not say).
META_FIELDS = ("study_uid", "sop_uid", "instance_number", "z_mm", "slice_thickness_mm", "kvp", "mas", "ctdivol_mgy",
               "kernel", "manufacturer")


@dataclass
class SliceRef:
    """One slice, decoded only when ``load()`` is called (in a worker thread)."""

    path: Path  # the file holding this slice
    index: int  # 0-based position in its series / volume
    value_range: ValueRange
    decode: Callable[[], np.ndarray]  # -> 2-D float32 array (HU or [0, 1]); raises InputError on bad data
    pixel_spacing_mm: tuple[float, float] | None = None  # (between rows, between columns), when known
    meta: dict = field(default_factory=dict)  # where it comes from: DICOM UIDs, position, acquisition (META_FIELDS)

    def load(self) -> np.ndarray:
        """The decoded slice, refused (InputError) when its content is damaged or not CT."""
        image = self.decode()
        problem = content_problem(image, self.value_range)
        if problem:
            raise InputError(self.path, problem, slice=self.index)
        return image


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
    warnings: list[str] = field(default_factory=list)  # inputs read with a fallback (file order, default intercept)
