"""Figures of the study report, drawn with matplotlib (Agg) and returned as PNG bytes.

Nothing here knows about HTML: ``study.py`` embeds what these functions return.
"""

from __future__ import annotations

import io

import matplotlib

matplotlib.use("Agg")  # no display, no GUI toolkit: a report is built anywhere

import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import MaxNLocator  # noqa: E402
import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402

GRADE_EDGES = (0.5, 1.5, 2.5, 3.5)  # bad | poor | fair | good | excellent, nearest whole score
SCORE_COLOUR, NOISE_COLOUR, FLAG_COLOUR = "#1f5fa8", "#b5651d", "#c0392b"
HEATMAP_ALPHA = 0.45


def _png(fig) -> bytes:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    plt.close(fig)
    return buffer.getvalue()


def series_plot(position: list[float], scores: list[float], noise_hu: list[float | None], flagged: list[bool],
                position_label: str) -> bytes:
    """Score (left axis) and noise_hu (right axis) against slice position; flagged slices ringed."""
    order = np.argsort(position)
    x = np.asarray(position, float)[order]
    y = np.asarray(scores, float)[order]
    fig, ax = plt.subplots(figsize=(7.5, 2.8))
    for edge in GRADE_EDGES:
        ax.axhline(edge, color="#dddddd", linewidth=0.8, zorder=0)
    ax.plot(x, y, "-o", color=SCORE_COLOUR, markersize=3.5, linewidth=1.2, label="score")
    marks = np.asarray(flagged, bool)[order]
    if marks.any():
        ax.scatter(x[marks], y[marks], s=70, facecolors="none", edgecolors=FLAG_COLOUR, linewidths=1.4,
                   label="uncertain", zorder=3)
    ax.set_ylim(-0.1, 4.1)
    ax.set_yticks([0, 1, 2, 3, 4], ["0 bad", "1 poor", "2 fair", "3 good", "4 excellent"], fontsize=8)
    ax.set_xlabel(position_label, fontsize=9)
    ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.tick_params(axis="x", labelsize=8)
    noise = np.array([np.nan if n is None else n for n in noise_hu], float)[order]
    if np.isfinite(noise).any():
        twin = ax.twinx()
        twin.plot(x, noise, "--s", color=NOISE_COLOUR, markersize=3, linewidth=1, label="noise_hu")
        twin.set_ylabel("noise_hu (HU)", color=NOISE_COLOUR, fontsize=9)
        twin.tick_params(axis="y", colors=NOISE_COLOUR, labelsize=8)
        twin.set_ylim(bottom=0)
    handles = [h for a in fig.axes for h in a.get_legend_handles_labels()[0]]
    labels = [label for a in fig.axes for label in a.get_legend_handles_labels()[1]]
    ax.legend(handles, labels, loc="lower left", fontsize=8, frameon=False, ncol=3)
    return _png(fig)


def slice_figure(image: np.ndarray, heatmap: np.ndarray | None) -> bytes:
    """The windowed slice, and beside it the same slice under its quality map (if there is one).

    Drawn straight to pixels (matplotlib's colour map, Pillow's PNG): a figure per slice through
    pyplot would cost more than the quality map itself.
    """
    gray = np.repeat(np.clip(image, 0, 1)[..., None], 3, axis=2)
    panels = [gray]
    if heatmap is not None:
        colours = matplotlib.colormaps["inferno"](np.clip(heatmap, 0, 1))[..., :3]
        panels += [np.full((gray.shape[0], 6, 3), 1.0), (1 - HEATMAP_ALPHA) * gray + HEATMAP_ALPHA * colours]
    pixels = (np.concatenate(panels, axis=1) * 255).round().astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG", optimize=False)
    return buffer.getvalue()
