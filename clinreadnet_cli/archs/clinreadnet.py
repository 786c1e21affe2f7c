"""ClinReadNet: timm's Swin-T with SOQN after stages 1-2, (S)W-MTMSA in stage 4, four heads (§3.1, Fig. 1)."""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import timm
from timm.models import load_pretrained
from timm.models.swin_transformer import checkpoint_filter_fn
import torch
from torch import nn

from ..config import ClinReadNetConfig, ConfigError
from .heads import MultiHeadClassifier, argmax_class, average_probabilities, expected_score, head_probabilities
from .mtmsa import use_mtmsa
from .soqn import SOQN

TIMM_SWIN = "swin_tiny_patch4_window7_224"


@dataclass
class Prediction:
    """What the model says about a batch of slices."""

    probs: torch.Tensor  # (B, K) head-averaged class probabilities
    head_probs: torch.Tensor  # (B, H, K)

    @classmethod
    def from_logits(cls, head_logits: torch.Tensor) -> "Prediction":
        """From per-head logits (B, H, K), computed in fp32 whatever precision produced them."""
        head_logits = head_logits.float()
        return cls(probs=average_probabilities(head_logits), head_probs=head_probabilities(head_logits))

    @property
    def score(self) -> torch.Tensor:  # (B,) 0-4
        return expected_score(self.probs)

    @property
    def label(self) -> torch.Tensor:  # (B,) arg-max class 0..K-1
        return argmax_class(self.probs)

    @property
    def head_scores(self) -> torch.Tensor:  # (B, H) each head's own 0-4 score
        return expected_score(self.head_probs)

    @property
    def head_sd(self) -> torch.Tensor:  # (B,) how much the four heads disagree, in score points
        return self.head_scores.std(dim=1, unbiased=False)

    @property
    def entropy(self) -> torch.Tensor:  # (B,) of the averaged distribution, / log(classes): 0 sure .. 1 flat
        p = self.probs.clamp_min(1e-12)
        return -(p * p.log()).sum(dim=1) / math.log(p.shape[1])


def create_backbone(cfg: ClinReadNetConfig, checkpoint: str | Path | None = None) -> nn.Module:
    """Headless timm Swin built from ``cfg``; optionally initialised from a local Swin checkpoint.

    Nothing is downloaded. timm's own loader adapts a local timm/official checkpoint: 3-channel
    patch embeddings are summed to the 1-channel one, relative position tables are resized to
    the window, and the ImageNet classifier is dropped.
    """
    backbone = timm.create_model(
        TIMM_SWIN, pretrained=False, img_size=cfg.img_size, in_chans=cfg.in_chans, patch_size=cfg.patch_size,
        embed_dim=cfg.embed_dim, depths=cfg.depths, num_heads=cfg.num_heads, window_size=cfg.window_size,
        num_classes=0, drop_rate=cfg.drop_rate, drop_path_rate=cfg.drop_path_rate,
    )
    if checkpoint is not None:
        path = Path(checkpoint)
        if path.suffix != ".safetensors":
            raise ConfigError(f"{path}: backbone checkpoints are read from .safetensors files only (no pickles)")
        if not path.is_file():
            raise ConfigError(f"{path}: backbone checkpoint not found")
        try:
            load_pretrained(
                backbone, pretrained_cfg={**backbone.pretrained_cfg, "file": str(path)},
                num_classes=0, in_chans=cfg.in_chans, filter_fn=checkpoint_filter_fn,
            )
        except (RuntimeError, KeyError) as exc:
            reason = str(exc).strip().splitlines()[0]
            raise ConfigError(f"{path}: not a Swin checkpoint that fits config {cfg.name!r} ({reason})") from None
    return backbone


class ClinReadNet(nn.Module):
    def __init__(self, cfg: ClinReadNetConfig, backbone_checkpoint: str | Path | None = None):
        super().__init__()
        self.config = cfg
        self.backbone = create_backbone(cfg, backbone_checkpoint)
        widths = [info["num_chs"] for info in self.backbone.feature_info]
        self.soqn = nn.ModuleDict(
            {str(stage): SOQN(widths[stage], cfg.soqn) for stage in cfg.soqn_stages} if cfg.soqn else {}
        )
        if cfg.mtmsa is not None:
            use_mtmsa(self.backbone.layers[-1], cfg.mtmsa)
        self.head = MultiHeadClassifier(sum(widths), cfg.classifier_heads, cfg.num_classes, cfg.drop_rate)

    def forward_intermediates(self, x: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor]]:
        """(B, C, H, W) in [0, 1] -> (per-head logits, every stage's feature map (B, h, w, C) as pooled)."""
        x = self.backbone.patch_embed((x - 0.5) / 0.5)  # windowed [0, 1] slice -> zero-centred [-1, 1]
        maps = []
        last = len(self.backbone.layers) - 1
        for i, stage in enumerate(self.backbone.layers):
            x = stage(x)
            if str(i) in self.soqn:
                x = self.soqn[str(i)](x)  # in line: the next stage receives SOQN's output
            maps.append(self.backbone.norm(x) if i == last else x)  # timm's final norm belongs to stage 4
        pooled = torch.cat([m.mean(dim=(1, 2)) for m in maps], dim=1)  # (B, 96+192+384+768)
        return self.head(pooled), maps

    def feature_modules(self) -> list[nn.Module]:
        """The module whose output is each stage's feature map in ``forward_intermediates`` (for hooks: CAMs)."""
        last = len(self.backbone.layers) - 1
        return [self.backbone.norm if i == last else self.soqn[str(i)] if str(i) in self.soqn else stage
                for i, stage in enumerate(self.backbone.layers)]

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(B, C, H, W) in [0, 1] -> per-head logits (B, heads, classes), in training and in eval."""
        return self.forward_intermediates(x)[0]

    @torch.inference_mode()
    def predict(self, x: torch.Tensor) -> Prediction:
        """Eval-mode prediction: head-averaged probabilities plus each head's own."""
        if self.training:
            raise RuntimeError("predict() needs eval mode: call model.eval() first")
        return Prediction.from_logits(self(x))
