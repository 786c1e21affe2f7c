"""Multi-head classifier over the 21 quality classes and the helpers that read its output.

Four independent linear heads see the same pooled features (§3.1); at inference their
softmax probabilities are averaged. A class k stands for the score k / 5 on the
radiologists' 0-4 scale.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import NUM_CLASSES
from ..prediction import CLASSES_PER_POINT, GRADES, grade_name  # noqa: F401 (the scale, kept torch-free)


class MultiHeadClassifier(nn.Module):
    def __init__(self, in_features: int, num_heads: int = 4, num_classes: int = NUM_CLASSES, drop_rate: float = 0.0):
        super().__init__()
        self.drop = nn.Dropout(drop_rate)
        self.heads = nn.ModuleList(nn.Linear(in_features, num_classes) for _ in range(num_heads))

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        """(B, F) -> per-head logits (B, num_heads, num_classes)."""
        features = self.drop(features)
        return torch.stack([head(features) for head in self.heads], dim=1)


def head_probabilities(head_logits: torch.Tensor) -> torch.Tensor:
    """(B, H, K) logits -> (B, H, K) probabilities, one softmax per head."""
    return head_logits.softmax(dim=-1)


def average_probabilities(head_logits: torch.Tensor) -> torch.Tensor:
    """(B, H, K) logits -> (B, K): the heads' softmax probabilities averaged (the model's prediction)."""
    return head_probabilities(head_logits).mean(dim=1)


def expected_score(probs: torch.Tensor) -> torch.Tensor:
    """(..., K) probabilities -> (...) score on the 0-4 scale: sum_k p_k k / 5."""
    classes = torch.arange(probs.shape[-1], dtype=probs.dtype, device=probs.device)
    return (probs * classes).sum(dim=-1) / CLASSES_PER_POINT


def argmax_class(probs: torch.Tensor) -> torch.Tensor:
    """(..., K) probabilities -> (...) most probable class 0..K-1."""
    return probs.argmax(dim=-1)
