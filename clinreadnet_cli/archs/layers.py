"""Small layers shared by the ClinReadNet components."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mish_from_sigmoid(x: torch.Tensor) -> torch.Tensor:
    """Mish, x * tanh(softplus(x)), written as x * (1 - s^2) / (1 + s^2) with s = sigmoid(-x).

    The same function (since 1 + e^x = 1 / s), built from kernels that are vectorised on
    the CPU: aten's CPU mish evaluates a scalar tanh and is ~16x slower than sigmoid.
    """
    s2 = torch.sigmoid(-x).square_()
    return x * (1 - s2).div_(s2.add_(1))


class Mish(nn.Module):
    """Mish (the paper's activation in SOQN and the MTMSA modulator).

    Training uses aten's mish, whose fused backward keeps one tensor for autograd; inference
    on the CPU uses the vectorised identity above (|difference| < 1e-5).
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if torch.is_grad_enabled() or x.device.type != "cpu":
            return F.mish(x)
        return mish_from_sigmoid(x)
