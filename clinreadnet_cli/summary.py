"""Per-series and per-study summaries of slice records, gathered as the records stream past.

Only each slice's score and where it sits are kept, so a summary of a whole archive costs a few
bytes per slice. Used by the table footer, ``--summary FILE``, the quality gate (``--fail-below``,
``--fail-below-mean``) and the study report. Works on records (dicts, as ``records.to_record``
makes them or a JSONL file holds them), so it needs no model.
"""

from __future__ import annotations

import math
import statistics
from dataclasses import dataclass, field


@dataclass
class Summary:
    """One series or one study."""

    level: str  # "series" | "study"
    study_uid: str | None
    series_uid: str | None
    label: str  # series description or file; the study's UID or "files without a study"
    slices: int
    mean: float
    min: float
    p10: float  # 10th percentile (linear interpolation)
    below_threshold: int
    threshold: float
    worst_path: str
    worst_slice: int

    def to_record(self) -> dict:
        return {"level": self.level, "study_uid": self.study_uid, "series_uid": self.series_uid,
                "label": self.label, "slices": self.slices, "mean": round(self.mean, 4), "min": round(self.min, 4),
                "p10": round(self.p10, 4), "below_threshold": self.below_threshold, "threshold": self.threshold,
                "worst_path": self.worst_path, "worst_slice": self.worst_slice}


SUMMARY_FIELDS = list(Summary.__dataclass_fields__)[:-2] + ["worst_path", "worst_slice"]


@dataclass
class _Group:
    label: str
    study_uid: str | None
    series_uid: str | None
    scores: list[float] = field(default_factory=list)
    worst: tuple[float, str, int] = (math.inf, "", -1)

    def add(self, score: float, path: str, index: int) -> None:
        self.scores.append(score)
        if score < self.worst[0]:
            self.worst = (score, path, index)

    def summary(self, level: str, threshold: float) -> Summary:
        values = sorted(self.scores)
        return Summary(level=level, study_uid=self.study_uid, series_uid=self.series_uid, label=self.label,
                       slices=len(values), mean=statistics.fmean(values), min=values[0], p10=_percentile(values, 0.1),
                       below_threshold=sum(v < threshold for v in values), threshold=threshold,
                       worst_path=self.worst[1], worst_slice=self.worst[2])


def _percentile(sorted_values: list[float], q: float) -> float:
    position = q * (len(sorted_values) - 1)
    low = math.floor(position)
    high = min(low + 1, len(sorted_values) - 1)
    return sorted_values[low] + (sorted_values[high] - sorted_values[low]) * (position - low)


def series_key(record: dict) -> tuple:
    """Slices of one series share it: the DICOM series UID, else the file (volumes, TIFFs)."""
    return (record["series"], record["series_uid"]) if record.get("series_uid") else (record["series"], record["path"])


class SummaryCollector:
    """Feed it every slice record; ask for series and study summaries at any time."""

    def __init__(self, threshold: float = 2.0):
        self.threshold = threshold
        self._series: dict[tuple, _Group] = {}
        self._studies: dict[str | None, _Group] = {}

    def add(self, record: dict) -> None:
        study, where = record.get("study_uid"), (record["score"], record["path"], record["slice"])
        self._series.setdefault(series_key(record), _Group(record["series"], study, record.get("series_uid"))).add(*where)
        self._studies.setdefault(study, _Group(study or "files without a study", study, None)).add(*where)

    def series(self) -> list[Summary]:
        return [g.summary("series", self.threshold) for g in self._series.values()]

    def studies(self) -> list[Summary]:
        return [g.summary("study", self.threshold) for g in self._studies.values()]

    def gate(self, fail_below: float | None, fail_below_mean: float | None) -> list[str]:
        """Why the run fails its quality gate (one line per series that falls short), or []."""
        reasons = []
        for s in self.series():
            if fail_below is not None and s.min < fail_below:
                reasons.append(f"{s.label}: slice {s.worst_slice} of {s.worst_path} scores {s.min:.2f} < {fail_below:g}")
            if fail_below_mean is not None and s.mean < fail_below_mean:
                reasons.append(f"{s.label}: mean {s.mean:.2f} over {s.slices} slices < {fail_below_mean:g}")
        return reasons
