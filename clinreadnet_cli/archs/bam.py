"""One branch of the bottleneck attention module (BAM, Park et al. 2018, arXiv:1807.06514), the
paper's comparison for (S)W-MTMSA in Tab. 7 ("spatial attention [48]", "channel attention [48]").

Applied to stage 4's output with BAM's residual form F' = F + F * sigmoid(M(F)), where M is the
channel branch (global average pool -> C/r -> C, a map per channel) or the spatial branch
(1x1 to C/r, two dilated 3x3, 1x1 to one map per position). timm has CBAM, whose branches are
different (max + mean pooling, a 7x7 convolution), so BAM's are written here.
"""

from __future__ import annotations

import torch
from torch import nn

from ..config import BAMConfig


class BAM(nn.Module):
    def __init__(self, channels: int, cfg: BAMConfig):
        super().__init__()
        hidden = max(1, channels // cfg.reduction)
        if cfg.kind == "channel":
            self.gate = nn.Sequential(
                nn.AdaptiveAvgPool2d(1), nn.Flatten(),
                nn.Linear(channels, hidden), nn.BatchNorm1d(hidden), nn.ReLU(inplace=True),
                nn.Linear(hidden, channels), nn.Unflatten(1, (channels, 1, 1)),
            )
        else:
            d = cfg.dilation
            self.gate = nn.Sequential(
                nn.Conv2d(channels, hidden, 1), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                nn.Conv2d(hidden, hidden, 3, padding=d, dilation=d), nn.BatchNorm2d(hidden), nn.ReLU(inplace=True),
                nn.Conv2d(hidden, 1, 1),
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, H, W, C) -> (B, H, W, C): F + F * sigmoid(M(F))."""
        features = x.permute(0, 3, 1, 2)
        attention = torch.sigmoid(self.gate(features))
        return (features + features * attention).permute(0, 2, 3, 1)
