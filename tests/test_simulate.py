"""Low-dose simulation on a real CT slice: physics, labels, the dataset it writes, the command."""

from __future__ import annotations

import argparse
import csv
import importlib.util
import json
import math
import subprocess
import sys
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import tifffile
from hypothesis import given, strategies as st
from typer.testing import CliRunner

from clinreadnet_cli.cli import app
from clinreadnet_cli.data import SliceDataset, load_labelled, split_train_val
from clinreadnet_cli.readers import discover
from clinreadnet_cli.readers.content import content_problem
from clinreadnet_cli.simulate import Acquisition, find_sources, simulate_dataset, simulate_slice
from clinreadnet_cli.simulate import labels, measures
from clinreadnet_cli.simulate.physics import ParallelScanner, ReconGrid, hu_to_mu, mu_to_hu, reduce_dose, view_subset
from tests.conftest import ct_phantom, tiny_config

REPO = Path(__file__).resolve().parents[1]
CT_SOURCES = REPO.parent / "shared" / "data" / "ct_sources"
PANCREAS = CT_SOURCES / "tcia-pancreatic-ct-cbct-seg_Pancreas-CT-CB_001.npz"
SAMPLE_SERIES = REPO / "sample_data" / "dicom" / "lungfcp-01-0001"  # slice 1: untouched
VOLUME_SLICES = 1  # the slices of sample_data/nifti/kits-00072.nii.gz


def script_module(name: str):
    """scripts/NAME.py or research/NAME.py imported as a module (neither is a package)."""
    path = next(p for p in (REPO / "scripts" / f"{name}.py", REPO / "research" / f"{name}.py") if p.is_file())
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def real_slice() -> tuple[np.ndarray, float]:
    """An abdominal slice (512 x 512, HU) and its pixel spacing, from the CT sources or, where
    they are not checked out, an untouched chest slice of sample_data."""
    if PANCREAS.is_file():
        archive = np.load(PANCREAS)
        return archive["hu"][32].astype(np.float32), float(archive["pixel_spacing_mm"][32][0])
    ref = discover([SAMPLE_SERIES]).series[0].slices[0]
    return ref.load(), ref.pixel_spacing_mm[0]


@pytest.fixture(scope="module")
def half_slice(real_slice) -> tuple[np.ndarray, float]:
    """The same slice at 256 x 256 (2 x 2 means, double spacing): 4x faster to simulate."""
    hu, spacing = real_slice
    return hu.reshape(256, 2, 256, 2).mean(axis=(1, 3)), spacing * 2


def test_full_dose_full_view_fbp_reproduces_the_source(real_slice):
    hu, spacing = real_slice
    scanner = ParallelScanner(hu.shape, spacing, full_views=1000)
    recon = mu_to_hu(scanner.reconstruct(scanner.project(hu_to_mu(hu))))
    body = measures.body_mask(hu)
    error = recon[body] - hu[body]
    # Stated tolerance (docs/simulation.md): no bias beyond 2 HU, mean absolute error under 10 HU
    # (the linear-interpolation projector smooths edges a little).
    assert abs(error.mean()) < 2.0
    assert np.abs(error).mean() < 10.0
    assert np.median(np.abs(error)) < 6.0


def test_added_degradation_keeps_the_source_and_adds_only_what_dose_and_views_change(half_slice):
    hu, spacing = half_slice
    acq = Acquisition(doses=(1.0, 0.25), views=(500, 90), full_views=500, mode="both")
    sim = simulate_slice(hu, spacing, acq, np.random.default_rng(0))
    assert len(sim.images) == 3 + 4  # the untouched point of add-difference is the source itself
    full_reference = sim.image(1.0, 500, "full")
    assert np.abs(full_reference - hu).mean() > 1.0  # a full reconstruction is not the source
    for point in [(1.0, 90), (0.25, 500), (0.25, 90)]:  # same noise and streaks, on the source
        np.testing.assert_allclose(sim.image(*point) - hu, sim.image(*point, "full") - full_reference, atol=1e-2)


def test_degradation_is_measured_in_units_of_the_source_noise_on_any_patient_and_kernel(half_slice):
    """Pure dose loss (no electronic noise, all views) measures sqrt(1/d - 1) whatever the slice
    and the filter: the label depends on the degradation, not on the anatomy or the kernel."""
    kits = find_sources([REPO / "sample_data" / "nifti"])[0][0]
    kits_half = kits.load().reshape(256, 2, 256, 2).mean(axis=(1, 3))
    for hu, spacing in (half_slice, (kits_half, kits.pixel_mm * 2)):
        for filters in (("ram-lak",), ("hann:0.5",)):
            acq = Acquisition(doses=(1.0, 0.25), views=(400,), full_views=400, mode="full", full_filters=filters,
                              electronic_sd=(0.0, 0.0))
            sim = simulate_slice(hu, spacing, acq, np.random.default_rng(1))
            measured = next(r.degradation for r in sim.images if r.dose == 0.25)
            assert measured == pytest.approx(np.sqrt(1 / 0.25 - 1), rel=0.1), (filters, spacing)
            assert next(r.degradation for r in sim.images if r.dose == 1.0) == 0.0


def test_photon_budget_sets_the_full_dose_of_full_reconstructions(half_slice):
    """An absolute budget below the source's calibrated flux: the full reconstructions' full dose is
    that share of the source's (noisier), it stays their reference (degradation 0, label 4), and a
    protocol's dose loss measures sqrt((1/d - 1) / share) source-noise units. The add-difference
    images do not change; a budget above the source's flux gives the source's dose."""
    hu, spacing = half_slice
    grid = dict(doses=(1.0, 0.25), views=(400,), full_views=400, mode="both", electronic_sd=(0.0, 0.0))
    plain = simulate_slice(hu, spacing, Acquisition(**grid), np.random.default_rng(3))
    budget = simulate_slice(hu, spacing, Acquisition(**grid, photon_budget=(plain.i0 / 4, plain.i0 / 4)),
                            np.random.default_rng(3))
    assert budget.full_dose_fraction == pytest.approx(0.25)
    np.testing.assert_array_equal(budget.image(0.25, 400), plain.image(0.25, 400))  # add-difference
    tissue = measures.tissue_mask(hu)
    quiet, noisy = (measures.noise_sd_hu(s.image(1.0, 400, "full"), tissue) for s in (plain, budget))
    assert 1.6 < noisy / quiet < 2.4  # a quarter of the photons: about twice the noise
    full = {r.dose: r.degradation for r in budget.images if r.mode == "full"}
    assert full[1.0] == 0.0
    assert full[0.25] == pytest.approx(np.sqrt((1 / 0.25 - 1) / 0.25), rel=0.1)
    generous = simulate_slice(hu, spacing, Acquisition(**grid, photon_budget=(plain.i0 * 4, plain.i0 * 4)),
                              np.random.default_rng(3))
    assert generous.full_dose_fraction == 1.0
    np.testing.assert_array_equal(generous.image(0.25, 400, "full"), plain.image(0.25, 400, "full"))
    with pytest.raises(ValueError, match="mode full or both"):
        Acquisition(photon_budget=(1e5, 1e5))


def test_other_grids_reconstruct_the_same_scan_with_labels_that_do_not_depend_on_the_grid(half_slice):
    """One projection, three grids: the source's, a finer matrix over the same field of view, and
    larger pixels over a larger one. Each grid shows the same body at its own scale, has its own
    full-dose reference (degradation 0), and the same dose loss measures sqrt(1/d - 1) on every grid."""
    hu, spacing = half_slice
    finer, coarser = ReconGrid(384), ReconGrid(256, spacing * 1.5)
    acq = Acquisition(doses=(1.0, 0.25), views=(400,), full_views=400, mode="full", electronic_sd=(0.0, 0.0),
                      grids=(finer, coarser))
    sim = simulate_slice(hu, spacing, acq, np.random.default_rng(4))
    assert acq.reconstructions() == [("full", None), ("full", finer), ("full", coarser)]
    assert {r.grid for r in sim.images} == {"", "384", str(coarser)} and len(sim.images) == 3 * 2
    body_area_mm2 = measures.body_mask(hu).sum() * spacing ** 2
    grids = (("", 256, spacing), ("384", 384, spacing * 256 / 384), (str(coarser), 256, spacing * 1.5))
    for grid, size, pixel_mm in grids:
        full = sim.image(1.0, 400, "full", grid)
        assert full.shape == (size, size)
        assert measures.body_mask(full).sum() * pixel_mm ** 2 == pytest.approx(body_area_mm2, rel=0.03)
        degradation = {r.dose: r.degradation for r in sim.images if r.grid == grid}
        assert degradation[1.0] == 0.0
        assert degradation[0.25] == pytest.approx(np.sqrt(1 / 0.25 - 1), rel=0.1), grid
        assert all(np.isfinite(r.noise_hu) and r.noise_hu > 0 for r in sim.images if r.grid == grid)
    with pytest.raises(ValueError, match="mode full or both"):
        Acquisition(grids=(finer,))


