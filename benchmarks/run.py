"""The benchmark suite: one command, one table on stdout, one JSON file.

    python benchmarks/run.py --json benchmarks/results/benchmarks.json
    python benchmarks/run.py --only forward options         # a subset

Sections (all on data generated from ../shared/data/ct_sources; nothing large is in git):
  forward   model-only throughput, clinreadnet vs timm swin_t on identical batches, 224² and 512²
            (--sizes), on the CPU and on CUDA when present (ratio: time relative to swin_t)
  options   the fast-path options (threads, channels-last, int8, bf16, compile) and how far
            each moves the shipped weights' scores on sample_data/
  scoring   a 300-slice DICOM series with each input path (decimate with one sampling grid, then
            with all four, then weights v1's resize):
            decode only (reading, input path, noise figure), model only, end to end (ratio:
            end-to-end rate / model-only rate)
  memory    peak RSS of the `clinreadnet score` command on 300- and 1,200-slice series
  training  one epoch of the train command on 800 images (+ 200 validation)
  archive   score-archive with the local engine and with Ray (1 and 2 actors) on an archive of
            --archive SERIES SLICES, whole commands against the model-only rate; records that
            differ between the engines; peak RSS at SERIES and SERIES/5
  startup   plain `score` on a --study-slices study, whole process, against the model alone
            (alternated, --repeats times, medians)
Measures only; nothing here passes or fails on a time.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import torch

from common import write_json

import archive
import forward
import scoring
import training
from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import default_weights, load_model, save_weights
from clinreadnet_cli.inference import InferenceOptions, prepare_for_inference
from clinreadnet_cli.preprocess import prepare_slice
from clinreadnet_cli.readers import discover

SECTIONS = ("forward", "options", "scoring", "memory", "training", "archive", "startup")
REPO = Path(__file__).resolve().parents[1]


def devices(choice: str) -> list[torch.device]:
    """``all``: the CPU, then CUDA when present; ``cpu`` or ``cuda``: that one alone."""
    if choice != "all":
        return [torch.device(choice)]
    return [torch.device("cpu")] + ([torch.device("cuda")] if torch.cuda.is_available() else [])


def option_variants(device: torch.device) -> dict[str, tuple[int | None, InferenceOptions]]:
    if device.type == "cuda":
        return {"fp32": (None, InferenceOptions()),
                "bf16": (None, InferenceOptions(precision="bf16")),
                "fp16": (None, InferenceOptions(precision="fp16")),
                "bf16 + channels-last": (None, InferenceOptions(precision="bf16", channels_last=True)),
                "bf16 + channels-last + compile": (None, InferenceOptions(precision="bf16", channels_last=True,
                                                                          compile=True))}
    cores = torch.get_num_threads()
    return {f"fp32, {cores} threads": (None, InferenceOptions()),
            "fp32, 1 thread": (1, InferenceOptions()),
            "channels-last": (None, InferenceOptions(channels_last=True)),
            "int8 linear layers": (None, InferenceOptions(int8=True)),
            "bf16 autocast": (None, InferenceOptions(precision="bf16")),
            "compile": (None, InferenceOptions(compile=True))}


def score_changes(weights: Path) -> list[dict]:
    """How far int8 and bf16 move the shipped weights' scores on the sample slices (fp32 = reference)."""
    model = load_model(weights)
    slices = [prepare_slice(ref.load(), ref.value_range, model.config)
              for s in discover([REPO / "sample_data"]).series for ref in s.slices]
    batch = torch.stack(slices)
    cpu = torch.device("cpu")
    reference = prepare_for_inference(model, cpu, InferenceOptions())(batch).score
    rows = []
    for label, options in {"int8 linear layers": InferenceOptions(int8=True),
                           "bf16 autocast": InferenceOptions(precision="bf16")}.items():
        change = (prepare_for_inference(model, cpu, options)(batch).score - reference).abs()
        rows.append({"benchmark": "options", "measure": f"{label}: largest score change, {len(slices)} sample slices",
                     "value": float(change.max()), "unit": "score points", "mean": float(change.mean())})
    return rows


