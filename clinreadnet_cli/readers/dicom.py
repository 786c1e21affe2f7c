"""DICOM: single-frame series, multi-frame / enhanced CT, compressed transfer syntaxes (pydicom + pylibjpeg).

Headers are read once at discovery (no pixel data); each slice's pixels are decoded only
when the scoring workflow asks for that slice, one frame at a time.
"""

from __future__ import annotations

import warnings
from collections import defaultdict
from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import numpy as np
import pydicom
import pydicom.multival
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError
from pydicom.pixels import pixel_array

from ..preprocess import ValueRange
from .limits import Limits
from .types import InputError, Series, SliceRef

MEDIA_DIRECTORY = "1.2.840.10008.1.3.10"  # DICOMDIR's SOP class
DEFLATED = "1.2.840.10008.1.2.1.99"  # Deflated Explicit VR Little Endian
SECONDARY_CAPTURE = "1.2.840.10008.5.1.4.1.1.7"  # and its multi-frame variants (.7.1-.7.4)
# CT Image, Enhanced CT Image and Legacy Converted Enhanced CT Image Storage: objects that are an
# image by their SOP class, so one without its image is damaged, never paperwork.
CT_IMAGE_CLASSES = ("1.2.840.10008.5.1.4.1.1.2", "1.2.840.10008.5.1.4.1.1.2.1", "1.2.840.10008.5.1.4.1.1.2.2")
GRAYSCALE = ("MONOCHROME1", "MONOCHROME2")
AXIAL_MIN_COSINE = 0.8  # slice normal within ~37 degrees of the patient's S-I axis: axial (gantry tilt included)


class NotDicom(Exception):
    """The file is not DICOM at all (as opposed to a broken DICOM file)."""


def read_header(path: Path) -> Dataset:
    """The dataset, its pixel data left unread (its length is known: ``pixel_data_length``).
    Raises NotDicom, or InputError for a damaged file."""
    with warnings.catch_warnings():  # damage shows up below as a missing SOP class
        warnings.simplefilter("ignore")
        try:
            ds = pydicom.dcmread(path, defer_size=1024)
        except InvalidDicomError:
            raise NotDicom(path) from None
        except Exception as exc:  # pydicom raises many types for damaged files
            raise InputError(path, f"damaged DICOM header ({type(exc).__name__}: {exc})") from None
    if not ds.file_meta.get("MediaStorageSOPClassUID", ds.get("SOPClassUID")):
        raise InputError(path, "damaged DICOM file: no SOP class in its header")
    return ds


def skip_reason(ds: Dataset, all_orientations: bool = False) -> str | None:
    """Why a readable DICOM object is not an axial CT slice to score, or None if it is one.

    What a study export holds beside its axial series (indexes, reports, other modalities, dose
    screens, scouts, reformats) is skipped with a note, not reported as an error.
    """
    sop_class = ds.file_meta.get("MediaStorageSOPClassUID", _safe(ds, "SOPClassUID"))
    if sop_class == MEDIA_DIRECTORY:
        return "DICOMDIR (a media index, not an image)"
    if ("Rows" not in ds or "Columns" not in ds) and str(sop_class) not in CT_IMAGE_CLASSES:
        name = getattr(sop_class, "name", sop_class) or "unknown SOP class"
        return f"no image data ({name})"  # a CT image without them is damaged: check_image says so
    modality = _safe(ds, "Modality")
    if modality and modality != "CT":
        return f"modality {modality}, not CT"
    if str(sop_class or "").startswith(SECONDARY_CAPTURE):
        return "secondary capture (a screen such as a dose report), not a CT slice"
    image_type = _safe(ds, "ImageType") or []
    if "LOCALIZER" in [str(t).upper() for t in (image_type if not isinstance(image_type, str) else [image_type])]:
        return "localizer (scout), not an axial slice"
    orientation = _numbers(_safe(ds, "ImageOrientationPatient"), 6) if "ImageOrientationPatient" in ds else None
    if orientation is not None and not all_orientations:
        normal = np.cross(orientation[:3], orientation[3:])
        if abs(normal[2]) < AXIAL_MIN_COSINE * np.linalg.norm(normal):
            plane = ("sagittal", "coronal")[int(abs(normal[1]) > abs(normal[0]))]
            return f"{plane} or oblique reformat, not axial (--all-orientations scores it)"
    return None


