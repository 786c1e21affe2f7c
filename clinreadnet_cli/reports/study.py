"""One self-contained HTML page for a study, from its slice records plus figures.

The page is built from the records ``clinreadnet score`` writes (JSON Lines), so a report can be
rebuilt without the model; slice images and quality maps come in as ``SliceView``s where they
are available. Every image is embedded (PNG as a data URI): the file opens offline.
"""

from __future__ import annotations

import base64
import html
from dataclasses import dataclass, field
from importlib import resources
from string import Template

import numpy as np

from ..summary import SummaryCollector, series_key
from . import figures

ACQUISITION_FIELDS = (("kvp", "kVp"), ("mas", "mAs"), ("ctdivol_mgy", "CTDIvol (mGy)"), ("kernel", "kernel"),
                      ("slice_thickness_mm", "slice thickness (mm)"), ("manufacturer", "manufacturer"))


@dataclass
class SliceView:
    image: np.ndarray  # the slice as the network saw it, windowed to [0, 1]
    heatmap: np.ndarray | None = None  # what lowered its score, [0, 1], same size


@dataclass
class ReportInputs:
    records: list[dict]  # slice records and error records, as `score` writes them
    views: dict[tuple[str, int], SliceView] = field(default_factory=dict)  # (path, slice) -> view
    title: str = "CT image quality report"
    generated: str = ""  # when and by what, shown under the title
    threshold: float = 2.0
    worst: int = 2  # slices shown per series


def _img(png: bytes, alt: str, css: str) -> str:
    return f'<img class="{css}" alt="{html.escape(alt)}" src="data:image/png;base64,{base64.b64encode(png).decode()}">'


def _table(header: list[str], rows: list[list[str]]) -> str:
    head = "".join(f"<th>{html.escape(h)}</th>" for h in header)
    body = "".join("<tr>" + "".join(f"<td>{c}</td>" for c in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _series_section(rows: list[dict], summary, inputs: ReportInputs) -> str:
    first = rows[0]
    with_z = all(r.get("z_mm") is not None for r in rows)
    position = [r["z_mm"] if with_z else r["slice"] for r in rows]
    flagged = [bool(r.get("uncertain")) for r in rows]
    plot = figures.series_plot(position, [r["score"] for r in rows], [r.get("noise_hu") for r in rows], flagged,
                               "slice position z (mm)" if with_z else "slice")
    parts = [f'<section class="series"><h2>{html.escape(first["series"])}</h2>']
    if first.get("series_uid"):
        parts.append(f'<p class="meta">SeriesInstanceUID {html.escape(first["series_uid"])}</p>')
    parts.append(_table(["slices", "mean", "min", "10th percentile", f"below {inputs.threshold:g}", "uncertain"],
                        [[str(summary.slices), f"{summary.mean:.2f}", f"{summary.min:.2f}", f"{summary.p10:.2f}",
                          str(summary.below_threshold), str(sum(flagged))]]))
    acquisition = [(label, first.get(name)) for name, label in ACQUISITION_FIELDS if first.get(name) is not None]
    if acquisition:
        parts.append(_table([label for label, _ in acquisition],
                            [[html.escape(f"{value:g}" if isinstance(value, float) else str(value))
                              for _, value in acquisition]]))
    parts.append(_img(plot, f"score and noise against position, {first['series']}", "plot"))
    worst = sorted(rows, key=lambda r: r["score"])[: inputs.worst]
    figures_html = []
    for r in worst:
        view = inputs.views.get((r["path"], r["slice"]))
        caption = (f'slice {r["slice"]} · score {r["score"]:.2f} <span class="grade-{r["grade"]}">{r["grade"]}</span>'
                   + (f' · noise {r["noise_hu"]:.1f} HU' if r.get("noise_hu") is not None else "")
                   + (f' · patient {r["wed_mm"]:.0f} mm water-equivalent' if r.get("wed_mm") is not None else "")
                   + (' · <span class="flag">uncertain</span>' if r.get("uncertain") else ""))
        if view is not None:
            png = figures.slice_figure(view.image, view.heatmap)
            figures_html.append(f"<figure>{_img(png, 'slice ' + str(r['slice']), 'slice')}"
                                f"<figcaption>{caption}</figcaption></figure>")
        else:
            figures_html.append(f"<figure><figcaption>{caption} (image not available)</figcaption></figure>")
    parts.append(f"<h3>Lowest-scoring slices</h3><div class=\"slices\">{''.join(figures_html)}</div>")
    uncertain = [r for r in rows if r.get("uncertain")]
    if uncertain:
        listed = ", ".join(f'{r["slice"]} ({r["score"]:.2f} ± {r.get("head_sd", 0):.2f})' for r in uncertain)
        parts.append(f'<p><span class="flag">Uncertain slices</span> (the four heads disagree): {listed}</p>')
    parts.append(f'<p class="note">{html.escape(first["path"].rsplit("/", 1)[0])}</p></section>')
    return "".join(parts)


def build_report(inputs: ReportInputs) -> str:
    """The whole page as one HTML string."""
    scored = [r for r in inputs.records if "score" in r]
    errors = [r for r in inputs.records if "error" in r]
    collector = SummaryCollector(inputs.threshold)
    groups: dict[tuple, list[dict]] = {}
    for r in scored:
        collector.add(r)
        groups.setdefault(series_key(r), []).append(r)
    sections = [_series_section(rows, summary, inputs) for rows, summary in zip(groups.values(), collector.series())]
    if errors:
        sections.append("<section><h2>Inputs that could not be scored</h2>" + _table(
            ["file", "slice", "reason"],
            [[html.escape(e["path"]), "" if e.get("slice") is None else str(e["slice"]), html.escape(e["error"])]
             for e in errors]) + "</section>")
    if not scored:
        sections.insert(0, "<p>No slice could be scored.</p>")
    weights = next((f'{r["weights"]} (SHA-256 {r["weights_sha256"][:12]}…)' for r in scored if r.get("weights")),
                   "unknown")
    overview = (f"{len(scored)} slices in {len(groups)} series"
                + (f", {len(errors)} inputs not scored" if errors else "") + f" · weights {weights}")
    template = Template(resources.files(__package__).joinpath("templates/study.html").read_text(encoding="utf-8"))
    return template.substitute(
        title=html.escape(inputs.title), meta=html.escape(f"{overview} · {inputs.generated}".strip(" ·")),
        body="\n".join(sections),
        footer=html.escape("Scores 0-4: 0 bad, 1 poor, 2 fair, 3 good, 4 excellent. noise_hu is the classical "
                           "noise figure beside the score (never part of it); the patient's water-equivalent diameter "
                           "(wed_mm) says how much noise the same dose gives this patient. Maps show what lowered a slice's "
                           "score (Grad-CAM of 4 - score)."))
