"""The input path (how a slice becomes the network input) and the classical noise figure."""

from __future__ import annotations

import numpy as np
import pytest

from clinreadnet_cli.config import ClinReadNetConfig, ConfigError, get_config
from clinreadnet_cli.noise import measure_noise
from clinreadnet_cli.patient_size import (MU_WATER_PER_MM, REFERENCE_DIAMETER_MM, measure_diameter,
                                          size_adjusted_noise, water_equivalent_diameter)
from clinreadnet_cli.preprocess import (DETAIL_GAIN, UNIT_WINDOW, area_resample, decimation_step, native_detail,
                                        prepare_slice, window_hu)

from .conftest import tiny_config


def unit_noise(side: int, sd: float = 0.05, seed: int = 0) -> np.ndarray:
    return np.clip(0.5 + np.random.default_rng(seed).normal(0, sd, (side, side)), 0, 1).astype(np.float32)


def test_decimate_keeps_every_second_pixel_of_a_512_slice_and_crops_the_centre():
    image = unit_noise(512)
    x = prepare_slice(image, "unit", get_config("clinreadnet"))[0].numpy()
    assert x.shape == (224, 224)
    np.testing.assert_array_equal(x, image[::2, ::2][16:240, 16:240])


@pytest.mark.parametrize("side, step", [(256, 1), (384, 2), (512, 2)])
def test_decimation_step_follows_the_matrix(side, step):
    assert decimation_step(side) == step
    assert prepare_slice(unit_noise(side), "unit", get_config("clinreadnet")).shape == (1, 224, 224)


def test_larger_matrices_are_area_resampled_to_512_first():
    image = unit_noise(1024)
    x = prepare_slice(image, "unit", get_config("clinreadnet"))[0].numpy()
    block_means = image.reshape(512, 2, 512, 2).mean(axis=(1, 3))
    np.testing.assert_allclose(x, block_means[::2, ::2][16:240, 16:240], atol=1e-6)
    assert area_resample(unit_noise(768), 512).mean() == pytest.approx(unit_noise(768).mean(), abs=1e-5)


def test_one_scene_on_a_768_and_a_512_grid_gives_the_same_input():
    def scene(side: int) -> np.ndarray:  # a smooth field of view sampled at pixel centres
        centres = (np.arange(side) + 0.5) / side
        return (0.5 + 0.3 * np.outer(np.sin(3 * centres), np.cos(2 * centres))).astype(np.float32)

    cfg = get_config("clinreadnet")
    on_512, on_768 = (prepare_slice(scene(side), "unit", cfg)[0].numpy() for side in (512, 768))
    assert np.abs(on_768 - on_512).max() < 0.01
    # ...and the finer grid's pixel noise is averaged over 512² pixels, not sampled at its own pixels
    sd_768 = float(prepare_slice(unit_noise(768, sd=0.05), "unit", cfg).std())
    assert sd_768 < 0.7 * 0.05


def test_windowed_images_are_moved_to_a_narrower_window_of_the_weights_as_hu_would_be():
    hu = np.random.default_rng(1).normal(40, 80, (512, 512)).astype(np.float32)
    narrow = get_config("clinreadnet", window_width=180.0)
    from_unit = prepare_slice(window_hu(hu, *UNIT_WINDOW), "unit", narrow)
    from_hu = prepare_slice(hu, "hu", narrow)
    np.testing.assert_allclose(from_unit.numpy(), from_hu.numpy(), atol=1e-5)
    # inside the narrower window the pixel noise is larger in window units, by the width ratio
    assert float(from_hu.std()) > 1.5 * float(prepare_slice(hu, "hu", get_config("clinreadnet")).std())


def test_small_slices_are_padded_not_stretched():
    x = prepare_slice(unit_noise(100), "unit", get_config("clinreadnet"))[0]
    assert x.shape == (224, 224) and float(x[:60].abs().max()) == 0.0  # the bottom of the window


def test_decimate_and_crop_keep_the_pixel_noise_that_resize_filters_out():
    image = unit_noise(512, sd=0.05)
    sd = {path: float(prepare_slice(image, "unit", get_config("clinreadnet", input_path=path)).std())
          for path in ("decimate", "crop", "resize")}
    assert sd["decimate"] == pytest.approx(0.05, rel=0.05) and sd["crop"] == pytest.approx(0.05, rel=0.05)
    assert sd["resize"] < 0.5 * sd["decimate"]


def test_crop_is_the_native_centre():
    image = unit_noise(512)
    x = prepare_slice(image, "unit", get_config("clinreadnet", input_path="crop"))[0].numpy()
    np.testing.assert_array_equal(x, image[144:368, 144:368])


