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

from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.preprocess import window_hu
from clinreadnet_cli.simulate.lowdose import Acquisition, simulate_slice

DEFAULT_SOURCES = Path(__file__).resolve().parents[2] / "shared" / "data" / "ct_sources"
# One DICOM series of 4 slices: slices 1-2 untouched, slices 3-4 re-acquired by the physics simulation
# (clinreadnet simulate) at falling dose and view count. LungFCP-01-0001 was among the default weights'
# validation patients (never trained on). Four slices, a one-slice volume and a TIFF keep the tree small.
SERIES_SOURCE = ("tcia-lung-fused-ct-pathology_LungFCP-01-0001.npz", range(0, 4), "lungfcp-01-0001", 6.0,
                 "Lower chest")  # lung bases upwards, 6 mm apart
DEGRADED = [(0.25, 720), (0.1, 180)]  # (dose fraction, views) of slices 3-4
VOLUME_SOURCE = ("tcia-c4kc-kits_KiTS-00072.npz", range(0, 1))  # upper abdomen, arterial phase
TIFF_SOURCE = ("tcia-tcga-luad-lusc_singles.npz", 11)  # TCGA-17-Z031, abdomen/pelvis
SEED = 20261122


def degrade(hu: np.ndarray, pixel_mm: float, dose: float, views: int, seed: int) -> np.ndarray:
    """The slice re-acquired at ``dose`` of its own (calibrated) flux with ``views`` of 1,000 views."""
    acquisition = Acquisition(doses=(dose,), views=(views,))
    simulated = simulate_slice(hu, pixel_mm, acquisition, np.random.default_rng(seed))
    return simulated.image(dose, views)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--sources", type=Path, default=DEFAULT_SOURCES)
    parser.add_argument("--out", type=Path, default=Path("sample_data"))
    args = parser.parse_args()
    for sub in ("dicom", "nifti", "tiff"):
        shutil.rmtree(args.out / sub, ignore_errors=True)

    name, index, folder, spacing_z, region = SERIES_SOURCE
    src = np.load(args.sources / name)
    hu = src["hu"][list(index)].astype(np.float32)
    pixel_mm = float(src["pixel_spacing_mm"][index[0]][0])
    first = len(index) - len(DEGRADED)
    for offset, (dose, views) in enumerate(DEGRADED, start=first):
        hu[offset] = degrade(hu[offset], pixel_mm, dose, views, seed=SEED + offset)
    write_series(
        hu, args.out / "dicom" / folder, spacing=src["pixel_spacing_mm"][index[0]], thickness=spacing_z,
        z0=float(src["z_mm"][index[0]]), description=f"{region}, slices {first + 1}-{len(index)} simulated low dose",
        patient_id=str(src["patient_id"][index[0]]), transfer_syntax=JPEG2000Lossless,
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
