"""Does the score order dose and view loss on held-out patients degraded by simulators unlike
``clinreadnet simulate``? The model and the classical noise figure, side by side.

    python scripts/ordering_check.py --data work/sim --split work/runs/clinreadnet/split.json \
        --weights weights/clinreadnet-sim-v2.safetensors [--weights weights/clinreadnet-sim.safetensors]

Takes the validation patients of a training run (never trained on), ``--per-patient`` source
slices of each (or, with ``--slices OUT.json``, the slices an earlier run's output names: no
simulated data needed), and re-acquires every slice at 100/50/25/10 % dose x 1000/720/360/180 views
with two simulators that differ from the training data's:

- ``astra-fixed-flux``: ASTRA parallel beam, full FBP reconstructions (Ram-Lak), one absolute
  photon budget for every patient (1e6 per bin and view, electronic noise 10): a large patient
  gets more noise at the same dose, unlike the per-slice calibration of ``simulate``.
- ``skimage-hann``: scikit-image's radon / iradon (another projector and FBP), a smooth Hann
  kernel, a lower budget (2e5) and more electronic noise (20).

Each image is scored with each weights file and measured with two classical figures: ``noise_hu``
and ``noise_hu_size``, the same divided by the growth of quantum noise with the patient's
water-equivalent diameter (``clinreadnet_cli.patient_size``; each image's own diameter, kept as
``wed_mm``). With one flux for every patient, the second estimates the protocol's dose whatever
the patient's size, which the first cannot. The ordering report
(``clinreadnet_cli.evaluation.ordering_report``) goes to stdout as a table and to
``benchmarks/results/ordering_check.json``, with the cross-slice pairs split by cause
(``cross_slice_causes``: less dose, fewer views or both; the more degraded image's slice noisier
or quieter than the other's at its own full dose and views, ``noise_hu`` of that acquisition).
The cross-slice and cross-patient shares come with 95 % bootstrap intervals over the slices and
over the patients (``cross_slice_95``, ``cross_patient_95``): with a dozen slices, one slice read
high at every dose moves the share by a point or more. The JSON keeps every image's acquisition
and scores, so other measures need no re-run. ``--cache DIR`` keeps each simulator's images
(``DIR/SIMULATOR-seedN.npz``, about 0.4 GB for 23 slices), so checking further weights on the
same slices costs only their scoring.
"""

from __future__ import annotations

import argparse
import csv
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch
from skimage.transform import iradon, radon

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from clinreadnet_cli.atomic import atomic_path  # noqa: E402
from clinreadnet_cli.checkpoint import load_model  # noqa: E402
from clinreadnet_cli.evaluation import (CROSS_SLICE_CAUSES, Acquisitions, cross_slice_causes,  # noqa: E402
                                         cross_group_interval, ordering_report)
from clinreadnet_cli.inference import InferenceOptions, prepare_for_inference  # noqa: E402
from clinreadnet_cli.noise import measure_noise  # noqa: E402
from clinreadnet_cli.patient_size import size_adjusted_noise, water_equivalent_diameter  # noqa: E402
from clinreadnet_cli.preprocess import prepare_slice  # noqa: E402
from clinreadnet_cli.simulate.physics import (ParallelScanner, hu_to_mu, mu_to_hu, reduce_dose,  # noqa: E402
                                              view_subset)

DOSES = (1.0, 0.5, 0.25, 0.1)
VIEWS = (1000, 720, 360, 180)
CLASSICAL = ("noise_hu", "noise_hu_size")  # lower is better; the rest are weights files
SIMULATORS = {"astra-fixed-flux": dict(i0=1e6, electronic=10.0), "skimage-hann": dict(i0=2e5, electronic=20.0)}


def noisy_full_dose(line_integrals: np.ndarray, i0: float, electronic: float, rng) -> np.ndarray:
    """Line integrals measured at flux i0: Poisson counts plus electronic noise, floored at 1."""
    counts = rng.poisson(i0 * np.exp(-line_integrals.astype(np.float64))) + electronic * rng.standard_normal(
        line_integrals.shape)
    return (-np.log(np.maximum(counts, 1.0) / i0)).astype(np.float32)


