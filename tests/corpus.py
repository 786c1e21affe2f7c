"""A small, seeded corpus of valid, damaged, hostile and odd inputs, and what `score` must make of each.

``build_corpus(root)`` writes it and returns the expectations: how many slices each valid file
gives, which files must each give exactly one error record (with a word its reason must hold),
and which are skipped with a note. Every category of issue 15 has at least one member.
"""

from __future__ import annotations

import gzip
import os
import struct
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
import SimpleITK as sitk
import tifffile
from pydicom.dataset import Dataset
from pydicom.sequence import Sequence
from pydicom.uid import DeflatedExplicitVRLittleEndian, JPEG2000Lossless

from clinreadnet_cli.dicom_export import write_multiframe, write_series

from .conftest import ct_phantom, unit_phantom


@dataclass
class Expected:
    scored: dict[str, int] = field(default_factory=dict)  # file -> slices scored
    errors: dict[str, str] = field(default_factory=dict)  # file -> a word of the error's reason
    partly: dict[str, tuple[int, str]] = field(default_factory=dict)  # file -> (slices scored, word of one slice's error)
    either: set[str] = field(default_factory=set)  # may be scored or refused, but never dropped or crash
    skipped: set[str] = field(default_factory=set)  # noted on stderr, no record


def _dicom_variant(good: Path, out: Path, change) -> None:
    ds = pydicom.dcmread(good)
    change(ds)
    ds.save_as(out, enforce_file_format=True)


def _patch(path: Path, old: bytes, new: bytes) -> None:
    """Replace bytes in a written file (values pydicom would refuse to write)."""
    data = path.read_bytes()
    assert data.count(old) == 1 and len(old) == len(new)
    path.write_bytes(data.replace(old, new))


def _nifti(path: Path, volume: np.ndarray) -> None:
    sitk.WriteImage(sitk.GetImageFromArray(volume), str(path))


