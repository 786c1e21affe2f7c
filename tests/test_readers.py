from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
import tifffile
import torch
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import JPEG2000Lossless, RLELossless, generate_uid

from clinreadnet_cli.dicom_export import write_multiframe, write_series
from clinreadnet_cli.preprocess import pad_to_square, prepare_slice, window_hu
from clinreadnet_cli.readers import discover

from .conftest import ct_phantom, tiny_config, unit_phantom

SOURCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_sources"


@pytest.fixture(scope="module")
def hu() -> np.ndarray:
    """Six real CT slices (HU), cut to 96x96 around the centre to keep the files small."""
    source = SOURCES / "tcia-c4kc-kits_KiTS-00072.npz"
    if source.is_file():
        return np.load(source)["hu"][:6, 208:304, 208:304].astype(np.float32)
    return ct_phantom(6, 96)  # a checkout without ../shared


def loaded(series) -> np.ndarray:
    return np.stack([ref.load() for ref in series.slices])


def test_shuffled_series_comes_out_in_anatomical_order(tmp_path, hu):
    names = [f"{random.Random(k).getrandbits(40):x}" for k in range(len(hu))]  # no extension, random order
    write_series(hu, tmp_path, thickness=2.0, z0=-100.0, names=names)
    # Shuffle InstanceNumber too, so only the geometry can give the order.
    for path in tmp_path.iterdir():
        ds = pydicom.dcmread(path)
        ds.InstanceNumber = random.Random(str(path)).randint(1, 999)
        ds.save_as(path)
    found = discover([tmp_path])
    assert not found.errors and len(found.series) == 1
    np.testing.assert_array_equal(loaded(found.series[0]), hu)


def test_feet_first_orientation_sorts_along_the_normal(tmp_path, hu):
    paths = write_series(hu, tmp_path)
    for k, path in enumerate(paths):  # rows flipped: the normal points to -z, so larger z comes first
        ds = pydicom.dcmread(path)
        ds.ImageOrientationPatient = [1.0, 0.0, 0.0, 0.0, -1.0, 0.0]
        ds.save_as(path)
    np.testing.assert_array_equal(loaded(discover([tmp_path]).series[0]), hu[::-1])


@pytest.mark.parametrize("syntax", [JPEG2000Lossless, RLELossless])
def test_compressed_series_decode_to_the_uncompressed_hu(tmp_path, hu, syntax):
    write_series(hu, tmp_path / "plain")
    write_series(hu, tmp_path / "packed", transfer_syntax=syntax)
    assert pydicom.dcmread(next((tmp_path / "packed").iterdir())).file_meta.TransferSyntaxUID == syntax
    plain = loaded(discover([tmp_path / "plain"]).series[0])
    packed = loaded(discover([tmp_path / "packed"]).series[0])
    np.testing.assert_array_equal(packed, plain)
    np.testing.assert_array_equal(plain, hu)


def test_enhanced_multiframe_decodes_frames_in_plane_order(tmp_path, hu):
    write_multiframe(hu, tmp_path / "mf.dcm", frame_order=[3, 0, 5, 1, 4, 2])
    found = discover([tmp_path])
    assert not found.errors and len(found.series) == 1
    np.testing.assert_array_equal(loaded(found.series[0]), hu)


def test_pixel_spacing_and_patient_come_from_the_headers(tmp_path, hu):
    write_series(hu, tmp_path / "series", spacing=(0.6, 0.6), patient_id="P-7")
    write_multiframe(hu, tmp_path / "mf.dcm", spacing=(0.8, 0.8))
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((0.9, 0.7, 2.5))  # x (columns), y (rows), z
    sitk.WriteImage(image, str(tmp_path / "vol.nii.gz"))
    found = {s.label: s for s in discover([tmp_path]).series}
    spacings = {label: {ref.pixel_spacing_mm for ref in s.slices} for label, s in found.items()}
    series = next(s for s in found.values() if s.patient_id == "P-7")
    assert {ref.pixel_spacing_mm for ref in series.slices} == {(0.6, 0.6)}
    (nifti_spacing,) = spacings["vol.nii.gz"]  # NIfTI stores float32
    assert nifti_spacing == pytest.approx((0.7, 0.9)) and found["vol.nii.gz"].patient_id == "vol"
    assert {(0.8, 0.8)} in spacings.values()


def test_volumes_are_read_slice_by_slice(tmp_path, hu):
    image = sitk.GetImageFromArray(hu.astype(np.int16))
    image.SetSpacing((0.7, 0.7, 2.5))
    for name in ("vol.nii.gz", "vol.mha", "vol.nrrd"):
        sitk.WriteImage(image, str(tmp_path / name))
    sitk.WriteImage(image, str(tmp_path / "vol.mhd"))  # writes vol.raw beside it
    found = discover([tmp_path])
    assert not found.errors
    assert sorted(s.label for s in found.series) == ["vol.mha", "vol.mhd", "vol.nii.gz", "vol.nrrd"]
    for series in found.series:
        np.testing.assert_array_equal(loaded(series), hu)