def acquire(name: str, hu: np.ndarray, pixel_mm: float, rng) -> dict[tuple[float, int], np.ndarray]:
    """(dose, views) -> HU image, full reconstructions, doses nested by binomial thinning."""
    settings = SIMULATORS[name]
    mu = hu_to_mu(hu)
    if name == "astra-fixed-flux":
        scanner = ParallelScanner(hu.shape, pixel_mm, 1000, "ram-lak")
        sinogram = scanner.project(mu)

        def reconstruct(p, indices):
            return mu_to_hu(scanner.reconstruct(p, indices))
    else:
        angles = np.linspace(0.0, 180.0, 1000, endpoint=False)
        sinogram = (radon(mu, angles, circle=False) * pixel_mm).T.astype(np.float32)  # (views, bins)

        def reconstruct(p, indices):
            image = iradon(p[indices].T, angles[indices], filter_name="hann", circle=False, output_size=hu.shape[0])
            return mu_to_hu((image / pixel_mm).astype(np.float32))
    full = noisy_full_dose(sinogram, settings["i0"], settings["electronic"], rng)
    by_dose = reduce_dose(full, DOSES, settings["i0"], settings["electronic"], rng)
    return {(d, v): reconstruct(by_dose[d], view_subset(1000, v)) for d in DOSES for v in VIEWS}


def acquire_all(simulator: str, picked: list[tuple[str, str]], sources: Path, seed: int
                ) -> tuple[list[tuple], list[np.ndarray]]:
    """Every picked slice untouched and at each (dose, views): (source, patient, untouched, dose,
    views) per image, and the HU images."""
    meta, images = [], []
    for number, (patient, source) in enumerate(picked):
        hu, pixel_mm = load_source(sources, source)
        rng = np.random.default_rng([seed, number])
        meta.append((source, patient, True, 1.0, 1000))
        images.append(hu)
        for (dose, views), image in acquire(simulator, hu, pixel_mm, rng).items():
            meta.append((source, patient, False, dose, views))
            images.append(image)
        print(f"  {simulator}: {number + 1}/{len(picked)} slices", file=sys.stderr)
    return meta, images


def cache_path(cache: Path, simulator: str, seed: int) -> Path:
    return cache / f"{simulator}-seed{seed}.npz"


def read_cache(path: Path) -> tuple[list, list[tuple], np.ndarray]:
    """A ``--cache`` file: the picked slices, ``acquire_all``'s rows and the HU images."""
    stored = np.load(path)
    meta = [(s, p, bool(u), float(d), int(v)) for s, p, u, d, v in json.loads(str(stored["meta"]))]
    return json.loads(str(stored["picked"])), meta, stored["images"]


def cached_acquisitions(cache: Path | None, simulator: str, picked: list[tuple[str, str]], sources: Path,
                        seed: int) -> tuple[list[tuple], list[np.ndarray]]:
    """``acquire_all``, read from ``cache`` when an earlier run stored the same slices and seed."""
    if cache is None:
        return acquire_all(simulator, picked, sources, seed)
    path = cache_path(cache, simulator, seed)
    if path.is_file():
        stored_picked, meta, images = read_cache(path)
        if stored_picked == [list(p) for p in picked]:
            print(f"  {simulator}: images from {path}", file=sys.stderr)
            return meta, list(images)
        print(f"  {simulator}: {path} holds other slices; simulating anew", file=sys.stderr)
    meta, images = acquire_all(simulator, picked, sources, seed)
    with atomic_path(path) as tmp:
        with tmp.open("wb") as f:  # a file object: np.savez would add ".npz" to a bare temp name
            np.savez(f, images=np.stack(images), meta=json.dumps(meta), picked=json.dumps(picked))
    return meta, images


