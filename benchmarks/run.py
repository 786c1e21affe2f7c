"""The benchmark suite: one command, one table on stdout, one JSON file.

    python benchmarks/run.py --json benchmarks/results/benchmarks.json
    python benchmarks/run.py --only forward options         # a subset

Sections (all on data generated from ../shared/data/ct_sources; nothing large is in git):
  forward   model-only throughput, clinreadnet vs timm swin_t on identical batches, 224² and 512²
            (--sizes), on the CPU and on CUDA when present (ratio: time relative to swin_t)
  options   the fast-path options (threads, channels-last, int8, bf16, compile) and the CPU runtimes
            (ONNX Runtime, OpenVINO fp32 and bf16, when installed), and how far each moves the
            default weights' scores on sample_data/ (and how many pairs of slices it reorders)
  scoring   a 300-slice DICOM series: one sampling grid through torch fp32 and the default CPU
            runtime (OpenVINO) in fp32 and bf16, then four grids (v3, v4) through OpenVINO fp32:
            decode only (reading, checks, input path, noise figure), model only, end to
            end (ratio: end-to-end rate / model-only rate); then decoding alone with 1, 2 and
            every core's decoding processes
  memory    peak RSS of the `clinreadnet score` command on 300- and 1,200-slice series, at the
            default settings and with --runtime torch --precision fp32; and the first run of the
            default weights (which exports them for the default runtime) on the 300-slice one;
            value: the sum of each process's peak, together_mib: the most held at one time
  training  one epoch of the train command on 800 images (+ 200 validation)
  archive   score-archive with the local engine and with Ray (1 and 2 actors) on an archive of
            --archive SERIES SLICES, whole commands against the model-only rate; records that
            differ between the engines; peak RSS at SERIES and SERIES/5
  startup   plain `score` on a --study-slices study with the default weights, whole process, at
            the default settings and with --runtime torch --precision fp32, against the model
            alone through the same runtime (alternated, --repeats times, medians)
Measures only; nothing here passes or fails on a time.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import torch

from common import write_json

import archive
import forward
import scoring
import training
from clinreadnet_cli.api import Scorer
from clinreadnet_cli.archs import create_model
from clinreadnet_cli.checkpoint import default_weights, load_model, save_weights
from clinreadnet_cli.engine.local import decode_workers
from clinreadnet_cli.inference import CPU_RUNTIME_PREFERENCE, InferenceOptions, prepare_for_inference
from clinreadnet_cli.preprocess import prepare_slice
from clinreadnet_cli.readers import discover
from clinreadnet_cli.runtimes import installed

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
            "compile": (None, InferenceOptions(compile=True)),
            **{label: (None, options) for label, options in CPU_RUNTIMES.items() if installed(options.runtime)}}


# The CPU runtimes besides torch eager fp32, as `score --runtime R --precision P` runs them.
CPU_RUNTIMES = {"ONNX Runtime fp32": InferenceOptions(runtime="onnxruntime"),
                "OpenVINO fp32": InferenceOptions(runtime="openvino"),
                "OpenVINO bf16": InferenceOptions(runtime="openvino", precision="bf16")}


def score_changes(weights: Path) -> list[dict]:
    """How far each CPU option and runtime moves the default weights' scores on the sample slices
    (torch eager fp32 = reference), and how many pairs of slices it orders otherwise."""
    model = load_model(weights)
    slices = [prepare_slice(ref.load(), ref.value_range, model.config)
              for s in discover([REPO / "sample_data"]).series for ref in s.slices]
    batch = torch.stack(slices)
    cpu = torch.device("cpu")
    reference = prepare_for_inference(model, cpu, InferenceOptions())(batch).score
    rows = []
    variants = {"int8 linear layers": InferenceOptions(int8=True), "bf16 autocast": InferenceOptions(precision="bf16"),
                **{label: options for label, options in CPU_RUNTIMES.items() if installed(options.runtime)}}
    for label, options in variants.items():
        scores = prepare_for_inference(model, cpu, options)(batch).score
        change = (scores - reference).abs()
        first, second = torch.triu_indices(len(slices), len(slices), offset=1)
        swapped = ((reference[first] - reference[second]).sign() != (scores[first] - scores[second]).sign()).sum()
        rows.append({"benchmark": "options", "measure": f"{label}: largest score change, {len(slices)} sample slices",
                     "value": float(change.max()), "unit": "score points", "mean": float(change.mean()),
                     "pairs_reordered": int(swapped), "pairs": len(first)})
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
    parser.add_argument("--study-slices", type=int, default=300)
    parser.add_argument("--weights", type=Path, default=None,
                        help="archive: weights to score with (default: the shipped ones)")
    parser.add_argument("--device", choices=("all", "cpu", "cuda"), default="all",
                        help="all: the CPU, then CUDA when present (scoring, archive, startup and training: the last)")
    parser.add_argument("--json", dest="json_path", default=None)
    args = parser.parse_args()

    rows: list[dict] = []
    # Exports of random-weight models go to a folder of this run's, not the user's cache.
    export_cache = tempfile.TemporaryDirectory(prefix="clinreadnet-bench-")
    os.environ["CLINREADNET_CACHE"] = export_cache.name

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
        if "scoring" in args.only:
            # One grid (v2) through torch and the default CPU runtime (OpenVINO) in fp32 and bf16, then
            # v3/v4's four grids through the default runtime (torch's four-grid rate: section startup)
            grids = save_weights(create_model("clinreadnet", sampling_grids=4).eval(), tmp / "grids.safetensors")
            plain = InferenceOptions.default_for(device) if device.type == "cuda" else InferenceOptions()
            fast = [options for options in CPU_RUNTIMES.values()
                    if device.type == "cpu" and options.runtime == CPU_RUNTIME_PREFERENCE[0]]
            runs = [(weights, options) for options in [plain, *fast]] + [(grids, (fast or [plain])[0])]
            for path_weights, options in runs:
                report(scoring.throughput(tmp / "short", path_weights, device, args.batch,
                                          workers=decode_workers("auto", device.type), options=options))
            report(scoring.decode_scaling(tmp / "short", weights, args.batch,
                                          sorted({1, 2, len(os.sched_getaffinity(0))})))
        if "memory" in args.only:  # the default weights and settings, then torch eager fp32 (one grid)
            scoring.build_series(tmp / "long", long)
            shipped = args.weights or default_weights()
            if device.type == "cpu":  # the first run with these weights, its cache folder empty: it exports them
                first = {**os.environ, "CLINREADNET_CACHE": str(tmp / "empty-cache")}
                run = scoring.command_peak_rss(tmp / "short", shipped, "cpu", args.batch, [], env=first)
                report([{"benchmark": "memory", "value": run.mib, "unit": "MiB", "ratio": 1.0, "wall_s": run.seconds,
                         "together_mib": run.together_mib,
                         "measure": f"score command (default, first run: exports the weights), {short}-slice series: peak RSS"}])
            Scorer(shipped, device=device.type)  # exports the model for the default runtime before the runs
            for extra, memory_weights in (([], shipped), (["--runtime", "torch", "--precision", "fp32"], weights)):
                peaks = {n: scoring.command_peak_rss(tmp / name, memory_weights, device.type, args.batch, extra)
                         for n, name in ((short, "short"), (long, "long"))}
                settings = " ".join(extra) + " one grid" if extra else "default weights and settings"
                report([{"benchmark": "memory", "measure": f"score command ({settings}), {n}-slice series: peak RSS",
                         "value": run.mib, "unit": "MiB", "ratio": run.mib / peaks[short].mib, "wall_s": run.seconds,
                         "together_mib": run.together_mib}
                        for n, run in peaks.items()])
        if "archive" in args.only:
            report(archive.archive_rows(tmp, args.weights or default_weights(), *args.archive, args.batch,
                                        torch.get_num_threads()))
        if "startup" in args.only:
            # The default settings (on the CPU: OpenVINO fp32), then torch eager fp32
            runs = [InferenceOptions(runtime="auto", precision="auto"), InferenceOptions()]
            report(archive.startup_rows(tmp, args.weights or default_weights(), args.batch, torch.get_num_threads(),
                                        args.study_slices, args.repeats, runs))
    if "training" in args.only:
        report(training.epoch_throughput("clinreadnet", args.train_images, 224, args.batch, workers=2,
                                         device=device.type))

    print(f"{'benchmark':<10}{'measure':<66}{'value':>10} {'unit':<13}ratio")
    for row in rows:
        print(format_row(row))
    write_json(args.json_path, rows, args, device=device.type)


if __name__ == "__main__":
    main()
