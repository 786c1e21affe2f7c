"""A Ray cluster (``--engine ray``, extra ``clinreadnet[ray]``): Ray Data reads and decodes units as
tasks across the cluster, an actor pool scores them (one model per actor, one GPU each where the
cluster has GPUs), and Ray writes the record shards; the results folder is the local engine's.

``ray.init()`` joins the cluster named by ``RAY_ADDRESS`` (``ray start --head`` on the head node,
``ray start --address=HEAD:6379`` on the others), or starts a local one. Every node must see the
archive and the weights at the same paths (a shared file system).
"""

from __future__ import annotations

import logging
import pickle
import time
from collections import defaultdict
from typing import Callable

from ..api import ScorerSpec
from ..decoding import DecodeSettings
from .base import ArchiveOptions, ArchiveStore, Unit, decode_unit, records_table, unit_entry


def _decode_rows(row: dict, settings: DecodeSettings) -> list[dict]:
    """A Ray task: one unit's batches as rows (a batch is pickled whole, so the actor sees exactly
    the batch the local engine would)."""
    unit = Unit(row["key"], tuple(row["paths"]))
    rows = []
    for batch in decode_unit(unit, settings):
        for text in batch.warnings:  # kept in the worker's log
            logging.getLogger("clinreadnet").warning(text)
        rows.append({"unit": unit.id, "batch": pickle.dumps(batch)})
    return rows


class _ScoreActor:
    """One model per actor; each call scores one decoded batch into record rows."""

    def __init__(self, spec: ScorerSpec):
        if spec.threads is None:  # Ray sets OMP_NUM_THREADS to the actor's CPUs: the model's threads
            import dataclasses
            import os

            spec = dataclasses.replace(spec, threads=max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
        self.scorer = spec.build()

    def __call__(self, rows: dict):
        from ..records import to_record

        records = []
        for unit, payload in zip(rows["unit"], rows["batch"]):
            batch = pickle.loads(payload)  # written by _decode_rows in this same job
            records += [{**to_record(item, self.scorer.identity), "unit": unit}
                        for item in self.scorer.score_items(batch.items)]
        return records_table(records)


def run_ray(todo: list[Unit], settings: DecodeSettings, spec: ScorerSpec, store: ArchiveStore,
            options: ArchiveOptions, on_unit: Callable[[dict], None]) -> None:
    """Score ``todo`` in chunks of ``options.units_per_task`` units; each chunk is one Ray Data job
    whose Parquet files are committed with the chunk's manifest lines."""
    import pyarrow.parquet as pq
    import ray

    if not ray.is_initialized():
        ray.init(log_to_driver=False)  # RAY_ADDRESS, when set, names the cluster to join
    ray.data.DataContext.get_current().enable_progress_bars = False  # the CLI shows its own
    resources = ray.cluster_resources()
    gpus = 1 if resources.get("GPU", 0) >= 1 and spec.device != "cpu" else 0
    actors = max(1, options.workers)
    # Actors hold their CPUs for the whole job: leave one for the decoding tasks, or nothing decodes.
    spare = resources.get("CPU", 1) - 1
    actor_cpus = 1.0 if spare >= actors else max(0.1, spare / actors)
    chunk_size = max(1, options.units_per_task)
    for first in range(0, len(todo), chunk_size):
        chunk = todo[first:first + chunk_size]
        start = time.perf_counter()
        dataset = (ray.data.from_items([{"key": u.key, "paths": list(u.paths)} for u in chunk],
                                       override_num_blocks=len(chunk))
                   .flat_map(_decode_rows, fn_kwargs={"settings": settings})
                   .map_batches(_ScoreActor, fn_constructor_kwargs={"spec": spec}, batch_size=1,
                                concurrency=actors, num_cpus=actor_cpus, num_gpus=gpus))
        staged = store.staging()
        dataset.write_parquet(str(staged))
        records: dict[str, list[dict]] = defaultdict(list)
        files = sorted(staged.glob("*.parquet"))
        for file in files:
            for record in pq.read_table(file).to_pylist():
                records[record["unit"]].append(record)
        seconds = (time.perf_counter() - start) / len(chunk)
        entries = [unit_entry(u, records.get(u.id, []), seconds, options.threshold) for u in chunk]
        store.commit(staged, entries)
        for entry in entries:
            on_unit(entry)
