"""Records for pipelines: one per slice (or per failed input), as JSON, JSON Lines or CSV."""

from __future__ import annotations

import csv
import json
import math
from pathlib import Path
from typing import Any, TextIO

from .patient_size import size_adjusted_noise
from .readers import InputError
from .readers.types import META_FIELDS

FIELDS = ["path", "series", "series_uid", "slice", "score", "grade", "class", "head_scores", "head_sd", "entropy",
          "uncertain", "noise_hu", "noise_note", "wed_mm", "noise_hu_size", *META_FIELDS, "weights", "weights_sha256",
          "sampling_grids", "error"]
FORMATS = ("json", "jsonl", "csv")
# What each field means, one line each: the documentation's record table is generated from this.
FIELD_MEANINGS = {
    "path": "the file the slice came from (for DICOMweb, the instance's WADO-RS address)",
    "series": "series description (DICOM) or file name",
    "series_uid": "DICOM SeriesInstanceUID, `null` for other formats",
    "slice": "0-based index in the series / volume, in anatomical order",
    "score": "0-4, the expected class of the head-averaged distribution / 5",
    "grade": "bad · poor · fair · good · excellent (nearest whole score)",
    "class": "most probable of the 21 classes (score × 5; the score is the distribution's mean, so they can differ)",
    "head_scores": "the four heads' own scores (CSV: `;`-separated)",
    "head_sd": "spread (SD) of the heads' scores, in score points: the model's own uncertainty",
    "entropy": "normalised entropy of the head-averaged distribution, 0 sure … 1 flat",
    "uncertain": "`head_sd` ≥ 0.35",
    "noise_hu": "the classical noise figure beside the score (never part of it): robust noise SD in HU, 1.4826 × MAD "
                "of the 5 × 5 high-pass residual inside soft tissue (−50…150 HU of a 9 × 9 mean, eroded 3 px), at "
                "native resolution; `null` where it cannot be measured",
    "noise_note": "why `noise_hu` is `null`: `not in HU` (windowed [0, 1] input), `fewer than 500 soft-tissue "
                  "pixels`, `non-finite pixels`",
    "wed_mm": "the patient's water-equivalent diameter in mm (AAPM report 220), beside the score: 2 √(Σ (HU / 1000 "
              "+ 1) × pixel area / π) over the largest region above −500 HU, holes filled; `null` without HU, a "
              "pixel spacing or a body",
    "noise_hu_size": "`noise_hu` with the patient's size divided out, `noise_hu × exp(−0.00965 × (wed_mm − 250))`: "
                     "the noise a 250 mm patient would show at the same tube output (nothing fitted; μ_water = "
                     "0.0193 /mm); `null` where either figure is",
    "study_uid": "DICOM StudyInstanceUID",
    "sop_uid": "DICOM SOPInstanceUID",
    "instance_number": "DICOM InstanceNumber (the frame number for multi-frame files)",
    "z_mm": "the slice position (ImagePositionPatient z, per frame for enhanced CT)",
    "slice_thickness_mm": "SliceThickness",
    "kvp": "KVP",
    "mas": "Exposure in mAs, else tube current × exposure time",
    "ctdivol_mgy": "CTDIvol",
    "kernel": "ConvolutionKernel",
    "manufacturer": "Manufacturer",
    "weights": "the weights that produced the score: shipped name (`clinreadnet.sim-v4`) or file",
    "weights_sha256": "the weights file's SHA-256",
    "sampling_grids": "how many sampling grids of the input path the slice was read through and averaged",
    "error": "only on failed inputs, which carry `path`, `slice` (null when the whole file failed) and `error`, "
             "and no score",
}


def choose_format(requested: str | None, output: Path | None, stdout_is_terminal: bool) -> str:
    """The output format: ``requested`` if given; else the ``output`` file's suffix; else a table on
    a terminal and JSON Lines into a pipe or file. Raises ValueError where they disagree."""
    if output is not None:
        suffix = output.suffix.lower().lstrip(".")
        if requested == "table":
            raise ValueError(f"--output {output}: a table is for the terminal; pass --format json, jsonl or csv")
        if suffix in FORMATS and requested not in (None, suffix):
            raise ValueError(f"--output {output} says {suffix} but --format says {requested}; make them agree")
        if suffix not in FORMATS and requested is None:
            raise ValueError(f"cannot tell the format of {output} from its suffix; pass --format json, jsonl or csv")
        return requested or suffix
    if requested is not None:
        return requested
    return "table" if stdout_is_terminal else "jsonl"


def with_nulls(value: Any) -> Any:
    """``value`` with every NaN or infinite float (a share of no pairs, a correlation of constant
    scores) replaced by None, so that it writes as strict JSON: ``null``, never ``NaN``."""
    if isinstance(value, float):
        return value if math.isfinite(value) else None
    if isinstance(value, dict):
        return {key: with_nulls(item) for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [with_nulls(item) for item in value]
    return value


def to_record(item: Any, weights: dict | None = None) -> dict:
    """The record of a ``scoring.SliceScore`` (not imported: records need no model), or for a failed
    input ``{"path", "slice", "error"}`` and no score (``slice`` is null when the whole file
    failed). ``weights``: ``{"weights", "weights_sha256", "sampling_grids"}`` (``api.Scorer.identity``)."""
    if isinstance(item, InputError):
        return {"path": str(item.path), "slice": item.slice, "error": item.reason}
    noise, size = item.noise.noise_hu, item.wed_mm
    return {
        "path": str(item.path), "series": item.series, "series_uid": item.series_uid, "slice": item.slice,
        "score": round(item.score, 4), "grade": item.grade, "class": item.label,
        "head_scores": [round(h, 4) for h in item.head_scores], "head_sd": round(item.head_sd, 4),
        "entropy": round(item.entropy, 4), "uncertain": item.uncertain,
        "noise_hu": None if noise is None else round(noise, 2),
        "noise_note": item.noise.note,
        "wed_mm": None if size is None else round(size, 1),
        "noise_hu_size": None if noise is None or size is None else round(float(size_adjusted_noise(noise, size)), 2),
        **{name: item.meta.get(name) for name in META_FIELDS},
        **(weights or {}),
    }


class RecordWriter:
    """Writes records as they come, flushing each one, so a killed run keeps every finished record.

    JSON Lines and CSV are complete after every record; a JSON array is closed by ``close()``.
    """

    def __init__(self, stream: TextIO, fmt: str):
        if fmt not in FORMATS:
            raise ValueError(f"unknown format {fmt!r}; choose one of {', '.join(FORMATS)}")
        self.stream, self.fmt, self.count = stream, fmt, 0
        self._csv = csv.DictWriter(stream, fieldnames=FIELDS, lineterminator="\n") if fmt == "csv" else None
        if self._csv:
            self._csv.writeheader()
        elif fmt == "json":
            stream.write("[")
        stream.flush()

    def write(self, record: dict) -> None:
        if self._csv:
            row = dict(record)
            if "head_scores" in row:
                row["head_scores"] = ";".join(f"{h:.4f}" for h in row["head_scores"])
            self._csv.writerow(row)
        elif self.fmt == "json":
            self.stream.write(("," if self.count else "") + "\n  " + json.dumps(record))
        else:
            self.stream.write(json.dumps(record) + "\n")
        self.count += 1
        self.stream.flush()

    def close(self) -> None:
        if self.fmt == "json":
            self.stream.write("\n]\n" if self.count else "]\n")
        self.stream.flush()
