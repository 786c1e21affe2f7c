"""Distillation: a student trained toward a teacher's class distributions instead of labels.

Weights v5 read one sampling grid a slice and learn what weights v4 say after averaging all four
(the teacher's per-head probabilities, computed once per training image). The student's step
sees one grid drawn at random, so what it can learn is the part of the four-grid average that
does not depend on which grid it was given.

Total = mean over heads of KL(teacher_h || student_h)
        + rps_weight * RPS between the head-averaged distributions (ordinal: a class off by two
          costs more than one off by one, as in HRPS's Eq. 18-20 with the teacher's cumulative
          distribution in place of the one-hot label's)
        + rank_weight * the pairwise ranking term (ranking.py) on the items' own labels, the
          config's ``loss.rank_weight``: the teacher's distributions say how much each image is
          worth, the labels which of two acquisitions of one slice is the better.
"""

from __future__ import annotations

import torch
from torch import nn

from ..archs.heads import average_probabilities, expected_score
from .hrps import LossTerms
from .ranking import pairwise_ranking


def soft_ranked_probability_score(probs: torch.Tensor, target_probs: torch.Tensor) -> torch.Tensor:
    """Eq. 18-20 with a distribution as the target: sum_k (cumsum(p)_k - cumsum(q)_k)^2, per sample."""
    return (probs.cumsum(dim=-1) - target_probs.cumsum(dim=-1)).pow(2).sum(dim=-1)


class DistillationLoss(nn.Module):
    def __init__(self, rps_weight: float = 1.0, rank_weight: float = 0.0):
        super().__init__()
        self.rps_weight, self.rank_weight = rps_weight, rank_weight

    def forward(self, head_logits: torch.Tensor, teacher_head_probs: torch.Tensor,
                classes: torch.Tensor | None = None) -> LossTerms:
        """head_logits (B, H, K) of the student; teacher_head_probs (B, H, K), each head's distribution;
        classes (B,): the items' label classes, which the ranking term needs."""
        log_probs = torch.log_softmax(head_logits, dim=-1)
        teacher = teacher_head_probs.to(log_probs.dtype)
        kl = (teacher * (torch.log(teacher.clamp_min(1e-12)) - log_probs)).sum(dim=-1).mean()
        probs = average_probabilities(head_logits)
        rps = soft_ranked_probability_score(probs, teacher.mean(dim=1)).mean()
        total = kl + self.rps_weight * rps
        parts = {"kl": kl.detach(), "rps": rps.detach()}
        if self.rank_weight > 0:
            if classes is None:
                raise ValueError("the ranking term needs the items' label classes")
            rank = pairwise_ranking(expected_score(probs), classes)
            total = total + self.rank_weight * rank
            parts["rank"] = rank.detach()
        return LossTerms(total=total, parts=parts)
