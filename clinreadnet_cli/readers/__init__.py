"""Find the CT slices in files and folders: DICOM, NIfTI, MHA/MHD, NRRD and TIFF.

``discover`` walks the inputs, reads only headers, and returns series of lazily decoded
slices plus one error per input that cannot be scored. Nothing here knows about the CLI.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path
from typing import Iterable, Literal

from .dicom import DicomImage, NotDicom, check_image, dicom_series, read_header, skip_reason
from .limits import DEFAULT_LIMITS, Limits, regular_file_problem
from .tiff import TIFF_SUFFIXES, tiff_series
from .types import Discovery, InputError, Series, SliceRef
from .volume import VOLUME_SUFFIXES, volume_series

__all__ = ["DEFAULT_LIMITS", "Discovery", "InputError", "InputRange", "Limits", "Series", "SliceRef", "discover",
           "file_identities", "file_suffix", "walk_files"]

InputRange = Literal["auto", "hu", "unit"]
SUPPORTED = "DICOM, NIfTI, MHA/MHD, NRRD or TIFF"
OTHER_IMAGE_SUFFIXES = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG", ".bmp": "BMP", ".gif": "GIF"}
DETACHED_DATA_SUFFIXES = (".raw", ".zraw", ".img")  # pixel files that belong to a header (.mhd, ...)
# Found while walking a folder, these are the study's paperwork (READMEs, JSON sidecars such as
# LDCTIQAG2023's train.json, label tables) and results (this tool's own records, reports and
# unfinished outputs among them), not images: skipped with a note. Named explicitly on the
# command line they are still errors.
DOCUMENT_SUFFIXES = {".md", ".txt", ".json", ".jsonl", ".ndjson", ".csv", ".tsv", ".parquet", ".xml", ".html", ".htm",
                     ".pdf", ".yaml", ".yml", ".log", ".partial"}


def file_suffix(path: Path) -> str:
    name = path.name.lower()
    return ".nii.gz" if name.endswith(".nii.gz") else path.suffix.lower()


def file_identities(*targets: str | Path | int | None) -> frozenset[tuple[int, int]]:
    """(device, inode) of each regular file among ``targets`` (paths, or open file descriptors such as
    stdout's): a run's own output, which ``walk_files`` skips when it meets it among the inputs."""
    found = set()
    for target in targets:
        try:
            info = os.fstat(target) if isinstance(target, int) else os.stat(target) if target is not None else None
        except OSError:
            continue
        if info is not None and stat.S_ISREG(info.st_mode):
            found.add((info.st_dev, info.st_ino))
    return frozenset(found)


def walk_files(paths: Iterable[Path], found: Discovery, skip: frozenset[tuple[int, int]] = frozenset()) -> list[Path]:
    """Regular files under ``paths``. Links are followed to regular files only; directory links are
    not followed (no loops); FIFOs, sockets and devices are skipped with a note, never opened; so is
    any file in ``skip`` (``file_identities``: the run's own output)."""
    files: list[Path] = []

    def consider(file: Path, named: bool) -> None:
        problem = regular_file_problem(file)
        if problem is None and skip and file_identities(file) <= skip:
            found.notes.append(f"{file}: skipped, this run's own output")
        elif problem is None:
            files.append(file)
        elif problem.startswith("not a regular file"):
            found.notes.append(f"{file}: skipped, {problem}")
        elif named or file.is_symlink():
            found.errors.append(InputError(file, problem))

    for path in paths:
        if path.is_dir():
            for root, dirs, names in os.walk(path):
                dirs[:] = sorted(d for d in dirs if not d.startswith("."))
                for name in sorted(n for n in names if not n.startswith(".")):
                    file = Path(root) / name
                    if file_suffix(file) in DOCUMENT_SUFFIXES:
                        found.notes.append(f"{file}: skipped, not an image")
                    else:
                        consider(file, named=False)
                # os.walk lists links to directories among dirs and does not follow them
                for name in [d for d in dirs if (Path(root) / d).is_symlink()]:
                    found.notes.append(f"{Path(root) / name}: skipped, link to a folder (not followed)")
        else:
            consider(path, named=True)
    # Detached pixel files (.raw next to .mhd) are read through their header, not on their own.
    stems = {(f.parent, f.stem) for f in files if file_suffix(f) in (".mhd", ".nhdr", ".hdr")}
    files = [f for f in files if not (file_suffix(f) in DETACHED_DATA_SUFFIXES and (f.parent, f.stem) in stems)]
    return list(dict.fromkeys(files))


def discover(paths: Iterable[str | Path], input_range: InputRange = "auto", limits: Limits = DEFAULT_LIMITS,
             all_orientations: bool = False) -> Discovery:
    """Series to score, errors for inputs that cannot be scored, notes for inputs skipped on purpose.

    ``input_range``: ``auto`` takes DICOM/NIfTI/MHA/NRRD as HU and float TIFF as [0, 1];
    ``hu`` or ``unit`` declares every input's values. DICOM objects that are not axial CT slices
    (other modalities, dose screens, scouts, reformats unless ``all_orientations``) are skipped
    with a note. Each file is read inside its own error
    boundary: whatever goes wrong becomes one InputError for that file, and the rest go on.
    """
    found = Discovery()
    files = walk_files((Path(p) for p in paths), found)
    volume_range = "unit" if input_range == "unit" else "hu"
    images = []
    for path in files:
        try:
            series = _read_file(path, input_range, volume_range, limits, all_orientations, found)
            if isinstance(series, Series):
                found.series.append(series)
            elif series is not None:
                images.append(series)
        except NotDicom:
            found.errors.append(InputError(path, f"not a DICOM file nor a supported image ({SUPPORTED})"))
        except InputError as exc:
            found.errors.append(exc)
        except Exception as exc:  # a reader library failing in a way of its own: this file only
            found.errors.append(InputError(path, f"cannot read ({type(exc).__name__}: {exc})"))
    found.series += dicom_series(images, volume_range)
    found.series = sorted((s for s in found.series if s.slices), key=lambda s: (str(s.slices[0].path), s.label))
    return found


def _read_file(path: Path, input_range: InputRange, volume_range: str, limits: Limits, all_orientations: bool,
               found: Discovery) -> Series | DicomImage | None:
    """One file's series (volume, TIFF), its checked DICOM image, or None when skipped with a note."""
    suffix = file_suffix(path)
    if suffix in VOLUME_SUFFIXES:
        return volume_series(path, volume_range, limits)
    if suffix in TIFF_SUFFIXES:
        return tiff_series(path, input_range, limits)
    if suffix in OTHER_IMAGE_SUFFIXES:
        raise InputError(path, f"{OTHER_IMAGE_SUFFIXES[suffix]} is not a CT format; expected {SUPPORTED}")
    if path.stat().st_size == 0:
        raise InputError(path, "empty file")
    ds = read_header(path)
    reason = skip_reason(ds, all_orientations)
    if reason:
        found.notes.append(f"{path}: skipped, {reason}")
        return None
    return check_image(path, ds, limits, found.warnings.append)
