"""Normal-dose source slices in HU with their pixel spacing and patient, from anything the score
command reads or from ``.npz`` archives (arrays ``hu``, ``pixel_spacing_mm``, ``patient_id``)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterable

import numpy as np

from ..readers import Discovery, InputError, discover


@dataclass
class SourceSlice:
    source: str  # file, and slice within it, as a person would look it up
    patient: str
    pixel_mm: float
    load: Callable[[], np.ndarray] | None  # -> 2-D float32 HU; None in the copy sent to a worker


def _square_spacing(path: Path, spacing) -> float:
    rows, cols = float(spacing[0]), float(spacing[1])
    if rows <= 0 or cols <= 0:
        raise InputError(path, f"pixel spacing {rows:g} x {cols:g} mm is not positive")
    if abs(rows - cols) > 0.01 * max(rows, cols):
        raise InputError(path, f"pixels of {rows:g} x {cols:g} mm are not square; resample to square pixels first")
    return rows


def _npz_sources(path: Path, fallback_spacing: float | None) -> list[SourceSlice]:
    try:
        archive = np.load(path, allow_pickle=False)
        names = set(archive.files)
        if "hu" not in names:
            raise InputError(path, f"no array 'hu' (has {', '.join(sorted(names)) or 'none'})")
        shape = archive["hu"].shape
    except (OSError, ValueError) as exc:
        raise InputError(path, f"not a readable .npz archive ({exc})") from None
    if len(shape) not in (2, 3):
        raise InputError(path, f"array 'hu' has shape {shape}; expected (slices, rows, columns)")
    n = 1 if len(shape) == 2 else shape[0]
    if "pixel_spacing_mm" in names:
        spacing = np.broadcast_to(archive["pixel_spacing_mm"], (n, 2))
    elif fallback_spacing is not None:
        spacing = np.full((n, 2), fallback_spacing)
    else:
        raise InputError(path, "no array 'pixel_spacing_mm'; pass --pixel-spacing")
    patients = archive["patient_id"] if "patient_id" in names else np.array([""] * n)

    def loader(k: int) -> Callable[[], np.ndarray]:
        def load() -> np.ndarray:
            hu = np.load(path, allow_pickle=False)["hu"]
            return (hu if hu.ndim == 2 else hu[k]).astype(np.float32)
        return load

    return [SourceSlice(source=f"{path.name}#{k}", patient=str(patients[k]) or path.stem,
                        pixel_mm=_square_spacing(path, spacing[k]), load=loader(k)) for k in range(n)]


def _discovered(found: Discovery, fallback_spacing: float | None) -> tuple[list[SourceSlice], list[InputError]]:
    slices, errors = [], []
    for series in found.series:
        for ref in series.slices:
            try:
                if ref.value_range != "hu":
                    raise InputError(ref.path, "holds windowed [0, 1] values, not HU; simulation needs HU "
                                               "(pass --input-range hu if the values are HU)")
                spacing = ref.pixel_spacing_mm or (fallback_spacing and (fallback_spacing, fallback_spacing))
                if not spacing:
                    raise InputError(ref.path, "gives no pixel spacing; pass --pixel-spacing")
                slices.append(SourceSlice(source=f"{ref.path}#{ref.index}",
                                          patient=series.patient_id or series.series_uid or series.label,
                                          pixel_mm=_square_spacing(ref.path, spacing), load=ref.load))
            except InputError as exc:
                errors.append(exc)
                break  # one error per series: its other slices share the reason
    return slices, errors


def find_sources(paths: Iterable[str | Path], input_range: str = "auto",
                 pixel_spacing: float | None = None) -> tuple[list[SourceSlice], list[InputError], list[str]]:
    """(slices, errors, notes) for the given files and folders; ``.npz`` archives are read here,
    everything else through the score command's readers."""
    paths = [Path(p) for p in paths]
    archives = [p for p in paths if p.is_file() and p.suffix == ".npz"]
    archives += sorted(f for p in paths if p.is_dir() for f in p.rglob("*.npz"))
    others = [p for p in paths if p not in archives]
    slices: list[SourceSlice] = []
    errors: list[InputError] = []
    for archive in archives:
        try:
            slices += _npz_sources(archive, pixel_spacing)
        except InputError as exc:
            errors.append(exc)
    notes: list[str] = []
    if others:
        found = discover(others, input_range)
        read_here = {a.resolve() for a in archives}  # the walk also meets the archives: not errors
        found.errors = [e for e in found.errors if e.path.resolve() not in read_here]
        more, bad = _discovered(found, pixel_spacing)
        slices, errors, notes = slices + more, errors + found.errors + bad, found.notes
    return slices, errors, notes
