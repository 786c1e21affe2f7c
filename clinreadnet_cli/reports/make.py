"""The study report workflow: score, pick each series' lowest slices, map them, assemble the page.

``report_from_paths`` runs the model (scores and quality maps); ``report_from_records`` rebuilds
a page from the records ``clinreadnet score`` wrote, without the model (slice images are read
again where their files are still there; no maps).
"""

from __future__ import annotations

import datetime
from pathlib import Path
from typing import Callable, Iterable

import torch

from ..version import __version__
from ..api import Scorer
from ..config import get_config
from ..explain import quality_maps
from ..preprocess import prepare_slice
from ..readers import DEFAULT_LIMITS, InputError, Limits, SliceRef, discover
from ..records import to_record
from ..summary import series_key
from .study import ReportInputs, SliceView, build_report


def _stamp() -> str:
    now = datetime.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    return f"clinreadnet {__version__}, {now}"


def _worst(records: list[dict], per_series: int) -> list[dict]:
    groups: dict[tuple, list[dict]] = {}
    for r in records:
        if "score" in r:
            groups.setdefault(series_key(r), []).append(r)
    return [r for rows in groups.values() for r in sorted(rows, key=lambda r: r["score"])[:per_series]]


def report_from_paths(paths: Iterable[str | Path], scorer: Scorer, worst: int = 2, heatmaps: bool = True,
                      threshold: float = 2.0, input_range: str = "auto", limits: Limits = DEFAULT_LIMITS,
                      on_slice: Callable[[], None] | None = None, title: str | None = None) -> tuple[str, list[dict]]:
    """(HTML page, records) for everything under ``paths``."""
    paths = list(paths)
    found = discover(paths, input_range, limits)
    refs: dict[tuple[str, int], SliceRef] = {(str(ref.path), ref.index): ref for s in found.series for ref in s.slices}
    records = [to_record(e) for e in found.errors]
    records += [to_record(item, scorer.identity) for item in scorer.stream(found.series, on_slice=on_slice)]
    chosen = [(r["path"], r["slice"]) for r in _worst(records, worst)]
    inputs = torch.stack([prepare_slice(refs[key].load(), refs[key].value_range, scorer.model.config)
                          for key in chosen]) if chosen else None
    maps = quality_maps(scorer.model, inputs) if heatmaps and inputs is not None else [None] * len(chosen)
    views = {key: SliceView(image=inputs[k, 0].numpy(), heatmap=maps[k]) for k, key in enumerate(chosen)}
    page = build_report(ReportInputs(records=records, views=views, title=title or _title(paths),
                                     generated=_stamp(), threshold=threshold, worst=worst))
    return page, records


def report_from_records(records: list[dict], worst: int = 2, threshold: float = 2.0, title: str = "",
                        input_range: str = "auto") -> str:
    """A page from saved records alone: no model, no maps; slice images re-read where possible and
    shown as the default model config feeds them (records do not store the weights' window)."""
    shown_as = get_config("clinreadnet")
    views = {}
    for r in _worst(records, worst):
        in_file = [ref for s in discover([r["path"]], input_range).series for ref in s.slices]
        # A single-slice file is the slice; in a volume or multi-frame file the index is the file's own.
        refs = in_file if len(in_file) == 1 else [ref for ref in in_file if ref.index == r["slice"]]
        if refs:
            try:
                image = prepare_slice(refs[0].load(), refs[0].value_range, shown_as)
            except InputError:  # the file changed since it was scored: shown without its image
                continue
            views[(r["path"], r["slice"])] = SliceView(image=image[0].numpy())
    return build_report(ReportInputs(records=records, views=views, title=title or "CT image quality report",
                                     generated=_stamp() + " (rebuilt from records)", threshold=threshold,
                                     worst=worst))


def _title(paths: Iterable[str | Path]) -> str:
    names = [Path(p).name or str(p) for p in paths]
    return "CT image quality: " + ", ".join(names[:3]) + (" …" if len(names) > 3 else "")
