"""Records for pipelines: one per slice (or per failed input), as JSON, JSON Lines or CSV."""

from __future__ import annotations

import csv
import io
import json
from typing import Iterable

from .readers import InputError
from .scoring import SliceScore

FIELDS = ["path", "series", "series_uid", "slice", "score", "grade", "class", "head_scores", "noise_hu",
          "noise_note", "error"]
FORMATS = ("json", "jsonl", "csv")


def to_record(item: SliceScore | InputError) -> dict:
    """A score record, or for a failed input ``{"path", "error"}`` and no score."""
    if isinstance(item, InputError):
        return {"path": str(item.path), "error": item.reason}
    return {
        "path": str(item.path), "series": item.series, "series_uid": item.series_uid, "slice": item.slice,
        "score": round(item.score, 4), "grade": item.grade, "class": item.label,
        "head_scores": [round(h, 4) for h in item.head_scores],
        "noise_hu": None if item.noise.noise_hu is None else round(item.noise.noise_hu, 2),
        "noise_note": item.noise.note,
    }


def render(records: Iterable[dict], fmt: str) -> str:
    records = list(records)
    if fmt == "json":
        return json.dumps(records, indent=2) + "\n"
    if fmt == "jsonl":
        return "".join(json.dumps(r) + "\n" for r in records)
    if fmt == "csv":
        buffer = io.StringIO()
        writer = csv.DictWriter(buffer, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for r in records:
            row = dict(r)
            if "head_scores" in row:
                row["head_scores"] = ";".join(f"{h:.4f}" for h in row["head_scores"])
            writer.writerow(row)
        return buffer.getvalue()
    raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
