"""NIfTI, MHA/MHD and NRRD through SimpleITK: 3-D volumes slice by slice along the axial axis, 2-D images as one slice."""

from __future__ import annotations

import gzip
import threading
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from ..preprocess import ValueRange
from .limits import DEFAULT_LIMITS, Limits, regular_file_problem
from .types import InputError, Series, SliceRef

if TYPE_CHECKING:
    import SimpleITK as sitk

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
NIFTI_HEADER_BYTES = 348
NIFTI_FLOAT_TYPES = {16: "f4", 64: "f8"}  # NIfTI datatype codes of float32 / float64
HEADER_READ_BYTES = 65536  # MetaImage / NRRD text headers are far shorter


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
        import SimpleITK as sitk

        try:
            image = sitk.ReadImage(str(self.path))
            damaged = _nifti_non_finite(self.path, image)
            if image.GetDimension() == 3:
                # Axial slices in radiological layout: index axes -> patient L, P, S; no resampling.
                image = sitk.DICOMOrient(image, "LPS")
                damaged = sitk.DICOMOrient(damaged, "LPS") if damaged is not None else None
            array = sitk.GetArrayFromImage(image)  # (z, y, x) or (y, x)
        except RuntimeError as exc:
            raise InputError(self.path, f"cannot read image data ({str(exc).strip().splitlines()[-1]})") from None
        if damaged is not None:  # put back the NaNs the NIfTI reader turned into zeros
            array = array.astype(np.float32, copy=False)
            array[sitk.GetArrayFromImage(damaged).astype(bool)] = np.nan
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


def _nifti_non_finite(path: Path, image: sitk.Image) -> sitk.Image | None:
    """A mask of the voxels a float NIfTI file stores as NaN or inf (in ``image``'s geometry), or None.

    SimpleITK's NIfTI reader gives those voxels as 0, which would be scored as water; the raw
    voxels are read again here (float files only) so that they are refused like any NaN.
    """
    import SimpleITK as sitk

    name = path.name.lower()
    if not name.endswith((".nii", ".nii.gz")):
        return None
    with (gzip.open(path, "rb") if name.endswith(".gz") else open(path, "rb")) as f:
        header = f.read(NIFTI_HEADER_BYTES)
        order = "<" if int.from_bytes(header[:4], "little") == NIFTI_HEADER_BYTES else ">"
        datatype = int(np.frombuffer(header[70:72], f"{order}i2")[0])
        if datatype not in NIFTI_FLOAT_TYPES:
            return None
        offset = int(np.frombuffer(header[108:112], f"{order}f4")[0])
        f.read(max(0, offset - NIFTI_HEADER_BYTES))
        dtype = np.dtype(NIFTI_FLOAT_TYPES[datatype]).newbyteorder(order)
        expected = int(np.prod(image.GetSize()))
        voxels = np.frombuffer(f.read(expected * dtype.itemsize), dtype)  # never more than declared
    if voxels.size < expected:
        return None  # the size check has refused a short file already
    bad = ~np.isfinite(voxels)
    if not bad.any():
        return None
    mask = sitk.GetImageFromArray(bad.reshape(image.GetSize()[::-1]).astype(np.uint8))
    mask.CopyInformation(image)
    return mask


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def volume_series(path: Path, value_range: ValueRange, limits: Limits = DEFAULT_LIMITS) -> Series:
    import SimpleITK as sitk  # here, not at the top: its import costs every start-up ~0.1 s, volumes or not

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
        n_slices, rows, columns = 1, size[1], size[0]
        row_col_spacing = (spacing[1], spacing[0])
    elif dim == 3:
        # The index axis closest to patient S-I holds the axial slices (DICOMOrient puts it last);
        # those closest to P and L become the rows and columns.
        direction = np.abs(np.asarray(reader.GetDirection()).reshape(3, 3))
        axis_s, axis_p, axis_l = (int(np.argmax(direction[k])) for k in (2, 1, 0))
        if len({axis_s, axis_p, axis_l}) != 3:
            raise InputError(path, f"degenerate orientation {reader.GetDirection()}: cannot tell the axial slices")
        n_slices, rows, columns = size[axis_s], size[axis_p], size[axis_l]
        row_col_spacing = (spacing[axis_p], spacing[axis_l])
    else:
        raise InputError(path, f"{dim}-D image; expected a 2-D slice or a 3-D volume")
    bytes_per_voxel = sitk.Image([1] * dim, reader.GetPixelID()).GetSizeOfPixelComponent()
    limits.check_volume(path, rows, columns, n_slices, bytes_per_voxel)
    problem = stored_size_problem(path, int(np.prod(size, dtype=np.int64)) * bytes_per_voxel)
    if problem:
        raise InputError(path, problem)
    volume = _Volume(path, n_slices)
    series = Series(label=path.name, series_uid=None, patient_id=_stem(path))
    series.slices = [
        SliceRef(path=path, index=k, value_range=value_range, decode=lambda k=k: volume.slice(k),
                 pixel_spacing_mm=(float(row_col_spacing[0]), float(row_col_spacing[1])))
        for k in range(n_slices)
    ]
    return series