def test_ras_nifti_is_reoriented_to_radiological_layout(tmp_path, hu):
    lps = sitk.GetImageFromArray(hu.astype(np.int16))
    ras = sitk.DICOMOrient(lps, "RAS")  # same anatomy, x and y axes reversed in the file
    sitk.WriteImage(ras, str(tmp_path / "ras.nii.gz"))
    np.testing.assert_array_equal(loaded(discover([tmp_path]).series[0]), hu)


@pytest.mark.parametrize("orientation", ["LPS", "RAS", "LAI", "SLP", "PIR"])
def test_nifti_reads_as_simpleitk_orients_it_in_any_layout(tmp_path, hu, orientation):
    """nibabel's slice-by-slice reading gives the slices, their order and their spacing that
    SimpleITK's whole-volume reading in radiological layout gives, whatever the file's axis order
    (the axial axis last, where slices are read one at a time, or not) and directions."""
    lps = sitk.GetImageFromArray(hu.astype(np.int16))
    lps.SetSpacing((0.7, 0.8, 2.5))
    stored = sitk.DICOMOrient(lps, orientation)
    sitk.WriteImage(stored, str(tmp_path / "v.nii.gz"))
    [series] = discover([tmp_path / "v.nii.gz"]).series
    expected = sitk.GetArrayFromImage(sitk.DICOMOrient(sitk.ReadImage(str(tmp_path / "v.nii.gz")), "LPS"))
    np.testing.assert_array_equal(loaded(series), expected)
    np.testing.assert_array_equal(loaded(series), hu)
    assert all(ref.pixel_spacing_mm == pytest.approx((0.8, 0.7)) for ref in series.slices)  # rows (P), columns (L)


def test_a_nifti_volume_is_never_held_whole(tmp_path):
    """Slices of a .nii.gz are read one at a time through a gzip index: reading every slice of a
    40 MiB volume allocates about one slice at a time, not the volume."""
    import tracemalloc

    import nibabel as nib

    volume = np.zeros((512, 512, 80), np.int16)
    volume[128:384, 128:384] = np.arange(80, dtype=np.int16)  # each slice its own value
    nib.save(nib.Nifti1Image(volume, np.diag([-0.7, -0.7, 2.5, 1.0])), str(tmp_path / "v.nii.gz"))
    [series] = discover([tmp_path / "v.nii.gz"]).series
    tracemalloc.start()
    try:
        values = [float(ref.decode()[256, 256]) for ref in series.slices]  # pixels as read, unchecked
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert values == list(range(80))
    assert peak < 8 * 2**20, peak  # the volume is 40 MiB; a slice in float32 1 MiB


def test_a_cut_gzip_volume_gives_no_slice(tmp_path):
    import nibabel as nib

    volume = np.random.default_rng(0).integers(-1000, 1000, (64, 64, 6)).astype(np.int16)
    nib.save(nib.Nifti1Image(volume, np.eye(4)), str(tmp_path / "v.nii.gz"))
    data = (tmp_path / "v.nii.gz").read_bytes()
    (tmp_path / "v.nii.gz").write_bytes(data[: len(data) - 3])  # the trailer's CRC and size half gone
    found = discover([tmp_path / "v.nii.gz"])
    assert not found.series and [e.reason for e in found.errors] == [
        "the gzip stream ends before its end-of-stream marker: a truncated file"]


def test_2d_image_is_one_slice(tmp_path, hu):
    sitk.WriteImage(sitk.GetImageFromArray(hu[0].astype(np.int16)), str(tmp_path / "one.mha"))
    series = discover([tmp_path]).series
    assert len(series[0].slices) == 1
    np.testing.assert_array_equal(series[0].slices[0].load(), hu[0])


def test_float_tiff_in_unit_range_passes_through_unwindowed(tmp_path):
    unit = unit_phantom(2, 128, seed=1)
    tifffile.imwrite(tmp_path / "pages.tif", unit)
    found = discover([tmp_path])
    refs = found.series[0].slices
    assert [r.value_range for r in refs] == ["unit", "unit"]
    cfg = tiny_config()  # img_size 128: no resize, so the tensor is the file's values
    for k, ref in enumerate(refs):
        assert torch.equal(prepare_slice(ref.load(), ref.value_range, cfg)[0], torch.from_numpy(unit[k]))


