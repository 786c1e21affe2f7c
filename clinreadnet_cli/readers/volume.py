"""NIfTI, MHA/MHD and NRRD through SimpleITK: 3-D volumes slice by slice along the axial axis, 2-D images as one slice."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import SimpleITK as sitk

from ..preprocess import ValueRange
from .types import InputError, Series, SliceRef

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")


class _Volume:
    """Reads the image once, on the first slice asked for, and lets it go after the last one.

    The array is kept in the type SimpleITK gives it; each slice becomes float32 on its own.
    """

    def __init__(self, path: Path, n_slices: int):
        self.path = path
        self._remaining = n_slices
        self._array: np.ndarray | None = None
        self._lock = threading.Lock()

    def _read(self) -> np.ndarray:
        try:
            image = sitk.ReadImage(str(self.path))
            if image.GetDimension() == 3:
                # Axial slices in radiological layout: index axes -> patient L, P, S; no resampling.
                image = sitk.DICOMOrient(image, "LPS")
            array = sitk.GetArrayFromImage(image)  # (z, y, x) or (y, x)
        except RuntimeError as exc:
            raise InputError(self.path, f"cannot read image data ({str(exc).strip().splitlines()[-1]})") from None
        return array if array.ndim == 3 else array[None]

    def slice(self, index: int) -> np.ndarray:
        with self._lock:
            if self._array is None:
                self._array = self._read()
            out = self._array[index].astype(np.float32)
            self._remaining -= 1
            if self._remaining == 0:
                self._array = None
            return out


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def volume_series(path: Path, value_range: ValueRange) -> Series:
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError as exc:
        raise InputError(path, f"not a readable image ({str(exc).strip().splitlines()[-1]})") from None
    if reader.GetNumberOfComponents() != 1:
        raise InputError(path, f"{reader.GetNumberOfComponents()} components per pixel, not a grayscale CT image")
    size, dim, spacing = reader.GetSize(), reader.GetDimension(), reader.GetSpacing()
    if dim == 2:
        n_slices = 1
        row_col_spacing = (spacing[1], spacing[0])
    elif dim == 3:
        # The index axis closest to patient S-I holds the axial slices (DICOMOrient puts it last);
        # those closest to P and L become the rows and columns.
        direction = np.abs(np.asarray(reader.GetDirection()).reshape(3, 3))
        n_slices = size[int(np.argmax(direction[2]))]
        row_col_spacing = (spacing[int(np.argmax(direction[1]))], spacing[int(np.argmax(direction[0]))])
    else:
        raise InputError(path, f"{dim}-D image; expected a 2-D slice or a 3-D volume")
    volume = _Volume(path, n_slices)
    series = Series(label=path.name, series_uid=None, patient_id=_stem(path))
    series.slices = [
        SliceRef(path=path, index=k, value_range=value_range, load=lambda k=k: volume.slice(k),
                 pixel_spacing_mm=(float(row_col_spacing[0]), float(row_col_spacing[1])))
        for k in range(n_slices)
    ]
    return series