def stored_size_problem(path: Path, declared: int) -> str | None:
    """Why the file cannot hold the ``declared`` bytes of voxels it promises, or None.

    Checked before reading, so that a truncated file is refused instead of read as zeros, and a
    header pointing at a device (/dev/zero) or a FIFO is never opened.
    """
    name = path.name.lower()
    if name.endswith(".nii"):
        held = path.stat().st_size - NIFTI_HEADER_BYTES
    elif name.endswith(".nii.gz"):
        with open(path, "rb") as f:  # gzip's trailer holds the inflated size mod 2^32
            f.seek(-4, 2)
            held = int.from_bytes(f.read(4), "little") - NIFTI_HEADER_BYTES
        if declared >= 2**32:
            return None
    elif name.endswith((".mha", ".mhd", ".nrrd", ".nhdr")):
        fields = _text_header(path)
        compressed = (fields.get("compresseddata", "false").lower() == "true"
                      or fields.get("encoding", "raw").lower() not in ("raw",))
        data_file = fields.get("elementdatafile") or fields.get("data file") or fields.get("datafile")
        if data_file is None or data_file.upper() == "LOCAL":
            held = path.stat().st_size - _header_bytes(path)
        elif data_file.upper().startswith("LIST") or "%" in data_file or " " in data_file.strip():
            return None  # slices spread over several files: each is checked as SimpleITK opens it
        else:
            data_path = path.parent / data_file
            problem = regular_file_problem(data_path)
            if problem:
                return f"its data file {data_path} is {problem}"
            held = data_path.stat().st_size
        if compressed:
            return None
    else:
        return None
    if held < declared:
        return (f"declares {declared:,} bytes of voxels but holds {max(held, 0):,}: "
                "truncated file or wrong dimensions in its header")
    return None


def _text_header(path: Path) -> dict[str, str]:
    """Key/value lines of a MetaImage or NRRD header (keys lower-cased), up to the data."""
    fields: dict[str, str] = {}
    with open(path, "rb") as f:
        for raw in f.read(HEADER_READ_BYTES).split(b"\n"):
            line = raw.decode("latin-1").strip()
            if not line and fields:
                break  # NRRD: a blank line ends the header
            key, sep, value = line.partition(":" if ":" in line and "=" not in line else "=")
            if sep:
                fields[key.strip().lower()] = value.strip()
            if key.strip().lower() == "elementdatafile":
                break  # MetaImage: the last header line
    return fields


def _header_bytes(path: Path) -> int:
    """Bytes before the voxels of a single-file MetaImage / NRRD (the header and its end of line)."""
    with open(path, "rb") as f:
        head = f.read(HEADER_READ_BYTES)
    for marker in (b"ElementDataFile = LOCAL", b"ElementDataFile=LOCAL", b"\n\n"):
        at = head.find(marker)
        if at >= 0:
            end = head.find(b"\n", at + len(marker) - 1)
            return end + 1 if end >= 0 else len(head)
    return 0

