"""clinreadnet report: one self-contained HTML page per study, with plots and quality maps."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress

from .app import DEFAULT_WEIGHTS_HELP, EXIT_OK, EXIT_PARTIAL, Device, app, print_messages, require_paths, stderr, usage_error


@app.command()
def report(
    paths: Optional[list[Path]] = typer.Argument(None, help="DICOM / NIfTI / MHA / NRRD / TIFF files or folders."),
    out: Path = typer.Option(..., "--out", "-o", help="The HTML file to write (one file, images embedded)."),
    weights: Optional[Path] = typer.Option(None, help=DEFAULT_WEIGHTS_HELP),
    records: Optional[Path] = typer.Option(None, help="Rebuild the page from the JSON Lines records `score` wrote, "
                                                      "without the model (no quality maps)."),
    worst: int = typer.Option(2, min=0, help="Lowest-scoring slices shown per series, each with its quality map."),
    heatmaps: bool = typer.Option(True, "--heatmaps/--no-heatmaps", help="Quality maps (Grad-CAM of 4 - score) "
                                                                         "beside the lowest slices."),
    threshold: float = typer.Option(2.0, help="Summaries count slices scoring below this."),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when present."),
) -> None:
    """Write a study report a person opens in a browser: per series, score and noise against slice
    position, summaries, acquisition, and the lowest slices with what lowered their score."""
    from ..atomic import output_problem, write_text_atomic

    try:
        from ..reports import make
    except ImportError as exc:  # plots and maps are an extra
        usage_error(f"report needs its plotting and map libraries ({exc.name} is missing): "
                    "pip install 'clinreadnet[report]'")
    if (problem := output_problem(out)):
        usage_error(f"--out: {problem}")
    if records is not None:
        if paths:
            usage_error("give either PATHS to score or --records to rebuild from, not both")
        try:
            rows = [json.loads(line) for line in records.read_text(encoding="utf-8").splitlines() if line.strip()]
        except (OSError, ValueError) as exc:
            usage_error(f"--records {records}: not readable JSON Lines ({exc})")
        page, failures = make.report_from_records(rows, worst=worst, threshold=threshold), 0
    else:
        if not paths:
            usage_error("nothing to report on: give files or folders (or --records FILE.jsonl)")
        require_paths(paths)
        from ..api import Scorer

        try:
            scorer = Scorer(weights, device=device.value)
        except ValueError as exc:
            usage_error(str(exc))
        with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=stderr, transient=True,
                      disable=not stderr.is_terminal) as progress:
            task = progress.add_task("scoring", total=None)
            page, rows = make.report_from_paths(paths, scorer, worst=worst, heatmaps=heatmaps, threshold=threshold,
                                           on_slice=lambda: progress.advance(task))
        failed = [r for r in rows if "error" in r]
        print_messages(errors=[f"{r['path']}: {r['error']}" for r in failed])
        failures = len(failed)
    write_text_atomic(out, page)
    stderr.print(f"wrote {escape(str(out))} ({len(page) / 1024:,.0f} KiB)")
    raise typer.Exit(EXIT_PARTIAL if failures else EXIT_OK)
