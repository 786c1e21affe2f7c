"""clinreadnet score-archive: score a whole archive into a resumable Parquet results folder."""

from __future__ import annotations

from enum import Enum
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn, TimeRemainingColumn

from .app import (
    DEFAULT_WEIGHTS_HELP,
    EXIT_INTERRUPTED,
    EXIT_OK,
    EXIT_PARTIAL,
    SAMPLING_GRIDS_HELP,
    Device,
    InputRangeChoice,
    PRECISION_HELP,
    Precision,
    RUNTIME_HELP,
    Runtime,
    app,
    print_messages,
    require_paths,
    stderr,
    usage_error,
    weights_file,
)


class Engine(str, Enum):
    local = "local"
    ray = "ray"


@app.command("score-archive")
def score_archive(
    roots: list[str] = typer.Argument(..., help="Archive folders (or files), searched recursively, or a DICOMweb "
                                                "service, dicomweb+http(s)://HOST:PORT/PREFIX, queried by QIDO-RS."),
    modality: str = typer.Option("CT", help="DICOMweb: the modality of the series to score."),
    since: Optional[str] = typer.Option(None, help="DICOMweb: only studies of this date or later (YYYY-MM-DD)."),
    study: Optional[str] = typer.Option(None, help="DICOMweb: only this StudyInstanceUID."),
    out: Path = typer.Option(..., "--out", "-o", help="Results folder: records/*.parquet, series.parquet, "
                                                      "manifest.jsonl, run.json. A rerun resumes it."),
    engine: Engine = typer.Option(Engine.local, help="local: decoding processes beside the model on this machine; "
                                                     "ray: Ray Data on a cluster (RAY_ADDRESS, or a local one)."),
    workers: str = typer.Option("auto", help="local: decoding processes (auto: with a GPU every free core but one, "
                                             "on the CPU one); ray: inference actors (one model each, one GPU each "
                                             "where the cluster has GPUs; auto: 2)."),
    retry_failed: bool = typer.Option(False, "--retry-failed", help="Score again the series that failed last time "
                                                                    "(finished ones are always skipped)."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Start the results folder afresh."),
    weights: Optional[Path] = typer.Option(None, help=DEFAULT_WEIGHTS_HELP),
    device: Device = typer.Option(Device.auto, help="auto picks CUDA when present."),
    precision: Precision = typer.Option(Precision.auto, help=PRECISION_HELP),
    batch_size: int = typer.Option(8, min=1, help="Forward passes per model call, one per slice and sampling grid "
                                                  "(batches never span two series)."),
    runtime: Runtime = typer.Option(Runtime.auto, help=RUNTIME_HELP),
    threads: Optional[int] = typer.Option(None, min=1, help="torch compute threads per model (default: torch's "
                                                            "choice; ray: the actor's CPUs)."),
    sampling_grids: Optional[int] = typer.Option(None, help=SAMPLING_GRIDS_HELP),
    units_per_task: int = typer.Option(16, min=1, help="ray: series per Ray Data job and commit."),
    shard_records: int = typer.Option(4096, min=1, help="local: records per Parquet shard (a shard is also "
                                                        "committed every minute); a kill loses at most one."),
    threshold: float = typer.Option(2.0, help="series.parquet counts slices scoring below this."),
    input_range: InputRangeChoice = typer.Option(InputRangeChoice.auto, help="auto: HU for DICOM/NIfTI/MHA/NRRD, "
                                                                             "[0,1] for float TIFF."),
    all_orientations: bool = typer.Option(False, "--all-orientations", help="Also score non-axial reformats."),
    limit: Optional[list[str]] = typer.Option(None, help="Input caps, NAME=VALUE (as for score)."),
) -> None:
    """Score every series under ROOTS into a results folder; rerun to resume (finished series are
    skipped), --retry-failed to retry failed ones. Exit 1 if any series failed."""
    from ..engine.archive import plan_archive
    from ..engine.archive import score_archive as run
    from ..api import ScorerSpec
    from ..engine.base import ArchiveOptions
    from ..engine.local import decode_workers
    from ..readers import Limits

    from ..dicomnet.dicomweb import SeriesQuery, is_dicomweb

    require_paths([Path(r) for r in roots if not is_dicomweb(r)])
    remote = any(is_dicomweb(r) for r in roots)
    if not remote and (study or since or modality != "CT"):
        usage_error("--study, --since and --modality query a DICOMweb source (dicomweb+http://...)")
    if remote and engine is Engine.ray:
        usage_error("--engine ray reads an archive on a file system the cluster shares; score a DICOMweb source "
                    "with --engine local")
    weights_path = weights_file(weights)
    if engine is Engine.ray:
        try:
            import ray  # noqa: F401
        except ImportError:
            usage_error("--engine ray needs Ray: pip install 'clinreadnet[ray]'")
    try:
        count = 2 if engine is Engine.ray and workers == "auto" else decode_workers(workers, device.value)
        options = ArchiveOptions(engine=engine.value, workers=count, input_range=input_range.value,
                                 limits=Limits.from_pairs(limit or []), all_orientations=all_orientations,
                                 retry_failed=retry_failed, overwrite=overwrite, threshold=threshold,
                                 units_per_task=units_per_task, shard_records=shard_records)
        spec = ScorerSpec(weights_path, device.value, precision.value, threads, batch_size,
                          sampling_grids=sampling_grids, runtime=runtime.value)
        query = SeriesQuery(study, modality=modality.upper(), since=since and since.replace("-", ""))
        plan, store, todo = plan_archive(roots, out, spec, options, query)
    except ValueError as exc:  # ArchiveError, WeightsError, ConfigError
        usage_error(str(exc))
    print_messages(plan.notes, errors=plan.errors)
    stderr.print(f"{len(plan.units)} series planned, {len(plan.units) - len(todo)} already finished in "
                 f"{escape(str(out))}, {len(todo)} to score ({options.engine} engine)")

    slices = [0]
    columns = (TextColumn("series"), BarColumn(), MofNCompleteColumn(), TextColumn("{task.fields[rate]}"),
               TimeElapsedColumn(), TextColumn("ETA"), TimeRemainingColumn())
    try:
        with Progress(*columns, console=stderr, disable=not stderr.is_terminal) as progress:
            task = progress.add_task("series", total=len(todo), rate="")

            def on_unit(entry: dict) -> None:
                slices[0] += entry["slices"]
                elapsed = progress.tasks[0].elapsed or 1e-9
                done = progress.tasks[0].completed + 1
                progress.update(task, advance=1, rate=f"{done / elapsed:.2f} series/s · {slices[0] / elapsed:.1f} slices/s")
                if entry["status"] == "failed":
                    progress.console.print(f"[bold red]failed:[/] {escape(entry['key'])} ({entry['errors']} error(s))")

            result = run(plan, store, todo, spec, options, on_unit=on_unit,
                         on_warning=lambda text: print_messages(warnings=[text]))
    except KeyboardInterrupt:
        stderr.print(f"interrupted; finished series are kept in {escape(str(out))}, rerun to resume")
        raise typer.Exit(EXIT_INTERRUPTED) from None
    rate = result.slices / result.seconds if result.seconds else 0.0
    failed = sum(entry["status"] == "failed" for entry in store.entries.values())
    stderr.print(f"{len(result.entries)} series scored ({result.slices} slices, {rate:.1f} slices/s), "
                 f"{result.failed} failed, {result.already} skipped as finished; {result.series_rows} series in "
                 f"{escape(str(out / 'series.parquet'))}")
    if failed:
        stderr.print(f"[bold red]{failed} series failed[/] (error records in the records); --retry-failed tries them again")
    raise typer.Exit(EXIT_PARTIAL if failed or plan.errors else EXIT_OK)
