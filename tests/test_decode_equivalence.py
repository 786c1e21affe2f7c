"""The per-slice decoding work, vectorised: the same decisions and figures as the straightforward
versions it replaced (content checks, noise figure, patient size, sampling grids, HU rescale),
which are kept here as the references."""

from __future__ import annotations

import math
import subprocess
import sys

import numpy as np
import pydicom
import pytest
from scipy import ndimage

from clinreadnet_cli.config import get_config, input_overrides
from clinreadnet_cli.decoding import prepare
from clinreadnet_cli.dicom_export import write_series
from clinreadnet_cli.noise import (MAD_TO_SD, MIN_TISSUE_PIXELS, box_mean, erode_cross, measure_noise, median,
                                   noise_sd_hu, smoothed_hu, tissue_mask)
from clinreadnet_cli.patient_size import BODY_HU, measure_diameter, water_equivalent_diameter
from clinreadnet_cli.preprocess import grid_sample, grid_shifts, sample_slice, window_hu
from clinreadnet_cli.readers import discover
from clinreadnet_cli.readers.content import (HU_AIR, HU_PLAUSIBLE, MIN_NEIGHBOUR_CORRELATION, MIN_PLAUSIBLE_SHARE,
                                             content_problem, neighbour_correlation)

from .conftest import ct_phantom


def reference_correlation(image):
    step = max(1, math.ceil(max(image.shape) / 256))
    x = image[::step, ::step].astype(np.float64)
    a = np.concatenate([x[:, :-1].ravel(), x[:-1, :].ravel()])
    b = np.concatenate([x[:, 1:].ravel(), x[1:, :].ravel()])
    if a.size < 2 or a.std() == 0 or b.std() == 0:
        return 0.0
    return float(np.corrcoef(a, b)[0, 1])


def reference_content_problem(image, value_range):
    finite = np.isfinite(image)
    if not finite.all():
        return f"{image.size - int(finite.sum())} non-finite pixel(s) (NaN or inf): damaged pixel data"
    low, high = float(image.min()), float(image.max())
    if high - low < 1e-6 * max(1.0, abs(high)):
        return f"constant image (every pixel {low:g}): not a CT image"
    correlation = reference_correlation(image)
    if correlation < MIN_NEIGHBOUR_CORRELATION:
        return (f"no spatial structure (neighbouring pixels correlate r = {correlation:.2f}): "
                "noise or random bytes, not a CT image")
    if value_range != "hu":
        return None
    plausible = float(((image >= HU_PLAUSIBLE[0]) & (image <= HU_PLAUSIBLE[1])).mean())
    if plausible < MIN_PLAUSIBLE_SHARE:
        return (f"only {plausible:.0%} of pixels lie within {HU_PLAUSIBLE[0]:g}…{HU_PLAUSIBLE[1]:g} HU "
                f"(values span {low:g}…{high:g}): not CT in HU (wrong RescaleSlope/Intercept?)")
    if low > HU_AIR:
        return (f"no air in the slice (lowest value {low:g} HU > {HU_AIR:g}): "
                "values are not HU (missing RescaleIntercept?)")
    return None


def exact_mean(image, size):
    """The size x size mean (ndimage's, edges reflected) in float64, rounded once to float32."""
    return ndimage.uniform_filter(image.astype(np.float64), size).astype(np.float32)


def reference_noise_sd(image, mask):
    if mask.sum() < MIN_TISSUE_PIXELS:
        return float("nan")
    image = image.astype(np.float32, copy=False)
    residual = (image[mask] - exact_mean(image, 5)[mask]).astype(np.float64)
    return float(MAD_TO_SD * np.median(np.abs(residual - np.median(residual))))


def reference_tissue_mask(hu):
    image = exact_mean(hu, 9)
    return ndimage.binary_erosion((image > -50.0) & (image < 150.0), iterations=3)


def reference_wed(hu, spacing_mm):
    regions, count = ndimage.label(exact_mean(hu, 9) > BODY_HU)
    if count == 0:
        return math.nan
    largest = 1 + int(np.argmax(np.bincount(regions.ravel())[1:]))
    body = ndimage.binary_fill_holes(regions == largest)
    area = float((hu[body].astype(np.float64) / 1000.0 + 1.0).sum()) * spacing_mm[0] * spacing_mm[1]
    return 2.0 * math.sqrt(area / math.pi)