def test_detail_channel_keeps_what_sampling_drops():
    """decimate-detail: channel 0 is decimate's input; channel 1 tells a sharp noisy slice from the
    same noise through a smooth kernel, which sampling every second pixel makes look alike."""
    cfg = get_config("clinreadnet", input_path="decimate-detail", in_chans=2)
    sharp = unit_noise(512)
    smooth = sharp.reshape(256, 2, 256, 2).mean(axis=(1, 3)).repeat(2, axis=0).repeat(2, axis=1)  # no upper band
    x, y = prepare_slice(sharp, "unit", cfg).numpy(), prepare_slice(smooth, "unit", cfg).numpy()
    assert x.shape == (2, 224, 224)
    np.testing.assert_array_equal(x[0], prepare_slice(sharp, "unit", get_config("clinreadnet"))[0].numpy())
    assert y[0].std() > 0.4 * x[0].std()  # sampled, the smooth slice still looks noisy
    assert y[1].mean() < 0.6 * x[1].mean()  # its detail energy shows what the kernel removed
    flat = prepare_slice(np.full((512, 512), 0.4, np.float32), "unit", cfg).numpy()
    assert (flat[1] == 0.0).all()  # no detail, no energy
    with pytest.raises(ConfigError, match="two channels"):
        get_config("clinreadnet", input_path="decimate-detail")


def test_detail_energy_averages_each_sampled_cell_on_the_sampled_grid():
    """One energy value per cell of step x step native pixels, on exactly the grid that sampling
    keeps, odd sides included; white noise of SD sd gives a mean |difference| of 2 sd / sqrt(pi)."""
    checker = np.indices((6, 6)).sum(axis=0) % 2 * 0.1  # each pixel equals its diagonal neighbour
    np.testing.assert_array_equal(native_detail(checker.astype(np.float32), 2)[:2, :2], np.zeros((2, 2)))
    ramp = np.tile(np.arange(5, dtype=np.float32) * 0.01, (5, 1))  # diagonal difference -0.01, edges repeat
    energy = native_detail(ramp, 2)
    assert energy.shape == ramp[::2, ::2].shape == (3, 3)
    np.testing.assert_allclose(energy[:, :2], DETAIL_GAIN * 0.01, rtol=1e-5)
    noise = native_detail(unit_noise(512, sd=0.02), 2)
    assert noise.mean() == pytest.approx(DETAIL_GAIN * 0.02 * 2 / np.sqrt(np.pi), rel=0.03)


def test_stored_configs_without_the_field_keep_the_path_they_were_trained_with():
    stored = tiny_config().to_dict()
    del stored["input_path"], stored["mtmsa"]["log_temperatures"], stored["mtmsa"]["mixing_sharpness"]
    legacy = ClinReadNetConfig.from_dict(stored)
    assert legacy.input_path == "resize"
    assert not legacy.mtmsa.log_temperatures and not legacy.mtmsa.mixing_sharpness
    assert tiny_config().input_path == "decimate"  # what new training uses
    with pytest.raises(ConfigError, match="input_path"):
        get_config("clinreadnet", input_path="bicubic")
    with pytest.raises(ConfigError, match="JSON object"):
        ClinReadNetConfig.from_json("[1, 2]")


def phantom(noise_sd: float, seed: int = 0) -> np.ndarray:
    """A water-equivalent disk (40 HU) in air with white noise."""
    yy, xx = np.mgrid[:256, :256]
    hu = np.where((yy - 128) ** 2 + (xx - 128) ** 2 < 100 ** 2, 40.0, -1000.0)
    return (hu + np.random.default_rng(seed).normal(0, noise_sd, hu.shape)).astype(np.float32)


def test_noise_figure_measures_white_noise_in_soft_tissue():
    for sd in (5.0, 20.0, 60.0):
        figure = measure_noise(phantom(sd), "hu")
        # The 5 x 5 high-pass residual of white noise has SD sqrt(24/25) of the noise.
        assert figure.noise_hu == pytest.approx(sd * np.sqrt(24 / 25), rel=0.05) and figure.note is None


def test_noise_figure_says_why_it_has_no_value():
    assert measure_noise(np.full((64, 64), 0.5, np.float32), "unit").note == "not in HU"
    assert "soft-tissue" in measure_noise(np.full((64, 64), -1000.0, np.float32), "hu").note
    broken = phantom(10.0)
    broken[0, 0] = np.nan
    assert measure_noise(broken, "hu").note == "non-finite pixels"


