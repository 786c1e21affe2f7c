"""The model's answer for a batch, read without torch: per-head class probabilities -> scores.

The exported runtimes (``runtimes``) hand back per-head logits as numpy arrays; this reads them the
way ``archs.clinreadnet.Prediction`` reads torch's (the same quantities, in numpy), so that
``score`` on those runtimes never imports torch. Also the 0-4 scale's grade names.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

CLASSES_PER_POINT = 5  # score = class / 5 (§4.1)
GRADES = ("bad", "poor", "fair", "good", "excellent")


def grade_name(score: float) -> str:
    """The radiologists' word for a 0-4 score, rounding to the nearest grade."""
    index = min(max(int(score + 0.5), 0), len(GRADES) - 1)
    return GRADES[index]


@dataclass
class ArrayPrediction:
    """``Prediction``'s fields and properties on numpy arrays (fp64 arithmetic, fp32 logits in)."""

    head_probs: np.ndarray  # (B, H, K)

    @classmethod
    def from_logits(cls, head_logits: np.ndarray) -> "ArrayPrediction":
        logits = head_logits.astype(np.float64)
        exp = np.exp(logits - logits.max(axis=-1, keepdims=True))
        return cls(head_probs=exp / exp.sum(axis=-1, keepdims=True))

    @property
    def probs(self) -> np.ndarray:  # (B, K) head-averaged
        return self.head_probs.mean(axis=1)

    @property
    def score(self) -> np.ndarray:  # (B,) 0-4
        return self.probs @ np.arange(self.probs.shape[-1]) / CLASSES_PER_POINT

    @property
    def label(self) -> np.ndarray:
        return self.probs.argmax(axis=-1)

    @property
    def head_scores(self) -> np.ndarray:  # (B, H)
        return self.head_probs @ np.arange(self.head_probs.shape[-1]) / CLASSES_PER_POINT

    @property
    def head_sd(self) -> np.ndarray:
        return self.head_scores.std(axis=1)

    @property
    def entropy(self) -> np.ndarray:  # 0 sure .. 1 flat
        p = np.clip(self.probs, 1e-12, None)
        return -(p * np.log(p)).sum(axis=1) / math.log(p.shape[1])