def anatomy(shape, seed):
    """Integer HU slices of random blobs: several bodies (some touching the edges), holes of air
    and lung inside them, fat and soft tissue, noise."""
    rng = np.random.default_rng(seed)
    field = ndimage.gaussian_filter(rng.normal(size=shape), 6 + seed % 5)
    field /= field.std()
    hu = np.select([field < -0.3, field < 0.2, field < 0.6, field < 1.4], [-1000.0, -800.0, -90.0, 45.0], 400.0)
    hu = hu + rng.normal(0, (5, 20, 80)[seed % 3], shape)
    return np.clip(hu, -1024, None).round().astype(np.float32)


def hostile_images():
    """(name, image, value range): what the content checks refuse, and what they let through."""
    rng = np.random.default_rng(0)
    phantom = ct_phantom(1, 128)[0]
    nan, inf = phantom.copy(), phantom.copy()
    nan[3, 4], inf[5, :3] = np.nan, np.inf
    one_off = np.full((9, 9), 7.0, np.float32)
    one_off[-1, -1] = 9.0
    padded = phantom.copy()
    padded[:, :80] = -3024.0
    yield from [("phantom", phantom, "hu"), ("nan", nan, "hu"), ("inf", inf, "hu"),
                ("constant", np.full((64, 64), 40.0, np.float32), "hu"),
                ("random bytes", rng.integers(0, 65536, (256, 256)).astype(np.float32), "hu"),
                ("white noise", rng.normal(0, 100, (300, 200)).astype(np.float32), "hu"),
                ("no intercept", phantom + 1024.0, "hu"), ("wrong slope", phantom * 40.0, "hu"),
                ("padding", padded, "hu"), ("one pixel off", one_off, "hu"),
                ("unit", np.clip((phantom + 135) / 350, 0, 1), "unit"),
                ("unit noise", rng.random((128, 128), np.float32), "unit"),
                ("large offset", 1e4 + 30 * ndimage.gaussian_filter(rng.normal(size=(64, 64)), 3), "hu")]
    for seed in range(6):
        yield f"anatomy {seed}", anatomy((192, 160), seed), "hu"


@pytest.mark.parametrize("name, image, value_range", list(hostile_images()))
def test_content_checks_decide_and_word_as_before(name, image, value_range):
    assert content_problem(image, value_range) == reference_content_problem(image, value_range)
    if np.isfinite(image).all():
        assert neighbour_correlation(image) == pytest.approx(reference_correlation(image), abs=1e-9)


@pytest.mark.parametrize("shape", [(1, 2), (1, 5), (5, 1), (2, 2), (3, 300), (257, 255), (700, 300)])
def test_neighbour_correlation_is_pearsons_r_of_the_pairs(shape):
    rng = np.random.default_rng(sum(shape))
    for image in (rng.normal(size=shape), ndimage.gaussian_filter(rng.normal(size=shape), 2) * 500 - 300):
        assert neighbour_correlation(image.astype(np.float32)) == pytest.approx(
            reference_correlation(image.astype(np.float32)), abs=1e-9)
    first_off = np.full((6, 6), 3.0)
    first_off[0, 0] = 5.0  # every pixel but the first is constant: so is the pairs' second side
    assert neighbour_correlation(first_off) == reference_correlation(first_off) == 0.0


def test_box_mean_is_the_exact_mean_on_integer_hu_and_ndimages_within_rounding():
    """On integer pixels (CT in HU) the window's float32 sum is exact: the mean is the exact mean
    rounded once, value for value; on any other float32 image it is ndimage's within rounding."""
    rng = np.random.default_rng(1)
    for shape in ((512, 512), (37, 300), (300, 37), (5, 5), (3, 11)):
        image = (rng.normal(0, 300, shape) - 500).astype(np.float32)
        for size in (5, 9):
            for view in (image, image[1::2, 1:]):
                np.testing.assert_array_equal(box_mean(view.round(), size), exact_mean(view.round(), size))
                np.testing.assert_allclose(box_mean(view, size), ndimage.uniform_filter(view, size), rtol=1e-6,
                                           atol=1e-3)


