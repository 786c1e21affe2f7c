"""Command line: parse, call the workflows, print. Data goes to stdout, messages to stderr.

Exit codes: 0 all good, 1 some inputs failed, 2 usage error or nothing to do.
"""

from __future__ import annotations

import json
import sys
import warnings
from enum import Enum
from pathlib import Path
from typing import NoReturn, Optional

import typer
from rich.console import Console
from rich.progress import MofNCompleteColumn, Progress
from rich.table import Table

from . import __version__
from .config import get_config, list_configs

EXIT_OK, EXIT_PARTIAL, EXIT_USAGE = 0, 1, 2

app = typer.Typer(
    name="clinreadnet",
    help="No-reference CT image quality scores on the radiologists' 0-4 scale (ClinReadNet).",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)
stdout = Console()
stderr = Console(stderr=True)


class ListFormat(str, Enum):
    table = "table"
    json = "json"


def _not_available(command: str, missing: str) -> None:
    stderr.print(f"[bold red]clinreadnet {command}[/] is not available in this version yet: {missing}")
    raise typer.Exit(EXIT_USAGE)


class OutputFormat(str, Enum):
    table = "table"
    json = "json"
    jsonl = "jsonl"
    csv = "csv"


class Device(str, Enum):
    auto = "auto"
    cpu = "cpu"
    cuda = "cuda"


class InputRangeChoice(str, Enum):
    auto = "auto"
    hu = "hu"
    unit = "unit"


GRADE_STYLE = {"bad": "bold red", "poor": "red", "fair": "yellow", "good": "green", "excellent": "bold green"}


def _usage_error(message: str) -> NoReturn:
    stderr.print(f"[bold red]error:[/] {message}")
    raise typer.Exit(EXIT_USAGE)


@app.command()
def score(
    paths: list[Path] = typer.Argument(..., help="DICOM / NIfTI / MHA / NRRD / TIFF files or folders (searched recursively)."),
    weights: Optional[Path] = typer.Option(None, help="Weights file (.safetensors). Default: the shipped weights."),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when present."),
    batch_size: int = typer.Option(8, min=1, help="Slices per model call; bounds memory."),
    workers: int = typer.Option(2, min=1, help="Background threads decoding slices."),
    fmt: OutputFormat = typer.Option(OutputFormat.table, "--format", help="table for people; json, jsonl, csv for pipelines."),
    output: Optional[Path] = typer.Option(None, help="Write the records to FILE (atomically) instead of stdout."),
    threshold: float = typer.Option(2.0, help="Summary counts slices scoring below this (2 = fair)."),
    input_range: InputRangeChoice = typer.Option(
        InputRangeChoice.auto, help="auto: HU for DICOM/NIfTI/MHA/NRRD, [0,1] for float TIFF; or declare hu / unit."),
) -> None:
    """Score every CT slice of the given files and folders (0 bad ... 4 excellent)."""
    # Imported here so that --help, --version and `models` start without torch.
    from . import report
    from .atomic import write_text_atomic
    from .checkpoint import WeightsError, default_weights, load_model
    from .readers import InputError, discover
    from .scoring import SliceScore, resolve_device, score_series

    if output is not None and fmt is OutputFormat.table:
        suffix = output.suffix.lower().lstrip(".")
        if suffix not in report.FORMATS:
            _usage_error(f"cannot tell the format of {output}; pass --format json, jsonl or csv")
        fmt = OutputFormat(suffix)
    try:
        torch_device = resolve_device(device.value)
    except ValueError as exc:
        _usage_error(str(exc))
    weights_path = weights or default_weights()
    if not weights_path.is_file():
        _usage_error(f"no weights at {weights_path}; pass --weights FILE (a clinreadnet .safetensors file)")
    try:
        model = load_model(weights_path)
    except WeightsError as exc:
        _usage_error(str(exc))

    found = discover(paths, input_range.value)
    for note in found.notes:
        stderr.print(f"[dim]note:[/] {note}")
    for err in found.errors:
        stderr.print(f"[bold red]error:[/] {err}")
    if not found.series and not found.errors:
        _usage_error("nothing to score: no files found in " + ", ".join(map(str, paths)))

    results: list = []
    total = sum(len(s.slices) for s in found.series)
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=stderr, transient=True,
                  disable=not stderr.is_terminal) as progress:
        task = progress.add_task("scoring", total=total)
        for item in score_series(found.series, model, torch_device, batch_size=batch_size, workers=workers,
                                 on_slice=lambda: progress.advance(task)):
            if isinstance(item, InputError):
                stderr.print(f"[bold red]error:[/] {item}")
            results.append(item)

    failures = found.errors + [r for r in results if isinstance(r, InputError)]
    scores = [r for r in results if isinstance(r, SliceScore)]
    if fmt is OutputFormat.table:
        _print_tables(scores, threshold)
    else:
        text = report.render([report.to_record(r) for r in [*found.errors, *results]], fmt.value)
        if output is None:
            sys.stdout.write(text)
        else:
            write_text_atomic(output, text)
            stderr.print(f"wrote {len(scores)} slice records and {len(failures)} errors to {output}")
    if failures:
        stderr.print(f"[bold red]{len(failures)} input(s) failed[/]; {len(scores)} slice(s) scored")
    raise typer.Exit(EXIT_PARTIAL if failures else EXIT_OK)


def _print_tables(scores: list, threshold: float) -> None:
    from .scoring import group_by_series, summarise

    for rows in group_by_series(scores):
        summary = summarise(rows, threshold)
        uid = f"  [dim]{summary.series_uid}[/]" if summary.series_uid else ""
        stdout.print(f"[bold]{summary.series}[/]{uid}", soft_wrap=True)
        table = Table("file", "slice", "score", "grade", "class")
        for s in rows:
            style = GRADE_STYLE[s.grade]
            table.add_row(s.path.name, str(s.slice), f"{s.score:.2f}", f"[{style}]{s.grade}[/]", str(s.label))
        stdout.print(table)
        stdout.print(
            f"  {summary.slices} slices · mean {summary.mean:.2f} · min {summary.min:.2f} · "
            f"{summary.below_threshold} below {threshold:g}\n"
        )


@app.command()
def train() -> None:
    """Train a model on the LDCTIQAG2023 layout (image/*.tif + train.json)."""
    _not_available("train", "the dataset loader and training loop are still to come.")


@app.command()
def evaluate() -> None:
    """Report PLCC, SROCC, KROCC and Score of a model on a labelled split."""
    _not_available("evaluate", "the evaluation workflow is still to come.")


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
    app()
