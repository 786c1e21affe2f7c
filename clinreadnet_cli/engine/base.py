"""What both engines share: the unit of work, decoding a unit into batches, and the results folder
(manifest of finished units, Parquet record shards, per-series table).

Nothing here imports torch, so decoding processes and Ray tasks start light; a batch is decoded
by ``decoding`` and scored by ``scoring.score_batch``.

A unit is one DICOM series (every file of one SeriesInstanceUID) or one other file (a NIfTI/MHA/
NRRD volume, a TIFF). Its slices are batched within the unit, so a slice is scored in the same
batch whichever engine runs it and whatever else is scored beside it: records are identical.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import time
import uuid
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

from ..atomic import write_text_atomic
from ..decoding import Batch, DecodeSettings, series_batches
from ..dicomnet.dicomweb import (DicomWebError, DicomWebServer, RemoteSeries, SeriesQuery, find_series, is_dicomweb,
                                remote_batches)
from ..readers import DEFAULT_LIMITS, Discovery, InputError, Limits, discover, file_suffix, walk_files
from ..readers.dicom import read_header, skip_reason
from ..readers.tiff import TIFF_SUFFIXES
from ..readers.volume import VOLUME_SUFFIXES
from ..records import FIELDS, with_nulls
from ..summary import SUMMARY_FIELDS, SummaryCollector
from . import tables


@dataclass(frozen=True)
class Unit:
    """One series to score, resumed or retried as a whole."""

    key: str  # "series:<SeriesInstanceUID>" or "file:<path>": stable across runs over the same archive
    paths: tuple[str, ...]  # a DICOMweb series: its WADO-RS address
    remote: RemoteSeries | None = None  # a series of a DICOMweb source, fetched where it is decoded

    @property
    def id(self) -> str:
        return hashlib.sha1(self.key.encode()).hexdigest()[:16]


@dataclass
class Plan:
    units: list[Unit]
    notes: list[str]  # inputs skipped on purpose (reports, localizers, other modalities, ...)
    errors: list[InputError] = field(default_factory=list)  # sources that could not be listed


def plan_inputs(inputs: Iterable[str | Path], all_orientations: bool = False,
                query: SeriesQuery | None = None, skip: frozenset[tuple[int, int]] = frozenset()) -> Plan:
    """Files and folders as ``plan_units`` plans them, and DICOMweb sources (``dicomweb+http://...``):
    the series ``query`` finds there (default: every CT series), each a unit. A source that cannot
    be listed is an error of its own; a malformed source, or a study it does not hold, raises
    ValueError."""
    inputs = list(inputs)  # read twice below: a generator would give the files nothing
    sources = [str(i) for i in inputs if is_dicomweb(str(i))]
    plan = plan_units([i for i in inputs if not is_dicomweb(str(i))], all_orientations, skip)
    for locator in sources:
        server = DicomWebServer.from_locator(locator)
        try:
            found, notes = find_series(server, query or SeriesQuery())
        except DicomWebError as exc:
            plan.errors.append(InputError(server.url, str(exc)))
            continue
        plan.units += [Unit(f"series:{remote.series_uid}", (remote.url,), remote) for remote in found]
        plan.notes += notes
    return plan


def plan_units(paths: Iterable[str | Path], all_orientations: bool = False,
               skip: frozenset[tuple[int, int]] = frozenset()) -> Plan:
    """The units under ``paths``: DICOM files grouped by SeriesInstanceUID from their headers (no
    pixel data), every other file on its own. What cannot be read becomes a unit of its own, so
    that decoding it reports the error as ``score`` does. Only paths are kept, a few hundred bytes
    per file. Files in ``skip`` (the run's own output, ``readers.file_identities``) are left out."""
    found = Discovery()
    files = walk_files((Path(p) for p in paths), found, skip)
    series: dict[str, list[str]] = defaultdict(list)
    singles = [error.path for error in found.errors]
    for path in files:
        uid = _series_uid(path, all_orientations, found.notes)
        if uid is None:
            singles.append(path)
        elif uid:
            series[uid].append(str(path))
    units = [Unit(f"series:{uid}", tuple(sorted(members))) for uid, members in series.items()]
    units += [Unit(f"file:{path}", (str(path),)) for path in dict.fromkeys(singles)]
    return Plan(sorted(units, key=lambda u: (u.paths[0], u.key)), found.notes)


def _series_uid(path: Path, all_orientations: bool, notes: list[str]) -> str | None:
    """The SeriesInstanceUID of a single-frame axial CT file, "" if it is skipped (with a note), None
    for a file that is its own unit (other formats, multi-frame, unreadable)."""
    if file_suffix(path) in {*VOLUME_SUFFIXES, *TIFF_SUFFIXES}:
        return None
    try:
        ds = read_header(path)
    except Exception:  # not DICOM or damaged: decoding the unit says which
        return None
    reason = skip_reason(ds, all_orientations)
    if reason:
        notes.append(f"{path}: skipped, {reason}")
        return ""
    frames = str(ds.get("NumberOfFrames", "1") or "1").strip()
    return str(ds.get("SeriesInstanceUID", "") or "") or None if frames in ("1", "") else None


def decode_unit(unit: Unit, settings: DecodeSettings) -> Iterator[Batch]:
    """Read a unit's files (headers checked as ``score`` checks them) and yield its batches."""
    if unit.remote is not None:
        yield from remote_batches(unit.remote, settings)
        return
    found = discover(unit.paths, settings.input_range, settings.limits, settings.all_orientations)
    yield from series_batches(found.series, settings.cfg, settings.batch_size, found.errors, found.warnings)


@dataclass(frozen=True)
class ArchiveOptions:
    engine: str = "local"
    workers: int = 2  # local: decoding processes; ray: inference actors
    input_range: str = "auto"
    limits: Limits = DEFAULT_LIMITS
    all_orientations: bool = False
    retry_failed: bool = False
    overwrite: bool = False
    threshold: float = 2.0  # the per-series table counts slices below it
    units_per_task: int = 16  # ray: units per commit (a kill loses at most one such chunk)
    shard_records: int = 4096  # local: records per committed shard (or SHARD_SECONDS, whichever first)


# --- the results folder -------------------------------------------------------------------------

RECORD_COLUMNS = [*FIELDS, "unit"]  # score's record fields, plus the unit that wrote the row
MANIFEST = "manifest.jsonl"
RUN_INFO = "run.json"
SERIES_TABLE = "series.parquet"
RECORDS = "records"


class ArchiveError(ValueError):
    """A results folder that cannot be used for this run (other weights, damaged, not ours)."""


def _record_spec() -> tables.Spec:
    kinds = {"slice": "int64", "class": "int64", "instance_number": "int64", "sampling_grids": "int64",
             "uncertain": "bool", "head_scores": "list<float64>"}
    numbers = ["score", "head_sd", "entropy", "noise_hu", "wed_mm", "noise_hu_size", "z_mm", "slice_thickness_mm",
               "kvp", "mas", "ctdivol_mgy"]
    kinds.update(dict.fromkeys(numbers, "float64"))
    return [(name, kinds.get(name, "string")) for name in RECORD_COLUMNS]


def _series_spec() -> tables.Spec:
    kinds = {"slices": "int64", "mean": "float64", "min": "float64", "p10": "float64", "below_threshold": "int64",
             "threshold": "float64", "worst_slice": "int64"}
    return [(name, kinds.get(name, "string")) for name in [*SUMMARY_FIELDS, "unit", "unit_status"]]


RECORD_SPEC, SERIES_SPEC = _record_spec(), _series_spec()


def json_lines(rows: list[dict], spec: tables.Spec) -> bytes:
    """``rows`` as JSON lines of ``spec``'s columns, as ``tables`` reads them (NaN, infinity: null)."""
    return "".join(json.dumps(with_nulls({name: row.get(name) for name, _ in spec})) + "\n" for row in rows).encode()


def records_table(records: list[dict]):
    """Records (as ``records.to_record`` makes them, plus ``unit``) as an Arrow table of the fixed
    schema, in this process (Ray's workers, which hold Arrow anyway)."""
    return tables.arrow_table(json_lines(records, RECORD_SPEC), RECORD_SPEC)


def unit_entry(unit: Unit, records: list[dict], seconds: float, threshold: float = 2.0) -> dict:
    """The manifest line of a finished unit: failed when any of its inputs failed, with the
    summary of each of its series."""
    scored = [r for r in records if r.get("error") is None]
    summaries = SummaryCollector(threshold)
    for record in scored:
        summaries.add(record)
    errors = len(records) - len(scored)
    return {"unit": unit.id, "key": unit.key, "status": "failed" if errors else "done",
            "slices": len(scored), "errors": errors, "seconds": round(seconds, 3),
            "series": [s.to_record() for s in summaries.series()]}


class ArchiveStore:
    """A results folder: ``run.json`` (weights and settings), ``manifest.jsonl`` (one line per
    finished unit, appended), ``records/part-<group>-<k>.parquet`` (record shards) and
    ``series.parquet`` (one row per series).

    The manifest is the truth: a unit is finished when its line is there, and its records are the
    rows of its line's shard group. Shards are written to a staging folder and renamed in before the
    manifest line is appended; rows that no manifest line owns (a run killed in between, a retried
    unit's old rows) are removed when the folder is opened and when a run ends, so each record is
    there exactly once.
    """

    def __init__(self, out: str | Path, run_info: dict, overwrite: bool = False, assumed: dict | None = None):
        """``assumed``: the value of a run_info key that a folder written before the key existed ran with."""
        self.out = Path(out)
        if self.out.exists() and not self.out.is_dir():
            raise ArchiveError(f"{self.out} exists and is not a folder")
        if overwrite:
            self._clear()
        info_path = self.out / RUN_INFO
        if info_path.exists():
            try:
                stored = json.loads(info_path.read_text())
            except (OSError, ValueError) as exc:
                raise ArchiveError(f"{info_path} is damaged ({exc}); use a new --out or --overwrite") from None
            stored = {**(assumed or {}), **stored}
            changed = [k for k in run_info if stored.get(k) != run_info[k]]
            if changed:
                raise ArchiveError(f"{self.out} holds results of another run ({', '.join(changed)} differ); "
                                   "use a new --out, or --overwrite to start again")
        else:
            if self.out.is_dir() and any(self.out.iterdir()):
                raise ArchiveError(f"{self.out} is not empty and is not a results folder; give a new or empty --out")
            self.out.mkdir(parents=True, exist_ok=True)
            write_text_atomic(info_path, json.dumps(run_info, indent=2) + "\n")
        (self.out / RECORDS).mkdir(exist_ok=True)
        self._check_record_fields()
        self.entries = self._read_manifest()
        self.reconcile()

    def _check_record_fields(self) -> None:
        """Refuse a folder whose shards have other columns (written by a version with other record
        fields): the new shards would not read as one table with them."""
        shard = next(iter(sorted((self.out / RECORDS).glob("*.parquet"))), None)
        if shard is None:
            return
        try:
            names = tables.column_names(shard)
        except (OSError, ValueError) as exc:
            raise ArchiveError(f"{shard} is damaged ({exc}); use a new --out or --overwrite") from None
        expected = [name for name, _ in RECORD_SPEC]
        if names != expected:
            differ = sorted(set(expected) ^ set(names)) or ["their order"]
            raise ArchiveError(f"{self.out} holds records with other fields ({', '.join(differ)}), written by "
                               "another version of clinreadnet; use a new --out, or --overwrite to start again")

    # the manifest
    def _read_manifest(self) -> dict[str, dict]:
        entries: dict[str, dict] = {}
        path = self.out / MANIFEST
        if path.exists():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    entries[entry["unit"]] = entry  # the last line of a unit wins (a retry)
                except (ValueError, KeyError, TypeError):
                    continue  # a line cut short by a kill: that unit is scored again
        return entries

    def status(self, unit: Unit) -> str | None:
        entry = self.entries.get(unit.id)
        return entry["status"] if entry else None

    def todo(self, units: Iterable[Unit], retry_failed: bool) -> list[Unit]:
        skip = {"done", "failed"} - ({"failed"} if retry_failed else set())
        return [u for u in units if self.status(u) not in skip]

    # shards
    def staging(self) -> Path:
        """A fresh folder for shard files of one commit (removed if the run dies before it)."""
        folder = self.out / ".staging" / uuid.uuid4().hex[:12]
        folder.mkdir(parents=True)
        return folder

    def write_shard(self, records: list[dict]) -> Path:
        """One staged Parquet file of ``records``."""
        folder = self.staging()
        tables.write_table(folder / "part.parquet", json_lines(records, RECORD_SPEC), RECORD_SPEC)
        return folder

    def commit(self, staged: Path, entries: list[dict]) -> None:
        """Move the staged shard files into ``records/`` and append the units' manifest lines."""
        group = f"{time.strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:8]}"
        for k, file in enumerate(sorted(staged.glob("*.parquet"))):
            os.replace(file, self.out / RECORDS / f"part-{group}-{k:03d}.parquet")
        shutil.rmtree(staged, ignore_errors=True)
        lines = "".join(json.dumps({**entry, "group": group}) + "\n" for entry in entries)
        with open(self.out / MANIFEST, "a", encoding="utf-8") as f:
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        for entry in entries:
            self.entries[entry["unit"]] = {**entry, "group": group}

    def reconcile(self) -> None:
        """Keep in ``records/`` only the rows their unit's manifest line points to."""
        shutil.rmtree(self.out / ".staging", ignore_errors=True)
        tables.keep_owned_rows(self.out / RECORDS, {unit: entry.get("group") for unit, entry in self.entries.items()})

    def write_series_table(self) -> int:
        """``series.parquet``: one row per series of every finished unit; returns the row count."""
        rows = [{**row, "unit": entry["unit"], "unit_status": entry["status"]}
                for entry in self.entries.values() for row in entry.get("series", [])]
        tables.write_table(self.out / SERIES_TABLE, json_lines(rows, SERIES_SPEC), SERIES_SPEC)
        return len(rows)

    def _clear(self) -> None:
        """--overwrite: remove what a run writes here, and nothing else."""
        for name in (MANIFEST, RUN_INFO, SERIES_TABLE):
            (self.out / name).unlink(missing_ok=True)
        for name in (RECORDS, ".staging"):
            shutil.rmtree(self.out / name, ignore_errors=True)