@pytest.mark.parametrize("spec, grid", [("768", ReconGrid(768)), (" 512@0.9", ReconGrid(512, 0.9))])
def test_recon_grid_reads_size_or_size_at_pixel_mm(spec, grid):
    assert ReconGrid.parse(spec) == grid and ReconGrid.parse(str(grid)) == grid
    assert grid.spacing(384.0) == pytest.approx(0.5 if grid.pixel_mm is None else 0.9)  # 384 mm over 768 pixels


@pytest.mark.parametrize("spec", ["big", "512@", "512@x", "8", "512@0"])
def test_recon_grid_refuses_what_is_not_a_grid(spec):
    with pytest.raises(ValueError, match="reconstruction grid"):
        ReconGrid.parse(spec)


def test_pixel_spacing_scales_the_line_integrals():
    disk = np.zeros((128, 128), np.float32)
    yy, xx = np.mgrid[:128, :128]
    disk[(yy - 63.5) ** 2 + (xx - 63.5) ** 2 < 40 ** 2] = 0.02  # mu in 1/mm
    for spacing in (0.5, 1.0):
        sino = ParallelScanner(disk.shape, spacing, full_views=90).project(disk)
        assert sino.max() == pytest.approx(2 * 40 * spacing * 0.02, rel=0.02)  # diameter x mu


def test_noise_in_soft_tissue_rises_as_dose_falls(half_slice):
    hu, spacing = half_slice
    acq = Acquisition(doses=(1.0, 0.5, 0.25, 0.1), views=(500,), full_views=500)
    sim = simulate_slice(hu, spacing, acq, np.random.default_rng(0))
    tissue = measures.tissue_mask(hu)
    images = [hu] + [sim.image(d, 500) for d in acq.doses[1:]]  # full dose and views: the source itself
    noise = [measures.noise_sd_hu(image, tissue) for image in images]
    assert all(a < b for a, b in zip(noise, noise[1:])), noise
    # Quantum noise variance goes as 1/dose: 10 % dose has roughly sqrt(10) x the full-dose noise.
    assert 2.0 < noise[-1] / noise[0] < 4.5


def test_streak_energy_rises_as_views_fall(half_slice):
    hu, spacing = half_slice
    scanner = ParallelScanner(hu.shape, spacing, full_views=1000)
    sino = scanner.project(hu_to_mu(hu))
    full = mu_to_hu(scanner.reconstruct(sino))
    body = measures.body_mask(hu)
    energy = [measures.rms_hu(mu_to_hu(scanner.reconstruct(sino, view_subset(1000, v))) - full, body)
              for v in (720, 360, 180, 90)]
    assert all(a < b for a, b in zip(energy, energy[1:])), energy


def test_sparse_view_sets_are_nested():
    assert set(view_subset(1000, 180)) <= set(view_subset(1000, 360)) <= set(view_subset(1000, 720))
    assert len(view_subset(1000, 180)) == 180


def test_dose_reduction_is_poisson_with_an_electronic_floor():
    # A source scan whose readings are Poisson: 1e5 x e^-4 = 1832 photons on average.
    i0, sigma_e, full_counts = 1e5, 10.0, 1e5 * np.exp(-4.0)
    rng = np.random.default_rng(1)
    p = (-np.log(rng.poisson(full_counts, (200, 500)) / i0)).astype(np.float32)
    out = reduce_dose(p, (1.0, 0.5, 0.1), i0, sigma_e, rng)
    assert out[1.0] is p
    for dose in (0.5, 0.1):
        counts = dose * full_counts
        # Poisson at the lower flux, plus the electronic top-up (this source had none of its own).
        expected_var = 1 / counts + sigma_e ** 2 * (1 - dose ** 2) / counts ** 2
        assert out[dose].mean() == pytest.approx(4.0, abs=0.01)
        assert out[dose].var() == pytest.approx(expected_var, rel=0.05)
    # Nested thinning: the 10 % scan is the 50 % scan with photons removed.
    assert np.corrcoef(out[0.5].ravel(), out[0.1].ravel())[0, 1] > 0.1


def test_label_model_endpoints_and_monotonicity():
    assert labels.degradation_to_score(0.0) == 4.0
    assert labels.degradation_to_score(1.0) == pytest.approx(2.8, abs=0.05)  # 50 % dose
    assert labels.degradation_to_score(3.0) == pytest.approx(1.3, abs=0.1)  # 10 % dose
    scores = [labels.degradation_to_score(x) for x in np.linspace(0, 20, 101)]
    assert all(a > b for a, b in zip(scores, scores[1:])) and scores[-1] > 0


@given(st.lists(st.floats(0, 4), min_size=6, max_size=6))
def test_monotone_scores_never_reward_less_dose_or_fewer_views(values):
    points = [(d, v) for d in (1.0, 0.5) for v in (1000, 360, 180)]
    fixed = labels.monotone_scores(dict(zip(points, values)))
    for p in points:
        assert fixed[p] <= dict(zip(points, values))[p]
        for q in points:
            if q[0] <= p[0] and q[1] <= p[1]:
                assert fixed[q] <= fixed[p]


def _write_npz(path: Path, hu: np.ndarray, spacing: float, patients: list[str]) -> Path:
    stack = np.stack([hu + 3 * k for k in range(len(patients))]).astype(np.int16)
    np.savez_compressed(path, hu=stack, pixel_spacing_mm=np.full((len(patients), 2), spacing, np.float32),
                        patient_id=np.array(patients))
    return path


def test_grid_labels_are_monotone_and_spread(tmp_path, half_slice):
    hu, spacing = half_slice
    source = _write_npz(tmp_path / "one.npz", hu, spacing, ["P1"])
    slices, errors, _ = find_sources([source])
    acq = Acquisition(doses=(1.0, 0.5, 0.25, 0.1), views=(1000, 720, 360, 180), full_views=1000, mode="both",
                      full_filters=("hann",))
    run = simulate_dataset(slices, tmp_path / "out", acq, workers=1)
    assert not errors and not run.errors
    assert next(r["score"] for r in run.records if r["kind"] == "source") == 4.0
    for mode, points in (("add-difference", 15), ("full", 16)):
        by_point = {(r["dose"], r["views"]): r["score"] for r in run.records if r["kind"] == mode}
        assert len(by_point) == points
        for p, score in by_point.items():
            for q, other in by_point.items():
                if q[0] <= p[0] and q[1] <= p[1]:
                    assert other <= score
        assert by_point[(1.0, 720)] > 3.0 and by_point[(0.1, 180)] < 1.0
        assert len({round(s) for s in by_point.values()}) >= 4  # spread over the scale, not clumped
    full = {(r["dose"], r["views"]): r for r in run.records if r["kind"] == "full"}
    assert full[(1.0, 1000)]["score"] == 4.0 and full[(1.0, 1000)]["filter"] == "hann"


