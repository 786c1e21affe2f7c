"""Write HU arrays as real CT DICOM: a single-frame series or one enhanced multi-frame file.

Used to build sample data, test studies and benchmark series from the CT sources. Stored
values are unsigned (HU + 1024) with RescaleIntercept -1024, as many scanners write them.
"""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import numpy as np
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.sequence import Sequence
from pydicom.uid import ExplicitVRLittleEndian, UID, generate_uid

CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2")
ENHANCED_CT_IMAGE_STORAGE = UID("1.2.840.10008.5.1.4.1.1.2.1")
INTERCEPT = -1024.0
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]


def _stored(hu: np.ndarray) -> np.ndarray:
    return np.clip(np.rint(hu - INTERCEPT), 0, 65535).astype(np.uint16)


def _base(sop_class: UID, rows: int, cols: int, spacing, thickness: float, study_uid: str, series_uid: str,
          description: str, patient_id: str) -> Dataset:
    meta = FileMetaDataset()
    meta.MediaStorageSOPClassUID = sop_class
    meta.MediaStorageSOPInstanceUID = generate_uid()
    meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds = Dataset()
    ds.file_meta = meta
    ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
    now = datetime.now()
    ds.StudyDate = ds.SeriesDate = now.strftime("%Y%m%d")
    ds.StudyTime = ds.SeriesTime = now.strftime("%H%M%S")
    ds.Modality, ds.Manufacturer = "CT", "clinreadnet"
    ds.PatientID, ds.PatientName = patient_id, patient_id
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.SeriesDescription, ds.SeriesNumber, ds.FrameOfReferenceUID = description, 1, generate_uid()
    ds.Rows, ds.Columns = rows, cols
    ds.PixelSpacing = [float(spacing[0]), float(spacing[1])]
    ds.SliceThickness = float(thickness)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.KVP = 120
    return ds


def write_series(
    hu: np.ndarray,
    out_dir: str | Path,
    *,
    spacing=(0.7, 0.7),
    thickness: float = 2.5,
    z0: float = 0.0,
    description: str = "CT",
    patient_id: str = "ANON",
    transfer_syntax: UID = ExplicitVRLittleEndian,
    names: list[str] | None = None,
) -> list[Path]:
    """One file per slice of ``hu`` (N, H, W), slice k at z = z0 + k * thickness. Returns the paths."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    study_uid, series_uid = generate_uid(), generate_uid()
    paths = []
    for k, image in enumerate(hu):
        ds = _base(CT_IMAGE_STORAGE, *image.shape, spacing, thickness, study_uid, series_uid, description, patient_id)
        ds.InstanceNumber = k + 1
        ds.ImageOrientationPatient = AXIAL
        ds.ImagePositionPatient = [0.0, 0.0, z0 + k * thickness]
        ds.SliceLocation = z0 + k * thickness
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.RescaleIntercept, ds.RescaleSlope, ds.RescaleType = INTERCEPT, 1.0, "HU"
        ds.PixelData = _stored(image).tobytes()
        if transfer_syntax != ExplicitVRLittleEndian:
            ds.compress(transfer_syntax)
        path = out_dir / (names[k] if names else f"IM{k + 1:04d}.dcm")
        ds.save_as(path, enforce_file_format=True)
        paths.append(path)
    return paths


def write_multiframe(
    hu: np.ndarray,
    path: str | Path,
    *,
    spacing=(0.7, 0.7),
    thickness: float = 2.5,
    z0: float = 0.0,
    description: str = "CT multi-frame",
    patient_id: str = "ANON",
    frame_order: list[int] | None = None,
) -> Path:
    """An Enhanced CT file holding every slice of ``hu`` as a frame, with per-frame plane positions.

    ``frame_order`` stores the slices in another order (frame i holds slice frame_order[i]).
    """
    order = list(range(len(hu))) if frame_order is None else frame_order
    ds = _base(ENHANCED_CT_IMAGE_STORAGE, *hu.shape[1:], spacing, thickness, generate_uid(), generate_uid(),
               description, patient_id)
    ds.NumberOfFrames = len(order)
    ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL", "NONE"]
    shared = Dataset()
    orientation, transform, measures = Dataset(), Dataset(), Dataset()
    orientation.ImageOrientationPatient = AXIAL
    transform.RescaleIntercept, transform.RescaleSlope, transform.RescaleType = INTERCEPT, 1.0, "HU"
    measures.PixelSpacing, measures.SliceThickness = [float(spacing[0]), float(spacing[1])], float(thickness)
    shared.PlaneOrientationSequence = Sequence([orientation])
    shared.PixelValueTransformationSequence = Sequence([transform])
    shared.PixelMeasuresSequence = Sequence([measures])
    ds.SharedFunctionalGroupsSequence = Sequence([shared])
    frames = []
    for k in order:
        position, frame = Dataset(), Dataset()
        position.ImagePositionPatient = [0.0, 0.0, z0 + k * thickness]
        frame.PlanePositionSequence = Sequence([position])
        frames.append(frame)
    ds.PerFrameFunctionalGroupsSequence = Sequence(frames)
    ds.PixelData = _stored(hu[order]).tobytes()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(path, enforce_file_format=True)
    return path
