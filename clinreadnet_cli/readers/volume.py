"""3-D volumes slice by slice along the axial axis, 2-D images as one slice: NIfTI through nibabel,
read one slice at a time (``indexed_gzip`` makes ``.nii.gz`` seekable), so that memory does not grow
with the volume; MHA/MHD and NRRD through SimpleITK, read whole on the first slice asked for."""

from __future__ import annotations

import gzip
import threading
import zlib
from pathlib import Path

import numpy as np

from ..preprocess import ValueRange
from .limits import DEFAULT_LIMITS, Limits, regular_file_problem
from .types import InputError, Series, SliceRef

VOLUME_SUFFIXES = (".nii", ".nii.gz", ".mha", ".mhd", ".nrrd", ".nhdr")
NIFTI_SUFFIXES = (".nii", ".nii.gz")
NIFTI_HEADER_BYTES = 348
HEADER_READ_BYTES = 65536  # MetaImage / NRRD text headers are far shorter
GZIP_CHECK_BLOCK = 1 << 24  # bytes inflated at a time while a .nii.gz is checked whole
GZIP_SLACK = 64 << 20  # inflated bytes tolerated past what the header declares (a gzip bomb stops here)


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


class _NiftiVolume:
    """A NIfTI volume in radiological layout (rows toward P, columns toward L, slices from I to S)
    without resampling, as ``_Volume`` gives the others, read through nibabel's array proxy.

    Where the axial axis is the file's last one (the usual layout: each slice contiguous on disk)
    one slice is read at a time, so memory holds a slice, not the volume. Otherwise the volume is
    read whole once (within ``max_volume_mib``), since each slice would cross the whole file. NaN
    and inf voxels stay what they are, so that the slice checks refuse them.
    """

    def __init__(self, path: Path, image, shape: tuple[int, int, int], axes: tuple[int, int, int],
                 flips: tuple[bool, bool, bool]):
        self.path, self.image, self.shape = path, image, shape
        self.axis_s, self.axis_p, self.axis_l = axes
        self.flip_s, self.flip_p, self.flip_l = flips
        self.n_slices = shape[self.axis_s]
        self.streamed = len(image.shape) == 3 and self.axis_s == 2
        self._remaining = self.n_slices
        self._whole: np.ndarray | None = None
        self._lock = threading.Lock()

    def _plane(self, k: int) -> np.ndarray:
        if self.image is None:  # asked again after the last slice let the file go
            self.image = _open_nifti(self.path)
        if self.streamed:
            return np.asarray(self.image.dataobj[:, :, k])
        if self._whole is None:
            self._whole = np.asarray(self.image.dataobj).reshape(self.shape)
        return np.take(self._whole, k, axis=self.axis_s)

    def slice(self, index: int) -> np.ndarray:
        k = self.n_slices - 1 - index if self.flip_s else index
        with self._lock:
            try:
                plane = self._plane(k)
            except (OSError, EOFError, ValueError, zlib.error) as exc:
                raise InputError(self.path, f"cannot read image data ({type(exc).__name__}: {exc})") from None
            self._remaining -= 1
            if self._remaining == 0:  # the last slice: let go of the file and of any whole copy
                self._whole = self.image = None
                self._remaining = self.n_slices
        in_plane = [axis for axis in range(3) if axis != self.axis_s]  # the plane's axes, in the file's order
        if in_plane.index(self.axis_p) != 0:
            plane = plane.T
        if self.flip_p:
            plane = plane[::-1]
        if self.flip_l:
            plane = plane[:, ::-1]
        return np.ascontiguousarray(plane, dtype=np.float32)


def _open_nifti(path: Path):
    """The NIfTI image, its voxels unread: one file handle, and for .nii.gz one gzip index
    (indexed_gzip), serve every slice."""
    import nibabel as nib  # here: only NIfTI inputs pay for its import

    return nib.load(str(path), keep_file_open=True, mmap=False)