def test_dataset_loads_with_the_train_loader_and_keeps_patients_apart(tmp_path, half_slice):
    hu, spacing = half_slice
    source = _write_npz(tmp_path / "src.npz", hu, spacing, ["P1", "P1", "P2", "P3"])
    slices, _, _ = find_sources([source])
    acq = Acquisition(doses=(1.0, 0.25), views=(200, 100), full_views=200)
    out = tmp_path / "sim"
    run = simulate_dataset(slices, out, acq, seed=3, workers=2)
    assert run.slices == 4 and len(run.records) == 4 * 4 and run.slices_per_second > 0
    labels_json = json.loads((out / "train.json").read_text())
    assert sorted(labels_json) == sorted(p.name for p in (out / "image").iterdir())
    image = tifffile.imread(out / "image" / "0001.tif")
    assert image.dtype == np.float32 and image.shape == hu.shape and 0 <= image.min() and image.max() <= 1
    assert not (out / ".image.partial").exists()

    items = load_labelled(out)
    assert len(items) == 16 and {i.group for i in items} == {"P1", "P2", "P3"}
    assert Counter(i.source for i in items) == {f"src.npz#{n}": 4 for n in range(4)}  # the ranking runs' unit
    train_keys, val_keys = split_train_val(items, 0.25, seed=0)
    group_of = {i.key: i.group for i in items}
    assert not {group_of[k] for k in train_keys} & {group_of[k] for k in val_keys}
    x, y = SliceDataset(items, tiny_config())[0]
    assert x.shape == (1, 128, 128) and y == 20  # the untouched source: score 4 -> class 20
    assert load_labelled(out / "manifest.csv")[0].group == "P1"  # the manifest is a CSV dataset too


def test_same_seed_same_data_whatever_the_workers(tmp_path, half_slice):
    hu, spacing = half_slice
    source = _write_npz(tmp_path / "src.npz", hu, spacing, ["A", "B"])
    acq = Acquisition(doses=(0.25,), views=(100,), full_views=200)
    images = {}
    for workers, seed in ((1, 5), (2, 5), (2, 6)):
        out = tmp_path / f"w{workers}s{seed}"
        simulate_dataset(find_sources([source])[0], out, acq, seed=seed, workers=workers)
        images[workers, seed] = tifffile.imread(out / "image" / "0003.tif")
    assert np.array_equal(images[1, 5], images[2, 5])
    assert not np.array_equal(images[2, 5], images[2, 6])


def test_sources_need_hu_and_square_pixels(tmp_path, half_slice):
    hu, _ = half_slice
    np.savez(tmp_path / "nospacing.npz", hu=hu[None])
    np.savez(tmp_path / "oblong.npz", hu=hu[None], pixel_spacing_mm=np.array([[0.7, 0.9]]))
    tifffile.imwrite(tmp_path / "unit.tif", np.zeros((64, 64), np.float32))
    slices, errors, _ = find_sources([tmp_path])
    reasons = {e.path.name: e.reason for e in errors}
    assert not slices
    assert "pixel_spacing_mm" in reasons["nospacing.npz"]
    assert "not square" in reasons["oblong.npz"]
    assert "not HU" in reasons["unit.tif"]
    slices, errors, _ = find_sources([tmp_path / "nospacing.npz"], pixel_spacing=0.8)
    assert len(slices) == 1 and slices[0].pixel_mm == 0.8 and slices[0].patient == "nospacing"


def test_dicom_and_nifti_sources_carry_spacing_and_patient():
    slices, errors, _ = find_sources([REPO / "sample_data" / "dicom", REPO / "sample_data" / "nifti"])
    assert not errors
    dicom = [s for s in slices if "lungfcp" in s.source]
    nifti = [s for s in slices if "kits" in s.source]
    assert len(dicom) == 4 and len(nifti) == VOLUME_SLICES
    assert dicom[0].patient == "LungFCP-01-0001" and dicom[0].pixel_mm == pytest.approx(0.7598, abs=1e-3)
    assert nifti[0].patient == "kits-00072" and nifti[0].pixel_mm == pytest.approx(0.664, abs=1e-3)


runner = CliRunner()


