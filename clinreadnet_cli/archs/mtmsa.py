"""(Shifted) window multi-temperature multi-head self-attention, paper §3.3, Eq. 6-16.

``MTMSA`` is a drop-in replacement for timm's ``WindowAttention``: the Swin block keeps
doing the padding, cyclic shift, window partition and shift mask, and this module keeps
timm's qkv projection and relative position bias. What changes is how the attention
logits become an output: one softmax per temperature, mixed per window by a
quality-aware modulator and learnable progressive weights.
"""

from __future__ import annotations

from typing import Optional

import torch
from timm.models.swin_transformer import SwinTransformerStage, WindowAttention
from torch import nn

from ..config import PROGRESSIVE_WEIGHTS, TEMPERATURES, MTMSAConfig
from .layers import Mish


class MTMSA(WindowAttention):
    def __init__(self, dim: int, num_heads: int, window_size, cfg: MTMSAConfig, qkv_bias: bool = True,
                 attn_drop: float = 0.0, proj_drop: float = 0.0):
        super().__init__(dim, num_heads, window_size=window_size, qkv_bias=qkv_bias,
                         attn_drop=attn_drop, proj_drop=proj_drop)
        self.temperature_names = cfg.temperatures
        initial = torch.tensor([TEMPERATURES[t] for t in cfg.temperatures])
        if cfg.log_temperatures:  # T = exp(log T) stays positive whatever the optimiser does
            self.log_temperatures = nn.Parameter(initial.log())
        else:
            self.temperatures = nn.Parameter(initial)
        self.progressive_weights = nn.Parameter(torch.tensor([PROGRESSIVE_WEIGHTS[t] for t in cfg.temperatures]))
        if cfg.mixing_sharpness:
            self.log_mixing_sharpness = nn.Parameter(torch.tensor(float(len(cfg.temperatures))).log())
        hidden = max(8, int(dim * cfg.modulator_ratio))
        self.modulator = nn.Sequential(  # Eq. 13: q = sigmoid(W2 Mish(W1 mean(X)))
            nn.Linear(dim, hidden), Mish(), nn.Linear(hidden, len(cfg.temperatures)), nn.Sigmoid()
        )

    @classmethod
    def replacing(cls, attn: WindowAttention, cfg: MTMSAConfig) -> "MTMSA":
        """An MTMSA that takes over ``attn``'s projections and relative position bias."""
        new = cls(attn.dim, attn.num_heads, attn.window_size, cfg, qkv_bias=attn.qkv.bias is not None,
                  attn_drop=attn.attn_drop.p, proj_drop=attn.proj_drop.p)
        missing, unexpected = new.load_state_dict(attn.state_dict(), strict=False)
        own = ("temperatures", "log_temperatures", "progressive", "modulator", "log_mixing_sharpness")
        assert not unexpected and all(k.startswith(own) for k in missing)
        return new.to(attn.qkv.weight.device)

    def temperature_values(self) -> torch.Tensor:
        """T_i (Eq. 12), positive."""
        return self.log_temperatures.exp() if hasattr(self, "log_temperatures") else self.temperatures

    def mixing_weights(self, x: torch.Tensor) -> torch.Tensor:
        """Eq. 13-14: alpha (B_, T), one convex combination of the temperatures per window."""
        q = self.modulator(x.mean(dim=1))
        logits = q * torch.softmax(self.progressive_weights, dim=0)
        if hasattr(self, "log_mixing_sharpness"):
            logits = logits * self.log_mixing_sharpness.exp()
        return torch.softmax(logits, dim=-1)

    def forward(self, x: torch.Tensor, mask: Optional[torch.Tensor] = None) -> torch.Tensor:
        b_, n, _ = x.shape
        qkv = self.qkv(x).reshape(b_, n, 3, self.num_heads, -1).permute(2, 0, 3, 1, 4)  # Eq. 6-8
        q, k, v = qkv.unbind(0)
        logits = (q * self.scale) @ k.transpose(-2, -1) + self._get_rel_pos_bias()  # Eq. 9: (B_, h, N, N)
        # Eq. 12 read as softmax(T_i * A) (T < 1 smooths, T > 1 sharpens). The shift mask is added
        # after scaling: it stands for -inf, which scaling must not weaken.
        logits = logits.unsqueeze(1) * self.temperature_values().view(1, -1, 1, 1, 1)  # (B_, T, h, N, N)
        if mask is not None:  # Eq. 10
            num_win = mask.shape[0]
            logits = logits.view(-1, num_win, *logits.shape[1:]) + mask[None, :, None, None]
            logits = logits.view(b_, -1, self.num_heads, n, n)
        attn = self.attn_drop(logits.softmax(dim=-1))  # Eq. 11, once per temperature
        alpha = self.mixing_weights(x)
        # Eq. 15, sum_i alpha_i (Attn_i V) computed as (sum_i alpha_i Attn_i) V: one matmul, not T.
        mixed = torch.einsum("bt,bthnm->bhnm", alpha, attn)
        out = (mixed @ v).transpose(1, 2).reshape(b_, n, -1)
        return self.proj_drop(self.proj(out))  # Eq. 16


def use_mtmsa(stage: SwinTransformerStage, cfg: MTMSAConfig) -> None:
    """Swap the attention of every block of ``stage`` (W-MSA and SW-MSA) for (S)W-MTMSA."""
    for block in stage.blocks:
        block.attn = MTMSA.replacing(block.attn, cfg)
