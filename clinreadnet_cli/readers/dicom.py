"""DICOM: single-frame series, multi-frame / enhanced CT, compressed transfer syntaxes (pydicom + pylibjpeg).

Headers are read once at discovery (no pixel data); each slice's pixels are decoded only
when the scoring workflow asks for that slice, one frame at a time.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from ..preprocess import ValueRange
from .types import InputError, Series, SliceRef

MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR's SOP class


class NotDicom(Exception):
    """The file is not DICOM at all (as opposed to a broken DICOM file)."""


def read_header(path: Path) -> Dataset:
    """The dataset without its pixel data. Raises NotDicom, or InputError for a damaged file."""
    with warnings.catch_warnings():  # damage shows up below as a missing SOP class
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            raise NotDicom(path) from None
        except Exception as exc:  # pydicom raises many types for damaged files
            raise InputError(path, f"damaged DICOM header ({type(exc).__name__}: {exc})") from None
    if not ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID")):
        raise InputError(path, "damaged DICOM file: no SOP class in its header")
    return ds


def skip_reason(ds: Dataset) -> str | None:
    """Why a readable DICOM object is not an image to score, or None if it is one."""
    sop_class = ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID"))
    if sop_class == MEDIA_DIRECTORY:
        return "DICOMDIR (a media index, not an image)"
    if "Rows" not in ds or "Columns" not in ds:
        name = getattr(sop_class, "name", sop_class) or "unknown SOP class"
        return f"no image data ({name})"
    return None


def check_ct_image(path: Path, ds: Dataset) -> None:
    modality = ds.get("Modality")
    if modality and modality != "CT":
        raise InputError(path, f"modality {modality}: clinreadnet scores CT images only")
    samples = int(ds.get("SamplesPerPixel", 1))
    if samples != 1:
        raise InputError(path, f"{samples} samples per pixel (colour image), not a grayscale CT slice")


def functional_groups(ds: Dataset, frame: int | None) -> list[Dataset]:
    """Where enhanced CT keeps per-frame attributes: the frame's own group, then the shared one."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    return groups


def rescale(ds: Dataset, frame: int | None = None) -> tuple[float, float]:
    """(slope, intercept): per-frame, then shared functional groups (enhanced CT), then the classic tags."""
    for group in functional_groups(ds, frame):
        transform = group.get("PixelValueTransformationSequence")
        if transform:
            return float(transform[0].RescaleSlope), float(transform[0].RescaleIntercept)
    return float(ds.get("RescaleSlope", 1.0)), float(ds.get("RescaleIntercept", 0.0))


def position_along_normal(orientation, position) -> float | None:
    """The slice's coordinate along the image-plane normal (mm), or None without geometry."""
    if orientation is None or position is None or len(orientation) != 6 or len(position) != 3:
        return None
    normal = np.cross(np.asarray(orientation[:3], float), np.asarray(orientation[3:], float))
    return float(np.dot(normal, np.asarray(position, float)))


def frame_geometry(ds: Dataset, frame: int) -> tuple:
    """(orientation, position) of one frame of an enhanced multi-frame object."""
    def plane(attr: str, seq: str, item: Dataset | None):
        if item is not None and seq in item and attr in item[seq][0]:
            return item[seq][0][attr].value
        return None

    per_frame = ds.PerFrameFunctionalGroupsSequence[frame] if "PerFrameFunctionalGroupsSequence" in ds else None
    shared = ds.SharedFunctionalGroupsSequence[0] if "SharedFunctionalGroupsSequence" in ds else None
    orientation = (plane("ImageOrientationPatient", "PlaneOrientationSequence", per_frame)
                   or plane("ImageOrientationPatient", "PlaneOrientationSequence", shared)
                   or ds.get("ImageOrientationPatient"))
    position = plane("ImagePositionPatient", "PlanePositionSequence", per_frame)
    return orientation, position


def load_hu(path: Path, ds: Dataset, frame: int | None) -> np.ndarray:
    """Decode one frame and apply HU = stored x slope + intercept."""
    try:
        stored = pixel_array(str(path), index=frame)
    except Exception as exc:
        raise InputError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc})") from None
    if stored.ndim != 2:
        raise InputError(path, f"decoded pixel data has shape {stored.shape}, not a 2-D slice")
    slope, intercept = rescale(ds, frame)
    return stored.astype(np.float32) * np.float32(slope) + np.float32(intercept)


def pixel_spacing(ds: Dataset, frame: int | None) -> tuple[float, float] | None:
    """(row, column) spacing in mm: per-frame, then shared functional groups, then PixelSpacing."""
    for group in functional_groups(ds, frame):
        measures = group.get("PixelMeasuresSequence")
        if measures and "PixelSpacing" in measures[0]:
            return float(measures[0].PixelSpacing[0]), float(measures[0].PixelSpacing[1])
    spacing = ds.get("PixelSpacing")
    return (float(spacing[0]), float(spacing[1])) if spacing and len(spacing) == 2 else None


def _label(ds: Dataset, fallback: str) -> str:
    description = str(ds.get("SeriesDescription", "") or "").strip()
    number = ds.get("SeriesNumber")
    parts = [description or fallback] + ([f"#{number}"] if number not in (None, "") else [])
    return " ".join(parts)


def _slice(path: Path, ds: Dataset, index: int, value_range: ValueRange, frame: int | None) -> SliceRef:
    return SliceRef(path=path, index=index, value_range=value_range, load=lambda: load_hu(path, ds, frame),
                    pixel_spacing_mm=pixel_spacing(ds, frame))


def _patient(ds: Dataset) -> str | None:
    return str(ds.get("PatientID", "") or "").strip() or None


def dicom_series(headers: list[tuple[Path, Dataset]], value_range: ValueRange) -> list[Series]:
    """Group headers into series: single-frame files by SeriesInstanceUID, ordered along the
    slice normal (then InstanceNumber); each multi-frame file as its own series, frames ordered
    by their plane positions where the file gives them."""
    singles: dict[str, list[tuple[Path, Dataset]]] = defaultdict(list)
    out: list[Series] = []
    for path, ds in headers:
        frames = int(ds.get("NumberOfFrames", 1) or 1)
        uid = str(ds.get("SeriesInstanceUID", "") or "") or None
        if frames == 1:
            singles[uid or f"file:{path}"].append((path, ds))
            continue
        order = list(range(frames))
        positions = [position_along_normal(*frame_geometry(ds, f)) for f in order]
        if all(p is not None for p in positions):
            order.sort(key=lambda f: positions[f])
        series = Series(label=_label(ds, path.name), series_uid=uid, patient_id=_patient(ds))
        series.slices = [_slice(path, ds, i, value_range, frame) for i, frame in enumerate(order)]
        out.append(series)
    for key, members in singles.items():
        def sort_key(item: tuple[Path, Dataset]):
            path, ds = item
            pos = position_along_normal(ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient"))
            return (pos is None, pos or 0.0, int(ds.get("InstanceNumber", 0) or 0), str(path))

        members.sort(key=sort_key)
        first_path, first = members[0]
        uid = None if key.startswith("file:") else key
        series = Series(label=_label(first, first_path.parent.name or first_path.name), series_uid=uid,
                        patient_id=_patient(first))
        series.slices = [_slice(path, ds, i, value_range, None) for i, (path, ds) in enumerate(members)]
        out.append(series)
    return out