def test_simulate_command(tmp_path):
    out = tmp_path / "sim"
    args = ["simulate", "--source", str(REPO / "sample_data" / "nifti"), "--out", str(out),
            "--full-views", "200", "--views", "full,100", "--doses", "1,0.25", "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert f"{VOLUME_SLICES} slices" in result.output and "slices/s" in result.output
    assert len(json.loads((out / "train.json").read_text())) == VOLUME_SLICES * 4
    # An existing dataset is not replaced without --overwrite.
    again = runner.invoke(app, args)
    assert again.exit_code == 2 and "--overwrite" in again.output


def simulate_full_mode(out: Path, *options: str) -> list[dict]:
    """``simulate --mode full`` of the sample NIfTI slices at two doses, full views, with ``options``;
    the manifest's rows."""
    result = runner.invoke(app, ["simulate", "--source", str(REPO / "sample_data" / "nifti"), "--out", str(out),
                                 "--full-views", "200", "--views", "full", "--doses", "1,0.25", "--mode", "full",
                                 *options])
    assert result.exit_code == 0, result.output
    with (out / "manifest.csv").open() as f:
        return list(csv.DictReader(f))


def test_simulate_command_photon_budget_goes_into_the_manifest(tmp_path):
    rows = simulate_full_mode(tmp_path / "sim", "--photon-budget", "1e6")
    assert {r["full_dose_fraction"] for r in rows if r["kind"] == "source"} == {"1"}
    fractions = [float(r["full_dose_fraction"]) for r in rows if r["kind"] == "full"]
    assert len(fractions) == VOLUME_SLICES * 2 and all(0 < f < 1 for f in fractions)  # 10⁶ photons: below every source
    assert all(float(r["score"]) == 4.0 for r in rows if r["kind"] == "full" and r["dose"] == "1.0000")
    # every image carries its source's water-equivalent diameter: one value per slice, whatever the dose
    from clinreadnet_cli.patient_size import water_equivalent_diameter

    slices, _, _ = find_sources([REPO / "sample_data" / "nifti"])
    expected = {s.source: water_equivalent_diameter(s.load(), (s.pixel_mm, s.pixel_mm)) for s in slices}
    for r in rows:
        assert float(r["wed_mm"]) == pytest.approx(expected[r["source"]], abs=0.05)
    assert 250 < min(expected.values()) and max(expected.values()) < 300  # the KiTS volume: 264-291 mm


def test_simulate_leaves_out_images_the_readers_would_refuse(tmp_path):
    """A flux far too low for the patient leaves only noise; such an image is not written (a note
    names it), so that ``train`` on the folder does not stop at it, and the rest stay consistent."""
    out = tmp_path / "sim"
    result = runner.invoke(app, ["simulate", "--source", str(REPO / "sample_data" / "nifti"), "--out", str(out),
                                 "--full-views", "200", "--views", "full", "--doses", "1,0.01", "--mode", "full",
                                 "--photon-budget", "2", "--electronic-noise", "20"])
    assert result.exit_code == 0, result.output
    assert "not written: no spatial structure" in result.output
    with (out / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    labelled = json.loads((out / "train.json").read_text())
    written = sorted(p.name for p in (out / "image").iterdir())
    assert sorted(labelled) == sorted(Path(r["path"]).name for r in rows) == written
    assert any(r["kind"] == "source" for r in rows)
    assert len([r for r in rows if r["kind"] == "full"]) < VOLUME_SLICES * 2  # some starved reconstructions left out
    for name in written:
        assert content_problem(tifffile.imread(out / "image" / name), "unit") is None


def test_simulate_command_grids_write_each_scan_on_every_grid(tmp_path):
    out = tmp_path / "sim"
    rows = simulate_full_mode(out, "--grids", "128@2,96")
    full = [r for r in rows if r["kind"] == "full"]
    assert Counter(r["grid"] for r in full) == {"": VOLUME_SLICES * 2, "128@2": VOLUME_SLICES * 2, "96": VOLUME_SLICES * 2}
    for r in full:
        shape = tifffile.imread(out / r["path"]).shape
        assert shape == {"": shape, "128@2": (128, 128), "96": (96, 96)}[r["grid"]]
        assert (float(r["score"]) == 4.0) == (r["dose"] == "1.0000")  # each grid's own full dose is its reference
    from clinreadnet_cli.evaluation import acquisitions_from_manifest

    assert set(acquisitions_from_manifest(rows).reconstruction) == {"scanner", "full ram-lak", "full ram-lak on 128@2",
                                                                    "full ram-lak on 96"}


def test_evaluate_on_a_simulated_folder_writes_strict_json(tmp_path):
    """evaluate --format json on a simulate folder of one patient: the ordering report has the
    size-adjusted noise, and a share of no pairs (across patients) is null, never NaN."""
    from clinreadnet_cli.archs import create_model
    from clinreadnet_cli.checkpoint import save_weights

    out = tmp_path / "sim"
    made = runner.invoke(app, ["simulate", "--source", str(REPO / "sample_data" / "nifti"), "--out", str(out),
                               "--full-views", "100", "--views", "full", "--doses", "1,0.25", "--mode", "full"])
    assert made.exit_code == 0, made.output
    weights = save_weights(create_model(tiny_config()), tmp_path / "tiny.safetensors")
    result = runner.invoke(app, ["evaluate", "--data", str(out), "--split", "all", "--weights", str(weights),
                                 "--format", "json", "--workers", "0"])
    assert result.exit_code == 0, result.output

    def refuse(constant):
        raise AssertionError(f"{constant} is not JSON")

    report = json.loads(result.stdout, parse_constant=refuse)
    assert set(report["ordering"]) == {"model", "noise_hu", "noise_hu_size"}
    for scorer in report["ordering"].values():
        assert scorer["cross_patient_pairs"] == 0 and scorer["cross_patient"] is None
        assert scorer["within_slice_pairs"] > 0 and 0 <= scorer["within_slice"] <= 1


def test_simulate_command_reports_bad_sources_and_goes_on(tmp_path):
    tifffile.imwrite(tmp_path / "windowed.tif", np.zeros((64, 64), np.float32))
    result = runner.invoke(app, ["simulate", "--source", str(tmp_path / "windowed.tif"),
                                 "--source", str(REPO / "sample_data" / "nifti"), "--out", str(tmp_path / "o"),
                                 "--full-views", "100", "--views", "full", "--doses", "0.5"])
    assert result.exit_code == 1
    assert "windowed.tif" in result.output and "not HU" in result.output
    assert len(json.loads((tmp_path / "o" / "train.json").read_text())) == VOLUME_SLICES * 2


@pytest.mark.parametrize("flag, value, message", [("--views", "full,lots", "neither"),
                                                  ("--doses", "1,2", "(0, 1]"),
                                                  ("--filter", "box", "unknown FBP filter"),
                                                  ("--full-filters", "hann:2", "cutoff"),
                                                  ("--mode", "half", "mode must be"),
                                                  ("--electronic-noise", "20,5", "low <= high"),
                                                  ("--photon-budget", "1e5", "mode full or both"),
                                                  ("--photon-budget", "1e5,1e4,1e3", "LOW,HIGH"),
                                                  ("--grids", "512@0.9", "mode full or both"),
                                                  ("--grids", "512x512", "SIZE or SIZE@MM")])
def test_simulate_usage_errors(tmp_path, flag, value, message):
    result = runner.invoke(app, ["simulate", "--source", str(tmp_path), "--out", str(tmp_path / "o"), flag, value])
    assert result.exit_code == 2 and message in result.output


def test_ordering_report_counts_dominated_pairs_within_and_across_slices():
    from clinreadnet_cli.evaluation import acquisitions_from_manifest, ordering_report

    grid = [("source", 1.0, ""), ("add-difference", 1.0, 180), ("full", 1.0, 1000), ("full", 0.1, 1000),
            ("add-difference", 0.1, 180)]
    rows = [{"source": f"s{k}", "group": f"P{k}", "kind": kind, "dose": str(d), "views": str(v)}
            for k in (0, 1) for kind, d, v in grid]
    acq = acquisitions_from_manifest(rows)

    def report(first, second):
        return ordering_report(acq, np.array(first + second, dtype=float))

    # Within one slice the untouched source counts as (1.0, 1000), so it and the full-dose full
    # reconstruction are not a pair; (1.0, 180) and (0.1, 1000) are not comparable. Pairs:
    # 180<src, 180<full, 0.1<src, 0.1<full, worst<each of the other four: 8 per slice.
    good = [4.0, 2.5, 3.5, 1.5, 0.5]
    r = report(good, good)
    assert (r["within_slice_pairs"], r["within_slice"]) == (16, 1.0)
    assert (r["cross_slice_pairs"], r["cross_slice"]) == (16, 1.0) and r["cross_patient_pairs"] == 16
    assert (r["untouched_vs_low_dose_pairs"], r["untouched_vs_low_dose"]) == (4, 1.0)
    assert r["untouched_mean"] == 4.0 and r["worst_mean"] == 0.5
    # The second slice scores everything 2 lower: within-slice order is intact, across is not.
    r = report(good, [g - 2 for g in good])
    assert r["within_slice"] == 1.0 and r["cross_slice"] == 11 / 16  # 8 of 8 one way, 3 of 8 the other
    tie = report(good, [4.0, 2.5, 3.5, 1.5, 1.5])
    assert tie["within_slice"] == 15 / 16  # the more degraded image must score strictly lower
    missing = report(good, [np.nan] * 5)  # no score (e.g. no soft tissue for noise_hu): left out
    assert missing["within_slice_pairs"] == 8 and missing["cross_slice_pairs"] == 0


def test_ordering_report_keeps_pairs_of_one_reconstruction_apart():
    from clinreadnet_cli.evaluation import acquisitions_from_manifest, ordering_report

    grid = [("source", 1.0, "", ""), ("add-difference", 1.0, 180, "ram-lak"), ("full", 1.0, 1000, "hann"),
            ("full", 0.1, 1000, "hann"), ("add-difference", 0.1, 180, "ram-lak")]
    rows = [{"source": f"s{k}", "group": f"P{k}", "kind": kind, "dose": str(d), "views": str(v), "filter": f}
            for k in (0, 1) for kind, d, v, f in grid]
    acq = acquisitions_from_manifest(rows)
    assert list(acq.reconstruction[:5]) == ["scanner", "scanner", "full hann", "full hann", "scanner"]
    # Slice 1's smooth-kernel pair is reversed; everything else is in order.
    r = ordering_report(acq, np.array([4.0, 2.5, 3.5, 1.5, 0.5, 4.0, 2.5, 1.5, 3.5, 0.5]))
    # Per slice: scanner 180<src, worst<src, worst<180; full 0.1<1.0: 4 pairs of one reconstruction.
    assert (r["within_reconstruction_pairs"], r["within_reconstruction"]) == (8, 7 / 8)
    scanner, hann = r["by_reconstruction"]["scanner"], r["by_reconstruction"]["full hann"]
    assert (scanner["within_slice_pairs"], scanner["within_slice"]) == (6, 1.0)
    assert (hann["within_slice_pairs"], hann["within_slice"]) == (2, 0.5)
    assert (hann["cross_slice_pairs"], hann["cross_slice"]) == (2, 0.0)  # 1.5 vs 1.5 and 3.5 vs 3.5: ties
    one_kind = ordering_report(acquisitions_from_manifest([r for r in rows if r["kind"] != "full"]), np.ones(6))
    assert "by_reconstruction" not in one_kind


def test_cross_slice_causes_split_pairs_by_what_degrades_and_by_full_dose_noise():
    from clinreadnet_cli.evaluation import Acquisitions, cross_slice_causes

    # Two slices, each at (dose, views) = (1, 1000), (0.5, 1000), (1, 180), (0.5, 180); slice 1 is
    # noisier at full dose (a larger body under one photon budget), and the scores, reading noise
    # alone, put it 1 lower.
    grid = [(1.0, 1000), (0.5, 1000), (1.0, 180), (0.5, 180)]
    acq = Acquisitions(source=np.repeat([0, 1], 4), patient=np.repeat([0, 1], 4), untouched=np.zeros(8, bool),
                       dose=np.array([d for d, _ in grid] * 2), views=np.array([v for _, v in grid] * 2, float),
                       reconstruction=np.full(8, "full ram-lak"))
    quality = np.array([4.0, 3.0, 3.5, 2.5])
    r = cross_slice_causes(acq, np.concatenate([quality, quality - 1.0]), np.repeat([12.0, 20.0], 4))
    # Per direction: dose only (0.5 vs 1 at one view count) 2 pairs, views only 2, both 1.
    assert (r["dose_only_pairs"], r["views_only_pairs"], r["dose_and_views_pairs"]) == (4, 4, 2)
    assert r["degraded_slice_noisier_pairs"] == r["degraded_slice_quieter_pairs"] == 5
    assert r["degraded_slice_noisier"] == 1.0  # worse by protocol and by noise
    # The quiet slice degraded, against the noisy one: 3.0 < 3.0? no; 3.5 < 3.0? no; 2.5 < 3.0 yes;
    # 2.5 < 2.5? no; 2.5 < 2.0? no -> 1 of 5.
    assert r["degraded_slice_quieter"] == 1 / 5
    # A lost dose step (-1) or view step (-0.5) is hidden by the noise offset (+1) when the quiet
    # slice is the degraded one; losing both (-1.5) is not.
    assert r["dose_only"] == 2 / 4 and r["views_only"] == 2 / 4 and r["dose_and_views"] == 1.0


def test_cross_group_interval_resamples_slices_or_patients_around_the_share():
    from clinreadnet_cli.evaluation import Acquisitions, cross_group_interval, ordering_report

    # Six slices of three patients at the same four acquisitions; scores follow the acquisition
    # exactly, except that one slice reads a whole point high at every acquisition.
    grid = [(1.0, 1000), (0.5, 1000), (1.0, 180), (0.5, 180)]
    acq = Acquisitions(source=np.repeat(np.arange(6), 4), patient=np.repeat(np.arange(6) // 2, 4),
                       untouched=np.zeros(24, bool), dose=np.array([d for d, _ in grid] * 6),
                       views=np.array([v for _, v in grid] * 6, float), reconstruction=np.full(24, "full ram-lak"))
    quality = np.tile([4.0, 3.0, 3.5, 2.5], 6)
    assert cross_group_interval(acq, quality, acq.source, resamples=200) == (1.0, 1.0)
    offset = quality + np.repeat([1.0, 0, 0, 0, 0, 0], 4)
    report = ordering_report(acq, offset)
    low, high = cross_group_interval(acq, offset, acq.source, resamples=500)
    assert low < report["cross_slice"] < high == 1.0  # resamples without the odd slice order every pair
    assert (low, high) == cross_group_interval(acq, offset, acq.source, resamples=500)  # seeded
    # Over the three patients, the odd slice's patient is resampled as a whole.
    patient_low, patient_high = cross_group_interval(acq, offset, acq.patient, resamples=500)
    assert patient_low < report["cross_patient"] < patient_high == 1.0


def test_simulation_checks_add_the_size_adjusted_noise_where_the_manifest_has_sizes(tmp_path):
    """evaluate's ordering report on a simulate folder: at one flux a larger patient is noisier at
    every dose, so noise_hu misorders pairs across patients and noise_hu_size (the manifest's
    wed_mm) orders them all; a manifest without sizes reports the first two scorers only."""
    from clinreadnet_cli.data import LabelledSlice
    from clinreadnet_cli.evaluation import ImagePrediction, simulation_checks
    from clinreadnet_cli.patient_size import MU_WATER_PER_MM

    columns = "path,score,group,source,kind,filter,dose,views,wed_mm"
    lines, predictions = [columns], []
    for patient, diameter in (("small", 200.0), ("large", 320.0)):
        for dose in (1.0, 0.5, 0.25, 0.1):
            name = f"image/{len(predictions):04d}.tif"
            lines.append(f"{name},{dose * 4},{patient},{patient}#0,full,hann,{dose},1000,{diameter}")
            noise = 10.0 / math.sqrt(dose) * math.exp(MU_WATER_PER_MM * diameter / 2)
            predictions.append(ImagePrediction(item=LabelledSlice(name, tmp_path / name, dose * 4), score=dose * 4,
                                               label=0, head_sd=0.0, noise_hu=noise))
    (tmp_path / "manifest.csv").write_text("\n".join(lines) + "\n")
    checks = simulation_checks(tmp_path, predictions)
    assert checks["model"]["cross_slice"] == 1.0
    assert checks["noise_hu"]["cross_slice"] < 0.7 and checks["noise_hu_size"]["cross_slice"] == 1.0
    assert checks["noise_hu"]["within_slice"] == checks["noise_hu_size"]["within_slice"] == 1.0
    (tmp_path / "manifest.csv").write_text("\n".join(line.rsplit(",", 1)[0] for line in lines) + "\n")
    assert set(simulation_checks(tmp_path, predictions)) == {"model", "noise_hu"}


def test_size_check_fits_beta_per_kernel_on_a_one_flux_simulation():
    """research/size_check.py --fit: on a one-flux training simulation a score that reads the noise
    misorders the two patients' acquisitions; the fitted beta (mean over kernels of the cross-slice
    share) is the smallest that orders them all, and adding it to a check set shows as its own row."""
    size_check = script_module("size_check")
    from clinreadnet_cli.evaluation import Acquisitions, ordering_report
    from clinreadnet_cli.patient_size import MU_WATER_PER_MM

    doses = np.tile([1.0, 0.5, 0.25, 0.1], 4)
    diameter = np.repeat([200.0, 320.0, 200.0, 320.0], 4)
    kernel = np.repeat(["full ram-lak", "full ram-lak", "full hann", "full hann"], 4)
    log_noise = np.log(10.0 / np.sqrt(doses)) + MU_WATER_PER_MM * diameter / 2 + (kernel == "full hann") * -0.5
    acq = Acquisitions(source=np.repeat([0, 1, 0, 1], 4), patient=np.repeat([0, 1, 0, 1], 4),
                       untouched=np.zeros(16, bool), dose=doses, views=np.full(16, 1000.0), reconstruction=kernel)
    score = 3.0 - log_noise  # one score point per e-fold of noise: the size costs 0.965 points per 100 mm
    beta, share = size_check.fit_beta(acq, score, diameter)
    assert share == 1.0 and 0.0 < beta <= 1.0
    assert ordering_report(acq, score + size_check.size_term(diameter, beta - 0.125))["cross_slice"] < 1.0
    rows = size_check.rows_of(acq, {"noise_hu": np.exp(log_noise), "noise_hu_size": np.exp(log_noise), "m": score},
                              diameter, np.full(16, 0.7), fitted=("m", beta))
    assert rows[-1][0] == "m" and "fitted" in rows[-1][1] and rows[-1][2] == pytest.approx(
        ordering_report(acq, score + size_check.size_term(diameter, beta))["cross_slice"])


def test_label_ordering_script_reports_untouched_pairs_per_patient(tmp_path):
    """scripts/label_ordering.py --predictions --by-patient: one row per held-out patient with its
    untouched slices' noise, the model's untouched mean and its untouched-vs-low-dose ordering, and
    the noise range of the untouched slices outside the predictions."""
    columns = "path,score,group,source,kind,filter,dose,views,noise_hu,degradation_hu"
    grid = [("source", "", 1.0, "", 4.0), ("full", "hann", 1.0, 1000, 4.0), ("full", "hann", 0.25, 1000, 2.0),
            ("full", "hann", 0.1, 1000, 1.0)]
    manifest, predictions, index = [columns], ["path,label,prediction"], 0
    # quiet: the model orders every pair; noisy: it scores its untouched slice below its 25 % dose image
    for patient, noise, predicted in (("quiet", 8.0, (3.8, 3.5, 2.0, 1.0)), ("noisy", 22.0, (2.4, 3.0, 2.6, 1.1)),
                                      ("training", 12.0, None)):
        for (kind, filt, dose, views, label), value in zip(grid, predicted or grid):
            name = f"image/{index:04d}.tif"
            manifest.append(f"{name},{label},{patient},{patient}#0,{kind},{filt},{dose},{views},{noise},0")
            if predicted:
                predictions.append(f"/data/{name},{label},{value}")
            index += 1
    (tmp_path / "manifest.csv").write_text("\n".join(manifest) + "\n")
    (tmp_path / "predictions.csv").write_text("\n".join(predictions) + "\n")
    script = Path(__file__).resolve().parents[1] / "scripts" / "label_ordering.py"
    result = subprocess.run([sys.executable, str(script), str(tmp_path), "--predictions", str(tmp_path / "predictions.csv"),
                             "--by-patient"], capture_output=True, text=True, check=True)
    rows = {line.split(" | ")[0].strip("| "): line for line in result.stdout.splitlines() if line.startswith("| ")}
    assert "| 1 | 8.0 | 3.80 / 1.000 |" in rows["quiet"]
    assert "| 1 | 22.0 | 2.40 / 0.500 |" in rows["noisy"]  # 2.6 at 25 % dose beats 2.4; 1.1 at 10 % does not
    assert "training" not in rows
    assert "1 untouched slices of the other (training) patients: noise_hu 12.0 / 12.0 / 12.0" in result.stdout


def test_label_ordering_reference_unit_takes_the_photon_budget_out_of_the_label(tmp_path):
    """scripts/label_ordering.py --unit reference: the kernel-unit degradation times
    sqrt(full_dose_fraction), so the same dose loss under a photon budget that serves one body a
    quarter of its source dose labels as on a body served in full (sqrt(1/d - 1) at dose d)."""
    from clinreadnet_cli.simulate.labels import degradation_to_score

    columns = "path,score,group,source,kind,filter,dose,views,full_dose_fraction,noise_hu,degradation_hu,degradation"
    rows, index = [columns], 0
    for patient, share, degradations in (("small", 1.0, (0.0, 1.0, 3.0)), ("large", 0.25, (0.0, 2.0, 6.0))):
        rows.append(f"image/{index:04d}.tif,4.0,{patient},{patient}#0,source,,1.0,,1,10.0,0,0")
        index += 1
        for dose, degradation in zip((1.0, 0.5, 0.1), degradations):
            rows.append(f"image/{index:04d}.tif,{degradation_to_score(degradation):.4f},{patient},{patient}#0,"
                        f"full,hann,{dose},1000,{share},10.0,{10 * degradation},{degradation}")
            index += 1
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    script = Path(__file__).resolve().parents[1] / "scripts" / "label_ordering.py"
    subprocess.run([sys.executable, str(script), str(tmp_path), "--unit", "reference", "--write",
                    str(tmp_path / "labels.json")], check=True, capture_output=True)
    labels = json.loads((tmp_path / "labels.json").read_text())
    small, large = [[labels[f"{i:04d}.tif"] for i in range(start, start + 4)] for start in (0, 4)]
    assert small == large  # untouched, full dose, 50 %, 10 %: the budget's share divides out
    assert small == [4.0, 4.0, round(degradation_to_score(1.0), 4), round(degradation_to_score(3.0), 4)]


def test_label_ordering_labels_each_grid_of_a_slice_on_its_own():
    """grid_labels keeps a slice's grids apart: each is made monotone alone, and none overwrites another."""
    from clinreadnet_cli.simulate.labels import degradation_to_score

    grid_labels = script_module("label_ordering").grid_labels
    rows = [{"source": "s#0", "kind": "full", "filter": "ram-lak", "grid": grid, "dose": str(dose), "views": "1000",
             "degradation": str(degradation), "full_dose_fraction": "1"}
            for grid, degradations in (("", (0.0, 1.0)), ("512@0.9", (0.0, 2.0)))
            for dose, degradation in zip((1.0, 0.25), degradations)]
    assert list(grid_labels(rows, "reference")) == pytest.approx(
        [4.0, degradation_to_score(1.0), 4.0, degradation_to_score(2.0)])


def test_repeat_untouched_script_repeats_or_lists_the_untouched_training_images(tmp_path):
    """research/repeat_untouched.py: each untouched training image drawn N times, or (--untouched-val)
    listed once as the val split so that `evaluate --split val` scores them."""
    rows = ["path,kind", "image/0000.tif,source", "image/0001.tif,add", "image/0002.tif,source",
            "image/0003.tif,source"]
    (tmp_path / "manifest.csv").write_text("\n".join(rows) + "\n")
    (tmp_path / "split.json").write_text(json.dumps({"train": ["0000.tif", "0001.tif", "0002.tif"],
                                                     "val": ["0003.tif"]}))
    script = Path(__file__).resolve().parents[1] / "research" / "repeat_untouched.py"
    for extra, out in (([], "x3.json"), (["--untouched-val"], "untouched.json")):
        subprocess.run([sys.executable, str(script), str(tmp_path / "split.json"), str(tmp_path / "manifest.csv"),
                        "--times", "3", "--out", str(tmp_path / out), *extra], check=True, capture_output=True)
    repeated = json.loads((tmp_path / "x3.json").read_text())
    assert sorted(repeated["train"]) == ["0000.tif"] * 3 + ["0001.tif"] + ["0002.tif"] * 3
    assert repeated["val"] == ["0003.tif"]  # held-out images are never repeated
    untouched = json.loads((tmp_path / "untouched.json").read_text())
    assert untouched["val"] == ["0000.tif", "0002.tif"]  # the held-out untouched 0003 is not among them


def test_mix_datasets_script_merges_folders_keeps_held_out_patients_out(tmp_path):
    """scripts/mix_datasets.py: one folder of links with every labelled image, untouched training
    images repeated, a share of the degraded ones kept, and no held-out patient in the train list."""
    def folder(name, rows):
        (tmp_path / name / "image").mkdir(parents=True)
        lines = ["path,group,kind,source"] + [f"image/{file},{group},{kind},{group}#0" for file, group, kind in rows]
        (tmp_path / name / "manifest.csv").write_text("\n".join(lines) + "\n")
        for file, _, _ in rows:
            (tmp_path / name / "image" / file).write_bytes(b"tif")
        (tmp_path / name / "labels.json").write_text(json.dumps({f: 4.0 if k == "source" else 1.0 for f, _, k in rows}))
    folder("held", [("0000.tif", "P9", "source"), ("0001.tif", "P9", "full")])
    folder("a", [("0000.tif", "P1", "source"), ("0001.tif", "P1", "full"), ("0002.tif", "P9", "source")])
    folder("b", [("0000.tif", "P2", "source")] + [(f"{k:04d}.tif", "P2", "full") for k in range(1, 201)])
    script = Path(__file__).resolve().parents[1] / "scripts" / "mix_datasets.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "mix"), "--heldout", str(tmp_path / "held"),
                    "--train", str(tmp_path / "a") + ":3", "--train", str(tmp_path / "b") + ":2:0.5",
                    "--labels", "labels.json"], check=True, capture_output=True)
    split = json.loads((tmp_path / "mix" / "split.json").read_text())
    labels = json.loads((tmp_path / "mix" / "train.json").read_text())
    assert split["val"] == ["h_0000.tif", "h_0001.tif"]
    counts = Counter(split["train"])
    assert counts["t0_0000.tif"] == 3 and counts["t0_0001.tif"] == 1 and counts["t1_0000.tif"] == 2
    assert "t0_0002.tif" not in counts  # the held-out patient P9, though in a training folder
    assert "t0_0002.tif" not in labels and not (tmp_path / "mix" / "image" / "t0_0002.tif").exists()
    kept = sum(1 for name in counts if name.startswith("t1_") and name != "t1_0000.tif")
    assert 70 <= kept <= 130  # about half of b's 200 degraded images
    assert len(labels) == 2 + 2 + 201 and labels["t1_0000.tif"] == 4.0
    assert (tmp_path / "mix" / "image" / "t1_0005.tif").resolve() == (tmp_path / "b" / "image" / "0005.tif").resolve()
    with (tmp_path / "mix" / "manifest.csv").open() as f:
        manifest = {row["path"]: row for row in csv.DictReader(f)}
    assert set(manifest) == {f"image/{name}" for name in labels}  # one row per linked image
    assert manifest["image/t1_0000.tif"]["group"] == "P2" and manifest["image/h_0001.tif"]["kind"] == "full"
    # Each simulation's images of a slice form their own source, scored with the label they train on.
    assert manifest["image/t1_0000.tif"]["source"] == "t1_P2#0" and manifest["image/h_0001.tif"]["source"] == "h_P9#0"
    assert float(manifest["image/t1_0005.tif"]["score"]) == labels["t1_0005.tif"] == 1.0
    # A label without a manifest row stops the script with one line naming the file.
    (tmp_path / "a" / "labels.json").write_text(json.dumps({"0000.tif": 4.0, "9999.tif": 1.0}))
    failed = subprocess.run([sys.executable, str(script), str(tmp_path / "mix2"), "--heldout", str(tmp_path / "held"),
                             "--train", str(tmp_path / "a"), "--labels", "labels.json"], capture_output=True, text=True)
    assert failed.returncode == 1 and "9999.tif" in failed.stderr and "labels.json" in failed.stderr
    assert "Traceback" not in failed.stderr
    (tmp_path / "a" / "manifest.csv").write_text("path,group\nimage/0000.tif,P1\n")  # no kind column
    failed = subprocess.run([sys.executable, str(script), str(tmp_path / "mix3"), "--heldout", str(tmp_path / "held"),
                             "--train", str(tmp_path / "a"), "--labels", "labels.json"], capture_output=True, text=True)
    assert failed.returncode == 1 and "manifest.csv" in failed.stderr and "Traceback" not in failed.stderr


def test_mix_datasets_again_filter_links_one_kernel_a_second_time_as_its_own_simulation(tmp_path):
    rows = [("0000.tif", "source", ""), ("0001.tif", "full", "hann:0.5"), ("0002.tif", "full", "ram-lak")]
    for name, patient in (("held", "P9"), ("a", "P1")):
        (tmp_path / name / "image").mkdir(parents=True)
        lines = ["path,group,kind,filter,source"] + [f"image/{f},{patient},{k},{flt},{patient}#0" for f, k, flt in rows]
        (tmp_path / name / "manifest.csv").write_text("\n".join(lines) + "\n")
        (tmp_path / name / "train.json").write_text(json.dumps({f: 4.0 if k == "source" else 2.0 for f, k, _ in rows}))
        for file, _, _ in rows:
            (tmp_path / name / "image" / file).write_bytes(b"tif")
    script = Path(__file__).resolve().parents[1] / "scripts" / "mix_datasets.py"
    subprocess.run([sys.executable, str(script), str(tmp_path / "mix"), "--heldout", str(tmp_path / "held"),
                    "--train", str(tmp_path / "a"), "--again-filter", "hann:0.5"], check=True, capture_output=True)
    split = json.loads((tmp_path / "mix" / "split.json").read_text())
    assert sorted(split["train"]) == ["t0_0000.tif", "t0_0001.tif", "t0_0002.tif", "t0again_0001.tif"]
    # --val-count: that many held-out images, drawn with --seed, the same draw on every run.
    def val_cut(out):
        subprocess.run([sys.executable, str(script), str(out), "--heldout", str(tmp_path / "held"),
                        "--train", str(tmp_path / "a"), "--val-count", "2"], check=True, capture_output=True)
        return json.loads((out / "split.json").read_text())["val"]
    cut = [val_cut(tmp_path / "cut0"), val_cut(tmp_path / "cut1")]
    assert cut[0] == cut[1] and len(cut[0]) == 2 and set(cut[0]) < set(split["val"])
    with (tmp_path / "mix" / "manifest.csv").open() as f:
        manifest = {row["path"]: row for row in csv.DictReader(f)}
    assert manifest["image/t0again_0001.tif"]["source"] == "t0again_P1#0"
    assert (tmp_path / "mix" / "image" / "t0again_0001.tif").resolve() == (tmp_path / "a" / "image" / "0001.tif").resolve()


def test_select_sources_script_writes_the_chosen_patients_slices(tmp_path):
    """scripts/select_sources.py: every slice of the named patients, or the others at N evenly
    spaced slices a patient, with every per-slice array kept; a simulation reads the result."""
    sources = tmp_path / "sources"
    sources.mkdir()
    hu = ct_phantom(5, 64).astype(np.int16)
    np.savez_compressed(sources / "a.npz", hu=hu, pixel_spacing_mm=np.full((5, 2), 0.7, np.float32),
                        patient_id=np.array(["P1", "P1", "P2", "P2", "P2"]), kernel=np.array(list("abcde")))
    np.savez_compressed(sources / "b.npz", hu=hu[:2], pixel_spacing_mm=np.full((2, 2), 0.8, np.float32),
                        patient_id=np.array(["P3", "P3"]))
    (tmp_path / "check.json").write_text(json.dumps({"slices": [["P2", "a.npz#2"]]}))
    script = Path(__file__).resolve().parents[1] / "scripts" / "select_sources.py"

    def select(out, *args):
        subprocess.run([sys.executable, str(script), str(tmp_path / out), "--sources", str(sources), *args],
                       check=True, capture_output=True)
        return np.load(tmp_path / out)

    held = select("held.npz", "--patients-from", str(tmp_path / "check.json"))
    assert list(held["patient_id"]) == ["P2"] * 3 and list(held["kernel"]) == ["c", "d", "e"]
    np.testing.assert_array_equal(held["hu"], hu[2:])
    rest = select("rest.npz", "--patients-from", str(tmp_path / "check.json"), "--exclude", "--per-patient", "1")
    assert list(rest["patient_id"]) == ["P1", "P3"]
    assert "kernel" not in rest.files  # only arrays every contributing archive has
    assert np.allclose(rest["pixel_spacing_mm"][:, 0], [0.7, 0.8])
    sources_read, errors, _ = find_sources([tmp_path / "held.npz"])
    assert not errors and [s.patient for s in sources_read] == ["P2"] * 3


def test_feature_probe_ridge_reads_out_a_linear_target_and_dose_means_take_the_most_views():
    """research/feature_probe.py: the ridge read-out recovers a target linear in the features on
    unseen rows, and the dose spread is read at the most views."""
    probe = script_module("feature_probe")
    rng = np.random.default_rng(0)
    features = rng.normal(size=(300, 20)) * rng.uniform(0.1, 10, 20)  # columns of very different scales
    target = features @ rng.normal(size=20) / features.std(0).mean() + 2.0
    predicted = probe.ridge(features[:200], target[:200], features[200:], strength=1e-3)
    assert np.corrcoef(predicted, target[200:])[0, 1] > 0.99
    rows = [{"kind": "full", "views": v, "dose": d} for v, d in (("1000", "0.1"), ("1000", "1.0"), ("180", "0.1"))]
    assert probe.dose_means(rows, np.array([1.0, 3.0, 0.2])) == "1.00 → 3.00"


def test_ordering_check_cache_serves_the_same_slices_and_resimulates_others(tmp_path, monkeypatch):
    """scripts/ordering_check.py --cache: a second run on the same slices reads the stored images
    (no simulation); other slices are simulated anew and replace the stored file."""
    check = script_module("ordering_check")
    np.savez(tmp_path / "src.npz", hu=ct_phantom(2, size=32),
             pixel_spacing_mm=np.full((2, 2), 0.7))
    calls = []

    def fake_acquire(simulator, hu, pixel_mm, rng):
        calls.append(pixel_mm)
        return {(1.0, 1000): hu + rng.normal(size=hu.shape).astype(np.float32)}

    monkeypatch.setattr(check, "acquire", fake_acquire)
    picked = [("P1", "src.npz#0"), ("P2", "src.npz#1")]
    meta, images = check.cached_acquisitions(tmp_path / "cache", "astra-fixed-flux", picked, tmp_path, seed=7)
    assert len(calls) == 2 and meta[1] == ("src.npz#0", "P1", False, 1.0, 1000)
    again_meta, again = check.cached_acquisitions(tmp_path / "cache", "astra-fixed-flux", picked, tmp_path, seed=7)
    assert len(calls) == 2 and again_meta == meta
    np.testing.assert_array_equal(np.stack(again), np.stack(images))
    check.cached_acquisitions(tmp_path / "cache", "astra-fixed-flux", picked[:1], tmp_path, seed=7)
    assert len(calls) == 3 and sorted(p.name for p in (tmp_path / "cache").iterdir()) == [
        "astra-fixed-flux-seed7.npz"]


def test_ordering_check_names_weights_of_one_file_name_apart():
    """Two runs' best.safetensors get one column each (their folders added), not one shared column."""
    check = script_module("ordering_check")
    assert check.weights_labels([Path("weights/v4.safetensors"), Path("runs/a/best.safetensors")]) == [
        "v4.safetensors", "best.safetensors"]
    assert check.weights_labels([Path("w/v4.safetensors"), Path("runs/a/best.safetensors"),
                                 Path("runs/b/best.safetensors")]) == [
        "w/v4.safetensors", "a/best.safetensors", "b/best.safetensors"]


def test_size_check_noise_adjusted_for_size_orders_one_flux_across_patients():
    """research/size_check.py: at one flux a larger patient's image is noisier at every dose, so the
    noise figure misorders pairs across the two patients; with the size divided out it orders all."""
    size_check = script_module("size_check")
    from clinreadnet_cli.evaluation import Acquisitions
    from clinreadnet_cli.patient_size import MU_WATER_PER_MM

    doses = np.array([1.0, 0.5, 0.25, 0.1] * 2)
    diameter = np.repeat([200.0, 320.0], 4)
    noise = 10.0 / np.sqrt(doses) * np.exp(MU_WATER_PER_MM * diameter / 2)
    acq = Acquisitions(source=np.repeat([0, 1], 4), patient=np.repeat([0, 1], 4), untouched=np.zeros(8, bool),
                       dose=doses, views=np.full(8, 1000.0), reconstruction=np.full(8, "full"))
    scores = {"noise_hu": noise, "noise_hu_size": noise * np.exp(-MU_WATER_PER_MM * (diameter - 250) / 2),
              "model": -np.log(noise)}
    rows = {(scorer, added): share for scorer, added, share in
            size_check.rows_of(acq, scores, diameter, np.full(8, 0.7))}
    assert rows[("noise_hu", "")] < 0.7 and rows[("noise_hu_size", "")] == 1.0
    assert rows[("model", "")] == rows[("noise_hu", "")]  # a score that reads the noise alone misorders alike
    assert max(share for (scorer, added), share in rows.items() if scorer == "model") > rows[("model", "")]


def test_slice_offsets_finds_the_slice_that_reads_high_at_every_protocol(tmp_path):
    """research/slice_offsets.py: a slice scored half a point above the other at each acquisition gets
    an offset of +0.25 (the other -0.25) against a dose step of the scorer's own; the untouched images
    and the unmeasured ones do not count; each slice's kernel and spacing come from its source archive."""
    offsets_script = script_module("slice_offsets")
    acquisitions, scores = [], []
    for source, lift in (("src.npz#0", 0.5), ("src.npz#1", 0.0)):
        acquisitions.append([source, source, True, 1.0, 1000])
        scores.append(0.0)  # untouched: would move the offsets if it counted
        for dose, base in ((1.0, 3.0), (0.1, 1.0)):
            acquisitions.append([source, source, False, dose, 1000])
            scores.append(base + lift)
    acquisitions.append(["src.npz#0", "src.npz#0", False, 0.1, 1000])
    scores.append(np.nan)  # a figure that could not measure this image (null in the JSON): left out
    offsets, step = offsets_script.slice_offsets(acquisitions, np.array(scores))
    assert offsets == pytest.approx({"src.npz#0": 0.25, "src.npz#1": -0.25}) and step == pytest.approx(2.0)
    np.savez(tmp_path / "src.npz", hu=ct_phantom(2, size=32), pixel_spacing_mm=np.array([[0.7, 0.7], [0.98, 0.98]]),
             kernel=np.array(["B20f", "59 .10.AB50"]), slice_thickness_mm=np.array([5.0, 8.0]))
    assert offsets_script.source_facts(tmp_path, "src.npz#1") == {"kernel": "59 .10.AB50", "pixel_mm": 0.98,
                                                                  "thickness_mm": 8.0}


def test_label_ceiling_measures_each_slice_in_its_own_reference_noise():
    """research/label_ceiling.py: with nested doses the RMS of (50 % - full dose) is the reference's own
    noise, so a quiet and a noisy slice at the same dose get the same reference-unit label (pure noise:
    sqrt(1/d - 1) units), while one unit for both ranks the quiet slice's 25 % above the noisy one's 50 %."""
    label_ceiling = script_module("label_ceiling")
    rng = np.random.default_rng(0)
    body = np.full((64, 64), 40.0, np.float32)  # all soft tissue: the body mask is the whole image
    meta, images = [], []
    for source, reference_sd in (("quiet", 8.0), ("noisy", 24.0)):
        meta.append((source, source, True, 1.0, 1000))
        images.append(body)
        increments = rng.standard_normal((4, 64, 64))  # nested doses: each lower dose adds noise to the last
        variance = {1.0: 1.0, 0.5: 2.0, 0.25: 4.0, 0.1: 10.0}  # reference variances: 1 / d
        previous, noise = 0.0, np.zeros((64, 64))
        for k, dose in enumerate((1.0, 0.5, 0.25, 0.1)):
            noise = noise + increments[k] * np.sqrt(variance[dose] - previous)
            previous = variance[dose]
            meta.append((source, source, False, dose, 1000))
            images.append((body + reference_sd * noise).astype(np.float32))
    energy, unit = label_ceiling.slice_degradations(meta, np.stack(images))
    assert unit[:5] == pytest.approx([8.0] * 5, rel=0.05) and unit[5:] == pytest.approx([24.0] * 5, rel=0.05)
    degradation = energy / unit
    assert degradation[[2, 7]] == pytest.approx([1.0, 1.0])  # 50 %: the unit itself
    assert degradation[[3, 8]] == pytest.approx([3 ** 0.5] * 2, rel=0.05)  # 25 %: sqrt(1 / 0.25 - 1)
    own, shared = label_ceiling.labels_from(meta, degradation), label_ceiling.labels_from(meta, energy / 16.0)
    assert own[0] == own[1] == 4.0 and own[3] == pytest.approx(own[8], abs=0.1)  # untouched, full dose; 25 % alike
    assert list(own[1:5]) == sorted(own[1:5], reverse=True)  # monotone in dose
    assert shared[3] > shared[7]  # one unit: the quiet slice's 25 % above the noisy one's 50 %


def test_grid_jitter_reads_each_grids_noise_and_removes_a_miss_that_follows_it(tmp_path):
    """research/grid_jitter.py: a noisier grid reads a larger noise SD at both scales, and a
    first-grid miss that is linear in its noise relative to the four grids' is fitted on one set
    and removed on another (the corrected score is the four-grid mean)."""
    jitter = script_module("grid_jitter")
    rng = np.random.default_rng(0)
    grids = 0.5 + rng.normal(size=(4, 64, 64)) * np.array([0.01, 0.02, 0.03, 0.04])[:, None, None]
    tissue = jitter.tissue_unit(tiny_config())
    assert tissue == pytest.approx(((-50 + 135) / 350, (150 + 135) / 350))  # -50..150 HU in W350/L40
    noise = jitter.grid_noise(grids.astype(np.float32), tissue)
    assert (np.diff(noise, axis=0) > 0).all()
    assert np.isnan(jitter.grid_noise(np.zeros((4, 64, 64), np.float32), tissue)).all()  # no soft tissue

    def measured(path, count):
        noise = rng.normal(size=(count, 4, 2))
        miss = (noise[:, 0] - noise.mean(axis=1)) @ np.array([0.3, -0.1])
        mean = rng.uniform(0, 4, count)
        scores = np.column_stack([mean + miss] + [mean - miss / 3] * 3)
        np.savez(path, keys=np.array([f"{i:04d}.tif" for i in range(count)]), labels=mean, scores=scores,
                 noise=noise, embedding=rng.normal(size=(count, 4, 192)))
        return mean

    measured(tmp_path / "train.npz", 50)
    held_mean = measured(tmp_path / "held.npz", 30)
    jitter.fit(argparse.Namespace(train=tmp_path / "train.npz", features="noise", ridge=0.1,
                                  apply=tmp_path / "held.npz", predictions=tmp_path / "held.csv"))
    with (tmp_path / "held-corrected.csv").open() as f:
        corrected = [float(row["prediction"]) for row in csv.DictReader(f)]
    np.testing.assert_allclose(corrected, held_mean, atol=1e-3)


def test_patient_jackknife_gives_a_paired_difference_and_its_spread_over_patients():
    """research/patient_jackknife.py: a candidate that scores as the baseline differs by 0 ± 0 (NaN
    where a measure has no pairs); one that reverses one patient's doses loses ordering within one
    reconstruction, and the leave-one-patient-out spread of that loss is not zero."""
    jackknife = script_module("patient_jackknife")
    rows = [{"path": f"image/{p}{d}.tif", "group": p, "source": f"{p}.npz#0", "kind": "full", "filter": "hann",
             "dose": str(d), "views": "1000"} for p in "ABCD" for d in (0.25, 0.5, 1.0)]
    baseline = np.array([float(r["dose"]) for r in rows])
    same = jackknife.jackknife(rows, baseline, baseline.copy())
    assert same["cross_slice"] == same["within_reconstruction"] == (0, 0)
    assert np.isnan(same["untouched_vs_low_dose"][0])  # no untouched images: no pairs, no difference
    reversed_a = np.where([r["group"] == "A" for r in rows], -baseline, baseline)
    loss, spread = jackknife.jackknife(rows, baseline, reversed_a)["within_reconstruction"]
    assert loss == pytest.approx(-0.25) and spread > 0
