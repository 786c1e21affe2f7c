"""Peak memory of ``clinreadnet score`` on a large NIfTI volume against a 300-slice DICOM series:
NIfTI is read one slice at a time, so memory should not grow with the volume.

    python benchmarks/volume_memory.py --json benchmarks/results/volume_memory.json

The volume is 1,024 slices of 1,024² int16 (2 GiB of voxels, ``.nii.gz``; real CT slices of the
sources, each pixel repeated 2 × 2), scored within raised caps (``--limit max_volume_mib=2100``);
the series is 300 uncompressed 512² DICOM slices of the same source. Both run with the default
weights and settings; memory is the process's high-water mark plus its decoding processes'
(``scoring.process_peak_rss``).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np

from common import SOURCES, write_json
from scoring import build_series, process_peak_rss

from clinreadnet_cli.checkpoint import resolve_weights


def build_volume(path: Path, slices: int) -> Path:
    """``slices`` slices of 1,024² int16, cycled from one real CT series, as a gzipped NIfTI volume."""
    import nibabel as nib

    hu = np.load(SOURCES / "tcia-pancreatic-ct-cbct-seg_Pancreas-CT-CB_001.npz")["hu"]
    volume = np.empty((1024, 1024, slices), np.int16)  # x, y, z: each slice contiguous on disk
    for k in range(slices):
        volume[:, :, k] = np.repeat(np.repeat(hu[k % len(hu)], 2, axis=0), 2, axis=1).T.astype(np.int16)
    affine = np.diag([-0.35, -0.35, 1.0, 1.0])  # LPS-stored as NIfTI's RAS: x toward L, y toward P
    nib.save(nib.Nifti1Image(volume, affine), str(path))
    return path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--slices", type=int, default=1024, help="slices of the volume (1,024² each)")
    parser.add_argument("--series-slices", type=int, default=300)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    weights = resolve_weights(None)
    with tempfile.TemporaryDirectory() as tmp:
        series = build_series(Path(tmp) / "series", args.series_slices)
        volume = build_volume(Path(tmp) / "volume.nii.gz", args.slices)
        gib = 1024 * 1024 * args.slices * 2 / 2**30
        print(f"volume: {gib:.2f} GiB of voxels, {volume.stat().st_size / 2**20:.0f} MiB on disk", file=sys.stderr)
        score = [sys.executable, "-m", "clinreadnet_cli", "score", "--weights", str(weights), "--format", "jsonl"]
        series_mib, series_s, _ = process_peak_rss([*score, str(series)])
        limit = ["--limit", f"max_volume_mib={int(gib * 1024) + 64}"]
        volume_mib, volume_s, _ = process_peak_rss([*score, str(volume), *limit])
    rows = [
        {"input": f"{args.series_slices}-slice DICOM series (512²)", "peak_mib": round(series_mib), "seconds": round(series_s, 1)},
        {"input": f"NIfTI .nii.gz, {args.slices} slices of 1,024² ({gib:.1f} GiB)", "peak_mib": round(volume_mib),
         "seconds": round(volume_s, 1), "ratio_to_series": round(volume_mib / series_mib, 2)},
    ]
    for row in rows:
        print(row)
    if args.json:
        write_json(args.json, rows)


if __name__ == "__main__":
    main()
