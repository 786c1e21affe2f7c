"""The resumable archive job: plan the units, skip what the results folder has finished, score the
rest on an engine, keep the folder consistent. ``clinreadnet score-archive`` is a thin caller."""

from __future__ import annotations

import contextlib
import dataclasses
import time
from collections import defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Callable, Iterable

from ..checkpoint import read_config, weights_identity
from ..decoding import DecodeSettings
from ..dicomnet.dicomweb import SeriesQuery
from .base import ArchiveOptions, ArchiveStore, Plan, Unit, plan_inputs, unit_entry
from .local import END, DecodePool, score_events

if TYPE_CHECKING:  # the model side is imported only after the decoding processes have forked
    from ..api import ScorerSpec

ENGINES = ("local", "ray")
SHARD_SECONDS = 60.0  # the local engine commits a shard at least this often (a kill loses at most that)


@dataclass
class ArchiveResult:
    planned: int
    already: int  # units finished by an earlier run and skipped
    entries: list[dict] = field(default_factory=list)  # this run's finished units
    notes: list[str] = field(default_factory=list)
    seconds: float = 0.0
    series_rows: int = 0

    @property
    def failed(self) -> int:
        return sum(e["status"] == "failed" for e in self.entries)

    @property
    def slices(self) -> int:
        return sum(e["slices"] for e in self.entries)


def run_info(spec: ScorerSpec, options: ArchiveOptions) -> dict:
    """What must not change between runs into one results folder (records would not compare)."""
    return {"weights_sha256": weights_identity(spec.weights)["weights_sha256"], "input_range": options.input_range,
            "all_orientations": options.all_orientations, "limits": dataclasses.asdict(options.limits),
            "sampling_grids": spec.config().sampling_grids}


def plan_archive(roots: Iterable[str | Path], out: str | Path, spec: ScorerSpec, options: ArchiveOptions,
                 query: SeriesQuery | None = None) -> tuple[Plan, ArchiveStore, list[Unit]]:
    """The plan (``query``: what to take from DICOMweb roots), the opened results folder and the
    units still to score. Raises ArchiveError, WeightsError, ValueError."""
    plan = plan_inputs(roots, options.all_orientations, query)
    # a folder written before records named their grids was read through the weights' own
    store = ArchiveStore(out, run_info(spec, options), overwrite=options.overwrite,
                         assumed={"sampling_grids": read_config(spec.weights).sampling_grids})
    return plan, store, store.todo(plan.units, options.retry_failed)


def score_archive(plan: Plan, store: ArchiveStore, todo: list[Unit], spec: ScorerSpec, options: ArchiveOptions,
                  on_unit: Callable[[dict], None] = lambda entry: None,
                  on_warning: Callable[[str], None] = lambda text: None) -> ArchiveResult:
    """Score ``todo`` into ``store``; ``on_unit`` hears of each finished unit (its manifest entry)."""
    start = time.perf_counter()
    result = ArchiveResult(planned=len(plan.units), already=len(plan.units) - len(todo), notes=plan.notes)

    def finished(entry: dict) -> None:
        result.entries.append(entry)
        on_unit(entry)

    settings = DecodeSettings(spec.config(), spec.slices_per_batch(), options.input_range, options.limits,
                              options.all_orientations)
    if todo:
        if options.engine == "ray":
            from .ray import run_ray

            run_ray(todo, settings, spec, store, options, finished)
        else:
            run_local(todo, settings, spec, store, options, finished, on_warning)
    store.reconcile()
    result.series_rows = store.write_series_table()
    result.seconds = time.perf_counter() - start
    return result


def run_local(todo: list[Unit], settings: DecodeSettings, spec: ScorerSpec, store: ArchiveStore,
              options: ArchiveOptions, on_unit: Callable[[dict], None], on_warning: Callable[[str], None],
              scorer=None, pool: DecodePool | None = None,
              on_records: Callable[[Unit, list[dict]], None] = lambda unit, records: None) -> None:
    """Decoding processes started first (before torch), the model in this process, shards committed
    every ``options.shard_records`` records or SHARD_SECONDS. ``scorer`` and ``pool``: a model and
    decoding processes already running (a node keeps them for every series it scores);
    ``on_records`` hears each finished unit's records."""
    with contextlib.nullcontext(pool) if pool is not None else DecodePool(settings, options.workers) as pool:
        decoded = pool.events(todo)  # the workers start reading now, while the model loads
        scorer = scorer or spec.build()  # torch is imported here, after the workers have forked without it
        from ..records import to_record

        records: dict[int, list[dict]] = defaultdict(list)
        started: dict[int, float] = {}
        shard: list[dict] = []
        entries: list[dict] = []
        last_commit = time.monotonic()
        for tag, items in score_events(decoded, scorer, on_warning):
            unit = todo[tag]
            started.setdefault(tag, time.perf_counter())
            if items is END:
                entry = unit_entry(unit, records[tag], time.perf_counter() - started.pop(tag), options.threshold)
                on_records(unit, records[tag])
                shard += records.pop(tag)
                entries.append(entry)
                on_unit(entry)
                if len(shard) >= options.shard_records or time.monotonic() - last_commit >= SHARD_SECONDS:
                    _commit(store, shard, entries)
                    shard, entries, last_commit = [], [], time.monotonic()
                continue
            records[tag] += [{**to_record(item, scorer.identity), "unit": unit.id} for item in items]
        if entries:
            _commit(store, shard, entries)


def _commit(store: ArchiveStore, records: list[dict], entries: list[dict]) -> None:
    store.commit(store.write_shard(records), entries)
