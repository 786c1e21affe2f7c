"""Quality maps look where the image is degraded (the shipped weights, real CT, the physics simulation)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pydicom
import torch

from clinreadnet_cli.checkpoint import SHIPPED_WEIGHTS, load_model
from clinreadnet_cli.explain import quality_maps
from clinreadnet_cli.preprocess import prepare_slice
from clinreadnet_cli.simulate import degraded_in

SAMPLE = Path(__file__).resolve().parents[1] / "sample_data" / "dicom" / "lungfcp-01-0001" / "IM0001.dcm"


def test_the_map_of_a_half_degraded_slice_lies_mostly_in_that_half():
    ds = pydicom.dcmread(SAMPLE)
    hu = (ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)).astype(np.float32)
    left = np.zeros(hu.shape, dtype=bool)
    left[:, : hu.shape[1] // 2] = True
    rng = np.random.default_rng(0)
    model = load_model(SHIPPED_WEIGHTS)
    images = [degraded_in(hu, float(ds.PixelSpacing[0]), region, 0.1, 180, rng) for region in (left, ~left)]
    maps = quality_maps(model, torch.stack([prepare_slice(i, "hu", model.config) for i in images]))
    half = maps.shape[-1] // 2
    assert maps.shape == (2, 224, 224) and maps.min() >= 0 and maps.max() <= 1
    in_left = maps[0][:, :half].sum() / maps[0].sum()
    in_right = maps[1][:, half:].sum() / maps[1].sum()
    assert in_left > 0.7 and in_right > 0.7, (in_left, in_right)