def build_corpus(root: Path, seed: int = 0) -> Expected:
    rng = np.random.default_rng(seed)
    exp = Expected()
    good, bad, odd = root / "good", root / "bad", root / "odd"
    for folder in (good, bad, odd):
        folder.mkdir(parents=True)
    hu = ct_phantom(4, 96, seed=seed)

    # --- valid inputs ---------------------------------------------------------------------------
    series = write_series(hu[:3], good / "series")
    exp.scored.update({str(p): 1 for p in series})
    exp.scored[str(write_multiframe(hu, good / "multiframe.dcm"))] = 4
    _nifti(good / "vol.nii.gz", hu[:3].astype(np.int16))
    exp.scored[str(good / "vol.nii.gz")] = 3
    _nifti(good / "vol.mha", hu[:2].astype(np.int16))
    exp.scored[str(good / "vol.mha")] = 2
    tifffile.imwrite(good / "slice.tif", unit_phantom(1, 96, seed=seed)[0])
    exp.scored[str(good / "slice.tif")] = 1
    one = write_series(hu[3:], good / "one", names=["one"])[0]  # the template of the DICOM variants below
    exp.scored[str(one)] = 1

    def deflate(ds: Dataset) -> None:
        ds.file_meta.TransferSyntaxUID = DeflatedExplicitVRLittleEndian
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()

    _dicom_variant(one, good / "deflated.dcm", deflate)
    exp.scored[str(good / "deflated.dcm")] = 1
    markup = good / "odd [" / "x] [bold]name.dcm"  # its path holds "[/x]": rich markup unless escaped
    markup.parent.mkdir()
    _dicom_variant(one, markup, lambda ds: setattr(ds, "SeriesInstanceUID", pydicom.uid.generate_uid()))
    exp.scored[str(markup)] = 1

    def signed_hu_without_intercept(ds: Dataset) -> None:
        del ds.RescaleIntercept
        ds.PixelRepresentation = 1
        ds.PixelData = np.rint(hu[3]).astype(np.int16).tobytes()
        ds.SeriesInstanceUID = pydicom.uid.generate_uid()

    _dicom_variant(one, good / "no-intercept.dcm", signed_hu_without_intercept)
    exp.scored[str(good / "no-intercept.dcm")] = 1
    geometry = write_series(hu[:2], good / "bad-geometry")
    _dicom_variant(geometry[0], geometry[0], lambda ds: setattr(ds, "ImagePositionPatient", [1.0, 2.0, 3.0]))
    _patch(geometry[0], b"1.0\\2.0\\3.0", b"a.b\\c.d\\e.f")  # DS values that are no numbers
    _dicom_variant(geometry[1], geometry[1], lambda ds: setattr(ds, "InstanceNumber", 77))
    _patch(geometry[1], b"\x20\x00\x13\x00IS\x02\x0077", b"\x20\x00\x13\x00IS\x02\x00x7")
    _dicom_variant(geometry[1], geometry[1], lambda ds: setattr(ds, "PixelSpacing", [0.0, 0.7]))
    exp.scored.update({str(p): 1 for p in geometry})

    # --- damaged DICOM: one error each ------------------------------------------------------------
    mutations = {
        "slope-nan.dcm": ("RescaleSlope", "nan", "RescaleSlope"),
        "slope-inf.dcm": ("RescaleSlope", "inf", "RescaleSlope"),
        "slope-zero.dcm": ("RescaleSlope", "0", "RescaleSlope"),
        "slope-negative.dcm": ("RescaleSlope", "-1", "RescaleSlope"),
        "intercept-nan.dcm": ("RescaleIntercept", "nan", "RescaleIntercept"),
        "frames-negative.dcm": ("NumberOfFrames", "-1", "NumberOfFrames"),
        "frames-100000.dcm": ("NumberOfFrames", "100000", "slices"),
        "frames-2-31.dcm": ("NumberOfFrames", str(2**31 - 1), "slices"),
        "frames-3-short.dcm": ("NumberOfFrames", "3", "truncated"),
        "rows-huge.dcm": ("Rows", 65535, "limit"),
        "one-by-n.dcm": ("Rows", 1, "aspect"),
    }
    for name, (keyword, value, word) in mutations.items():
        _dicom_variant(one, bad / name, lambda ds: setattr(ds, keyword, value))
        exp.errors[str(bad / name)] = word
    _dicom_variant(one, bad / "frames-text.dcm", lambda ds: setattr(ds, "NumberOfFrames", 123))
    _patch(bad / "frames-text.dcm", b"\x28\x00\x08\x00IS\x04\x00123 ", b"\x28\x00\x08\x00IS\x04\x00abc ")
    exp.errors[str(bad / "frames-text.dcm")] = "NumberOfFrames"
    pixels = {
        "random-bytes.dcm": (rng.integers(0, 65535, (96, 96)).astype(np.uint16), "structure"),
        "constant.dcm": (np.full((96, 96), 1064, np.uint16), "constant"),
        "no-air.dcm": (np.clip(np.rint(hu[3]), 0, None).astype(np.uint16) + 3000, "HU"),
    }
    for name, (stored, word) in pixels.items():
        _dicom_variant(one, bad / name, lambda ds: setattr(ds, "PixelData", stored.tobytes()))
        exp.errors[str(bad / name)] = word
    _dicom_variant(one, bad / "intercept-missing-unsigned.dcm", lambda ds: delattr(ds, "RescaleIntercept"))
    exp.errors[str(bad / "intercept-missing-unsigned.dcm")] = "air"
    enhanced = write_multiframe(hu, bad / "short-groups.dcm")
    _dicom_variant(enhanced, enhanced, lambda ds: setattr(
        ds, "PerFrameFunctionalGroupsSequence", Sequence(list(ds.PerFrameFunctionalGroupsSequence)[:2])))
    exp.errors[str(enhanced)] = "functional group"
    raw = one.read_bytes()
    (bad / "truncated.dcm").write_bytes(raw[: len(raw) - 5000])
    exp.errors[str(bad / "truncated.dcm")] = "truncated"
    (bad / "garbage-after-preamble.dcm").write_bytes(raw[:132] + rng.bytes(600))
    exp.errors[str(bad / "garbage-after-preamble.dcm")] = "DICOM"
    (bad / "empty.dcm").write_bytes(b"")
    exp.errors[str(bad / "empty.dcm")] = "empty"
    (bad / "random.bin").write_bytes(rng.bytes(4096))
    exp.errors[str(bad / "random.bin")] = "not a DICOM"
    # A CT image whose image cannot be read is damaged data, never paperwork skipped with a note.
    _dicom_variant(one, bad / "ct-no-rows.dcm", lambda ds: delattr(ds, "Rows"))
    exp.errors[str(bad / "ct-no-rows.dcm")] = "damaged CT image"
    (bad / "ct-big-endian-syntax.dcm").write_bytes(raw)  # big-endian transfer syntax over little-endian bytes
    _patch(bad / "ct-big-endian-syntax.dcm", b"1.2.840.10008.1.2.1\x00", b"1.2.840.10008.1.2.2\x00")
    exp.errors[str(bad / "ct-big-endian-syntax.dcm")] = "damaged CT image"
    at = raw.find(b"\x28\x00\x10\x00US")  # Rows: its tag and value bytes flipped
    (bad / "ct-header-flipped.dcm").write_bytes(raw[:at] + bytes(b ^ 0xFF for b in raw[at:at + 10]) + raw[at + 10:])
    exp.errors[str(bad / "ct-header-flipped.dcm")] = "damaged CT image"
    [j2k] = write_series(hu[3:], bad / "j2k", names=["cut"], transfer_syntax=JPEG2000Lossless)
    (bad / "ct-j2k-cut.dcm").write_bytes(j2k.read_bytes()[: j2k.stat().st_size * 6 // 10])
    j2k.unlink()
    j2k.parent.rmdir()
    exp.errors[str(bad / "ct-j2k-cut.dcm")] = "damaged CT image"
    # Headers that contradict the pixel data: refused, the pixels cannot be trusted.
    _dicom_variant(one, bad / "ct-bits8-over-16.dcm", lambda ds: ds.update({"BitsAllocated": 8, "BitsStored": 8,
                                                                            "HighBit": 7}))
    exp.errors[str(bad / "ct-bits8-over-16.dcm")] = "does not describe"
    _dicom_variant(one, bad / "ct-pixeldata-double.dcm", lambda ds: setattr(ds, "PixelData", ds.PixelData * 2))
    exp.errors[str(bad / "ct-pixeldata-double.dcm")] = "does not describe"
    _dicom_variant(one, bad / "ct-rgb-one-sample.dcm", lambda ds: setattr(ds, "PhotometricInterpretation", "RGB"))
    exp.errors[str(bad / "ct-rgb-one-sample.dcm")] = "PhotometricInterpretation"
    at = raw.find(b"\x08\x00\x3e\x10LO")  # SeriesDescription with a VR no standard knows
    (odd / "unknown-vr.dcm").write_bytes(raw[:at + 4] + b"ZZ" + raw[at + 6:])
    exp.either.add(str(odd / "unknown-vr.dcm"))

    # --- volumes ------------------------------------------------------------------------------------
    nan_slice = hu[:3].copy()
    nan_slice[1][hu[1] > 500] = np.nan  # one damaged slice among good ones
    _nifti(bad / "nan.nii.gz", nan_slice)
    exp.partly[str(bad / "nan.nii.gz")] = (2, "non-finite")
    _nifti(bad / "truncated.nii", hu[:3].astype(np.int16))
    data = (bad / "truncated.nii").read_bytes()
    (bad / "truncated.nii").write_bytes(data[: len(data) // 2])
    exp.errors[str(bad / "truncated.nii")] = "truncated"
    _nifti(bad / "whole.nii.gz", hu[:3].astype(np.int16))  # cut anywhere, a gzip volume gives no score
    whole = (bad / "whole.nii.gz").read_bytes()
    (bad / "whole.nii.gz").unlink()
    for share in (0.5, 0.84, 0.97, 0.999):
        name = f"cut-{share:g}.nii.gz"
        (bad / name).write_bytes(whole[: int(len(whole) * share)])
        exp.errors[str(bad / name)] = "gzip"
    _nifti(bad / "huge-header.nii", hu[:1].astype(np.int16))
    header = bytearray((bad / "huge-header.nii").read_bytes())
    header[40:48] = struct.pack("<4h", 3, 32767, 32767, 32767)
    (bad / "huge-header.nii").write_bytes(bytes(header))
    exp.errors[str(bad / "huge-header.nii")] = "limit"
    header[40:48] = struct.pack("<4h", 3, 2048, 2048, 1000)  # 8 GiB declared, a few bytes held
    (bad / "bomb.nii.gz").write_bytes(gzip.compress(bytes(header)))
    exp.errors[str(bad / "bomb.nii.gz")] = "MiB"
    mha_header = "ObjectType = Image\nNDims = 3\nDimSize = {}\nElementType = MET_SHORT\nElementDataFile = {}\n"
    (bad / "huge.mha").write_text(mha_header.format("100000 100000 100000", "LOCAL") + "\0" * 64)
    exp.errors[str(bad / "huge.mha")] = "limit"
    (bad / "zero.mhd").write_text(mha_header.format("512 512 100", "/dev/zero"))
    exp.errors[str(bad / "zero.mhd")] = "character device"
    (bad / "missing-data.mhd").write_text(mha_header.format("64 64 2", "nowhere.raw"))
    exp.errors[str(bad / "missing-data.mhd")] = "nowhere.raw"

    # --- TIFF ---------------------------------------------------------------------------------------
    tifffile.imwrite(bad / "nan.tif", np.where(unit_phantom(1, 64)[0] > 0.9, np.nan, 0.5).astype(np.float32))
    exp.errors[str(bad / "nan.tif")] = "non-finite"
    tifffile.imwrite(bad / "noise.tif", rng.random((96, 96), dtype=np.float32))
    exp.errors[str(bad / "noise.tif")] = "structure"
    tifffile.imwrite(bad / "line.tif", unit_phantom(1, 96)[0][:1])  # 1 x 96: padded to a square it would be 96²
    exp.errors[str(bad / "line.tif")] = "aspect"
    tifffile.imwrite(bad / "rgb.tif", rng.integers(0, 255, (32, 32, 3), dtype=np.uint8), photometric="rgb")
    exp.errors[str(bad / "rgb.tif")] = "grayscale"
    tifffile.imwrite(odd / "loop.tif", unit_phantom(1, 64)[0])
    loop = bytearray((odd / "loop.tif").read_bytes())
    first = struct.unpack("<I", loop[4:8])[0]
    entries = struct.unpack("<H", loop[first:first + 2])[0]
    loop[first + 2 + 12 * entries:first + 6 + 12 * entries] = struct.pack("<I", first)  # IFD 0 -> IFD 0
    (odd / "loop.tif").write_bytes(bytes(loop))
    exp.errors[str(odd / "loop.tif")] = "loops"

    # --- file system oddities -----------------------------------------------------------------------
    for name in ("fifo.tif", "fifo.nii"):
        os.mkfifo(odd / name)
        exp.skipped.add(str(odd / name))
    os.symlink(odd / "nowhere.dcm", odd / "dangling.dcm")
    exp.errors[str(odd / "dangling.dcm")] = "broken symbolic link"
    os.symlink(odd / "loop-b.dcm", odd / "loop-a.dcm")
    os.symlink(odd / "loop-a.dcm", odd / "loop-b.dcm")
    exp.errors.update({str(odd / "loop-a.dcm"): "loop", str(odd / "loop-b.dcm"): "loop"})
    (odd / "photo.png").write_bytes(b"\x89PNG\r\n\x1a\n")
    exp.errors[str(odd / "photo.png")] = "not a CT format"
    return exp