def acquisitions_of(meta: list, simulator: str) -> Acquisitions:
    """The ordering report's view of ``acquire_all``'s (source, patient, untouched, dose, views) rows."""
    return Acquisitions(source=np.unique([m[0] for m in meta], return_inverse=True)[1],
                        patient=np.unique([m[1] for m in meta], return_inverse=True)[1],
                        untouched=np.array([m[2] for m in meta]), dose=np.array([m[3] for m in meta], float),
                        views=np.array([m[4] for m in meta], float),
                        reconstruction=np.full(len(meta), simulator))  # one simulator, one kernel


def higher_is_better(name: str, values) -> np.ndarray:
    """A scorer's values with higher meaning better quality: the classical noise figures negated
    (None, not measured, becomes NaN)."""
    return (-1 if name in CLASSICAL else 1) * np.array(values, float)


def full_dose_noise(acq: Acquisitions, noise: np.ndarray) -> np.ndarray:
    """Per image, ``noise`` of its slice's full-dose, full-view acquisition: what
    ``cross_slice_causes`` tells the noisier and the quieter slice of a pair by."""
    full_quality = ~acq.untouched & (acq.dose == max(DOSES)) & (acq.views == max(VIEWS))
    noise_of_slice = dict(zip(acq.source[full_quality], noise[full_quality]))
    return np.array([noise_of_slice[source] for source in acq.source])


def held_out_sources(data: Path, split: Path, per_patient: int, seed: int) -> list[tuple[str, str]]:
    """(patient, source 'file.npz#k') of the run's validation patients, ``per_patient`` each."""
    with (data / "manifest.csv").open() as f:
        rows = list(csv.DictReader(f))
    val = set(json.loads(split.read_text())["val"])
    by_patient: dict[str, list[str]] = {}
    for r in rows:
        if Path(r["path"]).name in val and r["kind"] == "source":
            by_patient.setdefault(r["group"], []).append(r["source"])
    rng = np.random.default_rng(seed)
    picked = []
    for patient in sorted(by_patient):
        sources = sorted(by_patient[patient])
        for k in sorted(rng.choice(len(sources), size=min(per_patient, len(sources)), replace=False)):
            picked.append((patient, sources[k]))
    return picked


def add_slice_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--data", type=Path, help="simulate output (manifest.csv) of the run")
    parser.add_argument("--split", type=Path, help="the run's split.json")
    parser.add_argument("--slices", type=Path,
                        help="instead of --data and --split: the slices of an earlier run's output JSON")


def chosen_slices(parser: argparse.ArgumentParser, args: argparse.Namespace) -> list[tuple[str, str]]:
    """The slices ``--slices`` names, else ``per_patient`` of each held-out patient of the run."""
    if args.slices:
        return [tuple(pair) for pair in json.loads(args.slices.read_text())["slices"]]
    if not (args.data and args.split):
        parser.error("give --data and --split, or --slices")
    return held_out_sources(args.data, args.split, args.per_patient, args.seed)


def weights_labels(paths: list[Path]) -> list[str]:
    """Each weights file's column name: its file name, with as many parent folders as it takes to tell
    files of one name apart (runs/a/best.safetensors beside runs/b/best.safetensors)."""
    deepest = max(len(p.parts) for p in paths)
    for depth in range(1, deepest + 1):
        labels = ["/".join(p.parts[-depth:]) for p in paths]
        if len(set(labels)) == len(labels):
            break
    return labels


def source_archive(sources_dir: Path, source: str) -> tuple[np.lib.npyio.NpzFile, int]:
    """The archive in ``sources_dir`` that ``archive.npz#k`` names, and k."""
    name, _, index = source.rpartition("#")
    return np.load(sources_dir / Path(name).name), int(index)