def test_water_equivalent_diameter_of_a_water_disk_is_its_diameter_in_mm():
    """A 40 HU disk of radius 100 pixels: D_w = 200 px x spacing x sqrt(1.04). Filled lungs count
    at their density; a table apart from the body does not count; air alone has no body."""
    noisy = phantom(20.0)
    for rows_mm, columns_mm in ((0.6, 0.6), (0.9, 0.9), (0.6, 0.9)):  # the area is what counts
        assert water_equivalent_diameter(noisy, (rows_mm, columns_mm)) == pytest.approx(
            200 * np.sqrt(rows_mm * columns_mm * 1.04), rel=0.01)
    yy, xx = np.mgrid[:256, :256]
    with_lung = np.where((yy - 128) ** 2 + (xx - 100) ** 2 < 30 ** 2, -850.0, noisy).astype(np.float32)
    expected_area = np.pi * 100 ** 2 * 1.04 - np.pi * 30 ** 2 * (1.04 - 0.15)
    assert water_equivalent_diameter(with_lung, (1.0, 1.0)) == pytest.approx(2 * np.sqrt(expected_area / np.pi),
                                                                              rel=0.01)
    on_table = noisy.copy()
    on_table[240:250, 20:236] = 200.0  # a table below the body, not touching it
    assert water_equivalent_diameter(on_table, (1.0, 1.0)) == pytest.approx(
        water_equivalent_diameter(noisy, (1.0, 1.0)), rel=1e-3)
    air = np.full((64, 64), -1000.0, np.float32)
    assert np.isnan(water_equivalent_diameter(air, (1.0, 1.0)))
    # A score record's wed_mm: only for HU with a known spacing, and with a body
    assert measure_diameter(noisy, "hu", (0.7, 0.7)) == pytest.approx(140 * np.sqrt(1.04), rel=0.01)
    assert measure_diameter(noisy, "hu", None) is None and measure_diameter(air, "hu", (0.7, 0.7)) is None
    assert measure_diameter(np.full((64, 64), 0.5, np.float32), "unit", (0.7, 0.7)) is None


def test_size_adjusted_noise_divides_out_the_growth_of_noise_with_size():
    assert size_adjusted_noise(20.0, REFERENCE_DIAMETER_MM) == 20.0
    # 40 mm more water: exp(mu x 40 / 2) more noise at the same flux, which the adjustment removes
    grown = 20.0 * np.exp(MU_WATER_PER_MM * 40 / 2)
    assert size_adjusted_noise(grown, REFERENCE_DIAMETER_MM + 40) == pytest.approx(20.0)


def test_four_sampling_grids_read_every_pixel_of_the_central_448():
    image = unit_noise(512)
    x = prepare_slice(image, "unit", get_config("clinreadnet", sampling_grids=4)).numpy()
    assert x.shape == (4, 224, 224)
    for grid, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        np.testing.assert_array_equal(x[grid], image[dy::2, dx::2][16:240, 16:240])
    np.testing.assert_array_equal(x[0], prepare_slice(image, "unit", get_config("clinreadnet"))[0].numpy())
    one = prepare_slice(image, "unit", get_config("clinreadnet", sampling_grids=4), grid=2).numpy()
    np.testing.assert_array_equal(one, x[2:3])  # a training draw builds that grid alone


def test_sampling_grids_stack_grid_major_with_the_detail_channel():
    image = unit_noise(512)
    cfg = get_config("clinreadnet", input_path="decimate-detail", in_chans=2, sampling_grids=4)
    x = prepare_slice(image, "unit", cfg).numpy()
    assert x.shape == (8, 224, 224)
    np.testing.assert_array_equal(x[2], image[::2, 1::2][16:240, 16:240])  # grid 1, its image channel
    moved_left = np.pad(image, ((0, 0), (0, 1)), mode="edge")[:, 1:]  # the grid one pixel right, as a square
    np.testing.assert_allclose(x[3], native_detail(moved_left, 2)[16:240, 16:240], atol=1e-6)


def test_the_stack_path_feeds_all_four_grids_to_one_forward():
    image = unit_noise(512)
    cfg = get_config("clinreadnet", input_path="decimate-stack", in_chans=4)
    x = prepare_slice(image, "unit", cfg).numpy()
    assert x.shape == (4, 224, 224)
    for grid, (dy, dx) in enumerate([(0, 0), (0, 1), (1, 0), (1, 1)]):
        np.testing.assert_array_equal(x[grid], image[dy::2, dx::2][16:240, 16:240])
    np.testing.assert_array_equal(prepare_slice(image, "unit", cfg, grid=2).numpy(), x)  # no training draw of one
    with pytest.raises(ConfigError, match="already reads every sampling grid"):
        get_config("clinreadnet", input_path="decimate-stack", in_chans=4, sampling_grids=4)
    with pytest.raises(ConfigError, match="it feeds 4"):
        get_config("clinreadnet", input_path="decimate-stack")


def test_sampling_grids_need_a_decimate_path_and_old_configs_read_one():
    with pytest.raises(ConfigError, match="sampling_grids"):
        get_config("clinreadnet", input_path="crop", sampling_grids=4)
    with pytest.raises(ConfigError, match="sampling_grids"):
        get_config("clinreadnet", sampling_grids=2)
    stored = tiny_config(sampling_grids=4).to_dict()
    del stored["sampling_grids"]
    assert ClinReadNetConfig.from_dict(stored).sampling_grids == 1