@dataclass
class DicomImage:
    """A CT image file checked at discovery: its header, frame count and where it sits in its series."""

    path: Path
    ds: Dataset
    frames: int
    position: float | None  # along the slice normal (single-frame files), mm
    instance: int | None
    frame_order: list[int]  # frames in anatomical order where the file gives every plane position
    series_uid: str | None
    label: str
    patient_id: str | None
    spacings: list[tuple[float, float] | None]  # per frame, in frame_order
    metas: list[dict]  # per frame, in frame_order: META_FIELDS


def check_image(path: Path, ds: Dataset, limits: Limits, warn: Callable[[str], None]) -> DicomImage:
    """Everything that can be checked before pixel data is read. Raises InputError.

    Geometry that cannot be parsed is a warning (the file falls back to file order), never an error.
    """
    if "Rows" not in ds or "Columns" not in ds or "PixelData" not in ds:
        missing = [k for k in ("Rows", "Columns", "PixelData") if k not in ds]
        raise InputError(path, f"damaged CT image: no {' or '.join(missing)} in a {_class_name(ds)} file (the file cut "
                               "short or garbled, or a transfer syntax that does not match its bytes)")
    samples = _whole(_safe(ds, "SamplesPerPixel") or 1)
    if samples != 1:
        raise InputError(path, f"{ds.get('SamplesPerPixel')!s} samples per pixel (colour image), not a grayscale CT slice")
    photometric = str(_safe(ds, "PhotometricInterpretation") or "").strip().upper()
    if photometric and photometric not in GRAYSCALE:
        raise InputError(path, f"PhotometricInterpretation {photometric} with one sample per pixel: the header "
                               "contradicts itself, its pixels cannot be trusted")
    rows, columns, bits = _whole(_safe(ds, "Rows")), _whole(_safe(ds, "Columns")), _whole(_safe(ds, "BitsAllocated") or 16)
    if rows is None or columns is None or bits not in (8, 16, 32):
        raise InputError(path, f"malformed image size: Rows {ds.get('Rows')!s}, Columns {ds.get('Columns')!s}, "
                               f"BitsAllocated {ds.get('BitsAllocated')!s}")
    frames = _whole(ds.get("NumberOfFrames", 1) or 1)
    if frames is None or frames < 1:
        raise InputError(path, f"NumberOfFrames {ds.get('NumberOfFrames')!s} is not a positive whole number")
    limits.check_slices(path, rows, columns, frames, bits / 8)
    syntax = ds.file_meta.get("TransferSyntaxUID")
    declared = rows * columns * frames * bits // 8
    if syntax is not None and not syntax.is_compressed and syntax != DEFLATED:
        if declared > path.stat().st_size:
            raise InputError(path, f"declares {frames} frame(s) of {rows} x {columns} x {bits} bits ({declared:,} "
                                   f"bytes) but the file holds {path.stat().st_size:,} bytes: truncated or wrong "
                                   "NumberOfFrames")
        held = pixel_data_length(ds)
        if held is not None and held not in (declared, declared + 1):  # + 1: a value of odd length is padded
            raise InputError(path, f"its PixelData holds {held:,} bytes where Rows x Columns x frames x "
                                   f"BitsAllocated ({rows} x {columns} x {frames} x {bits}) make {declared:,}: the "
                                   "header does not describe these pixels")
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame is not None and len(per_frame) < frames:
        raise InputError(path, f"{len(per_frame)} per-frame functional group(s) for {frames} frames")
    try:
        rescale(ds, 0 if frames > 1 else None)
    except ValueError as exc:
        raise InputError(path, str(exc)) from None
    if "RescaleIntercept" not in ds and per_frame is None and "SharedFunctionalGroupsSequence" not in ds:
        warn(f"{path}: no RescaleIntercept; stored values taken as HU (intercept 0)")
    position, frame_order = None, list(range(frames))
    if frames > 1:
        positions = [position_along_normal(*frame_geometry(ds, f)) for f in frame_order]
        if all(p is not None for p in positions):
            frame_order.sort(key=lambda f: positions[f])
    else:
        orientation, where = ds.get("ImageOrientationPatient"), ds.get("ImagePositionPatient")
        position = position_along_normal(orientation, where)
        if position is None and (orientation is not None or where is not None):
            warn(f"{path}: malformed ImageOrientationPatient/ImagePositionPatient; ordered by InstanceNumber, then file name")
    instance = _whole(ds.get("InstanceNumber")) if "InstanceNumber" in ds else None
    if instance is None and ds.get("InstanceNumber") not in (None, ""):
        warn(f"{path}: malformed InstanceNumber {ds.get('InstanceNumber')!s}; ordered by file name")
    uid = str(ds.get("SeriesInstanceUID", "") or "") or None
    label = _label(ds, path.name if frames > 1 else (path.parent.name or path.name))
    spacings = [pixel_spacing(ds, f if frames > 1 else None) for f in frame_order]
    shared = acquisition_meta(ds)
    if frames == 1:
        metas = [{**shared, "z_mm": _z(ds.get("ImagePositionPatient"))}]
    else:
        metas = [{**shared, "instance_number": f + 1, "z_mm": _z(frame_geometry(ds, f)[1])} for f in frame_order]
    return DicomImage(path, ds, frames, position, instance, frame_order, uid, label, _patient(ds), spacings, metas)