def test_erode_cross_is_binary_erosion():
    rng = np.random.default_rng(2)
    masks = [rng.random((64, 80)) < p for p in (0.5, 0.9, 0.99)]
    masks += [np.ones((30, 40), bool), np.zeros((30, 40), bool),
              ndimage.gaussian_filter(rng.normal(size=(90, 70)), 3) > 0]
    for mask in masks:
        for iterations in (1, 3, 4):
            np.testing.assert_array_equal(erode_cross(mask, iterations),
                                          ndimage.binary_erosion(mask, iterations=iterations))


def test_median_is_numpys():
    rng = np.random.default_rng(3)
    for size in (1, 2, 501, 1000, 21588):
        values = rng.normal(0, 20, size).round(1)  # duplicates
        assert median(values.copy()) == np.median(values)
    with_nan = rng.normal(size=1001)
    with_nan[10] = np.nan
    assert np.isnan(median(with_nan.copy())) and np.isnan(np.median(with_nan))


def test_noise_figure_is_unchanged():
    rng = np.random.default_rng(4)
    for seed in range(8):
        hu = anatomy((256, 224), seed)
        np.testing.assert_array_equal(tissue_mask(hu, smooth=True), reference_tissue_mask(hu))
        np.testing.assert_array_equal(tissue_mask(hu, smooth=True, smoothed=smoothed_hu(hu)), reference_tissue_mask(hu))
        figure = measure_noise(hu, "hu")
        assert figure.noise_hu == pytest.approx(reference_noise_sd(hu, reference_tissue_mask(hu)), rel=1e-6)
        assert measure_noise(hu, "hu", smoothed_hu(hu)) == figure
        # Any mask, the simulator's too: at the image's edges, sparse, too small
        for mask in (rng.random(hu.shape) < 0.3, ndimage.gaussian_filter(rng.normal(size=hu.shape), 4) > 0.5,
                     rng.random(hu.shape) < 0.005):
            assert noise_sd_hu(hu, mask) == pytest.approx(reference_noise_sd(hu, mask), rel=1e-6, nan_ok=True)


def test_water_equivalent_diameter_is_unchanged():
    for seed in range(10):
        hu = anatomy((200, 260), seed)
        expected = reference_wed(hu, (0.7, 0.8))
        assert water_equivalent_diameter(hu, (0.7, 0.8)) == pytest.approx(expected, rel=1e-12, nan_ok=True)
        assert water_equivalent_diameter(hu, (0.7, 0.8), smoothed_hu(hu)) == pytest.approx(expected, rel=1e-12,
                                                                                           nan_ok=True)
    air = np.full((40, 40), -1000.0, np.float32)
    assert np.isnan(water_equivalent_diameter(air, (1.0, 1.0))) and np.isnan(reference_wed(air, (1.0, 1.0)))


@pytest.mark.parametrize("side", [9, 10, 255, 256, 511, 512])
def test_grid_sample_is_the_shifted_square_sampled(side):
    square = np.random.default_rng(side).random((side, side), np.float32)
    for step in (1, 2, 3):
        for dy, dx in ((0, 0), (0, 1), (1, 0), (1, 1)):
            np.testing.assert_array_equal(grid_sample(square, dy, dx, step),
                                          grid_shifts(square, ((dy, dx),))[0][::step, ::step])


def test_windowing_and_sampling_are_unchanged():
    hu = anatomy((512, 512), 1)
    for image in (hu, hu.astype(np.float64), hu.astype(np.int16)):
        expected = np.clip((image.astype(np.float32) - (40.0 - 350.0 / 2.0)) / 350.0, 0.0, 1.0)
        windowed = window_hu(image, 350.0, 40.0)
        assert windowed.dtype == np.float32 and np.array_equal(windowed, expected)
    for cfg in (get_config("clinreadnet", sampling_grids=4),
                get_config("clinreadnet", **input_overrides("decimate-detail"))):
        np.testing.assert_array_equal(sample_slice(hu, "hu", cfg), np.stack(list(window_sampled_by_padding(hu, cfg))))


