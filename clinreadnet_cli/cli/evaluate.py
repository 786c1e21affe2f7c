"""clinreadnet evaluate: PLCC, SROCC, KROCC and Score on a labelled split, with the noise_hu baseline."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.table import Table

from .app import DEFAULT_WEIGHTS_NAME, WEIGHTS_HELP, Device, InputRangeChoice, ListFormat, app, stderr, stdout, usage_error


@app.command()
def evaluate(
    data: Optional[Path] = typer.Option(
        None, help="Labelled data: an LDCTIQAG2023 folder (or a folder holding one) or a CSV of path,score. "
                   "Default: the data of the newest training run (runs/latest.json)."),
    split: str = typer.Option("test", help="test (images/ + test.json), val or train (the run's split.json), or "
                                           "all. A split the data does not have is an error."),
    weights: Optional[Path] = typer.Option(
        None, help=f"{WEIGHTS_HELP} Default: the run's best.safetensors when the data comes from a run or the "
                   f"split is val/train, else {DEFAULT_WEIGHTS_NAME}."),
    run: Optional[Path] = typer.Option(None, help="A training run folder to take data, weights and split from. "
                                                  "Default: the newest run (runs/latest.json)."),
    split_file: Optional[Path] = typer.Option(None, help="split.json of the run (default: the run's, or beside "
                                                         "--weights)."),
    input_range: Optional[InputRangeChoice] = typer.Option(
        None, help="How the images' values are read (as for score). Default: the training run's own setting, else auto."),
    device: Device = typer.Option(Device.auto),
    batch_size: int = typer.Option(8, min=1),
    workers: int = typer.Option(2, min=0),
    fmt: ListFormat = typer.Option(ListFormat.table, "--format", help="table or json"),
    predictions: Optional[Path] = typer.Option(None, help="Write per-image path,label,prediction,class CSV here."),
) -> None:
    """Report PLCC, SROCC, KROCC and Score of a model on a labelled split."""
    import csv
    import io

    from ..atomic import write_text_atomic
    from ..checkpoint import WeightsError
    from ..data import DatasetError
    from ..evaluation import error_by_uncertainty
    from ..evaluation import evaluate as run_evaluation
    from ..evaluation import resolve_inputs, select_split, simulation_checks
    from ..metrics import correlation_metrics
    from ..records import with_nulls
    from ..scoring import resolve_device

    try:
        inputs = resolve_inputs(data, weights, split, split_file, run,
                                input_range=input_range.value if input_range else None)
    except (DatasetError, WeightsError) as exc:
        usage_error(str(exc))
    data, weights_path = inputs.data, inputs.weights
    if not weights_path.is_file():
        usage_error(f"no weights at {weights_path}; pass --weights FILE")
    if inputs.run is not None:
        stderr.print(f"evaluating {escape(str(weights_path))} on the {split} split of {escape(str(data))} "
                     f"(training run {escape(str(inputs.run))})")
    try:
        torch_device = resolve_device(device.value)
        items = select_split(data, split, inputs.split_file)
        metrics, preds = run_evaluation(weights_path, items, torch_device, batch_size=batch_size, workers=workers,
                                        input_range=inputs.input_range)
        measured = [(-p.noise_hu, p.item.score) for p in preds if p.noise_hu == p.noise_hu]
        baseline = correlation_metrics(*zip(*measured)) if measured else correlation_metrics([], [])
        ordering = simulation_checks(data, preds)
    except (ValueError, DatasetError, WeightsError) as exc:
        usage_error(str(exc))
    if predictions is not None:
        buffer = io.StringIO()
        writer = csv.writer(buffer, lineterminator="\n")
        writer.writerow(["path", "label", "prediction", "class", "head_sd", "noise_hu"])
        for p in preds:
            writer.writerow([str(p.item.path), p.item.score, repr(p.score), p.label, f"{p.head_sd:.4f}",
                             "" if p.noise_hu != p.noise_hu else f"{p.noise_hu:.3f}"])
        write_text_atomic(predictions, buffer.getvalue())
    if fmt is ListFormat.json:
        extra = {"ordering": ordering} if ordering else {}
        report = {"split": split, "images": len(preds), **metrics,
                  "noise_hu_baseline": {**baseline, "images": len(measured)}, **extra,
                  "error_by_uncertainty": error_by_uncertainty(preds)}
        typer.echo(json.dumps(with_nulls(report), indent=2, allow_nan=False))
        return
    # The classical figures ordered beside the model: noise_hu, and noise_hu_size where the simulate
    # folder's manifest has sizes. The correlations exist for noise_hu only.
    classical = [ordering[name] for name in ("noise_hu", "noise_hu_size") if name in ordering] if ordering else []
    table = Table("metric", "model", "noise_hu (baseline)", *(["noise_hu_size"] if len(classical) > 1 else []),
                  title=f"{split} split, {len(preds)} images")
    for name in ("plcc", "srocc", "krocc", "score"):
        table.add_row(name.upper() if name != "score" else "Score", f"{metrics[name]:.4f}", f"{baseline[name]:.4f}",
                      *["–"] * (len(classical) - 1))
    if ordering:  # a simulated dataset: does the score fall with dose and views?
        model = ordering["model"]
        for name, label in (("within_slice", "ordering within a slice"),
                            ("within_reconstruction", "  same slice, one reconstruction"),
                            ("cross_slice", "ordering across slices"),
                            ("cross_patient", "ordering across patients"),
                            ("untouched_vs_low_dose", "untouched vs its <= 25 % dose")):
            table.add_row(f"{label} ({model[name + '_pairs']} pairs)", f"{model[name]:.2%}",
                          *(f"{figure[name]:.2%}" for figure in classical))
        for kind, measured in model.get("by_reconstruction", {}).items():
            cells = []
            for figure in classical:
                theirs = figure.get("by_reconstruction", {}).get(kind)  # absent where noise_hu is never measured
                cells.append(f"{theirs['within_slice']:.2%} / {theirs['cross_slice']:.2%}" if theirs else "–")
            table.add_row(f"  {kind}: within / across slices",
                          f"{measured['within_slice']:.2%} / {measured['cross_slice']:.2%}", *cells)
        for name, label in (("untouched_mean", "mean, untouched sources"),
                            ("worst_mean", "mean, least dose + fewest views")):
            table.add_row(label, f"{model[name]:.2f}", *(f"{-figure[name]:.1f} HU" for figure in classical))
    stdout.print(table)
