"""clinreadnet score: per-slice scores of files and folders, as a table or streamed records."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import Progress, TextColumn
from rich.table import Table

from .app import (
    DEFAULT_WEIGHTS_HELP,
    EXIT_GATE,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    SAMPLING_GRIDS_HELP,
    Device,
    InputRangeChoice,
    OutputFormat,
    PRECISION_HELP,
    Precision,
    RUNTIME_HELP,
    WORKERS_HELP,
    Runtime,
    app,
    print_messages,
    require_paths,
    stderr,
    stdout,
    stdout_descriptor,
    usage_error,
    weights_file,
)

GRADE_STYLE = {"bad": "bold red", "poor": "red", "fair": "yellow", "good": "green", "excellent": "bold green"}


@app.command()
def score(
    paths: list[str] = typer.Argument(
        ..., help="DICOM / NIfTI / MHA / NRRD / TIFF files or folders (searched recursively), or a DICOMweb "
                  "service, dicomweb+http(s)://HOST:PORT/PREFIX, with --study."),
    study: Optional[str] = typer.Option(None, help="DICOMweb: the StudyInstanceUID to score (its CT series)."),
    series: Optional[str] = typer.Option(None, help="DICOMweb: only this SeriesInstanceUID of --study."),
    weights: Optional[Path] = typer.Option(None, help=DEFAULT_WEIGHTS_HELP),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when present."),
    batch_size: int = typer.Option(8, min=1, help="Forward passes per model call (a slice takes one per sampling "
                                                  "grid); bounds memory."),
    workers: str = typer.Option("auto", help=WORKERS_HELP),
    precision: Precision = typer.Option(
        Precision.auto, help=PRECISION_HELP),
    runtime: Runtime = typer.Option(Runtime.auto, help=RUNTIME_HELP),
    int8: bool = typer.Option(False, "--int8", help="CPU: dynamic int8 quantisation of the linear layers (faster)."),
    compile_model: bool = typer.Option(False, "--compile", help="torch.compile the model (pays off on long runs)."),
    threads: Optional[int] = typer.Option(None, min=1, help="torch compute threads (default: torch's choice)."),
    sampling_grids: Optional[int] = typer.Option(None, help=SAMPLING_GRIDS_HELP),
    fmt: Optional[OutputFormat] = typer.Option(
        None, "--format", show_default=False,
        help="table, json, jsonl or csv. Default: a table on a terminal, JSON Lines into a pipe or file, "
             "the suffix of --output."),
    output: Optional[Path] = typer.Option(None, help="Write the records to FILE (streamed, renamed into place at "
                                                     "the end) instead of stdout."),
    threshold: float = typer.Option(2.0, help="Summary counts slices scoring below this (2 = fair)."),
    fail_below: Optional[float] = typer.Option(
        None, help="Quality gate: exit 3 if any slice scores below this (after writing every record)."),
    fail_below_mean: Optional[float] = typer.Option(
        None, help="Quality gate: exit 3 if any series' mean score is below this."),
    sr: Optional[Path] = typer.Option(
        None, help="Also write one DICOM Structured Report per scored DICOM series into this folder "
                   "(<SeriesInstanceUID>.sr.dcm: TID 1500, each slice's score referencing its image)."),
    store_sr: bool = typer.Option(False, "--store-sr", help="Store each SR back in the DICOMweb source its "
                                                            "series came from (STOW-RS); needs --sr."),
    summary: Optional[Path] = typer.Option(
        None, help="Also write one row per series and per study (slices, mean, min, 10th percentile, slices below "
                   "--threshold, worst slice) to FILE: JSON, or CSV by the suffix."),
    input_range: InputRangeChoice = typer.Option(
        InputRangeChoice.auto, help="auto: HU for DICOM/NIfTI/MHA/NRRD, [0,1] for float TIFF; or declare hu / unit."),
    all_orientations: bool = typer.Option(
        False, "--all-orientations", help="Also score coronal, sagittal and oblique reformats (skipped with a note "
                                          "by default: the model was trained on axial slices)."),
    limit: Optional[list[str]] = typer.Option(
        None, help="Raise or lower an input cap, NAME=VALUE (repeatable): max_side, max_aspect, max_slices, "
                   "max_volume_mib. See docs/inputs.md."),
) -> None:
    """Score every CT slice of the given files and folders (0 bad ... 4 excellent)."""
    # torch is imported only once the decoding processes have started (they fork without it), so
    # that its import and the model's loading overlap the first slices' decoding.
    from .. import records
    from ..atomic import output_problem, streaming_output
    from ..checkpoint import scoring_config
    from ..config import slices_per_batch
    from ..decoding import DecodeSettings
    from ..dicomnet.sr import UnitReports
    from ..dicomnet.dicomweb import SeriesQuery, is_dicomweb
    from ..engine.base import plan_inputs
    from ..engine.local import DecodePool, decode_workers, in_unit_order, score_events
    from ..readers import InputError, Limits, file_identities
    from ..summary import SummaryCollector

    try:
        fmt = OutputFormat(records.choose_format(fmt and fmt.value, output, sys.stdout.isatty()))
    except ValueError as exc:
        usage_error(str(exc))
    if output is not None and (problem := output_problem(output)):
        usage_error(f"--output: {problem}")
    require_paths([Path(p) for p in paths if not is_dicomweb(p)])
    remote = any(is_dicomweb(p) for p in paths)
    if (study or series) and not remote:
        usage_error("--study and --series choose what to score from a DICOMweb source (dicomweb+http://...)")
    if remote and not study:
        usage_error("a DICOMweb source needs --study UID (the study to score; score-archive queries a whole "
                    "archive)")
    if store_sr and (sr is None or not remote):
        usage_error("--store-sr sends the reports of --sr back to a DICOMweb source (dicomweb+http://...); "
                    "give both")
    if sr is not None and sr.exists() and not sr.is_dir():
        usage_error(f"--sr {sr}: not a folder")
    weights_path = weights_file(weights)
    try:
        workers_count = decode_workers(workers, device.value)
        limits = Limits.from_pairs(limit or [])
        cfg = scoring_config(weights_path, sampling_grids)
        settings = DecodeSettings(cfg, slices_per_batch(batch_size, cfg.sampling_grids), input_range.value, limits,
                                  all_orientations)
    except ValueError as exc:  # WeightsError and ConfigError among them
        usage_error(str(exc))

    own_output = file_identities(stdout_descriptor(), output, summary)  # `score study/ > study/x`: not an input
    try:
        plan = plan_inputs(paths, all_orientations, SeriesQuery(study, series), own_output)
    except ValueError as exc:
        usage_error(str(exc))
    print_messages(plan.notes, errors=plan.errors)
    if not plan.units and not plan.errors:
        usage_error("nothing to score: no files found in " + ", ".join(map(str, paths)))

    summaries = SummaryCollector(threshold)
    scores: list = []  # kept for the table only; records stream out as they come
    failures, scored = len(plan.errors), 0
    try:
        with contextlib.ExitStack() as stack:
            pool = stack.enter_context(DecodePool(settings, workers_count))
            decoded = pool.events(plan.units)  # the workers start reading now, while torch and the model load
            scorer = _load_scorer(weights_path, device, precision, int8, compile_model, batch_size, threads,
                                  sampling_grids, runtime)

            writer = None
            if fmt is not OutputFormat.table:
                stream = sys.stdout if output is None else stack.enter_context(streaming_output(output))
                writer = records.RecordWriter(stream, fmt.value)
                for error in plan.errors:
                    writer.write(records.to_record(error))
            progress = stack.enter_context(Progress(*Progress.get_default_columns()[:1], TextColumn("{task.completed} slices"),
                                                    console=stderr, transient=True, disable=not stderr.is_terminal))
            task = progress.add_task("scoring", total=None)
            reports = (UnitReports(plan.units, sr, threshold, store_sr, before_report=scorer.release_memory)
                       if sr is not None else None)
            events = score_events(decoded, scorer, on_warning=lambda text: print_messages(warnings=[text]))
            try:
                for index, items in in_unit_order(events):
                    for item in items:
                        if isinstance(item, InputError):
                            failures += 1
                            print_messages(errors=[item])
                        record = records.to_record(item, scorer.identity)
                        if "score" in record:
                            scored += 1
                            progress.advance(task)
                            summaries.add(record)
                            if writer is None:
                                scores.append(record)
                        if writer is not None:
                            writer.write(record)
                        if reports is not None:
                            failures += _report_errors(reports.add(index, record))
                if reports is not None:
                    failures += _report_errors(reports.finish())
            finally:  # also on Ctrl-C: a JSON array is closed over the records written so far
                if writer is not None:
                    writer.close()
        if summary is not None and scored:
            write_summary(summary, summaries)
    except OSError as exc:  # the output could not be written (disk full, ...): the partial file is removed
        usage_error(f"cannot write to {output or summary or 'stdout'}: {exc.strerror or exc}")
    except KeyboardInterrupt as exc:
        kept = f"; the records so far are in {exc.partial_path}" if hasattr(exc, "partial_path") else ""
        stderr.print(f"interrupted after {scored} slice(s){escape(kept)}")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    if reports is not None and reports.written:
        sent = " and stored them in the DICOMweb source" if store_sr else ""
        stderr.print(f"wrote {len(reports.written)} Structured Report(s) to {escape(str(sr))}{sent}")
    if fmt is OutputFormat.table:
        _print_tables(scores, summaries)
    elif output is not None:
        stderr.print(f"wrote {scored} slice records and {failures} errors to {escape(str(output))}")
    if failures:
        stderr.print(f"[bold red]{failures} input(s) failed[/]; {scored} slice(s) scored")
    gate = summaries.gate(fail_below, fail_below_mean)
    if gate:
        print_messages(errors=[f"quality gate not met: {reason}" for reason in gate])
        raise typer.Exit(EXIT_GATE)
    raise typer.Exit(EXIT_PARTIAL if failures else EXIT_OK)


def _load_scorer(weights_path, device, precision, int8, compile_model, batch_size, threads, sampling_grids,
                 runtime):
    """The model (imports torch); a bad option is a usage error."""
    from ..api import ScorerSpec

    try:
        return ScorerSpec(weights_path, device.value, precision.value, threads, batch_size, int8, compile_model,
                          sampling_grids, runtime.value).build()
    except ValueError as exc:  # WeightsError and ConfigError among them
        usage_error(str(exc))


def _report_errors(errors: list[str]) -> int:
    print_messages(errors=errors)
    return len(errors)


def write_summary(path: Path, summaries) -> None:
    """One row per series, then one per study, as JSON or CSV by the file's suffix."""
    import csv
    import io
    import json

    from ..atomic import write_text_atomic
    from ..summary import SUMMARY_FIELDS

    rows = [s.to_record() for s in summaries.series() + summaries.studies()]
    if path.suffix.lower() == ".csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=SUMMARY_FIELDS, lineterminator="\n")
        writer.writeheader()
        writer.writerows(rows)
        write_text_atomic(path, buffer.getvalue())
    else:
        write_text_atomic(path, json.dumps(rows, indent=2) + "\n")