def load_source(sources_dir: Path, source: str) -> tuple[np.ndarray, float]:
    archive, k = source_archive(sources_dir, source)
    return archive["hu"][k].astype(np.float32), float(archive["pixel_spacing_mm"][k][0])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    add_slice_options(parser)
    parser.add_argument("--sources", type=Path, default=REPO.parent / "shared" / "data" / "ct_sources")
    parser.add_argument("--weights", type=Path, action="append", required=True)
    parser.add_argument("--per-patient", type=int, default=2)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--out", type=Path, default=REPO / "benchmarks" / "results" / "ordering_check.json")
    parser.add_argument("--cache", type=Path, help="folder that keeps the simulated images for later runs")
    args = parser.parse_args()
    picked = chosen_slices(parser, args)

    torch.set_num_threads(2)
    models = {}
    for label, path in zip(weights_labels(args.weights), args.weights):
        model = load_model(path)
        models[label] = (model.config, prepare_for_inference(model, torch.device("cpu"), InferenceOptions()))
    print(f"{len(picked)} held-out slices from {len({p for p, _ in picked})} patients", file=sys.stderr)
    results = {}
    for simulator in SIMULATORS:
        started = time.perf_counter()
        meta, images = cached_acquisitions(args.cache, simulator, picked, args.sources, args.seed)
        acq = acquisitions_of(meta, simulator)
        noise = np.array([measure_noise(image, "hu").noise_hu or np.nan for image in images], float)
        pixel_mm = {source: load_source(args.sources, source)[1] for source, *_ in meta}
        diameter = np.array([water_equivalent_diameter(image, (pixel_mm[m[0]],) * 2) for m, image in zip(meta, images)])
        adjusted = size_adjusted_noise(noise, diameter)
        noise_at_full_dose = full_dose_noise(acq, noise)
        report = {"images": len(images), "acquisitions": [list(m) for m in meta],
                  "wed_mm": [round(float(d), 1) for d in diameter], "causes": {},
                  "scores": {name: [None if np.isnan(v) else v for v in values]
                             for name, values in (("noise_hu", noise), ("noise_hu_size", adjusted))}}
        for name, (cfg, predict) in models.items():
            scores = []
            for start in range(0, len(images), 8):
                batch = torch.stack([prepare_slice(image, "hu", cfg) for image in images[start:start + 8]])
                scores += predict(batch).score.tolist()
            report["scores"][name] = scores
        for name, scores in report["scores"].items():
            values = higher_is_better(name, scores)
            report[name] = ordering_report(acq, values)
            report[name]["cross_slice_95"] = cross_group_interval(acq, values, acq.source)
            report[name]["cross_patient_95"] = cross_group_interval(acq, values, acq.patient)
            report["causes"][name] = cross_slice_causes(acq, values, noise_at_full_dose)
        report["seconds"] = round(time.perf_counter() - started, 1)
        results[simulator] = report

    measures = ("cross_slice", "cross_patient", "within_slice", "untouched_vs_low_dose", "untouched_mean", "worst_mean")
    scorers = [*CLASSICAL, *models]
    for simulator, report in results.items():
        print(f"\n{simulator} ({report['images']} images, {len(picked)} slices)")
        print("| measure | " + " | ".join(scorers) + " |")
        print("|---|" + "---|" * len(scorers))
        for m in measures:
            cells = []
            for s in scorers:
                value = report[s][m]
                cells.append(f"{-value:.1f} HU" if s in CLASSICAL and m.endswith("mean")
                             else f"{value:.2f}" if m.endswith("mean") else f"{value:.4f}")
            print(f"| {m} | " + " | ".join(cells) + " |")
            if m in ("cross_slice", "cross_patient"):
                cells = ["{:.3f}–{:.3f}".format(*report[s][f"{m}_95"]) for s in scorers]
                print(f"| {m}, 95 % interval ({m.split('_')[1]}s resampled) | " + " | ".join(cells) + " |")
        for cause in CROSS_SLICE_CAUSES:
            pairs = report["causes"]["noise_hu"][f"{cause}_pairs"]
            cells = [f"{report['causes'][s][cause]:.4f}" for s in scorers]
            print(f"| across slices, {cause} ({pairs} pairs) | " + " | ".join(cells) + " |")
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps({"slices": picked, "results": results}, indent=1) + "\n")


if __name__ == "__main__":
    main()