def pixel_data_length(ds: Dataset) -> int | None:
    """The stored length of native (uncompressed) PixelData, read from its element header, or None."""
    try:
        element = ds.get_item("PixelData", keep_deferred=True)  # its header only: the value stays on disk
    except Exception:
        return None
    length = getattr(element, "length", None)
    return length if isinstance(length, int) and length != 0xFFFFFFFF else None


def _class_name(ds: Dataset) -> str:
    sop_class = ds.file_meta.get("MediaStorageSOPClassUID", _safe(ds, "SOPClassUID"))
    return str(getattr(sop_class, "name", sop_class) or "CT image")


def acquisition_meta(ds: Dataset) -> dict:
    """The record fields a DICOM file gives (META_FIELDS but z); None where absent or malformed."""
    def text(keyword: str) -> str | None:
        value = _safe(ds, keyword)
        if value is None:
            return None
        value = "/".join(map(str, value)) if isinstance(value, (list, tuple, pydicom.multival.MultiValue)) else str(value)
        return value.strip() or None

    mas = _number(_safe(ds, "Exposure"))
    current, time_ms = _number(_safe(ds, "XRayTubeCurrent")), _number(_safe(ds, "ExposureTime"))
    if mas is None and current is not None and time_ms is not None:
        mas = current * time_ms / 1000.0
    instance = _whole(_safe(ds, "InstanceNumber"))
    return {"study_uid": text("StudyInstanceUID"), "sop_uid": text("SOPInstanceUID"), "instance_number": instance,
            "slice_thickness_mm": _number(_safe(ds, "SliceThickness")), "kvp": _number(_safe(ds, "KVP")), "mas": mas,
            "ctdivol_mgy": _number(_safe(ds, "CTDIvol")), "kernel": text("ConvolutionKernel"),
            "manufacturer": text("Manufacturer")}


def _safe(ds: Dataset, keyword: str):
    """An element's value, or None where it is absent or cannot be decoded (a malformed tag is no error)."""
    try:
        return ds.get(keyword)
    except Exception:
        return None


def _z(position) -> float | None:
    values = _numbers(position, 3) if position is not None else None
    return values[2] if values else None


def _whole(value) -> int | None:
    """An integer DICOM value, or None where it is malformed or not whole."""
    number = _number(value)
    return int(number) if number is not None and number == int(number) else None


def functional_groups(ds: Dataset, frame: int | None) -> list[Dataset]:
    """Where enhanced CT keeps per-frame attributes: the frame's own group, then the shared one."""
    groups = []
    if frame is not None and "PerFrameFunctionalGroupsSequence" in ds:
        groups.append(ds.PerFrameFunctionalGroupsSequence[frame])
    if "SharedFunctionalGroupsSequence" in ds:
        groups.append(ds.SharedFunctionalGroupsSequence[0])
    return groups


def rescale(ds: Dataset, frame: int | None = None) -> tuple[float, float]:
    """(slope, intercept): per-frame, then shared functional groups (enhanced CT), then the classic tags.

    A missing intercept is 0 (the stored values are HU; discovery warns); a slope that is not a
    finite number > 0, or an intercept that is not finite, is refused: no CT is stored that way.
    """
    source: Dataset = ds
    for group in functional_groups(ds, frame):
        transform = group.get("PixelValueTransformationSequence")
        if transform:
            source = transform[0]
            break
    slope, intercept = _number(source.get("RescaleSlope", 1.0)), _number(source.get("RescaleIntercept", 0.0))
    if slope is None or not slope > 0:
        raise ValueError(f"RescaleSlope {source.get('RescaleSlope')!s}: must be a finite number > 0")
    if intercept is None:
        raise ValueError(f"RescaleIntercept {source.get('RescaleIntercept')!s}: not a finite number")
    return slope, intercept


def _number(value) -> float | None:
    """A finite float from a DICOM value, or None (malformed, NaN, inf, multi-valued)."""
    try:
        number = float(value)
    except (TypeError, ValueError, OverflowError):
        return None
    return number if np.isfinite(number) else None


