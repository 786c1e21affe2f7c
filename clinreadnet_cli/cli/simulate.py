"""clinreadnet simulate: low-dose and sparse-view training data from normal-dose CT."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.markup import escape
from rich.progress import MofNCompleteColumn, Progress

from .app import EXIT_OK, EXIT_PARTIAL, InputRangeChoice, app, print_messages, stderr, usage_error


def _float_list(text: str, name: str) -> tuple[float, ...]:
    try:
        return tuple(float(x) for x in text.split(",") if x.strip())
    except ValueError:
        usage_error(f"--{name}: expected comma-separated numbers, got {text!r}")


def _low_high(text: str, name: str) -> tuple[float, float]:
    """One value or LOW,HIGH -> (low, high)."""
    values = _float_list(text, name)
    if len(values) not in (1, 2):
        usage_error(f"--{name}: give one value or LOW,HIGH, got {text!r}")
    return values[0], values[-1]


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
    photon_budget: Optional[str] = typer.Option(
        None, help="Full reconstructions: an absolute full-dose flux in photons per bin and view, or a range "
                   "LOW,HIGH drawn per slice (log-uniform), instead of each source's own dose; a larger body is "
                   "then noisier at the same protocol. Needs --mode full or both."),
    grids: Optional[str] = typer.Option(
        None, help="Full reconstructions: also reconstruct each scan onto these grids from the same projections, "
                   "comma-separated: SIZE (SIZE² over the source's field of view) or SIZE@MM (SIZE² pixels of "
                   "MM mm), e.g. 768,512@0.6,512@0.9. Needs --mode full or both."),
    source_images: bool = typer.Option(True, "--source-images/--no-source-images",
                                       help="Also write each untouched source slice (score 4)."),
    seed: int = typer.Option(0, help="Seeds the noise; same seed, same data."),
    workers: int = typer.Option(os.cpu_count() or 1, min=1, help="Slices simulated in parallel (processes)."),
    pixel_spacing: Optional[float] = typer.Option(None, min=0.0, help="Pixel spacing (mm) for sources that give none."),
    input_range: InputRangeChoice = typer.Option(InputRangeChoice.auto, help="As for score; sources must be HU."),
    overwrite: bool = typer.Option(False, "--overwrite", help="Replace a dataset already in --out."),
) -> None:
    """Simulate low-dose and sparse-view CT from normal-dose slices, with proxy quality labels."""
    try:
        from ..simulate import Acquisition, ReconGrid, existing_dataset, find_sources, simulate_dataset
    except ImportError as exc:  # the tomography toolkits are an extra
        usage_error(f"simulate needs the tomography toolkits ({exc.name} is missing): "
                    "pip install 'clinreadnet[simulate]'")

    view_counts = []
    for item in (v.strip() for v in views.split(",") if v.strip()):
        if item == "full":
            view_counts.append(full_views)
        elif item.isdigit():
            view_counts.append(int(item))
        else:
            usage_error(f"--views: {item!r} is neither 'full' nor a number")
    try:
        acquisition = Acquisition(doses=_float_list(doses, "doses"), views=tuple(view_counts), full_views=full_views,
                                  fbp_filter=fbp_filter, mode=mode,
                                  full_filters=tuple(f.strip() for f in full_filters.split(",") if f.strip()),
                                  electronic_sd=_low_high(electronic_noise, "electronic-noise"),
                                  photon_budget=_low_high(photon_budget, "photon-budget") if photon_budget else None,
                                  grids=tuple(ReconGrid.parse(g) for g in (grids or "").split(",") if g.strip()))
    except ValueError as exc:
        usage_error(str(exc))
    if existing_dataset(out) and not overwrite:
        usage_error(f"{out} already holds a dataset (train.json or image/); pass --overwrite to replace it")

    slices, errors, notes = find_sources(source, input_range.value, pixel_spacing)
    print_messages(notes, (), errors)
    if not slices:
        if errors:
            raise typer.Exit(EXIT_PARTIAL)
        usage_error("no source slices found in " + ", ".join(map(str, source)))
    images = len(acquisition.doses) * len(acquisition.views) * len(acquisition.reconstructions())
    stderr.print(f"simulating {len(slices)} slices x {images} images on {workers} worker(s)")
    with Progress(*Progress.get_default_columns(), MofNCompleteColumn(), console=stderr, transient=True,
                  disable=not stderr.is_terminal) as progress:
        task = progress.add_task("simulating", total=len(slices))
        run = simulate_dataset(slices, out, acquisition, seed=seed, workers=workers, include_source=source_images,
                               on_slice=lambda: progress.advance(task))
    print_messages(notes=run.skipped, errors=run.errors)
    stderr.print(f"wrote {len(run.records)} images from {run.slices} slices to {escape(str(out))} in {run.seconds:.1f} s "
                 f"({run.slices_per_second:.2f} slices/s)")
    failures = errors + run.errors
    if failures:
        stderr.print(f"[bold red]{len(failures)} input(s) failed[/]")
    raise typer.Exit(EXIT_PARTIAL if failures else EXIT_OK)
