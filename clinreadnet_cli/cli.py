"""Command line: parse, call the workflows, print. Data goes to stdout, messages to stderr.

Exit codes: 0 all good, 1 some inputs failed, 2 usage error or nothing to do, 130 interrupted (Ctrl-C).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress, TextColumn
from rich.table import Table

from . import __version__
from .config import get_config, list_configs

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE, EXIT_INTERRUPTED = 0, 1, 2, 130

app = typer.Typer(
    name="clinreadnet",
    help="No-reference CT image quality scores on the radiologists' 0-4 scale (ClinReadNet).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True, soft_wrap=True)  # never break a message across lines


class ListFormat(str, Enum):
    table = "table"
    json = "json"


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class Precision(str, Enum):
    auto = "auto"
    fp32 = "fp32"
    bf16 = "bf16"
    fp16 = "fp16"


class InputRangeChoice(str, Enum):
    auto = "auto"
    hu = "hu"
    unit = "unit"


GRADE_STYLE = {"bad": "bold red", "poor": "red", "fair": "yellow", "good": "green", "excellent": "bold green"}


def _usage_error(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {escape(message)}")
    raise typer.Exit(EXIT_USAGE)


@app.command()
def score(
    paths: list[Path] = typer.Argument(..., help="DICOM / NIfTI / MHA / NRRD / TIFF files or folders (searched recursively)."),
    weights: Optional[Path] = typer.Option(None, help="Weights file (.safetensors) or shipped weights by name "
                                                      "(sim-v1). Default: sim-v1."),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when present."),
    batch_size: int = typer.Option(8, min=1, help="Slices per model call; bounds memory."),
    workers: int = typer.Option(2, min=1, help="Background threads decoding slices."),
    precision: Precision = typer.Option(
        Precision.auto, help="auto: fp32 on CPU, bf16 autocast on CUDA. bf16 on a CPU with AVX512-BF16 is faster."),
    int8: bool = typer.Option(False, "--int8", help="CPU: dynamic int8 quantisation of the linear layers (faster)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (pays off on long runs)."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch compute threads (default: torch's choice)."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table for people; json, jsonl, csv for pipelines."),
    output: Optional[Path] = typer.Option(None, help="Write the records to FILE (atomically) instead of stdout."),
    threshold: float = typer.Option(2.0, help="Summary counts slices scoring below this (2 = fair)."),
    input_range: InputRangeChoice = typer.Option(
        InputRangeChoice.auto, help="auto: HU for DICOM/NIfTI/MHA/NRRD, [0,1] for float TIFF; or declare hu / unit."),
    limit: Optional[list[str]] = typer.Option(
        None, help="Raise or lower an input cap, NAME=VALUE (repeatable): max_side, max_aspect, max_slices, "
                   "max_volume_mib. See the README's input rules."),
) -> None:
    """Score every CT slice of the given files and folders (0 bad ... 4 excellent)."""
    # Imported here so that --help, --version and `models` start without torch.
    from . import report
    from .atomic import output_problem, streaming_output
    from .checkpoint import WeightsError, load_model, resolve_weights
    from .inference import resolve_options
    from .readers import InputError, Limits, discover
    from .scoring import SliceScore, resolve_device, score_series

    if output is not None and fmt is OutputFormat.table:
        suffix = output.suffix.lower().lstrip(".")
        if suffix not in report.FORMATS:
            _usage_error(f"cannot tell the format of {output}; pass --format json, jsonl or csv")
        fmt = OutputFormat(suffix)
    if output is not None and (problem := output_problem(output)):
        _usage_error(f"--output: {problem}")
    try:
        limits = Limits.from_pairs(limit or [])
        torch_device = resolve_device(device.value)
        options = resolve_options(torch_device, precision.value, int8, compile_model)
    except ValueError as exc:
        _usage_error(str(exc))
    if threads:
        import torch

        torch.set_num_threads(threads)
    weights_path = resolve_weights(weights)
    if not weights_path.is_file():
        _usage_error(f"no weights at {weights_path}; pass --weights FILE (a clinreadnet .safetensors file)")
    try:
        model = load_model(weights_path)
    except WeightsError as exc:
        _usage_error(str(exc))

    found = discover(paths, input_range.value, limits)
    for note in found.notes:
        stderr.print(f"[dim]note:[/] {escape(note)}")
    for warning in found.warnings:
        stderr.print(f"[yellow]warning:[/] {escape(warning)}")
    for err in found.errors:
        stderr.print(f"[bold red]error:[/] {escape(str(err))}")
    if not found.series and not found.errors:
        _usage_error("nothing to score: no files found in " + ", ".join(map(str, paths)))

    scores: list = []  # kept for the table only; records stream out as they come
    failures, scored = len(found.errors), 0
    try:
        with contextlib.ExitStack() as stack:
            writer = None
            if fmt is not OutputFormat.table:
                stream = sys.stdout if output is None else stack.enter_context(streaming_output(output))
                writer = report.RecordWriter(stream, fmt.value)
                for err in found.errors:
                    writer.write(report.to_record(err))
            progress = stack.enter_context(Progress(*Progress.get_default_columns(), MofNCompleteColumn(),
                                                    console=stderr, transient=True, disable=not stderr.is_terminal))
            task = progress.add_task("scoring", total=sum(len(s.slices) for s in found.series))
            try:
                for item in score_series(found.series, model, torch_device, batch_size=batch_size, workers=workers,
                                         on_slice=lambda: progress.advance(task), options=options):
                    if isinstance(item, InputError):
                        failures += 1
                        stderr.print(f"[bold red]error:[/] {escape(str(item))}")
                    elif writer is None:
                        scores.append(item)
                    scored += isinstance(item, SliceScore)
                    if writer is not None:
                        writer.write(report.to_record(item))
            finally:  # also on Ctrl-C: a JSON array is closed over the records written so far
                if writer is not None:
                    writer.close()
    except OSError as exc:  # the output could not be written (disk full, ...): the partial file is removed
        _usage_error(f"cannot write the records to {output or 'stdout'}: {exc.strerror or exc}")
    except KeyboardInterrupt as exc:
        kept = f"; the records so far are in {exc.partial_path}" if hasattr(exc, "partial_path") else ""
        stderr.print(f"interrupted after {scored} slice(s){escape(kept)}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if fmt is OutputFormat.table:
        _print_tables(scores, threshold)
    elif output is not None:
        stderr.print(f"wrote {scored} slice records and {failures} errors to {escape(str(output))}")
    if failures:
        stderr.print(f"[bold red]{failures} input(s) failed[/]; {scored} slice(s) scored")
    raise typer.Exit(EXIT_PARTIAL if failures else EXIT_OK)


def _print_tables(scores: list, threshold: float) -> None:
    from .scoring import group_by_series, summarise

    for rows in group_by_series(scores):
        summary = summarise(rows, threshold)
        uid = f"  [dim]{summary.series_uid}[/]" if summary.series_uid else ""
        stdout.print(f"[bold]{escape(summary.series)}[/]{uid}", soft_wrap=True)
        table = Table("file", "slice", "score", "grade", "class", "noise HU")
        for s in rows:
            style = GRADE_STYLE[s.grade]
            noise = f"{s.noise.noise_hu:.1f}" if s.noise.noise_hu is not None else f"[dim]– {s.noise.note}[/]"
            table.add_row(escape(s.path.name), str(s.slice), f"{s.score:.2f}", f"[{style}]{s.grade}[/]", str(s.label), noise)
        stdout.print(table)
        stdout.print(
            f"  {summary.slices} slice{'s' if summary.slices != 1 else ''} · mean {summary.mean:.2f} · min {summary.min:.2f} · "
            f"{summary.below_threshold} below {threshold:g}\n"
        )


@app.command()
def train(
    data: Optional[Path] = typer.Option(None, help="Training data: LDCTIQAG2023 folder (image/ + train.json) or a CSV."),
    out: Optional[Path] = typer.Option(None, help="Run directory (default runs/clinreadnet)."),
    config: Optional[Path] = typer.Option(None, help="TOML or YAML file of training options; flags override it."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out from its last finished epoch."),
    model: Optional[str] = typer.Option(None, help="Named model config (see `clinreadnet models`)."),
    epochs: Optional[int] = typer.Option(None, min=1),
    batch_size: Optional[int] = typer.Option(None, min=1),
    lr: Optional[float] = typer.Option(None),
    img_size: Optional[int] = typer.Option(None, help="Network input size (default 224)."),
    input_path: Optional[str] = typer.Option(None, help="How a slice becomes the input: decimate (default), crop, "
                                                        "resize (weights v1). See docs/model.md."),
    val_fraction: Optional[float] = typer.Option(None, help="Share of the data held out for validation (0.2)."),
    seed: Optional[int] = typer.Option(None),
    device: Optional[Device] = typer.Option(None),
    workers: Optional[int] = typer.Option(None, min=0, help="DataLoader worker processes."),
    amp: Optional[bool] = typer.Option(None, "--amp/--no-amp", help="bf16 autocast (CUDA, or CPUs with AVX512-BF16/AMX)."),
    augment: Optional[bool] = typer.Option(None, "--augment/--no-augment", help="Tab. 1 augmentation."),
    loss_off: Optional[list[str]] = typer.Option(None, help="Switch off an HRPS term (repeatable)."),
    backbone_checkpoint: Optional[Path] = typer.Option(None, help="Local Swin-T .safetensors to start from."),
    init_weights: Optional[str] = typer.Option(None, help="Fine-tune from clinreadnet weights: a file or a name "
                                                          "(sim-v1); tensors that fit are copied."),
) -> None:
    """Train a model on the LDCTIQAG2023 layout (image/*.tif + train.json) or a CSV of path,score."""
    from .config import ConfigError
    from .data import DatasetError
    from .training import TrainConfig, read_config_file, train as run_training

    flags = {
        "data": data, "out": out, "model": model, "epochs": epochs, "batch_size": batch_size, "lr": lr,
        "img_size": img_size, "val_fraction": val_fraction, "seed": seed, "device": device and device.value,
        "workers": workers, "amp": amp, "augment": augment, "loss_off": loss_off,
        "backbone_checkpoint": backbone_checkpoint, "init_weights": init_weights,
    }
    options: dict = {}
    try:
        from_file = read_config_file(config) if config else {}
        run_dir = Path(out or from_file.get("out") or "runs/clinreadnet")
        if resume:  # the run's own options first; the file and the flags may change some (e.g. epochs)
            saved = run_dir / "config.json"
            if not saved.is_file():
                _usage_error(f"--resume: no run to continue in {run_dir} (no config.json)")
            try:
                stored = json.loads(saved.read_text())
                if not isinstance(stored, dict):
                    raise ValueError("not a table of options")
            except (OSError, ValueError) as exc:
                _usage_error(f"--resume: {saved} is damaged ({exc}); this run cannot resume: "
                             "start a fresh run with a new --out")
            options.update(stored)
        options.update(from_file)
        options.update({k: (str(v) if isinstance(v, Path) else v) for k, v in flags.items() if v is not None})
        if input_path is not None:
            options["model_overrides"] = {**options.get("model_overrides", {}), "input_path": input_path}
        if "data" not in options:
            _usage_error("--data is required (an LDCTIQAG2023 folder or a CSV)")
        cfg = TrainConfig.from_dict(options)
    except ConfigError as exc:
        _usage_error(str(exc))

    show = os.environ.get("RANK", "0") == "0"
    progress = Progress(*Progress.get_default_columns(), MofNCompleteColumn(), TextColumn("{task.fields[info]}"),
                        console=stderr, transient=True, disable=not (show and stderr.is_terminal))
    task = None

    def on_event(kind: str, info: dict) -> None:
        nonlocal task
        if not show:
            return
        if kind == "start":
            stderr.print(f"training {cfg.model} on {info['train']} images, validating on {info['val']}, "
                         f"{info['steps']} steps/epoch, device {info['device']} x{info['world']}"
                         + (", bf16 autocast" if info["amp"] else ""))
        elif kind == "init":
            stderr.print(f"starting from {info['weights']}: {info['copied']} tensors copied, "
                         f"{len(info['fresh'])} freshly initialised" + (f" ({', '.join(info['fresh'][:4])}"
                         + (", ..." if len(info["fresh"]) > 4 else "") + ")" if info["fresh"] else ""))
        elif kind == "batch":
            if task is None or info["step"] == 0:
                if task is not None:
                    progress.remove_task(task)
                task = progress.add_task(f"epoch {info['epoch'] + 1}/{cfg.epochs}", total=info["steps"], info="")
            progress.update(task, advance=1, info=f"loss {info['loss']:.3f} lr {info['lr']:.2e}")
        elif kind == "epoch":
            names = {"val_plcc": "PLCC", "val_srocc": "SROCC", "val_krocc": "KROCC", "val_score": "Score"}
            val = " ".join(f"{name} {info[k]:.4f}" for k, name in names.items() if k in info)
            stderr.print(f"epoch {info['epoch']}/{cfg.epochs}  loss {info['train_loss']:.4f}  lr {info['lr']:.2e}  "
                         f"{val}{'  (best)' if info.get('best') else ''}  {info['train_seconds']:.0f} s")

    try:
        with progress:
            result = run_training(cfg, resume=resume, on_event=on_event)
    except (ConfigError, DatasetError) as exc:
        _usage_error(str(exc))
    if show:
        stderr.print(f"done: {escape(str(result.out / 'best.safetensors'))} (best validation Score {result.best_score:.4f})")


@app.command()
def evaluate(
    data: Path = typer.Option(..., help="Labelled data: LDCTIQAG2023 folder or a CSV of path,score."),
    split: str = typer.Option("test", help="test | val | train | all (val/train use the run's split.json)."),
    weights: Optional[Path] = typer.Option(None, help="Weights file or shipped weights by name (sim-v1). "
                                                      "Default: sim-v1."),
    split_file: Optional[Path] = typer.Option(None, help="split.json of the run (default: beside --weights)."),
    device: Device = typer.Option(Device.auto),
    batch_size: int = typer.Option(8, min=1),
    workers: int = typer.Option(2, min=0),
    fmt: ListFormat = typer.Option(ListFormat.table, "--format", help="table or json"),
    predictions: Optional[Path] = typer.Option(None, help="Write per-image path,label,prediction,class CSV here."),
) -> None:
    """Report PLCC, SROCC, KROCC and Score of a model on a labelled split."""
    import csv
    import io

    from .atomic import write_text_atomic
    from .checkpoint import WeightsError, read_config, resolve_weights
    from .data import DatasetError
    from .evaluation import evaluate as run_evaluation, noise_baseline, select_split, simulation_checks
    from .metrics import correlation_metrics
    from .scoring import resolve_device

    weights_path = resolve_weights(weights)
    if not weights_path.is_file():
        _usage_error(f"no weights at {weights_path}; pass --weights FILE")
    try:
        torch_device = resolve_device(device.value)
        items = select_split(data, split, split_file or weights_path.parent / "split.json")
        metrics, preds = run_evaluation(weights_path, items, torch_device, batch_size=batch_size, workers=workers)
        noise = noise_baseline(items, read_config(weights_path))
        measured = [(-n, p.item.score) for n, p in zip(noise, preds) if n == n]
        baseline = correlation_metrics(*zip(*measured)) if measured else correlation_metrics([], [])
        ordering = simulation_checks(data, preds, noise)
    except (ValueError, DatasetError, WeightsError) as exc:
        _usage_error(str(exc))
    if predictions is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "prediction", "class", "noise_hu"])
        for p, n in zip(preds, noise):
            writer.writerow([str(p.item.path), p.item.score, repr(p.score), p.label, "" if n != n else f"{n:.3f}"])
        write_text_atomic(predictions, buffer.getvalue())
    if fmt is ListFormat.json:
        extra = {"ordering": ordering} if ordering else {}
        typer.echo(json.dumps({"split": split, "images": len(preds), **metrics,
                               "noise_hu_baseline": {**baseline, "images": len(measured)}, **extra}, indent=2))
        return
    table = Table("metric", "model", "noise_hu (baseline)", title=f"{split} split, {len(preds)} images")
    for name in ("plcc", "srocc", "krocc", "score"):
        table.add_row(name.upper() if name != "score" else "Score", f"{metrics[name]:.4f}", f"{baseline[name]:.4f}")
    if ordering:  # a simulated dataset: does the score fall with dose and views?
        model, classical = ordering["model"], ordering["noise_hu"]
        for name, label in (("within_slice", "ordering within a slice"), ("cross_slice", "ordering across slices"),
                            ("cross_patient", "ordering across patients"),
                            ("untouched_vs_low_dose", "untouched vs its <= 25 % dose")):
            table.add_row(f"{label} ({model[name + '_pairs']} pairs)", f"{model[name]:.2%}", f"{classical[name]:.2%}")
        table.add_row("mean, untouched sources", f"{model['untouched_mean']:.2f}", f"{-classical['untouched_mean']:.1f} HU")
        table.add_row("mean, least dose + fewest views", f"{model['worst_mean']:.2f}", f"{-classical['worst_mean']:.1f} HU")
    stdout.print(table)


def _float_list(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        _usage_error(f"--{name}: expected comma-separated numbers, got {text!r}")


@app.command()
def simulate(
    source: list[Path] = typer.Option(..., help="Normal-dose CT: DICOM / NIfTI / MHA / NRRD / TIFF in HU, or .npz "
                                                "archives (hu, pixel_spacing_mm, patient_id). Repeatable."),
    out: Path = typer.Option(..., help="Dataset folder to write (image/ + train.json + manifest.csv)."),
    doses: str = typer.Option("1,0.5,0.25,0.1", help="Dose fractions of the source's flux."),
    views: str = typer.Option("full,720,360,180", help="Projection counts per 180 degrees; full = --full-views."),
    full_views: int = typer.Option(1000, min=2, help="Views of the full (routine) acquisition."),
    fbp_filter: str = typer.Option("ram-lak", "--filter",
                                   help="FBP filter of add-difference images: ram-lak, shepp-logan, cosine, hamming, "
                                        "hann, optionally with a cutoff (hann:0.5 is a smooth kernel)."),
    mode: str = typer.Option("add-difference", help="add-difference (degradation added to the source), full (FBP "
                                                     "reconstructions), or both from the same projections."),
    full_filters: str = typer.Option("ram-lak", help="Filters of full reconstructions, one drawn per slice "
                                                     "(comma-separated, as --filter)."),
    electronic_noise: str = typer.Option("10", help="Detector electronic noise SD in photons, or a range LOW,HIGH "
                                                    "drawn per slice (log-uniform)."),
    source_images: bool = typer.Option(True, "--source-images/--no-source-images",
                                       help="Also write each untouched source slice (score 4)."),
    seed: int = typer.Option(0, help="Seeds the noise; same seed, same data."),
    workers: int = typer.Option(os.cpu_count() or 1, min=1, help="Slices simulated in parallel (processes)."),
    pixel_spacing: Optional[float] = typer.Option(None, min=0.0, help="Pixel spacing (mm) for sources that give none."),
    input_range: InputRangeChoice = typer.Option(InputRangeChoice.auto, help="As for score; sources must be HU."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
) -> None:
    """Simulate low-dose and sparse-view CT from normal-dose slices, with proxy quality labels."""
    from .simulate import Acquisition, existing_dataset, find_sources, simulate_dataset

    view_counts = []
    for item in (v.strip() for v in views.split(",") if v.strip()):
        if item == "full":
            view_counts.append(full_views)
        elif item.isdigit():
            view_counts.append(int(item))
        else:
            _usage_error(f"--views: {item!r} is neither 'full' nor a number")
    electronic = _float_list(electronic_noise, "electronic-noise")
    if len(electronic) not in (1, 2):
        _usage_error(f"--electronic-noise: give one value or LOW,HIGH, got {electronic_noise!r}")
    try:
        acquisition = Acquisition(doses=_float_list(doses, "doses"), views=tuple(view_counts), full_views=full_views,
                                  fbp_filter=fbp_filter, mode=mode,
                                  full_filters=tuple(f.strip() for f in full_filters.split(",") if f.strip()),
                                  electronic_sd=(electronic[0], electronic[-1]))
    except ValueError as exc:
        _usage_error(str(exc))
    if existing_dataset(out) and not overwrite:
        _usage_error(f"{out} already holds a dataset (train.json or image/); pass --overwrite to replace it")

    slices, errors, notes = find_sources(source, input_range.value, pixel_spacing)
    for note in notes:
        stderr.print(f"[dim]note:[/] {escape(note)}")
    for err in errors:
        stderr.print(f"[bold red]error:[/] {escape(str(err))}")
    if not slices:
        if errors:
            raise typer.Exit(EXIT_PARTIAL)
        _usage_error("no source slices found in " + ", ".join(map(str, source)))
    grid = len(acquisition.doses) * len(acquisition.views) * len(acquisition.modes)
    stderr.print(f"simulating {len(slices)} slices x {grid} acquisitions on {workers} worker(s)")
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=stderr, transient=True,
                  disable=not stderr.is_terminal) as progress:
        task = progress.add_task("simulating", total=len(slices))
        run = simulate_dataset(slices, out, acquisition, seed=seed, workers=workers, include_source=source_images,
                               on_slice=lambda: progress.advance(task))
    for err in run.errors:
        stderr.print(f"[bold red]error:[/] {escape(str(err))}")
    stderr.print(f"wrote {len(run.records)} images from {run.slices} slices to {escape(str(out))} in {run.seconds:.1f} s "
                 f"({run.slices_per_second:.2f} slices/s)")
    failures = errors + run.errors
    if failures:
        stderr.print(f"[bold red]{len(failures)} input(s) failed[/]")
    raise typer.Exit(EXIT_PARTIAL if failures else EXIT_OK)


@app.command()
def models(fmt: ListFormat = typer.Option(ListFormat.table, "--format", help="table or json")) -> None:
    """List the named model configurations (ClinReadNet and the paper's ablations)."""
    configs = [get_config(name) for name in list_configs()]
    if fmt is ListFormat.json:
        typer.echo(json.dumps([c.to_dict() for c in configs], indent=2))
        return
    table = Table("name", "description", "loss")
    for c in configs:
        table.add_row(c.name, c.description, "HRPS" if c.loss.hrps else "heads CE")
    stdout.print(table)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"clinreadnet {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(False, "--version", callback=_version, is_eager=True, help="Print the version."),
) -> None:
    pass


def main() -> None:
    # Damaged inputs are reported once each by the readers; pydicom's own warnings would repeat them.
    warnings.filterwarnings("ignore", module=r"pydicom(\.|$)")
    warnings.filterwarnings("ignore", message=r"Invalid value for VR", category=UserWarning)
    logging.getLogger("tifffile").setLevel(logging.CRITICAL)  # its complaints become our error records
    # `clinreadnet score ... | head`: a closed pipe ends the process quietly, as for any Unix filter.
    signal.signal(signal.SIGPIPE, signal.SIG_DFL)
    app()