def _numbers(value, count: int) -> list[float] | None:
    """``count`` finite floats from a multi-valued DICOM element, or None where it is malformed."""
    try:
        numbers = [_number(v) for v in value]
    except TypeError:
        return None
    return numbers if len(numbers) == count and None not in numbers else None


def position_along_normal(orientation, position) -> float | None:
    """The slice's coordinate along the image-plane normal (mm), or None without (valid) geometry."""
    orientation = _numbers(orientation, 6) if orientation is not None else None
    position = _numbers(position, 3) if position is not None else None
    if orientation is None or position is None:
        return None
    normal = np.cross(np.asarray(orientation[:3]), np.asarray(orientation[3:]))
    return float(np.dot(normal, np.asarray(position)))


def frame_geometry(ds: Dataset, frame: int) -> tuple:
    """(orientation, position) of one frame of an enhanced multi-frame object."""
    def plane(attr: str, seq: str, item: Dataset | None):
        if item is not None and item.get(seq) and attr in item[seq][0]:
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
        slope, intercept = rescale(ds, frame)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            if ds.file_meta.get("TransferSyntaxUID") == DEFLATED:  # the whole dataset is deflated: no frame seeking
                stored = pixel_array(pydicom.dcmread(path), index=frame)
            else:
                stored = pixel_array(str(path), index=frame)
    except Exception as exc:
        raise InputError(path, f"cannot decode pixel data ({type(exc).__name__}: {exc})") from None
    if stored.ndim != 2:
        raise InputError(path, f"decoded pixel data has shape {stored.shape}, not a 2-D slice")
    hu = stored.astype(np.float32)
    if slope != 1.0:  # x 1 and + 0 change no value: passes saved on the common slice
        hu *= np.float32(slope)
    if intercept != 0.0:
        hu += np.float32(intercept)
    return hu


def pixel_spacing(ds: Dataset, frame: int | None) -> tuple[float, float] | None:
    """(row, column) spacing in mm: per-frame, then shared functional groups, then PixelSpacing.

    None where it is absent or malformed (not two positive numbers); nothing in scoring needs it.
    """
    spacing = ds.get("PixelSpacing")
    for group in functional_groups(ds, frame):
        measures = group.get("PixelMeasuresSequence")
        if measures and "PixelSpacing" in measures[0]:
            spacing = measures[0].PixelSpacing
            break
    values = _numbers(spacing, 2) if spacing is not None else None
    return (values[0], values[1]) if values and min(values) > 0 else None


def _label(ds: Dataset, fallback: str) -> str:
    description = str(ds.get("SeriesDescription", "") or "").strip()
    number = ds.get("SeriesNumber")
    parts = [description or fallback] + ([f"#{number}"] if number not in (None, "") else [])
    return " ".join(parts)


def _slice(image: DicomImage, frame_rank: int, index: int, value_range: ValueRange) -> SliceRef:
    """The ``frame_rank``-th frame (anatomical order) of ``image`` as slice ``index`` of its series."""
    frame = image.frame_order[frame_rank] if image.frames > 1 else None
    return SliceRef(path=image.path, index=index, value_range=value_range,
                    decode=lambda: load_hu(image.path, image.ds, frame), pixel_spacing_mm=image.spacings[frame_rank],
                    meta=image.metas[frame_rank])


def _patient(ds: Dataset) -> str | None:
    return str(ds.get("PatientID", "") or "").strip() or None


def dicom_series(images: list[DicomImage], value_range: ValueRange) -> list[Series]:
    """Group checked images into series: single-frame files by SeriesInstanceUID, ordered along the
    slice normal (then InstanceNumber, then file name); each multi-frame file as its own series."""
    singles: dict[str, list[DicomImage]] = defaultdict(list)
    out: list[Series] = []
    for image in images:
        if image.frames == 1:
            singles[image.series_uid or f"file:{image.path}"].append(image)
            continue
        series = Series(label=image.label, series_uid=image.series_uid, patient_id=image.patient_id)
        series.slices = [_slice(image, i, i, value_range) for i in range(image.frames)]
        out.append(series)
    for key, members in singles.items():
        members.sort(key=lambda m: (m.position is None, m.position or 0.0, m.instance is None, m.instance or 0,
                                    str(m.path)))
        first = members[0]
        series = Series(label=first.label, series_uid=None if key.startswith("file:") else key,
                        patient_id=first.patient_id)
        series.slices = [_slice(m, 0, i, value_range) for i, m in enumerate(members)]
        out.append(series)
    return out