def test_tiff_value_rules(tmp_path):
    hu = ct_phantom(1, 32)[0]
    tifffile.imwrite(tmp_path / "hu.tif", hu)
    stored = np.clip(hu + 1024, 0, None).astype(np.uint16)
    tifffile.imwrite(tmp_path / "int.tif", stored)
    found = discover([tmp_path])
    assert [str(e) for e in found.errors] == [
        f"{tmp_path / 'int.tif'}: integer TIFF (uint16): say what its values are with --input-range hu or unit"]
    with pytest.raises(Exception, match=rf"float TIFF values span \[{hu.min():g}, {hu.max():g}\], not \[0, 1\]"):
        found.series[0].slices[0].load()
    as_unit = discover([tmp_path / "int.tif"], input_range="unit").series[0].slices[0]
    assert as_unit.load()[0, 0] == pytest.approx(stored[0, 0] / 65535)
    as_hu = discover([tmp_path / "hu.tif"], input_range="hu").series[0].slices[0]
    assert as_hu.value_range == "hu" and as_hu.load()[0, 0] == hu[0, 0]


def _dicomdir_and_report(tmp_path: Path) -> None:
    for name, sop_class in [("DICOMDIR", "1.2.840.10008.1.3.10"), ("report.dcm", "1.2.840.10008.5.1.4.1.1.88.11")]:
        meta = FileMetaDataset()
        meta.MediaStorageSOPClassUID, meta.MediaStorageSOPInstanceUID = sop_class, generate_uid()
        meta.TransferSyntaxUID = pydicom.uid.ExplicitVRLittleEndian
        ds = Dataset()
        ds.file_meta = meta
        ds.SOPClassUID, ds.SOPInstanceUID = sop_class, meta.MediaStorageSOPInstanceUID
        ds.Modality = "SR"
        ds.save_as(tmp_path / name, enforce_file_format=True)


def test_dicomdir_and_non_image_objects_are_skipped_with_a_note(tmp_path, hu):
    write_series(hu[:2], tmp_path)
    _dicomdir_and_report(tmp_path)
    found = discover([tmp_path])
    assert not found.errors and len(found.series) == 1
    assert len(found.notes) == 2
    assert any("DICOMDIR" in n and "skipped" in n for n in found.notes)
    assert any("report.dcm" in n and "no image data" in n for n in found.notes)


def test_what_a_study_export_holds_beside_the_axial_series_is_skipped_with_a_note(tmp_path, hu):
    axial = write_series(hu[:2], tmp_path / "axial")
    others = {}
    for name, change in {
        "mr.dcm": lambda ds: setattr(ds, "Modality", "MR"),
        "scout.dcm": lambda ds: setattr(ds, "ImageType", ["ORIGINAL", "PRIMARY", "LOCALIZER"]),
        "dose-screen.dcm": lambda ds: (setattr(ds, "SOPClassUID", "1.2.840.10008.5.1.4.1.1.7"),
                                       ds.file_meta.__setattr__("MediaStorageSOPClassUID", "1.2.840.10008.5.1.4.1.1.7")),
        "coronal.dcm": lambda ds: setattr(ds, "ImageOrientationPatient", [1, 0, 0, 0, 0, -1]),
    }.items():
        (path,) = write_series(hu[2:3], tmp_path / name.split(".")[0], names=[name])
        ds = pydicom.dcmread(path)
        change(ds)
        ds.save_as(path)
        others[name] = path
    found = discover([tmp_path])
    assert not found.errors and [len(s.slices) for s in found.series] == [2]
    assert found.series[0].slices[0].path == axial[0]
    notes = "\n".join(found.notes)
    assert "mr.dcm: skipped, modality MR, not CT" in notes and "scout.dcm: skipped, localizer" in notes
    assert "dose-screen.dcm: skipped, secondary capture" in notes
    assert "coronal.dcm: skipped, coronal or oblique reformat, not axial (--all-orientations scores it)" in notes
    with_reformats = discover([tmp_path], all_orientations=True)
    assert sorted(len(s.slices) for s in with_reformats.series) == [1, 2]


def test_missing_path_is_an_error():
    (err,) = discover([Path("/nonexistent/study")]).errors
    assert "no such file or directory" in err.reason


def test_window_pad_and_resize():
    cfg = tiny_config()  # W350/L40, 128 px
    edges = window_hu(np.array([-135.0, 40.0, 215.0, -1000.0, 3000.0]), cfg.window_width, cfg.window_level)
    assert edges.tolist() == pytest.approx([0.0, 0.5, 1.0, 0.0, 1.0])
    wide = np.ones((1, 40, 100), dtype=np.float32)
    square = pad_to_square(wide)
    assert square.shape == (1, 100, 100) and (square[0, 30:70] == 1).all() and (square[0, :30] == 0).all()
    out = prepare_slice(np.full((300, 200), 215.0), "hu", tiny_config(input_path="resize"))  # weights v1's path
    assert out.shape == (1, 128, 128) and out.dtype == torch.float32
    assert float(out.min()) == 0.0 and float(out.max()) == pytest.approx(1.0)