def window_sampled_by_padding(hu, cfg):
    """The decimate paths as they were: every grid a padded copy of the windowed square."""
    from clinreadnet_cli.preprocess import GRID_OFFSETS, centre_crop_or_pad, native_detail

    square = window_hu(hu, cfg.window_width, cfg.window_level)
    for shifted in grid_shifts(square, GRID_OFFSETS[:cfg.sampling_grids]):
        yield centre_crop_or_pad(shifted[::2, ::2], cfg.img_size)
        if cfg.in_chans == 2:
            yield centre_crop_or_pad(native_detail(shifted, 2), cfg.img_size)


@pytest.mark.parametrize("slope, intercept", [(1.0, -1024.0), (1.0, 0.0), (0.5, -1024.5), (2.0, 0.0)])
def test_dicom_rescale_is_unchanged(tmp_path, slope, intercept):
    paths = write_series(ct_phantom(1, 64), tmp_path)
    ds = pydicom.dcmread(paths[0])
    ds.RescaleSlope, ds.RescaleIntercept = slope, intercept
    ds.save_as(paths[0])
    image = discover([tmp_path]).series[0].slices[0].decode()
    assert image.dtype == np.float32
    np.testing.assert_array_equal(image, ds.pixel_array.astype(np.float32) * np.float32(slope) + np.float32(intercept))


def test_prepare_shares_the_smoothed_slice_without_changing_the_figures(tmp_path):
    hu = np.stack([anatomy((128, 128), 2), anatomy((128, 128), 4)])
    write_series(hu, tmp_path, spacing=(0.8, 0.8))
    series = discover([tmp_path]).series[0]
    for ref in series.slices:
        prepared = prepare(ref, series, get_config("clinreadnet"))
        image = ref.load()
        assert prepared.noise == measure_noise(image, "hu")
        assert prepared.wed_mm == measure_diameter(image, "hu", (0.8, 0.8))


REPEATED_MEANS = """
import resource, sys
import numpy as np
from clinreadnet_cli.engine.allocator import reuse_freed_memory
from clinreadnet_cli.noise import smoothed_hu
if sys.argv[1] == "reuse":
    reuse_freed_memory()
image = np.random.default_rng(0).normal(0, 300, (512, 512)).astype(np.float32).round()
smoothed_hu(image)
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
for _ in range(20):
    smoothed_hu(image)
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_decoding_workers_reuse_freed_memory_instead_of_mapping_it_again():
    """A decoding worker keeps what a slice freed for the next: the 9 x 9 mean of 20 slices then
    touches no fresh page, where glibc's default maps its 1 MB arrays afresh each time."""
    faults = {mode: int(subprocess.run([sys.executable, "-c", REPEATED_MEANS, mode], capture_output=True, text=True,
                                       check=True, timeout=300).stdout) for mode in ("reuse", "system")}
    assert faults["reuse"] < 50 < 20 * 256 <= faults["system"], faults  # a 1 MB array is 256 pages


FREED_IN_A_THREAD = """
import threading
from pathlib import Path
from clinreadnet_cli.engine.allocator import return_freed_memory

def rss_mib():
    return int(next(x for x in Path("/proc/self/status").read_text().splitlines() if x.startswith("VmRSS:")).split()[1]) // 1024

kept = []

def burst():  # what an association thread does: many small allocations, freed when it ends but one
    held = [bytes(2000) for _ in range(50_000)]
    kept.append(bytes(2000))  # allocated last, it keeps glibc from shrinking the heap by itself
    del held

thread = threading.Thread(target=burst)
thread.start()
thread.join()
before = rss_mib()
return_freed_memory()
print(before, rss_mib())
"""


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="glibc's allocator")
def test_a_node_hands_back_what_a_finished_thread_freed():
    """What a receiving thread allocated and freed stays counted against the process until it is
    handed back (``return_freed_memory``, which a node calls before scoring a series)."""
    before, after = map(int, subprocess.run([sys.executable, "-c", FREED_IN_A_THREAD], capture_output=True, text=True,
                                            check=True, timeout=300).stdout.split())
    assert before - after >= 10, (before, after)  # 98 MiB here, of the ~100 MiB the thread freed
