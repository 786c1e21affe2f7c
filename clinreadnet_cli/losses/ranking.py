"""Pairwise ranking term: an addition of this code to the paper's objective (off by default).

HRPS scores each image against its own label only, so two acquisitions of one slice whose labels
differ by a class can still come out in the wrong order when both predictions sit within the
label noise. This term looks at pairs: for every two images of a batch whose labels differ, the
better one's expected score must exceed the other's by at least half their label gap, else the
shortfall is the loss. Batches drawn as runs of one source slice (``TrainConfig.images_per_source``)
make most of these pairs acquisitions of the same slice, which is what a protocol comparison asks.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ..archs.heads import CLASSES_PER_POINT

MARGIN_OF_GAP = 0.5  # required score gap, as a fraction of the pair's label gap


def pairwise_ranking(scores: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Mean hinge shortfall over the ordered pairs of a batch. scores (B,) 0-4, target (B,) classes."""
    gap = (target[:, None] - target[None, :]).to(scores.dtype) / CLASSES_PER_POINT  # label i - label j, points
    ordered = gap > 0
    if not ordered.any():
        return scores.sum() * 0.0  # keeps the graph (and DDP's gradient sync) the same shape
    shortfall = F.relu(MARGIN_OF_GAP * gap - (scores[:, None] - scores[None, :]))
    return shortfall[ordered].mean()