def format_row(row: dict) -> str:
    ratio = f"{row['ratio']:.2f}x" if "ratio" in row else ""
    return f"{row['benchmark']:<10}{row['measure']:<66}{row['value']:>10.2f} {row['unit']:<13}{ratio}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", choices=SECTIONS, default=list(SECTIONS))
    parser.add_argument("--series", type=int, nargs=2, default=[300, 1200], metavar=("SHORT", "LONG"),
                        help="slices of the two series (scoring uses SHORT, memory both)")
    parser.add_argument("--batch", type=int, default=8, help="batch of the CPU runs (CUDA: 64)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--sizes", type=int, nargs="+", default=[224, 512], help="forward: input sizes")
    parser.add_argument("--train-images", type=int, default=1000)
    parser.add_argument("--archive", type=int, nargs=2, default=[50, 40], metavar=("SERIES", "SLICES"))
    parser.add_argument("--study-slices", type=int, default=240)
    parser.add_argument("--weights", type=Path, default=None,
                        help="archive: weights to score with (default: the shipped ones)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: the CPU, then CUDA when present (scoring, archive, startup and training: the last)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    rows: list[dict] = []

    def report(new: list[dict]) -> None:
        for row in new:
            print(format_row(row), file=sys.stderr, flush=True)  # progress; the table goes to stdout at the end
        rows.extend(new)

    for device in devices(args.device):
        batch = 64 if device.type == "cuda" else args.batch
        if "forward" in args.only:
            report(forward.compare_models(device, args.sizes, batch, args.repeats))
        if "options" in args.only:
            size = 512 if device.type == "cuda" else 224
            report(forward.compare_options(device, size, batch, args.repeats, option_variants(device)))
    if "options" in args.only and default_weights().is_file():
        report(score_changes(default_weights()))

    device = devices(args.device)[-1]
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        torch.manual_seed(0)
        model = create_model("clinreadnet").eval()  # random weights: the same compute as trained ones
        weights = save_weights(model, tmp / "clinreadnet.safetensors")
        short, long = args.series
        if "scoring" in args.only or "memory" in args.only:
            scoring.build_series(tmp / "short", short)
        if "scoring" in args.only:  # weights v2's input path, v3's (every sampling grid), then v1's
            grids = save_weights(create_model("clinreadnet", sampling_grids=4).eval(), tmp / "grids.safetensors")
            resize = save_weights(create_model("clinreadnet", input_path="resize").eval(), tmp / "resize.safetensors")
            for path_weights in (weights, grids, resize):
                report(scoring.throughput(tmp / "short", path_weights, device, args.batch, workers=2,
                                          options=InferenceOptions.default_for(device)))
        if "memory" in args.only:
            scoring.build_series(tmp / "long", long)
            peaks = {n: scoring.command_peak_rss(tmp / name, weights, device.type, args.batch, [])
                     for n, name in ((short, "short"), (long, "long"))}
            report([{"benchmark": "memory", "measure": f"score command, {n}-slice series: peak RSS",
                     "value": rss, "unit": "MiB", "ratio": rss / peaks[short][0], "wall_s": wall}
                    for n, (rss, wall) in peaks.items()])
        if "archive" in args.only:
            report(archive.archive_rows(tmp, args.weights or default_weights(), *args.archive, args.batch,
                                        torch.get_num_threads()))
        if "startup" in args.only:
            report(archive.startup_rows(tmp, args.weights or default_weights(), args.batch, torch.get_num_threads(),
                                        args.study_slices, args.repeats))
    if "training" in args.only:
        report(training.epoch_throughput("clinreadnet", args.train_images, 224, args.batch, workers=2,
                                         device=device.type))

    print(f"{'benchmark':<10}{'measure':<66}{'value':>10} {'unit':<13}ratio")
    for row in rows:
        print(format_row(row))
    write_json(args.json_path, rows, args, device=device.type)


if __name__ == "__main__":
    main()
