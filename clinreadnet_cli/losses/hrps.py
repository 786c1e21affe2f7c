"""Hierarchical ranked probability score (HRPS) loss and the heads' class-weighted CE (§3.1, §3.4).

Total = (L_heads + L_HRPS) / 2, where
  L_heads: per-head cross-entropy with head-specific class weights (ref. 28), averaged over heads;
  L_HRPS:  on the head-averaged probabilities p, L_main + lambda_4 * (-H(p)) (Eq. 28-30).
Each HRPS term can be switched off for the Tab. 8 ablations; ``hrps=False`` leaves L_heads alone.
``rank_weight > 0`` adds this code's pairwise ranking term (ranking.py) on top.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from ..archs.heads import average_probabilities, expected_score
from ..config import LossConfig
from .ranking import pairwise_ranking


def head_class_weights(num_classes: int, num_heads: int, partition: str = "contiguous", seed: int = 0) -> torch.Tensor:
    """(H, K): head h weights its own share of the classes by H, the rest by 1/H (§3.1). Shares are
    contiguous runs of classes, or (``shuffled``) runs of a permutation seeded by ``seed``."""
    order = np.arange(num_classes) if partition == "contiguous" else np.random.default_rng(seed).permutation(num_classes)
    weights = torch.full((num_heads, num_classes), 1.0 / num_heads)
    for h, part in enumerate(np.array_split(order, num_heads)):
        weights[h, torch.as_tensor(part)] = float(num_heads)
    return weights


def coarse_probabilities(probs: torch.Tensor, group: int) -> torch.Tensor:
    """Eq. 22: (B, K) fine probabilities -> (B, K // group); fine class k belongs to coarse k // group."""
    return probs.unflatten(-1, (-1, group)).sum(dim=-1)


def ranked_probability_score(probs: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Eq. 18-20 (and 23-25): sum_k (cumsum(p)_k - cumsum(onehot(y))_k)^2, per sample. (B, K), (B,) -> (B,)."""
    onehot = F.one_hot(target, probs.shape[-1]).to(probs.dtype)
    return (probs.cumsum(dim=-1) - onehot.cumsum(dim=-1)).pow(2).sum(dim=-1)


def metabalance(loss: torch.Tensor, reference: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Eq. 26-27: loss / (|loss| / |reference| + eps), the ratio detached so only the magnitude changes."""
    ratio = (loss.abs() / reference.abs()).detach()
    return loss / (ratio + eps)


def entropy(probs: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """Eq. 29: H(p) = -sum_k p_k log p_k, per sample."""
    return -(probs * torch.log(probs.clamp_min(eps))).sum(dim=-1)


@dataclass
class LossTerms:
    """The loss to backpropagate and its parts (detached, for logging)."""

    total: torch.Tensor
    parts: dict[str, torch.Tensor]


class ClinReadNetLoss(nn.Module):
    def __init__(self, cfg: LossConfig, num_classes: int, num_heads: int):
        super().__init__()
        self.cfg = cfg
        weights = head_class_weights(num_classes, num_heads, cfg.head_partition, cfg.partition_seed)
        self.register_buffer("class_weights", weights, persistent=False)

    def heads_loss(self, head_logits: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """L_heads: class-weighted CE of each head, averaged over heads."""
        losses = [
            F.cross_entropy(head_logits[:, h], target, weight=self.class_weights[h])
            for h in range(head_logits.shape[1])
        ]
        return torch.stack(losses).mean()

    def hrps_contributions(self, probs: torch.Tensor, target: torch.Tensor) -> dict[str, torch.Tensor]:
        """Each switched-on HRPS term as it enters L_HRPS, on head-averaged probabilities (B, K)."""
        cfg = self.cfg
        # L_CE (Eq. 17) is computed even when switched off: it is the scale the RPS terms are balanced to.
        ce = F.nll_loss(torch.log(probs.clamp_min(1e-12)), target)
        out: dict[str, torch.Tensor] = {}
        if cfg.cross_entropy:
            out["ce"] = cfg.lambda_ce * ce
        if cfg.fine_rps:
            fine = ranked_probability_score(probs, target).mean()  # Eq. 20
            out["fine_rps"] = cfg.lambda_fine * metabalance(fine, ce)  # Eq. 26
        if cfg.coarse_rps:
            coarse_p = coarse_probabilities(probs, cfg.coarse_group)  # Eq. 21-22
            coarse = ranked_probability_score(coarse_p, target // cfg.coarse_group).mean()  # Eq. 25
            out["coarse_rps"] = cfg.lambda_coarse * metabalance(coarse, ce)  # Eq. 27
        if cfg.entropy:
            out["entropy"] = -cfg.lambda_entropy * entropy(probs).mean()  # Eq. 29-30: + lambda_4 (-H(p))
        return out

    def forward(self, head_logits: torch.Tensor, target: torch.Tensor) -> LossTerms:
        """head_logits (B, H, K), target (B,) fine classes 0..K-1."""
        heads = self.heads_loss(head_logits, target)
        probs = average_probabilities(head_logits)
        parts = {"heads": heads}
        if self.cfg.hrps:
            contributions = self.hrps_contributions(probs, target)
            hrps = torch.stack(list(contributions.values())).sum()  # Eq. 28 + entropy term (Eq. 30)
            parts.update({"hrps": hrps, **contributions})
            total = (heads + hrps) / 2
        else:
            total = heads
        if self.cfg.rank_weight > 0:
            parts["rank"] = pairwise_ranking(expected_score(probs), target)
            total = total + self.cfg.rank_weight * parts["rank"]
        return LossTerms(total=total, parts={k: v.detach() for k, v in parts.items()})