def _print_tables(records: list[dict], summaries) -> None:
    from ..summary import series_key

    if not stdout.is_terminal:  # into a file or pipe: whole names, no wrapping
        stdout.width = 1000
    rows_by_series: dict[tuple, list[dict]] = {}
    for r in records:
        rows_by_series.setdefault(series_key(r), []).append(r)
    for summary, rows in zip(summaries.series(), rows_by_series.values()):
        uid = f"  [dim]{summary.series_uid}[/]" if summary.series_uid else ""
        stdout.print(f"[bold]{escape(summary.label)}[/]{uid}", soft_wrap=True)
        table = Table("file", "slice", "score", "grade", "noise HU")
        for r in rows:
            noise = f"{r['noise_hu']:.1f}" if r["noise_hu"] is not None else f"[dim]– {r['noise_note']}[/]"
            table.add_row(escape(Path(r["path"]).name), str(r["slice"]), f"{r['score']:.2f}",
                          f"[{GRADE_STYLE[r['grade']]}]{r['grade']}[/]", noise)
        stdout.print(table)
        stdout.print(
            f"  {summary.slices} slice{'s' if summary.slices != 1 else ''} · mean {summary.mean:.2f} · "
            f"min {summary.min:.2f} · 10th percentile {summary.p10:.2f} · "
            f"{summary.below_threshold} below {summary.threshold:g}\n"
        )
