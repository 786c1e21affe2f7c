"""Rebuild sample_data/ from the real CT sources (../shared/data/ct_sources by default).

    python scripts/make_sample_data.py [--sources DIR] [--out sample_data]

Pixel values are deterministic (fixed seed; DICOM UIDs are new each run). What it writes, where each slice came from and its licence is
described in sample_data/README.md.
"""

from __future__ import annotations

import argparse
import shutil
from pathlib import Path

import numpy as np
import SimpleITK as sitk
import tifffile
from pydicom.uid import JPEG2000Lossless
from scipy.ndimage import gaussian_filter

from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.preprocess import window_hu

DEFAULT_SOURCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_sources"
SERIES_SOURCE = ("tcia-pancreatic-ct-cbct-seg_Pancreas-CT-CB_001.npz", range(32, 40))  # abdomen, 6 mm apart
NOISE_SD_HU = [0, 0, 0, 0, 20, 40, 80, 160]  # added noise per slice of the DICOM series
VOLUME_SOURCE = ("tcia-c4kc-kits_KiTS-00072.npz", range(0, 4))  # upper abdomen, arterial phase
TIFF_SOURCE = ("tcia-tcga-luad-lusc_singles.npz", 11)  # TCGA-17-Z031, abdomen/pelvis


def correlated_noise(shape, sd: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian noise with a CT-like fine grain (smoothed white noise), scaled to ``sd`` HU."""
    grain = gaussian_filter(rng.standard_normal(shape), sigma=0.8)
    return (grain / grain.std() * sd).astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES)
    parser.add_argument("--out", type=Path, default=Path("sample_data"))
    args = parser.parse_args()
    rng = np.random.default_rng(20261122)
    for sub in ("dicom", "nifti", "tiff"):
        shutil.rmtree(args.out / sub, ignore_errors=True)

    name, index = SERIES_SOURCE
    src = np.load(args.sources / name)
    hu = src["hu"][list(index)].astype(np.float32)
    degraded = np.stack([s + correlated_noise(s.shape, sd, rng) if sd else s for s, sd in zip(hu, NOISE_SD_HU)])
    write_series(
        degraded, args.out / "dicom" / "pancreas-ct-cb-001", spacing=src["pixel_spacing_mm"][index[0]],
        thickness=6.0, z0=float(src["z_mm"][index[0]]), description="Abdomen, last 4 slices with added noise",
        patient_id="Pancreas-CT-CB_001", transfer_syntax=JPEG2000Lossless,
    )

    name, index = VOLUME_SOURCE
    src = np.load(args.sources / name)
    volume = sitk.GetImageFromArray(src["hu"][list(index)])
    dy, dx = (float(v) for v in src["pixel_spacing_mm"][index[0]])
    volume.SetSpacing((dx, dy, 5.0))
    (args.out / "nifti").mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(volume, str(args.out / "nifti" / "kits-00072.nii.gz"))

    name, index = TIFF_SOURCE
    src = np.load(args.sources / name)
    (args.out / "tiff").mkdir(parents=True, exist_ok=True)
    tifffile.imwrite(args.out / "tiff" / "tcga-17-z031.tif", window_hu(src["hu"][index], 350.0, 40.0),
                     compression="zlib")


if __name__ == "__main__":
    main()