def nifti_series(path: Path, value_range: ValueRange, limits: Limits) -> Series:
    """A NIfTI file's axial slices: its header checked, then its stored size (a ``.nii.gz`` read
    through once, so that a cut stream is refused before any slice is scored), no voxel kept."""
    import nibabel as nib

    gzipped = path.name.lower().endswith(".gz")
    try:
        image = _open_nifti(path)
        dtype = image.header.get_data_dtype()
        offset = int(image.dataobj.offset)
    except Exception as exc:  # nibabel raises many types for damaged headers
        if gzipped:  # a header the cut of its stream made unreadable: say that
            gzip_inflated_size(path, limits.max_volume_mib * 2**20 + GZIP_SLACK)
        raise InputError(path, f"not a readable NIfTI file ({type(exc).__name__}: {exc})") from None
    if len(dtype) or dtype.kind not in "iuf":  # structured (RGB) or complex voxels
        raise InputError(path, f"voxels of type {dtype}, not a grayscale CT image")
    shape = tuple(int(n) for n in image.shape)
    while len(shape) > 3 and shape[-1] == 1:
        shape = shape[:-1]
    shape = shape + (1,) if len(shape) == 2 else shape
    if len(shape) != 3:
        raise InputError(path, f"{len(shape)}-D image; expected a 2-D slice or a 3-D volume")
    orientation = nib.orientations.io_orientation(image.affine)  # per file axis: (R, A or S, direction)
    axis_toward = {int(world): axis for axis, (world, _) in enumerate(orientation) if not np.isnan(world)}
    if len(axis_toward) != 3:
        raise InputError(path, f"degenerate orientation (affine {image.affine.tolist()}): cannot tell the axial slices")
    axes = (axis_toward[2], axis_toward[1], axis_toward[0])  # the file's axes toward S, A and R
    heading = {axis: orientation[axis][1] for axis in range(3)}
    flips = (heading[axes[0]] < 0, heading[axes[1]] > 0, heading[axes[2]] > 0)  # I to S; toward P and L
    limits.check_volume(path, shape[axes[1]], shape[axes[2]], shape[axes[0]], dtype.itemsize)  # before inflating
    declared = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    # read through once before any slice: a cut or corrupt stream never gives a score
    inflated = gzip_inflated_size(path, offset + declared + GZIP_SLACK) if gzipped else None
    problem = stored_size_problem(path, declared, offset, inflated)
    if problem:
        raise InputError(path, problem)
    zooms = image.header.get_zooms()
    volume = _NiftiVolume(path, image, shape, axes, flips)
    return _series(path, value_range, volume.n_slices, volume.slice, (float(zooms[axes[1]]), float(zooms[axes[2]])))


def _series(path: Path, value_range: ValueRange, n_slices: int, read, spacing: tuple[float, float]) -> Series:
    series = Series(label=path.name, series_uid=None, patient_id=_stem(path))
    series.slices = [SliceRef(path=path, index=k, value_range=value_range, decode=lambda k=k: read(k),
                              pixel_spacing_mm=spacing) for k in range(n_slices)]
    return series


def _stem(path: Path) -> str:
    name = path.name
    return name[: -len(".nii.gz")] if name.lower().endswith(".nii.gz") else path.stem


def volume_series(path: Path, value_range: ValueRange, limits: Limits = DEFAULT_LIMITS) -> Series:
    if path.name.lower().endswith(NIFTI_SUFFIXES):
        return nifti_series(path, value_range, limits)
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
    return _series(path, value_range, n_slices, volume.slice, (float(row_col_spacing[0]), float(row_col_spacing[1])))


def gzip_inflated_size(path: Path, at_most: int) -> int:
    """The bytes a gzip file inflates to, read through once in blocks (memory stays flat). Raises
    InputError where the stream is not whole (cut before its end-of-stream marker, or corrupt) or
    inflates past ``at_most`` bytes."""
    inflated = 0
    try:
        with gzip.open(path, "rb") as f:
            while block := f.read(GZIP_CHECK_BLOCK):
                inflated += len(block)
                if inflated > at_most:
                    raise InputError(path, f"inflates past {at_most:,} bytes, more than its header and the "
                                           "volume limit allow")
    except EOFError:
        raise InputError(path, "the gzip stream ends before its end-of-stream marker: a truncated file") from None
    except (OSError, zlib.error) as exc:  # gzip.BadGzipFile among them: a bad CRC, a garbled block
        raise InputError(path, f"damaged gzip stream ({exc})") from None
    return inflated


def stored_size_problem(path: Path, declared: int, offset: int = NIFTI_HEADER_BYTES,
                        inflated: int | None = None) -> str | None:
    """Why the file cannot hold the ``declared`` bytes of voxels it promises (after ``offset`` bytes
    of NIfTI header; a ``.nii.gz`` by its ``inflated`` size), or None. Checked before reading, so
    that a truncated file is refused instead of read as zeros, and a header pointing at a device
    (/dev/zero) or a FIFO is never opened."""
    name = path.name.lower()
    if name.endswith(".nii"):
        held = path.stat().st_size - offset
    elif name.endswith(".nii.gz") and inflated is not None:
        held = inflated - offset
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

